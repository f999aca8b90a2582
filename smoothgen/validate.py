"""Parameter and input checks shared by the algorithms (raise the specific errors of `errors.py`)."""
from __future__ import annotations

import math
from numbers import Integral, Real

import torch

from smoothgen.errors import InvalidInputError, InvalidParameterError


def check_sigma(sigma: float) -> float:
    """Return sigma as a float after checking 0 < sigma < inf."""
    if isinstance(sigma, bool) or not isinstance(sigma, Real) or not math.isfinite(sigma) or sigma <= 0:
        raise InvalidParameterError(f"sigma must be a finite number > 0, got {sigma!r}")
    return float(sigma)


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """Return alpha as a float after checking 0 < alpha < 1."""
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not (0.0 < alpha < 1.0):
        raise InvalidParameterError(f"{name} must lie strictly between 0 and 1, got {alpha!r}")
    return float(alpha)


def check_count(n: int, name: str = "n", minimum: int = 1) -> int:
    """Return n as an int after checking it is an integer >= minimum."""
    if isinstance(n, bool) or not isinstance(n, Integral) or n < minimum:
        raise InvalidParameterError(f"{name} must be an integer >= {minimum}, got {n!r}")
    return int(n)


def check_positive(value: float, name: str, allow_zero: bool = False) -> float:
    """Return value as a float after checking it is finite and > 0 (or >= 0)."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidParameterError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def check_input(x: torch.Tensor, expected_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Check one input tensor: a floating tensor, finite, and of the expected shape when one is given.

    Shapes:
        x: any shape (one input, no batch dimension).
    """
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise InvalidInputError(f"input must have a floating dtype, got {x.dtype}")
    if x.numel() == 0:
        raise InvalidInputError("input is empty")
    if expected_shape is not None and tuple(x.shape) != tuple(expected_shape):
        raise InvalidInputError(f"input has shape {tuple(x.shape)}, expected {tuple(expected_shape)}")
    if not bool(torch.isfinite(x).all()):
        raise InvalidInputError("input contains NaN or Inf")
    return x
