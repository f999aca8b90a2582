"""Reducers: what the sampler keeps of one request's model outputs, reduced on the device.

Each reducer validates the outputs it is given (shape, type, finiteness), keeps as little as the
algorithm needs, and syncs with the host once, in `result()`:
- `ClassCounts`: votes of a classifier (torch.bincount of the argmax) — Cohen's certificates.
- `KeepOutputs`: every output, or a per-sample map of it (distances to a center) — center smoothing.
- `ScoreSums`: sums and squared sums of [0, 1] scores — bounds on expectations (docs/theory.md §4b).
Non-finite values are flagged on the device and checked in `result()`, so validation costs no sync per batch.
"""
from __future__ import annotations

import abc
from typing import Any, Callable

import numpy as np
import torch

from smoothgen.errors import ModelOutputError


def describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


class Reducer(abc.ABC):
    """Accumulates one request's outputs batch by batch.

    Args:
        device: where the accumulators live (the runtime's device).
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self._bad_what = "outputs"

    def _flag_nonfinite(self, tensor: torch.Tensor) -> None:
        if torch.is_floating_point(tensor):
            self._bad |= ~torch.isfinite(tensor).all()

    def _raise_if_bad(self) -> None:
        if bool(self._bad):  # the one host sync of the request
            raise ModelOutputError(f"model returned NaN or Inf {self._bad_what}")

    @abc.abstractmethod
    def add(self, outputs: Any, batch: int) -> None:
        """Take the model's outputs for `batch` noisy copies."""

    @abc.abstractmethod
    def result(self) -> Any:
        """What was kept, on the host where it is small."""


class ClassCounts(Reducer):
    """Class votes argmax f(x + ε); `result()` is an int64 array [num_classes]."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        super().__init__(device)
        self.num_classes = num_classes
        self.counts = torch.zeros(num_classes, dtype=torch.int64, device=self.device)
        self._bad_what = "logits"

    def add(self, outputs: Any, batch: int) -> None:
        if not isinstance(outputs, torch.Tensor) or not torch.is_floating_point(outputs):
            raise ModelOutputError(f"model must return a floating tensor of logits, got {describe(outputs)}")
        if tuple(outputs.shape) != (batch, self.num_classes):
            raise ModelOutputError(
                f"model returned logits of shape {tuple(outputs.shape)}, expected ({batch}, {self.num_classes})"
            )
        self._flag_nonfinite(outputs)
        self.counts += torch.bincount(outputs.argmax(dim=1), minlength=self.num_classes)

    def result(self) -> np.ndarray:
        self._raise_if_bad()
        return self.counts.cpu().numpy()


class KeepOutputs(Reducer):
    """Every output f(x + ε_i), or `transform` of each batch (a tensor [b], e.g. distances to a center).

    `result()` is a tensor [n, *out] (tensor outputs), a list of n outputs (sequence outputs), or, with
    a transform, a tensor [n].
    """

    def __init__(self, transform: Callable[[Any], torch.Tensor] | None = None, device: torch.device | str = "cpu"):
        super().__init__(device)
        self.transform = transform
        self.kept: list[Any] = []
        self.shape: tuple[int, ...] | None = None

    def add(self, outputs: Any, batch: int) -> None:
        if isinstance(outputs, torch.Tensor):
            if outputs.ndim == 0 or outputs.shape[0] != batch:
                raise ModelOutputError(f"model returned shape {tuple(outputs.shape)} for a batch of {batch}")
            if self.shape is None:
                self.shape = tuple(outputs.shape[1:])
            elif tuple(outputs.shape[1:]) != self.shape:
                raise ModelOutputError(f"model output shape changed from {self.shape} to {tuple(outputs.shape[1:])}")
            self._flag_nonfinite(outputs)
        elif isinstance(outputs, (list, tuple)):
            if len(outputs) != batch:
                raise ModelOutputError(f"model returned {len(outputs)} outputs for a batch of {batch}")
        else:
            raise ModelOutputError(f"model must return a tensor or a list of outputs, got {describe(outputs)}")
        self.kept.append(outputs if self.transform is None else self.transform(outputs))

    def result(self) -> Any:
        self._raise_if_bad()
        if self.transform is not None or isinstance(self.kept[0], torch.Tensor):
            return torch.cat(self.kept)
        return [item for chunk in self.kept for item in chunk]


class ScoreSums(Reducer):
    """Sums and squared sums of scores in [0, 1] (per coordinate), for bounds on E[h(x + ε)].

    Args:
        score: map of a batch of outputs to scores [b] or [b, k] in [0, 1] (None: the outputs are the
            scores, e.g. probabilities).

    `result()` is (sums [k] or scalar, squared sums, count) as float64 NumPy values.
    """

    def __init__(self, score: Callable[[Any], torch.Tensor] | None = None, device: torch.device | str = "cpu"):
        super().__init__(device)
        self.score = score
        self.sums: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None
        self.count = 0
        self._out_of_range = torch.zeros((), dtype=torch.bool, device=self.device)
        self._bad_what = "scores"

    def add(self, outputs: Any, batch: int) -> None:
        scores = outputs if self.score is None else self.score(outputs)
        if not isinstance(scores, torch.Tensor) or scores.ndim not in (1, 2) or scores.shape[0] != batch:
            raise ModelOutputError(f"scores must be a tensor [{batch}] or [{batch}, k], got {describe(scores)}")
        scores = scores.double()
        self._flag_nonfinite(scores)
        self._out_of_range |= ((scores < 0) | (scores > 1)).any()
        if self.sums is None:
            self.sums = torch.zeros(scores.shape[1:], dtype=torch.float64, device=self.device)
            self.squares = torch.zeros_like(self.sums)
        self.sums += scores.sum(dim=0)
        self.squares += (scores * scores).sum(dim=0)
        self.count += batch

    def result(self) -> tuple[np.ndarray, np.ndarray, int]:
        self._raise_if_bad()
        if bool(self._out_of_range):
            raise ModelOutputError("scores must lie in [0, 1]")
        return self.sums.cpu().numpy(), self.squares.cpu().numpy(), self.count
