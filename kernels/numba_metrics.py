"""User-defined metrics compiled by numba into a parallel pairwise loop on the CPU.

A metric registered as a plain Python function of two outputs (``register_metric(name, fn, gamma=...)``)
would otherwise be a Python double loop: n² interpreted calls, about 10⁸ for center smoothing's
n = 10⁴. Here ``fn`` is compiled once with ``numba.njit`` and called from a ``prange`` loop over the
rows of the distance matrix (all CPU cores), for:

- tensor outputs ``[n, *shape]``: ``fn(a_i, b_j)`` gets NumPy arrays of ``shape`` (float64 for
  floating outputs, int64 for integer ones) — the items as the plain loop passes them, as arrays;
- sequence outputs (lists of 1-D integer sequences): ``fn(s, t)`` gets 1-D int64 arrays.

The function must then be numba-compilable (NumPy-style code, no torch methods). When numba is not
installed, the function does not compile for these argument types, returns something other than a
number, or raises, the caller (smoothgen.metrics) runs its plain loop instead and the reason is logged
once per metric (logger ``smoothgen.kernels``); a metric registered with ``jit=True`` raises instead.
The compiled loop runs with bounds checking, so an out-of-range index raises (through the plain loop's
re-run) instead of reading garbage.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import numpy as np
import torch

logger = logging.getLogger("smoothgen.kernels")

_INT64_MAX = np.iinfo(np.int64).max
_RUN_LOCK = threading.Lock()


class NumbaUnavailable(Exception):
    """The numba path cannot compute this call (the message says why)."""


_numba_state: tuple[Any, str | None] | None = None


def numba_module():
    """(numba, None) or (None, why it cannot be imported)."""
    global _numba_state
    if _numba_state is None:
        try:
            import numba
        except Exception as exc:  # not installed, or an llvmlite/NumPy mismatch raising at import
            _numba_state = (None, f"numba could not be imported ({type(exc).__name__}: {exc})")
        else:
            _numba_state = (numba, None)
    return _numba_state


def _tensor_arrays(x: torch.Tensor) -> np.ndarray:
    if x.dtype.is_complex or x.dtype == torch.bool:
        raise NumbaUnavailable(f"outputs of dtype {x.dtype} (the numba path takes real numbers)")
    x = x.detach().cpu()
    x = x.double() if torch.is_floating_point(x) else x.long()
    return np.ascontiguousarray(x.numpy())


def _sequence_arrays(x: Any) -> tuple[np.ndarray, np.ndarray]:
    """A batch of integer sequences as (flat int64 tokens, offsets [n + 1])."""
    if isinstance(x, (torch.Tensor, np.ndarray)) and x.ndim == 2 and not (isinstance(x, np.ndarray) and x.dtype == object):
        items = list(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x)
    else:
        items = list(x)
    arrays = []
    for item in items:
        arr = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise NumbaUnavailable("sequence items that are not 1-D integer sequences")
        if arr.dtype.kind == "u" and arr.size and int(arr.max()) > _INT64_MAX:
            raise NumbaUnavailable("tokens beyond int64")
        arrays.append(arr.astype(np.int64, copy=False))
    lengths = np.array([0] + [len(a) for a in arrays], dtype=np.int64)
    flat = np.concatenate(arrays) if arrays and lengths.sum() else np.zeros(0, dtype=np.int64)
    return np.ascontiguousarray(flat, dtype=np.int64), np.cumsum(lengths)


class NumbaPairwise:
    """``fn`` compiled into a parallel pairwise-distance loop; one per registered metric.

    Args:
        fn: the user's distance of two outputs.
        kind: "tensor" or "sequence".
        name: the metric's name (for messages).

    Calling it returns the float64 distances [n_a, n_b] on CPU, or raises `NumbaUnavailable`.
    """

    def __init__(self, fn: Callable[[Any, Any], float], kind: str, name: str):
        self.fn, self.kind, self.name = fn, kind, name
        self.failed: str | None = None  # why compiling failed for good (then never tried again)
        self._driver = None
        self._lock = threading.Lock()

    def _build(self):
        numba, why = numba_module()
        if numba is None:
            raise NumbaUnavailable(why)
        jitted = numba.njit(boundscheck=True, nogil=True)(self.fn)
        prange = numba.prange
        if self.kind == "tensor":

            def loop(a, b, out):
                for i in prange(a.shape[0]):
                    for j in range(b.shape[0]):
                        out[i, j] = jitted(a[i], b[j])

        else:

            def loop(flat_a, off_a, flat_b, off_b, out):
                for i in prange(off_a.shape[0] - 1):
                    s = flat_a[off_a[i] : off_a[i + 1]]
                    for j in range(off_b.shape[0] - 1):
                        out[i, j] = jitted(s, flat_b[off_b[j] : off_b[j + 1]])

        return numba.njit(parallel=True, boundscheck=True)(loop)

    def __call__(self, a: Any, b: Any) -> torch.Tensor:
        if self.failed is not None:
            raise NumbaUnavailable(self.failed)
        if self.kind == "tensor":
            args = (_tensor_arrays(a), _tensor_arrays(b))
            n_a, n_b = args[0].shape[0], args[1].shape[0]
        else:
            (fa, oa), (fb, ob) = _sequence_arrays(a), _sequence_arrays(b)
            args = (fa, oa, fb, ob)
            n_a, n_b = len(oa) - 1, len(ob) - 1
        out = np.zeros((n_a, n_b), dtype=np.float64)
        if n_a == 0 or n_b == 0:
            return torch.from_numpy(out)
        with self._lock:
            if self._driver is None:
                try:
                    self._driver = self._build()
                except NumbaUnavailable as exc:
                    self.failed = str(exc)
                    raise
        try:
            # One compiled loop at a time per process: each already uses every core, and numba's
            # fallback threading layer (workqueue, where OpenMP/TBB are missing) aborts on concurrent use.
            with _RUN_LOCK:
                self._driver(*args, out)
        except Exception as exc:
            # A typing error (the function does not compile for these arguments, or returns no number)
            # is final; a runtime error may be the data's: either way the plain loop decides.
            reason = f"numba could not run metric {self.name!r} ({type(exc).__name__}: {_first_line(exc)})"
            if _is_compile_error(exc):
                self.failed = reason
            raise NumbaUnavailable(reason) from exc
        return torch.from_numpy(out)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


def _is_compile_error(exc: Exception) -> bool:
    numba, _ = numba_module()
    return numba is not None and isinstance(exc, (numba.core.errors.TypingError, numba.core.errors.UnsupportedError,
                                                  numba.core.errors.LoweringError))


_logged: set[tuple[str, str]] = set()
_log_lock = threading.Lock()


def log_fallback(name: str, reason: str) -> None:
    """Log once per (metric, reason) that a metric runs as a Python double loop."""
    with _log_lock:
        if (name, reason) in _logged:
            return
        _logged.add((name, reason))
    logger.warning("smoothgen.kernels: metric %r runs as a Python double loop: %s", name, reason)


__all__ = ["NumbaPairwise", "NumbaUnavailable", "log_fallback", "numba_module"]
