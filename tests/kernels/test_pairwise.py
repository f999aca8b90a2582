"""pairwise: the Triton distance kernels, medians and min-median center against smoothgen.metrics and the reference.

Runs on CPU tensors under TRITON_INTERPRET=1 (conftest.py) and, where a GPU is present, on CUDA.
"""
from __future__ import annotations

import pytest
import torch

from smoothgen import metrics
from smoothgen.center import median_distances_reference as center_medians
from smoothgen.errors import InvalidInputError, InvalidParameterError
from smoothgen.kernels import pairwise
from smoothgen.kernels.reference import (
    median_distances_reference,
    min_median_center_reference,
    pairwise_distances_reference,
)

METRICS = ["l2", "l1", "cosine"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (n_a, n_b, d): single points and dimensions, primes, d not a multiple of any block, n = 1023.
SHAPES = [(1, 1, 1), (7, 33, 5), (33, 7, 130), (1, 1023, 7), (40, 17, 1023)]


def points(n, d, seed, dtype=torch.float32, offset=3.0):
    g = torch.Generator().manual_seed(seed)
    return (offset + torch.randn(n, d, generator=g)).to(dtype)


def assert_distances_close(got, expected):
    """float32 tolerance: the kernels compute in float32 (ℓ2/cosine through centred dot products)."""
    assert got.dtype == torch.float32 and got.shape == expected.shape
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(got.cpu(), expected.float().cpu(), rtol=1e-4, atol=1e-5 * (1.0 + scale))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", METRICS)
def test_distances_match_smoothgen_metrics(device, metric, dtype, shape):
    n_a, n_b, d = shape
    a, b = points(n_a, d, 1, dtype), points(n_b, d, 2, dtype)
    got = pairwise.pairwise_distances(a.to(device), b.to(device), metric)
    assert got.device.type == device.type
    assert_distances_close(got, metrics.get_metric(metric).distances(a, b))
    assert_distances_close(got, pairwise_distances_reference(a, b, metric))


@pytest.mark.parametrize("metric", METRICS)
def test_outputs_of_any_shape_are_flattened(device, metric):
    a, b = points(6, 60, 3).reshape(6, 3, 4, 5), points(5, 60, 4).reshape(5, 3, 4, 5)
    got = pairwise.pairwise_distances(a.to(device), b.to(device), metric)
    assert_distances_close(got, metrics.get_metric(metric).distances(a, b))


def test_l2_survives_a_large_common_offset(device):
    """Outputs far from the origin but close to each other: the uncentred |a|²+|b|²−2a·b would return
    noise of about sqrt(eps)·|a| ≈ 0.3 here, the centred form keeps float32 accuracy of the spread."""
    g = torch.Generator().manual_seed(6)
    x = 1000.0 + torch.randn(1, 64, generator=g) + 1e-3 * torch.randn(50, 64, generator=g)
    got = pairwise.pairwise_distances(x.to(device), x.to(device), "l2").cpu()
    expected = metrics.get_metric("l2").distances(x.double(), x.double()).float()
    off_diagonal = ~torch.eye(50, dtype=torch.bool)
    torch.testing.assert_close(got[off_diagonal], expected[off_diagonal], rtol=1e-3, atol=1e-6)
    # Self-distances: not exactly 0 through dot products, but far below the spread (≈ 1.4e-2).
    assert float(got.diagonal().max()) < 1e-4


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,d", [(1, 3), (7, 1), (33, 65), (129, 8)], ids=str)
def test_medians_and_center_match_the_reference(device, metric, dtype, n, d):
    samples = points(n, d, 7, dtype)
    medians = pairwise.median_distances(samples.to(device), samples.to(device), metric)
    ref = median_distances_reference(samples, samples, metric)
    assert_distances_close(medians, ref)
    # And smoothgen.center's own reference (the ⌈n/2⌉-th smallest, k = (n + 1) // 2).
    assert_distances_close(medians, center_medians(samples, samples, metrics.get_metric(metric)))
    best, radius = pairwise.min_median_center(samples.to(device), metric)
    ref_best, ref_radius = min_median_center_reference(samples, metric)
    ordered = torch.sort(ref.double()).values
    if n == 1 or float(ordered[1] - ordered[0]) > 1e-3 * float(ordered[0]):  # well separated: exact
        assert best == ref_best
    assert radius == pytest.approx(ref_radius, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("metric", METRICS)
def test_candidate_variant_and_row_blocks(device, metric):
    samples = points(101, 24, 8).to(device)
    ref_medians = median_distances_reference(samples[:10].cpu(), samples.cpu(), metric)
    one_block = pairwise.median_distances(samples[:10], samples, metric)
    # 250 entries per block: 2 rows of 101 distances at a time, so 5 blocks for 10 candidates.
    blocked = pairwise.median_distances(samples[:10], samples, metric, block_entries=250)
    assert torch.equal(one_block, blocked)
    assert_distances_close(blocked, ref_medians)
    best, radius = pairwise.min_median_center(samples, metric, n_candidates=10, block_entries=250)
    assert (best, radius) == pytest.approx(min_median_center_reference(samples.cpu(), metric, 10), rel=1e-4)
    assert 0 <= best < 10
    # More candidates than samples means every sample.
    assert pairwise.min_median_center(samples, metric, n_candidates=500)[0] == pairwise.min_median_center(samples, metric)[0]


def test_center_is_the_planted_point(device):
    """A tight cluster around a planted point, plus outliers: the center is the planted point."""
    g = torch.Generator().manual_seed(9)
    cluster = 0.1 * torch.randn(60, 16, generator=g)
    cluster[17] = 0.0  # the planted center, exactly at the cluster's middle
    outliers = 10.0 + torch.randn(40, 16, generator=g)
    samples = torch.cat([cluster, outliers]).to(device)
    for metric in ("l2", "l1"):
        assert pairwise.min_median_center(samples, metric)[0] == 17
        assert min_median_center_reference(samples.cpu(), metric)[0] == 17


def test_ties_go_to_the_first_index(device):
    samples = torch.tensor([[0.0, 1.0], [0.0, 1.0], [5.0, 5.0]], device=device)  # two equal best rows
    assert pairwise.min_median_center(samples, "l1")[0] == 0
    assert min_median_center_reference(samples.cpu(), "l1")[0] == 0


def test_argument_errors(device):
    a = points(4, 5, 1).to(device)
    with pytest.raises(InvalidParameterError, match="metric"):
        pairwise.pairwise_distances(a, a, "tv1d")
    with pytest.raises(InvalidInputError, match="float64"):
        pairwise.pairwise_distances(a.double(), a.double())
    with pytest.raises(InvalidInputError, match="different sizes"):
        pairwise.pairwise_distances(a, a[:, :4])
    with pytest.raises(InvalidInputError, match="floating"):
        pairwise.pairwise_distances(a.long(), a.long())
    zero = a.clone()
    zero[2] = 0.0
    with pytest.raises(InvalidInputError, match="zero vector"):
        pairwise.pairwise_distances(zero, a, "cosine")
    with pytest.raises(InvalidInputError, match="no samples"):
        pairwise.median_distances(a, a[:0])
    with pytest.raises(InvalidParameterError, match="n_candidates"):
        pairwise.min_median_center(a, "l2", n_candidates=0)
    assert pairwise.pairwise_distances(a[:0], a).shape == (0, 4)
    assert pairwise.median_distances(a[:0], a).shape == (0,)
