"""pairwise: tiled pairwise distances (ℓ2, ℓ1, cosine), row medians and the min-median center.

Center smoothing chooses ẑ = argmin_i median_j d(Z_i, Z_j) over n ≈ 10⁴ samples (docs/theory.md §2): n²
distances, then one order statistic per row. Where the kernels win over torch:
- ℓ2 and cosine: one tiled matmul-form kernel, d² = |a|² + |b|² − 2a·b, with the dot product on tensor
  cores in ``tf32x3`` (three TF32 products ≈ float32 accuracy; cuBLAS's exact-float32 path has no tensor
  cores) and the norms, clamp, sqrt (or the cosine's ½·chord²) fused into the epilogue. Cancellation:
  the rows are first centred on the samples' mean (ℓ2 is translation invariant; cosine is ½·ℓ2² of the
  unit rows), so |a|², |b|² are of the size of the spread of the samples, not of their distance from
  the origin. What remains: pairs much closer than the spread (e.g. exact duplicates) come out at
  ≈ 3·10⁻⁴ × the spread instead of 0; medians are unaffected unless over half the samples coincide.
- ℓ1: no matmul form exists and torch.cdist(p=1) on CUDA reduces each pair separately, reading both
  rows from memory per pair; the tiled kernel reuses each loaded tile for BLOCK_M x BLOCK_N pairs.
- The medians use torch.kthvalue on row blocks (as fast as anything we would write for k = ⌈n/2⌉); the
  argmin is torch.argmin (first index on ties). Row blocks keep at most `block_entries` distances
  alive, so n_c x n is never materialised when it does not fit.
"""
from __future__ import annotations

import torch

from smoothgen.errors import InvalidInputError
from smoothgen.kernels._triton import INTERPRETED, check_device, launch_options, tl, triton
from smoothgen.kernels.reference import (
    as_rows,
    check_candidates,
    check_count,
    check_metric,
    check_pair,
    unit_rows,
)

#: Row-block budget on CUDA, in distance entries (2²⁷ float32 = 512 MiB; n = 10⁴ fits in one block).
CUDA_BLOCK_ENTRIES = 1 << 27
#: Row-block budget elsewhere (the interpreter), as smoothgen.center's.
CPU_BLOCK_ENTRIES = 1 << 24


def _l2_configs():
    if INTERPRETED:  # one config: autotuning needs a GPU, and the interpreter wants few big programs
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 128}, num_warps=4)]
    return [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    ]


def _l1_configs():
    if INTERPRETED:
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4)]
    # [BLOCK_M, BLOCK_N, BLOCK_K] differences live in registers: 64·64·4 / 128 threads = 128 each.
    return [
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 4}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 8}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 8}, num_warps=4, num_stages=3),
    ]


def _bucket(v):
    # Autotune once per order of magnitude, not per exact size.
    return 1 << max(0, int(v) - 1).bit_length()


@triton.autotune(configs=_l2_configs(), key=["n_a_bucket", "n_b_bucket", "d_bucket"])
@triton.jit
def _pairwise_l2_kernel(
    a_ptr,  # [n_a, d] float32, centred
    b_ptr,  # [n_b, d] float32, centred
    na_ptr,  # [n_a] float32 |a_i|²
    nb_ptr,  # [n_b] float32 |b_j|²
    out_ptr,  # [n_a, n_b] float32
    n_a,
    n_b,
    d,
    stride_a,
    stride_b,
    stride_o,
    n_a_bucket,
    n_b_bucket,
    d_bucket,
    COSINE: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < n_a
    n_ok = rn < n_b
    a_rows = a_ptr + rm.to(tl.int64)[:, None] * stride_a
    b_rows = b_ptr + rn.to(tl.int64)[None, :] * stride_b
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, d, BLOCK_K):
        k = k0 + rk
        a = tl.load(a_rows + k[None, :], mask=m_ok[:, None] & (k < d)[None, :], other=0.0)
        bt = tl.load(b_rows + k[:, None], mask=(k < d)[:, None] & n_ok[None, :], other=0.0)  # [BK, BN]
        acc = tl.dot(a, bt, acc, input_precision=PRECISION)
    na = tl.load(na_ptr + rm, mask=m_ok, other=0.0)
    nb = tl.load(nb_ptr + rn, mask=n_ok, other=0.0)
    d2 = tl.maximum(na[:, None] + nb[None, :] - 2.0 * acc, 0.0)
    if COSINE:
        result = tl.minimum(0.5 * d2, 2.0)  # ½·chord² of unit rows = 1 − cos, in [0, 2]
    else:
        result = tl.sqrt(d2)
    o = out_ptr + rm.to(tl.int64)[:, None] * stride_o + rn[None, :]
    tl.store(o, result, mask=m_ok[:, None] & n_ok[None, :])


@triton.autotune(configs=_l1_configs(), key=["n_a_bucket", "n_b_bucket", "d_bucket"])
@triton.jit
def _pairwise_l1_kernel(
    a_ptr,  # [n_a, d] (float32, float16 or bfloat16)
    b_ptr,  # [n_b, d]
    out_ptr,  # [n_a, n_b] float32
    n_a,
    n_b,
    d,
    stride_a,
    stride_b,
    stride_o,
    n_a_bucket,
    n_b_bucket,
    d_bucket,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < n_a
    n_ok = rn < n_b
    a_rows = a_ptr + rm.to(tl.int64)[:, None] * stride_a
    b_rows = b_ptr + rn.to(tl.int64)[:, None] * stride_b
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, d, BLOCK_K):
        k = k0 + rk
        k_ok = (k < d)[None, :]
        a = tl.load(a_rows + k[None, :], mask=m_ok[:, None] & k_ok, other=0.0).to(tl.float32)
        b = tl.load(b_rows + k[None, :], mask=n_ok[:, None] & k_ok, other=0.0).to(tl.float32)
        acc += tl.sum(tl.abs(a[:, None, :] - b[None, :, :]), axis=2)
    o = out_ptr + rm.to(tl.int64)[:, None] * stride_o + rn[None, :]
    tl.store(o, acc, mask=m_ok[:, None] & n_ok[None, :])


def _prepare(a: torch.Tensor, b: torch.Tensor, metric: str, center: torch.Tensor | None):
    """float32 rows for the kernels; for l2/cosine centred (on `center`, default the mean of b) with norms."""
    if metric == "l1":
        return a.contiguous(), b.contiguous(), None, None
    a32, b32 = a.float(), b.float()
    if metric == "cosine":
        a32, b32 = unit_rows(a32), unit_rows(b32)
    mu = b32.mean(dim=0, keepdim=True) if center is None else center
    a32 = (a32 - mu).contiguous()
    b32 = a32 if b is a else (b32 - mu).contiguous()
    na = a32.square().sum(dim=1)
    nb = na if b32 is a32 else b32.square().sum(dim=1)
    return a32, b32, na, nb


def _launch(a, b, na, nb, metric: str, out: torch.Tensor) -> torch.Tensor:
    n_a, d = a.shape
    n_b = b.shape[0]
    buckets = (_bucket(n_a), _bucket(n_b), _bucket(d))

    def grid(meta):
        return (triton.cdiv(n_a, meta["BLOCK_M"]), triton.cdiv(n_b, meta["BLOCK_N"]))

    if metric == "l1":
        _pairwise_l1_kernel[grid](
            a, b, out, n_a, n_b, d, a.stride(0), b.stride(0), out.stride(0), *buckets, **launch_options()
        )
    else:
        _pairwise_l2_kernel[grid](
            a,
            b,
            na,
            nb,
            out,
            n_a,
            n_b,
            d,
            a.stride(0),
            b.stride(0),
            out.stride(0),
            *buckets,
            COSINE=metric == "cosine",
            PRECISION="ieee" if INTERPRETED else "tf32x3",
            **launch_options(),
        )
    return out


def _check_inputs(a: torch.Tensor, b: torch.Tensor) -> None:
    for label, x in (("a", a), ("b", b)):
        if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise InvalidInputError(
                f"the Triton pairwise kernels take float32/float16/bfloat16 outputs, got {x.dtype} for {label} "
                "(use the reference for float64)"
            )
    check_pair(a, b)
    check_device(a, b)


def pairwise_distances(a: torch.Tensor, b: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """All distances d(a_i, b_j) in float32: "l2", "l1" or "cosine" (1 − cos), tiled on the GPU.

    Args:
        a: outputs [n_a, *S] (flattened per output), float32/float16/bfloat16.
        b: outputs [n_b, *S], same dtype family, same device.
        metric: "l2", "l1" or "cosine".

    Returns:
        [n_a, n_b] float32 on the inputs' device.

    Raises:
        InvalidInputError: mismatched sizes or devices, float64 or non-float outputs, zero vectors
            (cosine), a device Triton cannot run on.
        InvalidParameterError: an unsupported metric.

    Shapes:
        a: [n_a, *S], b: [n_b, *S] -> [n_a, n_b]
    """
    metric = check_metric(metric)
    a, b = as_rows(a, "a"), as_rows(b, "b")
    _check_inputs(a, b)
    out = torch.empty((a.shape[0], b.shape[0]), dtype=torch.float32, device=a.device)
    if out.numel() == 0:
        return out
    pa, pb, na, nb = _prepare(a, b, metric, None)
    return _launch(pa, pb, na, nb, metric, out)


def median_distances(
    candidates: torch.Tensor, samples: torch.Tensor, metric: str = "l2", *, block_entries: int | None = None
) -> torch.Tensor:
    """For each candidate, the ⌈n/2⌉-th smallest distance (k = (n + 1) // 2) to the n samples.

    Distances by the tiled kernel for a row block of candidates at a time (at most `block_entries`
    distances alive), then torch.kthvalue.

    Args:
        candidates: [n_c, *S] outputs.
        samples: [n, *S] outputs.
        metric: "l2", "l1" or "cosine".
        block_entries: distances per row block (default `CUDA_BLOCK_ENTRIES` on CUDA).

    Returns:
        [n_c] float32 medians.

    Shapes:
        candidates: [n_c, *S], samples: [n, *S] -> [n_c]
    """
    metric = check_metric(metric)
    c, s = as_rows(candidates, "candidates"), as_rows(samples, "samples")
    _check_inputs(c, s)
    n = s.shape[0]
    if n == 0:
        raise InvalidInputError("median of distances to no samples")
    k = (n + 1) // 2
    budget = block_entries if block_entries is not None else (
        CUDA_BLOCK_ENTRIES if c.device.type == "cuda" else CPU_BLOCK_ENTRIES
    )
    rows = max(1, check_count(budget, "block_entries") // n)
    medians = torch.empty(c.shape[0], dtype=torch.float32, device=c.device)
    if c.shape[0] == 0:
        return medians
    # Centre both sets on the samples' mean once; each row block reuses the prepared samples. When the
    # candidates are the leading samples (the min-median center), they share the prepared rows.
    prefix = c.shape[0] <= n and c.data_ptr() == s.data_ptr() and c.stride() == s.stride()
    if prefix:
        ps, _, ns, _ = _prepare(s, s, metric, None)
        pc, nc = ps[: c.shape[0]], None if ns is None else ns[: c.shape[0]]
    else:
        pc, ps, nc, ns = _prepare(c, s, metric, None)
    block = torch.empty((min(rows, c.shape[0]), n), dtype=torch.float32, device=c.device)
    for i in range(0, c.shape[0], rows):
        j = min(i + rows, c.shape[0])
        part = block[: j - i]
        _launch(pc[i:j], ps, None if nc is None else nc[i:j], ns, metric, part)
        medians[i:j] = torch.kthvalue(part, k, dim=1).values
    return medians


def min_median_center(
    samples: torch.Tensor, metric: str = "l2", n_candidates: int | None = None, *, block_entries: int | None = None
) -> tuple[int, float]:
    """The min-median center: argmin over the candidates of their median distance to all samples.

    Args:
        samples: [n, *S] outputs.
        metric: "l2", "l1" or "cosine".
        n_candidates: None (every sample is a candidate, O(n²)) or the number of leading samples that
            are candidates (the high-dimensional variant, O(n_c·n)).
        block_entries: distances per row block.

    Returns:
        (index of the center, its median distance r̂); ties go to the first index.

    Shapes:
        samples: [n, *S] -> (int, float)
    """
    s = as_rows(samples, "samples")
    n_c = check_candidates(s.shape[0], n_candidates)
    medians = median_distances(s[:n_c], s, metric, block_entries=block_entries)
    best = int(torch.argmin(medians))
    return best, float(medians[best])


__all__ = ["median_distances", "min_median_center", "pairwise_distances"]
