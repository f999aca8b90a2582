"""The Sampler: "n outputs of f at x + noise", in full device batches, for one request at a time.

The algorithms (`smoothgen.classify`, `smoothgen.center`) ask a sampler for what they need and never
loop over batches themselves:
- `counts`: class votes of a classifier, reduced on the device; one host copy per request.
- `outputs`: every output (center smoothing's center selection), or a per-sample map of them
  (distances to a center), so that only n numbers are kept.
- `score_sums`: sums and squared sums of [0, 1] scores.
Noise is written straight into one preallocated input buffer, which the runtime reads; memory is
bounded by the batch size for any n (n = 10⁶ with `counts` keeps 10 integers).

`Scheduler.sampler()` (engine/scheduler.py) has the same three methods and batches many concurrent
requests together; because noise is keyed per request (engine/noise.py), both give identical results.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from smoothgen.engine.noise import NoiseKey, NoiseSource
from smoothgen.engine.reducers import ClassCounts, KeepOutputs, Reducer, ScoreSums
from smoothgen.engine.runtime import Runtime, as_runtime
from smoothgen.errors import InvalidParameterError, ModelOutputError, SmoothgenError, first_line
from smoothgen.validate import as_model_dtype

#: Default batch of noisy copies per model call. On the digits CNN (2-core CPU) throughput is flat from
#: about 500 upwards; larger batches only cost memory.
DEFAULT_BATCH_SIZE = 1000


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidParameterError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size


def run_model(runtime: Runtime, batch: torch.Tensor) -> Any:
    """runtime.run(batch), with the model's own failures (a wrong input shape, a dtype it cannot take)
    as one ModelOutputError that names them."""
    try:
        return runtime.run(batch)
    except SmoothgenError:
        raise
    except Exception as exc:
        raise ModelOutputError(f"the model failed on a batch of shape {tuple(batch.shape)}: {first_line(exc)}") from exc


def detach_from(outputs: Any, buffer: torch.Tensor) -> Any:
    """Outputs that alias the input buffer (an identity model) are copied before the buffer is reused."""
    if isinstance(outputs, torch.Tensor) and outputs.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr():
        return outputs.clone()
    return outputs


class Sampler:
    """Draws noisy copies of one input and runs them through a runtime in batches.

    Args:
        batch_size: noisy copies per model call (capped by the runtime's max_batch).
    """

    def __init__(self, batch_size: int = DEFAULT_BATCH_SIZE):
        self.batch_size = check_batch_size(batch_size)

    def run(
        self,
        model: Runtime | Callable,
        x: torch.Tensor,
        n: int,
        sigma: float,
        key: NoiseKey,
        reducer: Reducer,
        start: int = 0,
        total: int | None = None,
    ) -> Any:
        """Feed n noisy copies x + σ·ε_i (noise keyed by `key`) to the model and return `reducer.result()`.

        Args:
            start, total: take copies start .. start + n − 1 of a stream of `total` copies (default:
                0 .. n − 1 of n), so that a sequential test can continue one stream look by look.

        Shapes:
            x: one input [*S] (no batch dimension).
        """
        total = n if total is None else total
        if start < 0 or start + n > total:
            raise InvalidParameterError(f"copies {start}..{start + n} outside the stream of {total}")
        runtime = as_runtime(model)
        size = self.batch_size if runtime.max_batch is None else min(self.batch_size, runtime.max_batch)
        x = as_model_dtype(x.detach(), runtime.input_dtype, strict=False).to(runtime.device)
        buffer = torch.empty((min(size, n), *x.shape), dtype=x.dtype, device=runtime.device)
        source = NoiseSource(x, sigma, total, key)
        done = 0
        while done < n:
            b = min(size, n - done)
            batch = buffer[:b]
            source.fill(batch, start + done)
            reducer.add(detach_from(run_model(runtime, batch), buffer), b)
            done += b
        return reducer.result()

    def counts(
        self,
        model: Runtime | Callable,
        x: torch.Tensor,
        n: int,
        sigma: float,
        num_classes: int,
        key: NoiseKey,
        start: int = 0,
        total: int | None = None,
    ) -> np.ndarray:
        """Class counts of argmax f(x + ε) over n noisy copies: an int64 array [num_classes].

        Raises:
            ModelOutputError: the model returned a wrong shape, a non-floating tensor, or NaN/Inf.
        """
        runtime = as_runtime(model)
        return self.run(runtime, x, n, sigma, key, ClassCounts(num_classes, runtime.device), start, total)

    def outputs(
        self,
        model: Runtime | Callable,
        x: torch.Tensor,
        n: int,
        sigma: float,
        key: NoiseKey,
        reduce: Callable[[Any], torch.Tensor] | None = None,
    ) -> Any:
        """The n outputs f(x + ε_i) — a tensor [n, *out] or a list — or, with `reduce`, a tensor [n].

        Raises:
            ModelOutputError: wrong batch length, changing output shapes, or NaN/Inf outputs.
        """
        runtime = as_runtime(model)
        return self.run(runtime, x, n, sigma, key, KeepOutputs(reduce, runtime.device))

    def score_sums(
        self,
        model: Runtime | Callable,
        x: torch.Tensor,
        n: int,
        sigma: float,
        key: NoiseKey,
        score: Callable[[Any], torch.Tensor] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Sums and squared sums of the [0, 1] scores of n noisy copies, and n."""
        runtime = as_runtime(model)
        return self.run(runtime, x, n, sigma, key, ScoreSums(score, runtime.device))
