"""One entry point per op; the backend is picked per call from the tensors' device.

=============  ======================================  ============================================
backend        runs                                    chosen automatically
=============  ======================================  ============================================
``triton``     the fused kernels of this package       on CUDA tensors, when triton imports
``core``       smoothgen's C++ core (``smoothgen._C``)  on CPU for the pairwise ops (l2, l1, cosine),
                                                       when it is built and enabled (SMOOTHGEN_CORE)
``reference``  kernels/reference.py (plain torch)      everywhere else (float64, ...); CPU counter
                                                       noise is drawn by numba (kernels/numba_noise.py,
                                                       the same Philox words) and, in the plain case,
                                                       fused with x + σ·ε
=============  ======================================  ============================================

Override with the environment variable ``SMOOTHGEN_KERNELS=reference|triton|core`` (read at each call;
``auto`` or unset = the table above). An explicit choice that cannot run a call raises
`KernelBackendError` with the reason (triton not installed, CPU tensors without ``TRITON_INTERPRET=1``,
a torch.Generator given to a Triton op, float64 inputs, core not built, ...); ``core`` applies to the
ops the core implements (the pairwise ops) and leaves the noise ops, which it lacks, to the reference.
An automatic choice that fails falls back to the reference and logs why, once per op and reason
(logger ``smoothgen.kernels``).

What is reproducible: with ``generator=`` the noise is torch's and depends on that generator only (on
CPU it is bit for bit what smoothgen always drew). With ``seed=``/``offset=`` the noise is the
counter-based Philox noise of kernels/reference.py: a pure function of (seed, offset, element index),
identical (to float32 rounding of log/sin/cos) on the GPU, in the Triton interpreter, in the numba build
and in the NumPy reference, and independent of batch sizes and block sizes.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable

import numpy as np
import torch

from smoothgen.errors import InvalidInputError, InvalidParameterError, SmoothgenError
from smoothgen.kernels import reference

logger = logging.getLogger("smoothgen.kernels")

BACKENDS = ("reference", "triton", "core")
ENV_VAR = "SMOOTHGEN_KERNELS"

#: Ops the C++ core implements (the others run the reference under SMOOTHGEN_KERNELS=core).
_CORE_OPS = ("pairwise_distances", "median_distances", "min_median_center")
_HALF_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


class KernelBackendError(InvalidParameterError):
    """SMOOTHGEN_KERNELS names a backend that cannot run this call (the message says why)."""


_logged: set[tuple[str, str]] = set()
_log_lock = threading.Lock()


def _log_fallback(op: str, reason: str) -> None:
    with _log_lock:
        if (op, reason) in _logged:
            return
        _logged.add((op, reason))
    logger.warning("smoothgen.kernels: %s falls back to the torch reference: %s", op, reason)


def requested_backend() -> str | None:
    """The backend named by SMOOTHGEN_KERNELS, or None for the automatic choice."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in BACKENDS:
        raise KernelBackendError(f"{ENV_VAR}={value!r}: expected one of {', '.join(BACKENDS)} or auto")
    return value


# --------------------------------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------------------------------

_triton_state: tuple[Any, str | None] | None = None


def _triton():
    """(the smoothgen.kernels._triton module, None) or (None, why triton cannot be used)."""
    global _triton_state
    if _triton_state is None:
        try:
            from smoothgen.kernels import _triton as module
        except Exception as exc:  # ImportError, or a broken installation raising anything at import
            _triton_state = (None, f"triton could not be imported ({type(exc).__name__}: {exc})")
        else:
            _triton_state = (module, None)
    return _triton_state


def _triton_reason(device: torch.device, explicit: bool) -> str | None:
    """None when a Triton kernel can run on `device`, else why not."""
    module, why = _triton()
    if module is None:
        return why
    if module.INTERPRETED:
        # The interpreter runs anywhere but is a test tool: never chosen automatically.
        return None if explicit else "TRITON_INTERPRET=1 is set (the interpreter is for tests, not for speed)"
    if device.type != "cuda":
        return f"Triton kernels need CUDA tensors (got {device}; CPU tensors need TRITON_INTERPRET=1 set before triton is imported)"
    return None


def _core_module():
    from smoothgen import _core

    return _core


def _core_reason(device: torch.device, dtypes: tuple[torch.dtype, ...]) -> str | None:
    _core = _core_module()
    if not _core.HAVE_CORE:
        return f"the C++ core is not available ({_core.REASON})"
    if not _core.enabled():
        return "the C++ core is disabled (SMOOTHGEN_CORE=0 or _core.set_enabled(False))"
    if device.type != "cpu":
        return f"the C++ core runs on CPU tensors, got {device}"
    if any(dt not in _HALF_FLOATS for dt in dtypes):
        return f"the C++ core computes in float32 (float32/16/bfloat16 inputs), got {', '.join(map(str, dtypes))}"
    return None


def select_backend(
    op: str, device: torch.device, *, triton_unsupported: str | None = None, dtypes: tuple[torch.dtype, ...] = ()
) -> str:
    """The backend that runs `op` on `device` (see the module docstring).

    Args:
        op: the op's name.
        device: the device of its tensors.
        triton_unsupported: why this call has no Triton variant (e.g. a generator), or None.
        dtypes: the dtypes of its tensors (for the core).

    Raises:
        KernelBackendError: SMOOTHGEN_KERNELS names a backend that cannot run this call.
    """
    requested = requested_backend()
    if requested == "reference":
        return "reference"
    if requested == "triton":
        why = triton_unsupported or _triton_reason(device, explicit=True)
        if why is not None:
            raise KernelBackendError(f"{ENV_VAR}=triton but {op} cannot run with Triton: {why}")
        return "triton"
    if requested == "core":
        if op not in _CORE_OPS:
            return "reference"
        why = _core_reason(device, dtypes)
        if why is not None:
            raise KernelBackendError(f"{ENV_VAR}=core but {op} cannot run in the C++ core: {why}")
        return "core"
    # Automatic.
    if device.type == "cuda":
        why = triton_unsupported or _triton_reason(device, explicit=False)
        if why is None:
            return "triton"
        _log_fallback(op, why)
        return "reference"
    if op in _CORE_OPS and _core_reason(device, dtypes) is None:
        return "core"
    return "reference"


def _run(op: str, backend: str, fast: Callable[[], Any], ref: Callable[[], Any]) -> Any:
    """Run the chosen fast path; an automatic choice that fails falls back to the reference (logged)."""
    if backend == "reference":
        return ref()
    try:
        return fast()
    except SmoothgenError:
        raise  # the caller's mistake, reported as the reference would
    except Exception as exc:
        if requested_backend() is not None:
            raise
        _log_fallback(op, f"{backend} failed ({type(exc).__name__}: {exc})")
        return ref()


# --------------------------------------------------------------------------------------------------
# Noise ops
# --------------------------------------------------------------------------------------------------


def _compiled_counter_noise(backend: str, seed, eps, device: torch.device) -> bool:
    """Counter-based noise on the CPU under the automatic choice: drawn by the numba build of the same
    function (reference.counter_normal, the Philox words bit for bit) and passed to the reference as
    explicit noise, which adds it with the same arithmetic. SMOOTHGEN_KERNELS=reference keeps NumPy's."""
    return backend == "reference" and seed is not None and eps is None and device.type == "cpu" and requested_backend() is None


def _fused_cpu_noise(x, n, sigma, seed, offset, generator, clamp, mean, std, out) -> torch.Tensor | None:
    """The plain case (float32 x, no clamp/normalisation, a contiguous or no `out`) in one numba pass,
    with the reference's arithmetic; None where it does not apply (the caller runs the general path)."""
    if generator is not None or clamp is not None or mean is not None or std is not None or x.dtype != torch.float32:
        return None
    sigma = reference.check_sigma(sigma)
    reference.check_counter_range(offset, n, x.numel())
    out = reference.check_out(out, (n, *x.shape), x.dtype, x.device)
    if out is None:
        out = torch.empty((n, *x.shape), dtype=x.dtype)
    if x.numel() == 0:
        return out
    from smoothgen.kernels.numba_noise import noisy_copies_numba

    flat = x.detach().contiguous().reshape(-1).numpy()
    if not noisy_copies_numba(flat, sigma, seed, offset, out.view(n, -1).numpy()):
        return None
    return out


def gaussian_noise(
    x: torch.Tensor,
    num_copies: int,
    sigma: float,
    generator: torch.Generator | None = None,
    *,
    seed: int | None = None,
    offset: int = 0,
    eps: torch.Tensor | None = None,
    clamp: tuple[float | None, float | None] | None = None,
    mean=None,
    std=None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """N noisy copies x + σ·ε (optionally clamped and normalised per channel), on x's device.

    Same arguments as `smoothgen.kernels.reference.gaussian_noise_reference` (its docstring has the
    details). ``generator`` (or no noise source at all) always runs the reference: torch's RNG, as
    before. ``seed``/``offset`` (or ``eps``) run the fused Triton kernel on CUDA and the counter-based
    reference on CPU: the same noise on both.

    Shapes:
        x: [*S] -> [N, *S]
    """
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"x must be a tensor, got {type(x).__name__}")
    unsupported = None
    if seed is None and eps is None:
        unsupported = "torch.Generator noise has no Triton kernel (pass seed=/offset=)"
    elif x.dtype not in _HALF_FLOATS:
        unsupported = f"the kernel takes float32/float16/bfloat16 inputs, got {x.dtype}"
    backend = select_backend("gaussian_noise", x.device, triton_unsupported=unsupported)
    if _compiled_counter_noise(backend, seed, eps, x.device):
        seed, offset = reference.check_seed_offset(seed, offset)
        n = reference.check_count(num_copies, "num_copies")
        fused = _fused_cpu_noise(x, n, sigma, seed, offset, generator, clamp, mean, std, out)
        if fused is not None:
            return fused
        eps = reference.counter_normal(seed, offset, n, x.numel()).reshape(n, *x.shape)
        seed, offset = None, 0
    kwargs = dict(seed=seed, offset=offset, eps=eps, clamp=clamp, mean=mean, std=std, out=out)

    def fast():
        from smoothgen.kernels.gaussian_noise import gaussian_noise as kernel

        return kernel(x, num_copies, sigma, generator, **kwargs)

    return _run("gaussian_noise", backend, fast, lambda: reference.gaussian_noise_reference(x, num_copies, sigma, generator, **kwargs))


def noisy_embedding(
    ids: torch.Tensor,
    table: torch.Tensor,
    sigma,
    num_samples: int,
    mask: torch.Tensor | None = None,
    seed: int = 0,
    offset: int = 0,
    *,
    eps: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """N noisy embeddings of each prompt (row b·N + j = sample j of prompt b); see
    `smoothgen.kernels.reference.noisy_embedding_reference` for the arguments.

    Shapes:
        ids: [B, L], table: [V, D] -> [B·N, L, D]
    """
    if not isinstance(table, torch.Tensor):
        raise InvalidInputError(f"table must be a tensor, got {type(table).__name__}")
    backend = select_backend("noisy_embedding", table.device)
    if _compiled_counter_noise(backend, seed, eps, table.device):
        b, l, _, d, n, _ = reference.check_embedding_args(ids, table, num_samples, mask)
        seed, offset = reference.check_seed_offset(seed, offset)
        eps = reference.counter_normal(seed, offset * l, b * n * l, d).reshape(b * n, l, d)
        seed, offset = 0, 0
    args = (ids, table, sigma, num_samples, mask, seed, offset)

    def fast():
        from smoothgen.kernels.noisy_embedding import noisy_embedding as kernel

        return kernel(*args, eps=eps, out=out)

    return _run("noisy_embedding", backend, fast, lambda: reference.noisy_embedding_reference(*args, eps=eps, out=out))


# --------------------------------------------------------------------------------------------------
# Pairwise ops
# --------------------------------------------------------------------------------------------------


def _checked_rows(x: Any, label: str) -> torch.Tensor:
    rows = reference.as_rows(x, label)
    if rows.numel() and not bool(torch.isfinite(rows).all()):
        raise InvalidInputError(f"{label} contain NaN or Inf values")
    return rows


def _pairwise_backend(op: str, metric: str, *rows: torch.Tensor) -> str:
    reference.check_metric(metric)
    for r in rows[1:]:
        reference.check_pair(rows[0], r)
    dtypes = tuple(r.dtype for r in rows)
    unsupported = None
    if any(dt not in _HALF_FLOATS for dt in dtypes):
        unsupported = f"the kernels compute in float32 (float32/16/bfloat16 inputs), got {', '.join(map(str, dtypes))}"
    return select_backend(op, rows[0].device, triton_unsupported=unsupported, dtypes=dtypes)


def _np32(x: torch.Tensor) -> np.ndarray:
    """CPU rows as a C-contiguous float32 NumPy array (a view when possible)."""
    return x.float().contiguous().numpy()


def _core_call(name: str, *args, **kwargs):
    """Call the core; its CoreError (e.g. a zero vector for cosine) becomes a fallback to the reference."""
    _core = _core_module()
    module = _core.get()
    try:
        return getattr(module, name)(*args, **kwargs)
    except _core.CoreError as exc:
        raise _CoreDeclined(str(exc)) from exc


class _CoreDeclined(Exception):
    pass


def _run_pairwise(op: str, backend: str, triton_fn, core_fn, ref_fn):
    if backend == "core":
        try:
            return core_fn()
        except _CoreDeclined:
            return ref_fn()  # inputs the core declines: the reference computes or raises the documented error
    return _run(op, backend, triton_fn, ref_fn)


def pairwise_distances(a: torch.Tensor, b: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """Distances d(a_i, b_j) for "l2", "l1" or "cosine" (1 − cos): Triton on CUDA, the C++ core on CPU.

    Returns float32 (float64 for float64 inputs, by the reference).

    Raises:
        InvalidInputError: NaN/Inf values, mismatched sizes or devices, zero vectors (cosine).

    Shapes:
        a: [n_a, *S], b: [n_b, *S] -> [n_a, n_b]
    """
    ra, rb = _checked_rows(a, "a"), _checked_rows(b, "b")
    backend = _pairwise_backend("pairwise_distances", metric, ra, rb)

    def triton_fn():
        from smoothgen.kernels.pairwise import pairwise_distances as kernel

        return kernel(ra, rb, metric)

    def core_fn():
        kind = _core_module().get().METRIC_KINDS[metric]
        return torch.from_numpy(_core_call("pairwise_distances", _np32(ra), _np32(rb), kind=kind))

    return _run_pairwise(
        "pairwise_distances", backend, triton_fn, core_fn, lambda: reference.pairwise_distances_reference(ra, rb, metric)
    )


def median_distances(
    candidates: torch.Tensor, samples: torch.Tensor, metric: str = "l2", *, block_entries: int | None = None
) -> torch.Tensor:
    """For each candidate, the ⌈n/2⌉-th smallest distance (k = (n + 1) // 2) to the n samples.

    Shapes:
        candidates: [n_c, *S], samples: [n, *S] -> [n_c]
    """
    rc, rs = _checked_rows(candidates, "candidates"), _checked_rows(samples, "samples")
    if rs.shape[0] == 0:
        raise InvalidInputError("median of distances to no samples")
    backend = _pairwise_backend("median_distances", metric, rc, rs)

    def triton_fn():
        from smoothgen.kernels.pairwise import median_distances as kernel

        return kernel(rc, rs, metric, block_entries=block_entries)

    def core_fn():
        kind = _core_module().get().METRIC_KINDS[metric]
        return torch.from_numpy(_core_call("median_distances", _np32(rc), _np32(rs), kind=kind))

    return _run_pairwise(
        "median_distances",
        backend,
        triton_fn,
        core_fn,
        lambda: reference.median_distances_reference(rc, rs, metric, block_entries=block_entries),
    )


def min_median_center(
    samples: torch.Tensor, metric: str = "l2", n_candidates: int | None = None, *, block_entries: int | None = None
) -> tuple[int, float]:
    """(index, r̂) of the min-median center among all samples (None) or the first n_candidates.

    Shapes:
        samples: [n, *S] -> (int, float)
    """
    rs = _checked_rows(samples, "samples")
    if rs.shape[0] == 0:
        raise InvalidInputError("no samples to choose a center from")
    n_c = reference.check_candidates(rs.shape[0], n_candidates)
    backend = _pairwise_backend("min_median_center", metric, rs)

    def triton_fn():
        from smoothgen.kernels.pairwise import min_median_center as kernel

        return kernel(rs, metric, n_c, block_entries=block_entries)

    def core_fn():
        kind = _core_module().get().METRIC_KINDS[metric]
        best, radius = _core_call("min_median_center", _np32(rs), 0 if n_c == rs.shape[0] else n_c, kind=kind)
        return int(best), float(radius)

    return _run_pairwise(
        "min_median_center",
        backend,
        triton_fn,
        core_fn,
        lambda: reference.min_median_center_reference(rs, metric, n_c, block_entries=block_entries),
    )


__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "KernelBackendError",
    "gaussian_noise",
    "median_distances",
    "min_median_center",
    "noisy_embedding",
    "pairwise_distances",
    "requested_backend",
    "select_backend",
]
