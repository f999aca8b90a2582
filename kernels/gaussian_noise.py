"""gaussian_noise: N noisy copies x + σ·ε of one input in one pass, optionally clamped and normalised.

The torch chain ``x.repeat(N) → randn → mul → add → clamp → sub mean → div std`` reads and writes the
[N, *x.shape] batch once per step; this kernel reads x once per tile and writes each copy once, with ε
made in registers by Philox (no noise tensor in memory), straight into the buffer the model reads
(``out=``).

Noise (counter scheme in kernels/reference.py): copy j uses counter row ``offset + j`` with
cols = x.numel(), so `offset` counts copies: copy i of a stream gets the same noise whether it was made
in a call of 1 000 copies or in ten calls of 100 (batch-invariant), on every device and block size.
"""
from __future__ import annotations

import torch

from smoothgen.errors import InvalidInputError, InvalidParameterError
from smoothgen.kernels._triton import EXACT_BF16_CAST, INTERPRETED, check_device, launch_options, pair_normal, tl, to_bf16_rne, triton
from smoothgen.kernels.reference import (
    check_count,
    check_counter_range,
    check_noise_options,
    check_out,
    check_seed_offset,
    check_sigma,
)


@triton.jit(do_not_specialize=["sigma", "seed", "offset", "lo", "hi"])
def _gaussian_noise_kernel(
    x_ptr,  # [S] contiguous
    out_ptr,  # [N, S] contiguous, x's dtype
    eps_ptr,  # [N, S]; unused without HAS_EPS
    mean_ptr,  # [C] float32; unused without NORMALIZE
    std_ptr,  # [C] float32; unused without NORMALIZE
    sigma,
    seed,
    offset,
    lo,
    hi,
    S,
    S2,  # ceil(S / 2): Philox counters per copy (two normals each)
    HW,  # elements per channel (S / C)
    N,
    HAS_EPS: tl.constexpr,
    HAS_LO: tl.constexpr,
    HAS_HI: tl.constexpr,
    NORMALIZE: tl.constexpr,
    BLOCK2: tl.constexpr,
    COPIES: tl.constexpr,
    BF16_RNE: tl.constexpr,
):
    # Program (c, g): elements [c·4·BLOCK4, ...) of copies [g·COPIES, ...); the x tile and its channel
    # statistics are loaded once and reused for every copy.
    pid_c = tl.program_id(0)
    pid_g = tl.program_id(1)
    cols = pid_c * (2 * BLOCK2) + tl.arange(0, 2 * BLOCK2)
    q = pid_c * BLOCK2 + tl.arange(0, BLOCK2)
    ok = cols < S
    x = tl.load(x_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    if NORMALIZE:
        channel = cols // HW
        mean = tl.load(mean_ptr + channel, mask=ok, other=0.0)
        std = tl.load(std_ptr + channel, mask=ok, other=1.0)
    for jj in range(COPIES):
        j = (pid_g * COPIES + jj).to(tl.int64)
        if j < N:
            if HAS_EPS:
                e = tl.load(eps_ptr + j * S + cols, mask=ok, other=0.0).to(tl.float32)
            else:
                n1, n2 = pair_normal(seed, (offset + j) * S2 + q)
                # Lanes interleaved: element 2q + k gets lane k of counter q.
                e = tl.interleave(n1, n2)
            y = x + sigma * e
            if HAS_LO:
                y = tl.maximum(y, lo)
            if HAS_HI:
                y = tl.minimum(y, hi)
            if NORMALIZE:
                # IEEE division, as torch's div_ (Triton's default `/` is approximate on GPU).
                y = tl.math.div_rn(y - mean, std)
            if BF16_RNE:
                y = to_bf16_rne(y)
            else:
                y = y.to(out_ptr.dtype.element_ty)
            tl.store(out_ptr + j * S + cols, y, mask=ok)


def _next_pow2(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


def _blocks(s2: int, n: int) -> tuple[int, int, int]:
    """(BLOCK2, COPIES, num_warps)."""
    if INTERPRETED:
        return min(_next_pow2(s2), 2048), min(n, 64), 4
    # GPU: 1024 elements per program (8 per thread at 4 warps) and 8 copies, so that 1 000 copies of
    # 3x224x224 launch 147 x 125 programs; x and the channel statistics are read once per 8 copies.
    block2 = min(_next_pow2(s2), 512)
    return block2, min(n, 8), 4 if block2 >= 256 else 2


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
    """N noisy copies y = x + σ·ε, then clamp(y, lo, hi), then (y − mean[c]) / std[c], in one pass.

    Arithmetic in float32, rounded once to x's dtype. ε comes from (seed, offset) by Philox in-kernel
    (kernels/reference.py), or from `eps`. A torch.Generator cannot drive an in-kernel generator:
    `generator` is accepted only to share the reference's signature and raises here (the dispatch
    in smoothgen.kernels sends generator calls to `gaussian_noise_reference`).

    Args:
        x: one input, any shape, float32/float16/bfloat16; its axis 0 is the channel axis of the
            normalisation.
        num_copies: N.
        sigma: σ >= 0.
        generator: not supported by the kernel (see above).
        seed: the Philox key, an integer in [0, 2⁶⁴) (default 0 when eps is not given).
        offset: index of the first copy in the stream (counts copies, not elements).
        eps: explicit standard-normal noise [N, *x.shape] instead of Philox.
        clamp: (lo, hi) applied to x + σ·ε; either may be None.
        mean, std: per-channel normalisation, one value per x.shape[0] (or one scalar each).
        out: optional preallocated result (contiguous, x's dtype and device), e.g. a slice of the
            model's input buffer.

    Returns:
        [N, *x.shape] of x's dtype on x's device.

    Raises:
        InvalidInputError: bad x/eps, a device Triton cannot run on.
        InvalidParameterError: bad σ, N, seed, offset, clamp, mean/std, or a generator.

    Shapes:
        x: [*S] -> [N, *S]; eps: [N, *S]; mean, std: [S[0]]
    """
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"x must be a tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise InvalidInputError(
            f"the Triton gaussian_noise takes float32/float16/bfloat16 inputs, got {x.dtype} (use the reference)"
        )
    if generator is not None:
        raise InvalidParameterError(
            "the Triton gaussian_noise draws its noise in-kernel from (seed, offset); a torch.Generator "
            "cannot drive it: pass seed=/offset=, or eps=, or call gaussian_noise_reference"
        )
    device = check_device(x)
    n = check_count(num_copies, "num_copies")
    sigma = check_sigma(sigma)
    seed, offset = check_seed_offset(0 if seed is None else seed, offset)
    lo, hi, mean_t, std_t = check_noise_options(x, clamp, mean, std)
    s = x.numel()
    out = check_out(out, (n, *x.shape), x.dtype, device)
    if out is None:
        out = torch.empty((n, *x.shape), dtype=x.dtype, device=device)
    if s == 0:
        return out
    if eps is not None:
        if not isinstance(eps, torch.Tensor) or tuple(eps.shape) != (n, *x.shape) or not torch.is_floating_point(eps):
            raise InvalidInputError(f"eps must be a floating tensor of shape {(n, *x.shape)}")
        eps = eps.to(device).contiguous()
    xc = x.detach().contiguous()
    s2 = -(-s // 2)
    check_counter_range(offset, n, s)
    block2, copies, warps = _blocks(s2, n)
    grid = (triton.cdiv(s2, block2), triton.cdiv(n, copies))
    _gaussian_noise_kernel[grid](
        xc,
        out,
        eps if eps is not None else out,
        mean_t if mean_t is not None else xc,
        std_t if std_t is not None else xc,
        sigma,
        seed,
        offset,
        0.0 if lo is None else lo,
        0.0 if hi is None else hi,
        s,
        s2,
        s // x.shape[0] if mean_t is not None else 1,
        n,
        HAS_EPS=eps is not None,
        HAS_LO=lo is not None,
        HAS_HI=hi is not None,
        NORMALIZE=mean_t is not None,
        BLOCK2=block2,
        COPIES=copies,
        BF16_RNE=EXACT_BF16_CAST and x.dtype == torch.bfloat16,
        **launch_options(num_warps=warps),
    )
    return out


__all__ = ["gaussian_noise"]
