"""noisy_embedding: N noisy copies of each prompt's token embeddings in one pass, noise drawn in-kernel.

The torch chain ``table[ids].repeat_interleave(N) + σ·randn(...)`` writes the [B·N, L, D] result three
times (gather, noise, sum) and reads it twice; this kernel reads each embedding row once and writes each
noisy copy once, with ε made in registers by Philox (no noise tensor in memory).

Sample ordering: row ``b·N + j`` of the result is sample j of prompt b. Noise (see kernels/reference.py
for the exact counter scheme): sample s = b·N + j at position l uses counter row ``(offset + s)·L + l``,
so `offset` counts samples: calls with offsets 0 and N1 give the same noise as one call of N1 + N2
samples (for B = 1), and the same (seed, offset) gives the same noise on every device and block size.
"""
from __future__ import annotations

import torch

from smoothgen.kernels._triton import EXACT_BF16_CAST, INTERPRETED, check_device, launch_options, pair_normal, tl, to_bf16_rne, triton
from smoothgen.kernels.reference import check_counter_range, check_embedding_args, check_out, check_seed_offset, check_sigma
from smoothgen.errors import InvalidInputError


@triton.jit(do_not_specialize=["sigma", "seed", "offset"])
def _noisy_embedding_kernel(
    ids_ptr,  # [B·L] int32/int64
    table_ptr,  # [V, D], row stride stride_v
    out_ptr,  # [B·N·L, D] contiguous, table dtype
    mask_ptr,  # [B·L] int8 (1 = perturb); unused without HAS_MASK
    sigma_ptr,  # [B·N] float32; unused without SIGMA_PER_SAMPLE
    eps_ptr,  # [B·N·L, D]; unused without HAS_EPS
    sigma,  # float32 scalar σ
    seed,
    offset,
    n_pos,  # B·L
    L,
    D,
    D2,  # ceil(D / 2): Philox counters per row (two normals each)
    N,
    stride_v,
    HAS_MASK: tl.constexpr,
    SIGMA_PER_SAMPLE: tl.constexpr,
    HAS_EPS: tl.constexpr,
    POS_BLOCK: tl.constexpr,
    BLOCK_D2: tl.constexpr,
    SAMPLES: tl.constexpr,
    BF16_RNE: tl.constexpr,
):
    # Program (p, c, g): positions [p·POS_BLOCK, ...) x columns [c·2·BLOCK_D2, ...) x samples
    # [g·SAMPLES, ...). The embedding tile is loaded once and reused for every sample.
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_g = tl.program_id(2)
    pos = pid_p * POS_BLOCK + tl.arange(0, POS_BLOCK)
    pos_ok = pos < n_pos
    b = (pos // L).to(tl.int64)
    l = (pos % L).to(tl.int64)
    tok = tl.load(ids_ptr + pos, mask=pos_ok, other=0).to(tl.int64)
    cols = pid_c * (2 * BLOCK_D2) + tl.arange(0, 2 * BLOCK_D2)
    d2 = pid_c * BLOCK_D2 + tl.arange(0, BLOCK_D2)
    ok = pos_ok[:, None] & (cols < D)[None, :]
    row = tl.load(table_ptr + tok[:, None] * stride_v + cols[None, :], mask=ok, other=0.0)
    row_f = row.to(tl.float32)
    if HAS_MASK:
        perturb = tl.load(mask_ptr + pos, mask=pos_ok, other=0) != 0
    for jj in range(SAMPLES):
        j = pid_g * SAMPLES + jj
        if j < N:
            s = b * N + j  # [POS_BLOCK] sample index b·N + j
            out_row = s * L + l
            if HAS_EPS:
                e = tl.load(eps_ptr + out_row[:, None] * D + cols[None, :], mask=ok, other=0.0).to(tl.float32)
            else:
                t = ((offset + s) * L + l) * D2  # counter of column 0 of this row (int64)
                n1, n2 = pair_normal(seed, t[:, None] + d2[None, :])
                # Lanes interleaved: column 2q + k gets lane k of counter q.
                e = tl.interleave(n1, n2)
            if SIGMA_PER_SAMPLE:
                sg = tl.load(sigma_ptr + s, mask=pos_ok, other=0.0)[:, None]
            else:
                sg = sigma
            y = row_f + sg * e
            if BF16_RNE:
                y = to_bf16_rne(y)
            else:
                y = y.to(out_ptr.dtype.element_ty)
            if HAS_MASK:
                y = tl.where(perturb[:, None], y, row)
            tl.store(out_ptr + out_row[:, None] * D + cols[None, :], y, mask=ok)


def _next_pow2(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


def _blocks(n_pos: int, d2: int, n: int) -> tuple[int, int, int, int]:
    """(POS_BLOCK, BLOCK_D2, SAMPLES, num_warps)."""
    if INTERPRETED:
        # The interpreter pays per program instance and per op, not per element: few, big programs.
        return min(_next_pow2(n_pos), 64), min(_next_pow2(d2), 1024), min(n, 64), 4
    # GPU: one position, up to 1024 columns (8 per thread at 4 warps), 16 samples per program, so
    # that B·L = 512, D = 4096, N = 100 launches 512 x 4 x 7 programs.
    block_d2 = min(_next_pow2(d2), 512)
    return 1, block_d2, min(n, 16), 4 if block_d2 >= 256 else 2


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
    """N noisy embeddings of each prompt: table[ids] + σ·ε at perturbed positions, table[ids] elsewhere.

    ε is drawn in-kernel from (seed, offset) by Philox (counter scheme in kernels/reference.py), or
    taken from `eps`. Noise and sum are computed in float32, rounded once to the table's dtype;
    unperturbed positions are the table rows exactly. Row ``b·N + j`` of the result is sample j of
    prompt b.

    Args:
        ids: token ids [B, L] (int32/int64, each in [0, V)).
        table: embedding table [V, D] (float32, float16 or bfloat16; rows may be strided).
        sigma: a number, or a float tensor [B·N] with one σ per sample.
        num_samples: N noisy samples per prompt.
        mask: bool [B, L] or [L]; True = add noise there. None: every position.
        seed: the Philox key, an integer in [0, 2⁶⁴).
        offset: index of the first sample in the stream (counts samples, not elements).
        eps: explicit standard-normal noise [B·N, L, D] (any float dtype) instead of Philox.
        out: optional preallocated result (contiguous, table dtype and device).

    Returns:
        [B·N, L, D] in the table's dtype, on the table's device.

    Raises:
        InvalidInputError: wrong shapes/dtypes, ids out of range, tensors on a device Triton cannot use.
        InvalidParameterError: bad σ, N, seed or offset.

    Shapes:
        ids: [B, L], table: [V, D], sigma: [] or [B·N], mask: [B, L] or [L], eps: [B·N, L, D]
        -> [B·N, L, D]
    """
    b, l, v, d, n, mask = check_embedding_args(ids, table, num_samples, mask)
    device = check_device(table, ids)
    sigma = check_sigma(sigma, rows=b * n, device=device)
    seed, offset = check_seed_offset(seed, offset)
    if table.stride(1) != 1:
        table = table.contiguous()
    out = check_out(out, (b * n, l, d), table.dtype, device)
    if out is None:
        out = torch.empty((b * n, l, d), dtype=table.dtype, device=device)
    if eps is not None:
        if not isinstance(eps, torch.Tensor) or tuple(eps.shape) != (b * n, l, d) or not torch.is_floating_point(eps):
            raise InvalidInputError(f"eps must be a floating tensor of shape {(b * n, l, d)}")
        eps = eps.to(device).contiguous()
    per_sample = isinstance(sigma, torch.Tensor)
    ids_flat = ids.contiguous().reshape(-1)
    mask_flat = mask.reshape(-1).to(torch.int8) if mask is not None else ids_flat
    d2 = -(-d // 2)
    check_counter_range(offset * l, b * n * l, d)
    pos_block, block_d2, samples, warps = _blocks(b * l, d2, n)
    grid = (triton.cdiv(b * l, pos_block), triton.cdiv(d2, block_d2), triton.cdiv(n, samples))
    _noisy_embedding_kernel[grid](
        ids_flat,
        table,
        out,
        mask_flat,
        sigma if per_sample else out,
        eps if eps is not None else out,
        0.0 if per_sample else sigma,
        seed,
        offset,
        b * l,
        l,
        d,
        d2,
        n,
        table.stride(0),
        HAS_MASK=mask is not None,
        SIGMA_PER_SAMPLE=per_sample,
        HAS_EPS=eps is not None,
        POS_BLOCK=pos_block,
        BLOCK_D2=block_d2,
        SAMPLES=samples,
        BF16_RNE=EXACT_BF16_CAST and table.dtype == torch.bfloat16,
        **launch_options(num_warps=warps),
    )
    return out


__all__ = ["noisy_embedding"]
