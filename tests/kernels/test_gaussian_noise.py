"""gaussian_noise: the Triton kernel against its reference, and the statistics of its in-kernel noise.

Runs on CPU tensors under TRITON_INTERPRET=1 (conftest.py) and, where a GPU is present, on CUDA.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from smoothgen.errors import InvalidInputError, InvalidParameterError
from smoothgen.kernels.gaussian_noise import gaussian_noise
from smoothgen.kernels.reference import gaussian_noise_reference, philox_normal_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1,), (7,), (3, 11, 1), (33, 5), (1023,), (3, 13, 17)]
OPTIONS = {
    "plain": {},
    "clamp": {"clamp": (0.0, 1.0)},
    "clamp_hi": {"clamp": (None, 0.6)},
    "normalize": {"mean": "per-channel", "std": "per-channel"},
    "both": {"clamp": (0.1, 0.9), "mean": "per-channel", "std": "per-channel"},
}


def options(name, x, g):
    opts = dict(OPTIONS[name])
    if "mean" in opts:
        c = x.shape[0]
        opts["mean"] = (0.5 * torch.rand(c, generator=g)).tolist()
        opts["std"] = (0.2 + torch.rand(c, generator=g)).to(x.device)
    return opts


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("option", list(OPTIONS))
def test_matches_reference_with_in_kernel_noise(device, assert_noise_matches, shape, dtype, option):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g).to(dtype).to(device)
    opts = options(option, x, g)
    out = gaussian_noise(x, 5, 0.3, seed=987654321, offset=4, **opts)
    ref = gaussian_noise_reference(x.cpu(), 5, 0.3, seed=987654321, offset=4, **{
        k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in opts.items()
    })
    assert out.shape == (5, *shape) and out.dtype == dtype and out.device == x.device
    assert_noise_matches(out, ref)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("option", ["plain", "both"])
def test_explicit_noise_is_bit_for_bit(device, shape, dtype, option):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(shape, generator=g).to(dtype).to(device)
    eps = torch.randn(3, *shape, generator=g).to(device)
    opts = options(option, x, g)
    eps_before, x_before = eps.clone(), x.clone()
    out = gaussian_noise(x, 3, 0.7, eps=eps, **opts)
    assert torch.equal(out, gaussian_noise_reference(x, 3, 0.7, eps=eps, **opts))
    assert torch.equal(eps, eps_before) and torch.equal(x, x_before)  # inputs untouched


def test_clamp_and_normalisation_semantics(device):
    x = torch.tensor([[0.2, 0.95], [0.5, 0.0]], device=device)  # 2 channels
    eps = torch.tensor([[[1.0, 1.0], [-1.0, -1.0]]], device=device)
    out = gaussian_noise(x, 1, 0.1, eps=eps, clamp=(0.0, 1.0), mean=[0.5, 0.25], std=[0.5, 2.0])
    # x + σε = [[0.3, 1.05], [0.4, -0.1]] -> clamp [[0.3, 1.0], [0.4, 0.0]] -> normalise per channel.
    expected = torch.tensor([[[(0.3 - 0.5) / 0.5, (1.0 - 0.5) / 0.5], [(0.4 - 0.25) / 2.0, (0.0 - 0.25) / 2.0]]])
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-6, atol=1e-6)


def test_copies_are_batch_invariant(device):
    """Copy i of a stream gets the same noise whether drawn in one call or in several (offset counts copies)."""
    x = torch.randn(3, 8, 5, device=device)
    whole = gaussian_noise(x, 10, 1.0, seed=77)
    parts = torch.cat([gaussian_noise(x, 4, 1.0, seed=77, offset=0), gaussian_noise(x, 6, 1.0, seed=77, offset=4)])
    assert torch.equal(whole, parts)
    assert torch.equal(whole, gaussian_noise(x, 10, 1.0, seed=77))  # same key, same noise
    assert not torch.equal(whole, gaussian_noise(x, 10, 1.0, seed=78))


def test_writes_into_a_caller_buffer(device):
    x = torch.randn(4, 6, device=device).half()
    buffer = torch.zeros(10, 4, 6, dtype=torch.float16, device=device)
    view = buffer[2:7]
    assert gaussian_noise(x, 5, 0.5, seed=3, offset=2, out=view) is view
    assert torch.equal(buffer[2:7], gaussian_noise(x, 5, 0.5, seed=3, offset=2))
    assert bool((buffer[:2] == 0).all()) and bool((buffer[7:] == 0).all())


def test_in_kernel_noise_is_standard_normal(device):
    x = torch.zeros(4099, device=device)  # not a multiple of 4: the last Philox counter is partly used
    eps = gaussian_noise(x, 40, 1.0, seed=31337).double().flatten().cpu()  # 163 960 values
    count = eps.numel()
    assert abs(float(eps.mean())) < 5 / count**0.5
    assert abs(float(eps.var()) - 1.0) < 5 * (2 / count) ** 0.5
    assert stats.kstest(eps.numpy(), "norm").pvalue > 1e-3
    # Tails: u1 >= 2^-65 (a 64-bit uniform, no clamp), so |ε| <= sqrt(-2 ln 2^-65) = 9.49.
    assert float(eps.abs().max()) <= 9.5
    tail = float((eps.abs() > 3).double().mean())
    assert abs(tail - 2 * stats.norm.sf(3)) < 5 * (2 * stats.norm.sf(3) / count) ** 0.5


def corr(x, y) -> float:
    return float(np.corrcoef(x.flatten().double().cpu().numpy(), y.flatten().double().cpu().numpy())[0, 1])


def test_no_correlation_between_copies_seeds_offsets(device):
    x = torch.zeros(8192, device=device)
    eps = gaussian_noise(x, 6, 1.0, seed=5)
    bound = 5 / 8192**0.5
    for j in range(5):
        assert abs(corr(eps[j], eps[j + 1])) < bound
    assert abs(corr(eps, gaussian_noise(x, 6, 1.0, seed=6))) < 5 / eps.numel() ** 0.5
    # Offsets far apart in the counter space, and seeds differing in their high 32 bits only.
    assert abs(corr(eps, gaussian_noise(x, 6, 1.0, seed=5, offset=2**40))) < 5 / eps.numel() ** 0.5
    assert abs(corr(eps, gaussian_noise(x, 6, 1.0, seed=5 + 2**32))) < 5 / eps.numel() ** 0.5


def test_noise_is_the_documented_philox_stream(device):
    x = torch.zeros(2, 9, device=device)
    eps = gaussian_noise(x, 3, 1.0, seed=123, offset=5).reshape(3, 18).cpu()
    expected = philox_normal_reference(123, 5, 3, 18)
    if device.type == "cpu":
        assert torch.equal(eps, expected)
    else:
        torch.testing.assert_close(eps, expected, rtol=1e-5, atol=1e-5)


def test_argument_errors(device):
    x = torch.rand(3, 4, device=device)
    with pytest.raises(InvalidParameterError, match="(?i)generator"):
        gaussian_noise(x, 2, 0.5, torch.Generator(device=device))
    with pytest.raises(InvalidInputError, match="float64"):
        gaussian_noise(x.double(), 2, 0.5, seed=1)
    with pytest.raises(InvalidInputError, match="eps"):
        gaussian_noise(x, 2, 0.5, eps=torch.zeros(2, 4, 3, device=device))
    with pytest.raises(InvalidParameterError, match="clamp"):
        gaussian_noise(x, 2, 0.5, clamp=(1.0, 0.0))
    with pytest.raises(InvalidParameterError, match="mean and std"):
        gaussian_noise(x, 2, 0.5, mean=[0.0, 0.0, 0.0])
    with pytest.raises(InvalidParameterError, match="channel"):
        gaussian_noise(x, 2, 0.5, mean=[0.0, 0.0], std=[1.0, 1.0])
    with pytest.raises(InvalidParameterError, match="std"):
        gaussian_noise(x, 2, 0.5, mean=[0.0] * 3, std=[1.0, 0.0, 1.0])
    with pytest.raises(InvalidParameterError, match="sigma"):
        gaussian_noise(x, 2, float("nan"))
    with pytest.raises(InvalidParameterError, match="num_copies"):
        gaussian_noise(x, 0, 0.5)
    with pytest.raises(InvalidParameterError, match="seed"):
        gaussian_noise(x, 2, 0.5, seed=2**64)
    with pytest.raises(InvalidParameterError, match="out"):
        gaussian_noise(x, 2, 0.5, out=torch.empty(3, 3, 4, device=device))


# --------------------------------------------------------------------------------------------------
# The reference's torch-generator path: what the Sampler has always drawn
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_reference_generator_path_is_unchanged(dtype):
    x = torch.randn(3, 5).to(dtype)
    historical = torch.randn((4, 3, 5), generator=torch.Generator().manual_seed(9), dtype=dtype).mul_(0.25).add_(x)
    got = gaussian_noise_reference(x, 4, 0.25, torch.Generator().manual_seed(9))
    assert torch.equal(got, historical)


def test_reference_rejects_two_noise_sources():
    x = torch.randn(3)
    with pytest.raises(InvalidParameterError, match="one noise source"):
        gaussian_noise_reference(x, 2, 1.0, torch.Generator(), seed=1)
    with pytest.raises(InvalidParameterError, match="offset"):
        gaussian_noise_reference(x, 2, 1.0, offset=3)
