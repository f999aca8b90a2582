"""Exception types raised by smoothgen's public API.

Every error a user can cause has its own type, so that callers (and the CLI, which turns any
`SmoothgenError` into a one-line message and exit code 2) can tell them apart. They also derive from
the matching built-in (`ValueError`, `RuntimeError`, ...) so that generic handlers still work.
"""
from __future__ import annotations


class SmoothgenError(Exception):
    """Base class of every error smoothgen raises on purpose."""


class InvalidParameterError(SmoothgenError, ValueError):
    """An impossible parameter: sigma <= 0, alpha outside (0, 1), n < 1, an unknown metric, ..."""


class InvalidInputError(SmoothgenError, ValueError):
    """An input that cannot be certified: NaN/Inf values, a wrong shape or dtype, an unreadable data file."""


class ModelOutputError(SmoothgenError, RuntimeError):
    """The base model returned something unusable: a wrong shape, NaN/Inf, a wrong type."""


class MetricError(SmoothgenError, ValueError):
    """A metric returned a negative or non-finite distance, or was registered incorrectly."""


class ModelLoadError(SmoothgenError, OSError):
    """A model file or factory could not be loaded."""


class ResultsFileError(SmoothgenError, OSError):
    """A results file cannot be resumed: it belongs to another run or holds a corrupt record."""


class BackendUnavailableError(SmoothgenError, RuntimeError):
    """A requested runtime backend (torch.compile, ONNX Runtime provider, TensorRT) cannot run here."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty): what a
    one-line error message quotes of a third-party failure."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
