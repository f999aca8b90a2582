"""The Sampler: "n outputs of f at x + noise", in full device batches.

The algorithms (`smoothgen.classify`, `smoothgen.center`) ask the sampler for what they need and never
loop over batches themselves:
- `counts`: class votes of a classifier, reduced on the device (bincount); one host copy per request.
- `outputs`: every output (center smoothing's center selection), or a per-sample reduction of them
  (distances to a center), kept on the device until the request is done.
The engine issue replaces this in-process sampler by the streaming one without touching the algorithms.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from smoothgen import kernels
from smoothgen.engine.runtime import Runtime, as_runtime
from smoothgen.errors import InvalidParameterError, ModelOutputError

#: Default batch of noisy copies per model call. On the digits CNN (2-core CPU) throughput is flat from
#: about 500 upwards; larger batches only cost memory.
DEFAULT_BATCH_SIZE = 1000


def _batch_sizes(n: int, batch_size: int):
    full, rest = divmod(n, batch_size)
    yield from [batch_size] * full
    if rest:
        yield rest


class Sampler:
    """Draws noisy copies of one input and runs them through a runtime in batches.

    Args:
        batch_size: noisy copies per model call (capped by the runtime's max_batch).
    """

    def __init__(self, batch_size: int = DEFAULT_BATCH_SIZE):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidParameterError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.batch_size = batch_size

    def _batches(self, runtime: Runtime, x: torch.Tensor, n: int, sigma: float, generator: torch.Generator):
        size = self.batch_size if runtime.max_batch is None else min(self.batch_size, runtime.max_batch)
        x = x.to(runtime.device)
        for b in _batch_sizes(n, size):
            yield b, runtime.run(kernels.gaussian_noise(x, b, sigma, generator))

    def counts(
        self,
        model: Runtime | Callable,
        x: torch.Tensor,
        n: int,
        sigma: float,
        num_classes: int,
        generator: torch.Generator,
    ) -> np.ndarray:
        """Class counts of argmax f(x + ε) over n noisy copies.

        Args:
            model: a Runtime, or a torch module / callable returning logits [b, num_classes].
            x: one input (no batch dimension).
            n: number of noisy copies.
            sigma: noise standard deviation.
            num_classes: number of classes of the base classifier.
            generator: the request's random stream for this step, on the runtime's device.

        Returns:
            int64 array [num_classes] of counts (sum n).

        Raises:
            ModelOutputError: the model returned a wrong shape, a non-floating tensor, or NaN/Inf.
        """
        runtime = as_runtime(model)
        counts = torch.zeros(num_classes, dtype=torch.int64, device=runtime.device)
        # Non-finite logits are flagged on the device and checked once at the end: no per-batch sync.
        bad = torch.zeros((), dtype=torch.bool, device=runtime.device)
        for b, logits in self._batches(runtime, x, n, sigma, generator):
            if not isinstance(logits, torch.Tensor) or not torch.is_floating_point(logits):
                raise ModelOutputError(f"model must return a floating tensor of logits, got {_describe(logits)}")
            if tuple(logits.shape) != (b, num_classes):
                raise ModelOutputError(
                    f"model returned logits of shape {tuple(logits.shape)}, expected ({b}, {num_classes})"
                )
            bad |= ~torch.isfinite(logits).all()
            counts += torch.bincount(logits.argmax(dim=1), minlength=num_classes)
        if bool(bad):
            raise ModelOutputError("model returned NaN or Inf logits")
        return counts.cpu().numpy()

    def outputs(
        self,
        model: Runtime | Callable,
        x: torch.Tensor,
        n: int,
        sigma: float,
        generator: torch.Generator,
        reduce: Callable[[Any], torch.Tensor] | None = None,
    ) -> Any:
        """The n outputs f(x + ε_i), or a per-sample reduction of them.

        Args:
            model: a Runtime, or a callable returning a tensor [b, *out] (or a list of b sequences).
            x: one input (no batch dimension).
            n: number of noisy copies.
            sigma: noise standard deviation.
            generator: the request's random stream for this step.
            reduce: optional map of a batch of outputs to a tensor [b] (e.g. distances to a center),
                so that only n numbers are kept, whatever the output size.

        Returns:
            A tensor [n, *out] (tensor outputs), a list of n outputs (sequence outputs), or, with
            `reduce`, a tensor [n].

        Raises:
            ModelOutputError: wrong batch length, changing output shapes, or NaN/Inf outputs.
        """
        runtime = as_runtime(model)
        kept: list[Any] = []
        shape: tuple[int, ...] | None = None
        bad = torch.zeros((), dtype=torch.bool, device=runtime.device)
        for b, out in self._batches(runtime, x, n, sigma, generator):
            if isinstance(out, torch.Tensor):
                if out.ndim == 0 or out.shape[0] != b:
                    raise ModelOutputError(f"model returned shape {tuple(out.shape)} for a batch of {b}")
                if shape is None:
                    shape = tuple(out.shape[1:])
                elif tuple(out.shape[1:]) != shape:
                    raise ModelOutputError(f"model output shape changed from {shape} to {tuple(out.shape[1:])}")
                if torch.is_floating_point(out):
                    bad = bad | ~torch.isfinite(out).all()
            elif isinstance(out, (list, tuple)):
                if len(out) != b:
                    raise ModelOutputError(f"model returned {len(out)} outputs for a batch of {b}")
            else:
                raise ModelOutputError(f"model must return a tensor or a list of outputs, got {_describe(out)}")
            kept.append(out if reduce is None else reduce(out))
        if bool(bad):
            raise ModelOutputError("model returned NaN or Inf outputs")
        if reduce is not None or isinstance(kept[0], torch.Tensor):
            return torch.cat(kept)
        return [item for chunk in kept for item in chunk]


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
