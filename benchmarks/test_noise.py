"""What the counter-based CPU noise costs against the per-block torch.randn it replaced (issue 10.3).

Before: copies were cut into blocks of 100, each drawn by torch.randn from a torch.Generator seeded with
a 63-bit hash of (key, block), of which the CPU generator kept 32 bits (blocks could repeat). Now: the
Philox4x32-10 counter noise of the kernels, compiled by numba (`smoothgen.engine.NoiseSource`). Both
make 1 000 noisy copies x + σ·ε of a digits image (64 values) and of a CIFAR-size image (3 072); the
digits CNN's forward pass over the same 1 000 copies is the scale. `make bench` runs it for real (figures
in benchmarks/RESULTS.md); `make test` runs each once as a test.
"""
from __future__ import annotations

import pytest
import torch

from smoothgen.engine import NoiseSource, Purpose, RandomStream
from smoothgen.models import load_classifier

from bench_record import record

COPIES = 1000
SHAPES = {"digits": (1, 8, 8), "cifar": (3, 32, 32)}
_MASK64 = (1 << 64) - 1


def _mix(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _blocks(x: torch.Tensor, key: int, out: torch.Tensor, sigma: float = 0.25) -> None:
    """The previous CPU path, for comparison: a fresh generator per block of 100 copies, torch.randn."""
    for j in range(out.shape[0] // 100):
        gen = torch.Generator().manual_seed(_mix(key ^ _mix(j)) & 0x7FFF_FFFF_FFFF_FFFF)
        block = out[100 * j : 100 * (j + 1)]
        torch.randn(block.shape, generator=gen, out=block)
        block.mul_(sigma).add_(x)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_noise_previous_blocks(benchmark, shape):
    x = torch.rand(SHAPES[shape])
    out = torch.empty((COPIES, *x.shape))
    key = RandomStream(0, 0).key(Purpose.ESTIMATION).key
    benchmark(_blocks, x, key, out)
    record(benchmark, f"noise blocks:{shape}", COPIES)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_noise_counter_based(benchmark, shape):
    x = torch.rand(SHAPES[shape])
    out = torch.empty((COPIES, *x.shape))
    source = NoiseSource(x, 0.25, COPIES, RandomStream(0, 0).key(Purpose.ESTIMATION))
    source.fill(out[:1], 0)  # compile once (numba caches the build on disk)
    benchmark(source.fill, out, 0)
    record(benchmark, f"noise counter:{shape}", COPIES)
    assert bool(torch.isfinite(out).all())


def test_digits_forward_for_scale(benchmark):
    model = load_classifier(0.25)
    batch = torch.rand((COPIES, *SHAPES["digits"]))
    with torch.inference_mode():
        benchmark(model, batch)
    record(benchmark, "forward:digits cnn", COPIES)
