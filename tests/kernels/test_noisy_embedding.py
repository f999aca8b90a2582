"""noisy_embedding: the Triton kernel against its reference, and the statistics of its in-kernel noise.

Runs on CPU tensors under TRITON_INTERPRET=1 (conftest.py) and, where a GPU is present, on CUDA.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from smoothgen.errors import InvalidInputError, InvalidParameterError
from smoothgen.kernels.noisy_embedding import noisy_embedding
from smoothgen.kernels.reference import noisy_embedding_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, L, D, N, V): single elements, primes, D not a multiple of 4 or of any block, long prompts.
SHAPES = [(1, 1, 1, 1, 1), (2, 7, 33, 3, 50), (1, 33, 7, 2, 40), (3, 5, 1023, 2, 11), (1, 1023, 5, 1, 1000)]


def make_inputs(shape, dtype, device, seed=0, with_mask=True):
    b, l, d, n, v = shape
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(v, d, generator=g).to(dtype).to(device)
    ids = torch.randint(0, v, (b, l), generator=g).to(device)
    mask = (torch.rand(b, l, generator=g) > 0.3).to(device) if with_mask else None
    return ids, table, mask


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference_with_in_kernel_noise(device, assert_noise_matches, shape, dtype):
    ids, table, mask = make_inputs(shape, dtype, device)
    n = shape[3]
    out = noisy_embedding(ids, table, 0.5, n, mask, seed=2**63 + 12345, offset=7)
    ref = noisy_embedding_reference(ids.cpu(), table.cpu(), 0.5, n, mask.cpu(), seed=2**63 + 12345, offset=7)
    assert out.dtype == dtype and out.shape == (shape[0] * n, shape[1], shape[2]) and out.device == table.device
    assert_noise_matches(out, ref)


@pytest.mark.parametrize("shape", SHAPES[1:4], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_explicit_noise_is_bit_for_bit(device, shape, dtype):
    ids, table, mask = make_inputs(shape, dtype, device, seed=1)
    b, l, d, n, _ = shape
    g = torch.Generator().manual_seed(2)
    eps = torch.randn(b * n, l, d, generator=g).to(device)
    sigma = (torch.rand(b * n, generator=g) + 0.1).to(device)  # one σ per sample
    eps_before, table_before = eps.clone(), table.clone()
    for s in (0.37, sigma):
        out = noisy_embedding(ids, table, s, n, mask, eps=eps)
        ref = noisy_embedding_reference(ids, table, s, n, mask, eps=eps)
        assert torch.equal(out, ref)
    assert torch.equal(eps, eps_before) and torch.equal(table, table_before)  # inputs untouched


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_unperturbed_positions_are_exactly_the_table_rows(device, dtype):
    ids, table, mask = make_inputs((2, 9, 37, 4, 30), dtype, device, seed=3)
    mask[:, 0] = False  # e.g. a BOS token
    out = noisy_embedding(ids, table, 3.0, 4, mask, seed=5)
    clean = table[ids].repeat_interleave(4, dim=0)
    keep = ~mask.repeat_interleave(4, dim=0)
    assert torch.equal(out[keep], clean[keep])  # bit for bit, any dtype
    assert bool((out[~keep] != clean[~keep]).any())
    # A 1-D mask [L] applies to every prompt; σ = 0 gives the clean embedding everywhere.
    row_mask = torch.zeros(9, dtype=torch.bool, device=device)
    row_mask[3] = True
    out = noisy_embedding(ids, table, 1.0, 2, row_mask, seed=5)
    clean2 = table[ids].repeat_interleave(2, dim=0)
    assert torch.equal(out[:, :3], clean2[:, :3]) and torch.equal(out[:, 4:], clean2[:, 4:])
    assert torch.equal(noisy_embedding(ids, table, 0.0, 2, None, seed=5), clean2)


def test_sample_ordering(device):
    """Row b·N + j is sample j of prompt b: σ = 0 for prompt 0's samples leaves exactly those clean."""
    ids, table, _ = make_inputs((2, 4, 16, 3, 20), torch.float32, device, seed=4)
    sigma = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0], device=device)
    out = noisy_embedding(ids, table, sigma, 3, None, seed=9)
    assert torch.equal(out[:3], table[ids[0]].expand(3, 4, 16))
    assert bool((out[3:] != table[ids[1]]).all())
    # Samples of one prompt differ from each other.
    assert not torch.equal(out[3], out[4])


def test_same_key_same_noise_and_offset_counts_samples(device):
    ids, table, _ = make_inputs((1, 6, 21, 5, 15), torch.float32, device, seed=6)
    whole = noisy_embedding(ids, table, 1.0, 5, None, seed=42, offset=10)
    assert torch.equal(whole, noisy_embedding(ids, table, 1.0, 5, None, seed=42, offset=10))
    # Samples 3..4 of the stream, drawn alone, are the same as within the larger call.
    tail = noisy_embedding(ids, table, 1.0, 2, None, seed=42, offset=13)
    assert torch.equal(whole[3:], tail)
    assert not torch.equal(whole, noisy_embedding(ids, table, 1.0, 5, None, seed=43, offset=10))


def test_strided_table_and_out_buffer(device):
    ids, table, mask = make_inputs((2, 5, 12, 2, 9), torch.float16, device, seed=7)
    wide = torch.randn(9, 20, device=device).half()
    wide[:, :12] = table
    out = torch.empty(4, 5, 12, dtype=torch.float16, device=device)
    result = noisy_embedding(ids, wide[:, :12], 0.2, 2, mask, seed=1, out=out)
    assert result is out
    assert torch.equal(out, noisy_embedding(ids, table, 0.2, 2, mask, seed=1))


def noise_of(device, b, l, d, n, seed, offset=0):
    """Pure noise: a zero table, σ = 1."""
    table = torch.zeros(3, d, device=device)
    ids = torch.zeros(b, l, dtype=torch.long, device=device)
    return noisy_embedding(ids, table, 1.0, n, None, seed=seed, offset=offset)


def test_in_kernel_noise_is_standard_normal(device):
    eps = noise_of(device, 1, 16, 1024, 32, seed=2024).double().flatten().cpu()  # 524 288 values
    count = eps.numel()
    assert abs(float(eps.mean())) < 5 / count**0.5
    assert abs(float(eps.var()) - 1.0) < 5 * (2 / count) ** 0.5
    assert stats.kstest(eps[:200_000].numpy(), "norm").pvalue > 1e-3
    # Each of the four Philox lanes (column mod 4) is standard normal on its own.
    lanes = eps.reshape(-1, 4)
    for k in range(4):
        assert stats.kstest(lanes[:50_000, k].numpy(), "norm").pvalue > 1e-3


def corr(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(np.corrcoef(x.flatten().double().cpu().numpy(), y.flatten().double().cpu().numpy())[0, 1])


def test_no_correlation_between_samples_positions_seeds_offsets(device):
    eps = noise_of(device, 1, 8, 2048, 4, seed=11)  # [4, 8, 2048]
    bound = 5 / (8 * 2048) ** 0.5
    assert abs(corr(eps[0], eps[1])) < bound  # samples
    assert abs(corr(eps[:, 0], eps[:, 1])) < 5 / (4 * 2048) ** 0.5  # positions
    other_seed = noise_of(device, 1, 8, 2048, 4, seed=12)
    assert abs(corr(eps, other_seed)) < 5 / eps.numel() ** 0.5
    shifted = noise_of(device, 1, 8, 2048, 4, seed=11, offset=1)  # sample j+1 of the same stream
    assert torch.equal(shifted[:3], eps[1:])
    assert abs(corr(shifted[3], eps[0])) < bound
    # Adjacent columns share a Philox counter (lanes of one Box–Muller pair or of the next pair).
    flat = eps.flatten().reshape(-1, 4)
    for k in range(3):
        assert abs(corr(flat[:, k], flat[:, k + 1])) < 5 / flat.shape[0] ** 0.5


def test_argument_errors(device):
    ids, table, mask = make_inputs((2, 3, 8, 2, 10), torch.float32, device)
    with pytest.raises(InvalidInputError, match=r"\[0, 10\)"):
        noisy_embedding(ids + 10, table, 1.0, 2)
    with pytest.raises(InvalidInputError, match="mask"):
        noisy_embedding(ids, table, 1.0, 2, mask[:, :2])
    with pytest.raises(InvalidInputError, match="mask"):
        noisy_embedding(ids, table, 1.0, 2, mask.int())
    with pytest.raises(InvalidInputError, match="float32, float16 or bfloat16"):
        noisy_embedding(ids, table.double(), 1.0, 2)
    with pytest.raises(InvalidInputError, match="ids"):
        noisy_embedding(ids.float(), table, 1.0, 2)
    with pytest.raises(InvalidInputError, match="eps"):
        noisy_embedding(ids, table, 1.0, 2, eps=torch.zeros(4, 3, 7, device=device))
    with pytest.raises(InvalidParameterError, match="sigma"):
        noisy_embedding(ids, table, -1.0, 2)
    with pytest.raises(InvalidParameterError, match="sigma"):
        noisy_embedding(ids, table, torch.ones(3, device=device), 2)
    with pytest.raises(InvalidParameterError, match="num_samples"):
        noisy_embedding(ids, table, 1.0, 0)
    with pytest.raises(InvalidParameterError, match="seed"):
        noisy_embedding(ids, table, 1.0, 2, seed=-1)
    with pytest.raises(InvalidParameterError, match="offset"):
        noisy_embedding(ids, table, 1.0, 2, offset=2**63)
    with pytest.raises(InvalidParameterError, match="out"):
        noisy_embedding(ids, table, 1.0, 2, out=torch.empty(4, 3, 8, dtype=torch.float16, device=device))


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    from smoothgen.kernels import _triton

    monkeypatch.setattr(_triton, "INTERPRETED", False)
    ids, table, _ = make_inputs((1, 2, 4, 1, 5), torch.float32, "cpu")
    with pytest.raises(InvalidInputError, match="TRITON_INTERPRET"):
        noisy_embedding(ids, table, 1.0, 1)
