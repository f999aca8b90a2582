"""Batch-invariant Gaussian noise: copy i of a request always gets the same noise, on every device.

A certificate must be bit-identical whether its request ran alone or shared device batches with other
requests, and whatever the batch size. So noise is counter-based: copy i of the stream keyed by the
request's 64-bit key is Philox4x32-10 noise at counters i·⌈d/2⌉ … (i + 1)·⌈d/2⌉ − 1 (the scheme of
smoothgen/kernels/reference.py), a pure function of (key, i, element). On CUDA the fused Triton kernel
(smoothgen.kernels.gaussian_noise) makes it in registers; on the CPU the same function runs compiled by
numba (about 2× torch.randn's time, far below the model's; benchmarks/RESULTS.md). CPU and GPU give the
same noise up to the last bits of float32 log/sin/cos. A 64-bit key and a 64-bit counter: no two copies
of a request and purpose can share noise (the kernels refuse streams that would wrap the counter),
unlike seeding a generator per block, where CPU seeds keep only 32 bits.

Distance to the Gaussian of the proofs (`noise_tv`, docs/theory.md §6): in exact arithmetic, each pair
of coordinates is Box–Muller of a uniform u1 on [2⁻⁶⁵, 1] — the Gaussian truncated at radius
sqrt(130 ln 2) ≈ 9.49 (−2 ln u1 ≤ 130 ln 2), whose mass beyond it is 2⁻⁶⁵ —, within total variation
2⁻⁶⁵ ≤ 2⁻⁶⁴ of N(0, I₂); a copy of d coordinates (⌈d/2⌉ independent pairs, TV is subadditive over
independent coordinates) is within ⌈d/2⌉·2⁻⁶⁴ of N(0, I_d). Every certificate charges this per-copy τ (a
bound on a probability under the sampler minus τ is a bound under the Gaussian). Not covered, and
assumed as in docs/theory.md §6: that Philox words are independent uniforms, and the discreteness and
float rounding of the noise (u1 itself is formed in float32, a rounding of the 64-bit uniform) and of
x + σ·ε (Voráček & Hein 2023).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from smoothgen import kernels

#: The per-pair charge: at least the total variation 2⁻⁶⁵ between Box–Muller of a uniform u1 on [2⁻⁶⁵, 1]
#: (exact arithmetic) and N(0, I₂) (docs/theory.md §6).
PAIR_TV = 2.0**-64


def noise_tv(numel: int) -> float:
    """τ(d) = ⌈d/2⌉·2⁻⁶⁴: total variation between one noisy copy's sampled noise (d elements) and N(0, I_d).

    Rounded up to the next double, so the float never understates the bound.
    """
    pairs = -(-int(numel) // 2)
    return math.nextafter(pairs * PAIR_TV, math.inf) if pairs else 0.0


@dataclass(frozen=True)
class NoiseKey:
    """Identifies the noise of one (request, purpose): a 64-bit key from `RandomStream.key`."""

    key: int


class NoiseSource:
    """The n noisy copies x + σ·ε_i of one request, written into caller-owned buffers in any pieces.

    Args:
        x: the clean input (no batch dimension), on the device where noise is made.
        sigma: noise standard deviation.
        n: total number of copies of this request.
        key: the request's noise key for this purpose.

    Shapes:
        x: [*S]; `fill` writes [count, *S].
    """

    def __init__(self, x: torch.Tensor, sigma: float, n: int, key: NoiseKey):
        self.x, self.sigma, self.n, self.key = x, float(sigma), int(n), key

    @property
    def tv(self) -> float:
        """Per-copy total variation between this source's noise and N(0, σ²I) (`noise_tv`)."""
        return noise_tv(self.x.numel())

    def fill(self, out: torch.Tensor, start: int) -> None:
        """Write copies start .. start + len(out) − 1 into `out` (a contiguous slice of an input buffer)."""
        count = out.shape[0]
        if start < 0 or start + count > self.n:
            raise ValueError(f"samples {start}..{start + count} outside 0..{self.n}")
        if count:
            kernels.gaussian_noise(self.x, count, self.sigma, seed=self.key.key, offset=start, out=out)
