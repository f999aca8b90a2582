"""Batch-invariant Gaussian noise: sample i of a request always gets the same noise.

A certificate must be bit-identical whether its request ran alone or shared device batches with other
requests, and whatever the batch size. So noise is not drawn "per batch": the samples of one request
and purpose are cut into fixed blocks of `NOISE_BLOCK`, and block j is drawn from a generator keyed by
(request key, j). A batch is then filled with whole or partial blocks of any requests; where a batch
boundary cuts a block, the block is drawn once and the rest kept for the next batch.

Cost: a fresh generator per 100 samples costs about 0.35 ms per 1000 samples of the 8×8 digits on a
2-core CPU, about 2% of the digits CNN's forward time.

On CUDA, noise comes from the fused Triton kernel instead (smoothgen.kernels.gaussian_noise with
seed = the key, offset = the copy's index): Philox noise that is a pure function of (key, copy, element),
so no blocks are needed. Its CPU twin (the counter-based reference) is about 30× slower than the blocks
on the CPU (65 vs 2 ms per 1000 digit copies, 2-core CPU), which is why the CPU keeps the blocks; the
same seed therefore gives different (equally valid) noise on CPU and on GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from smoothgen import kernels

#: Samples per noise block. Larger blocks cost less per sample; 100 divides the usual batch sizes.
NOISE_BLOCK = 100

_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    """A 64-bit mixing function (Steele et al. 2014): distinct inputs give well-spread seeds."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


@dataclass(frozen=True)
class NoiseKey:
    """Identifies the noise of one (request, purpose): a 64-bit key from `RandomStream.key`."""

    key: int

    def block_generator(self, block: int, device: torch.device) -> torch.Generator:
        """The generator of noise block `block` on `device`."""
        generator = torch.Generator(device=device)
        generator.manual_seed(_splitmix64(self.key ^ _splitmix64(block)) & 0x7FFF_FFFF_FFFF_FFFF)
        return generator


class NoiseSource:
    """The n noisy copies x + σ·ε_i of one request, written into caller-owned buffers in any pieces.

    Args:
        x: the clean input (no batch dimension), on the device where noise is made.
        sigma: noise standard deviation.
        n: total number of copies of this request (fixes the length of the last block).
        key: the request's noise key for this purpose.
        block: samples per noise block.

    Shapes:
        x: [*S]; `fill` writes [count, *S].
    """

    def __init__(self, x: torch.Tensor, sigma: float, n: int, key: NoiseKey, block: int = NOISE_BLOCK):
        self.x, self.sigma, self.n, self.key, self.block = x, float(sigma), int(n), key, int(block)
        self._cached: tuple[int, torch.Tensor] | None = None  # (block index, its noisy copies)

    def _block_length(self, j: int) -> int:
        return min(self.block, self.n - j * self.block)

    def _draw_block(self, j: int, out: torch.Tensor) -> None:
        generator = self.key.block_generator(j, self.x.device)
        torch.randn(out.shape, generator=generator, out=out)
        out.mul_(self.sigma).add_(self.x)

    def fill(self, out: torch.Tensor, start: int) -> None:
        """Write copies start .. start + len(out) − 1 into `out` (a contiguous slice of an input buffer)."""
        count = out.shape[0]
        if start < 0 or start + count > self.n:
            raise ValueError(f"samples {start}..{start + count} outside 0..{self.n}")
        if self.x.is_cuda:  # fused, counter-based: copy i's noise depends on (key, i) only
            kernels.gaussian_noise(self.x, count, self.sigma, seed=self.key.key, offset=start, out=out)
            return
        pos = 0
        while pos < count:
            i = start + pos
            j, inner = divmod(i, self.block)
            length = self._block_length(j)
            take = min(length - inner, count - pos)
            if inner == 0 and take == length:
                self._draw_block(j, out[pos : pos + take])  # a whole block: straight into the buffer
            else:
                if self._cached is None or self._cached[0] != j:
                    staged = torch.empty((length, *self.x.shape), dtype=self.x.dtype, device=self.x.device)
                    self._draw_block(j, staged)
                    self._cached = (j, staged)
                out[pos : pos + take].copy_(self._cached[1][inner : inner + take])
            pos += take
