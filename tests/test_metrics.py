"""Tests of smoothgen.metrics: metric axioms, parity with reference implementations, blocking, errors.

Center smoothing's certificate is only as sound as the metric's relaxed-triangle constant gamma, so
every built-in metric is checked against d(a, c) <= gamma * (d(a, b) + d(b, c)) on thousands of
triples, including near-duplicate outputs where rounding is worst.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist as scipy_cdist
from scipy.stats import wasserstein_distance

from smoothgen import metrics
from smoothgen.errors import InvalidInputError, InvalidParameterError, MetricError

BUILTINS = ["l2", "l1", "cosine", "angular", "tv1d", "tv2d", "jaccard", "w1", "levenshtein"]
GAMMAS = {"cosine": 2.0}

# (metric, shape of one output); for levenshtein the "shape" is the longest sequence length.
PROPERTY_CASES = [
    ("l2", (1,)),
    ("l2", (7,)),
    ("l2", (3, 11)),
    ("l1", (1,)),
    ("l1", (33,)),
    ("cosine", (2,)),
    ("cosine", (7,)),
    ("cosine", (2, 33)),
    ("angular", (1,)),
    ("angular", (3,)),
    ("angular", (33,)),
    ("tv1d", (1,)),
    ("tv1d", (7,)),
    ("tv1d", (2, 33)),
    ("tv2d", (1, 1)),
    ("tv2d", (7, 1)),
    ("tv2d", (5, 6)),
    ("tv2d", (3, 4, 5)),
    ("jaccard", (4,)),
    ("jaccard", (7, 4)),
    ("jaccard", (1, 3, 4)),
    ("w1", (1,)),
    ("w1", (7,)),
    ("w1", (33,)),
    ("levenshtein", 1),
    ("levenshtein", 7),
    ("levenshtein", 33),
]


# --------------------------------------------------------------------------------------------------
# Sample outputs
# --------------------------------------------------------------------------------------------------


def make_outputs(name, shape, n, seed, dtype=torch.float64):
    """n random outputs for a metric, with exact and near duplicates (where rounding is worst)."""
    g = torch.Generator().manual_seed(seed)
    if name == "levenshtein":
        rng = np.random.default_rng(seed)
        seqs = [rng.integers(0, 4, size=rng.integers(0, shape + 1)).tolist() for _ in range(n)]
        for i in range(n // 3, n - 1):  # single edits of earlier sequences
            s = list(seqs[i - n // 3])
            if s:
                s[rng.integers(len(s))] = int(rng.integers(0, 4))
            seqs[i] = s
        seqs[-1] = list(seqs[0])
        return seqs
    if name == "jaccard":
        # Coordinates on a coarse grid, so that equal, touching and nested boxes all occur; some
        # widths/heights are <= 0 ("no box").
        xy = torch.randint(0, 6, (n, *shape[:-1], 2), generator=g).to(dtype)
        wh = torch.randint(-1, 5, (n, *shape[:-1], 2), generator=g).to(dtype)
        jitter = 0.25 * torch.rand(n, *shape[:-1], 2, generator=g, dtype=dtype)
        boxes = torch.cat([xy, xy + wh + jitter * (torch.arange(n) % 2).reshape(-1, *[1] * len(shape))], dim=-1)
        boxes[-1] = boxes[0]
        return boxes
    if name == "w1":
        h = torch.rand(n, *shape, generator=g, dtype=dtype)
        h[torch.rand(n, *shape, generator=g) < 0.4] = 0.0  # empty bins
        h[:, 0] += 1e-3  # but never an empty histogram
        h[n // 2 :] = h[: n - n // 2] * (1 + 1e-6 * torch.rand(n - n // 2, *shape, generator=g, dtype=dtype))
        h[-1] = 3.0 * h[0]  # the same distribution at another mass
        return h
    x = torch.randn(n, *shape, generator=g, dtype=dtype)
    x[n // 2 :] = x[: n - n // 2] + 1e-6 * torch.randn(n - n // 2, *shape, generator=g, dtype=dtype)
    x[-1] = x[0]
    return x


def as_numpy_rows(x):
    return x.reshape(x.shape[0], -1).double().numpy()


def edit_distance(s, t):
    """Textbook dynamic programme for the Levenshtein distance."""
    prev = list(range(len(t) + 1))
    for i, x in enumerate(s, 1):
        cur = [i]
        for j, y in enumerate(t, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so that test registrations do not leak."""
    monkeypatch.setattr(metrics, "_REGISTRY", dict(metrics._REGISTRY))
    return metrics._REGISTRY


# --------------------------------------------------------------------------------------------------
# Registry contents
# --------------------------------------------------------------------------------------------------


def test_builtins_registered_with_their_constants():
    assert set(BUILTINS) <= set(metrics.available_metrics())
    assert metrics.available_metrics() == sorted(metrics.available_metrics())
    for name in BUILTINS:
        m = metrics.get_metric(name)
        assert m.name == name
        assert m.gamma == GAMMAS.get(name, 1.0)
        assert m.kind == ("sequence" if name == "levenshtein" else "tensor")
        assert m.description
        assert metrics.get_metric(m) is m


def test_every_builtin_has_property_cases():
    assert {name for name, _ in PROPERTY_CASES} == set(BUILTINS)


# --------------------------------------------------------------------------------------------------
# Metric axioms
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,shape", PROPERTY_CASES, ids=lambda v: str(v))
def test_metric_axioms(name, shape):
    metric = metrics.get_metric(name)
    x = make_outputs(name, shape, 24, seed=1)
    y = make_outputs(name, shape, 17, seed=2)
    d_xx = metric.distances(x, x)
    d_xy = metric.distances(x, y)
    d_yx = metric.distances(y, x)
    assert d_xx.shape == (24, 24) and d_xy.shape == (24, 17)
    assert torch.is_floating_point(d_xx)

    assert bool((d_xx >= 0).all()) and bool((d_xy >= 0).all())
    torch.testing.assert_close(d_xy, d_yx.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d_xx, d_xx.T, rtol=1e-12, atol=1e-12)
    assert float(d_xx.diagonal().max()) <= 1e-12
    assert float(d_xx[0, -1]) <= 1e-12  # an exact duplicate (for w1: the same distribution)

    # All 24**3 triples (i, j, k): d(i, k) <= gamma * (d(i, j) + d(j, k)).
    lhs = d_xx[:, None, :]
    rhs = metric.gamma * (d_xx[:, :, None] + d_xx[None, :, :])
    tol = 1e-9 * (1.0 + float(d_xx.max()))
    excess = float((lhs - rhs).max())
    assert excess <= tol, f"relaxed triangle violated by {excess}"


def test_cosine_needs_gamma_two():
    cosine = metrics.get_metric("cosine")
    # Directions at 0, 60 and 120 degrees: d(a, c) = 1.5 > d(a, b) + d(b, c) = 0.5 + 0.5.
    angles = torch.tensor([0.0, math.pi / 3, 2 * math.pi / 3], dtype=torch.float64)
    pts = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    d = cosine.distances(pts, pts)
    torch.testing.assert_close(d[0, 2], torch.tensor(1.5, dtype=torch.float64))
    torch.testing.assert_close(d[0, 1] + d[1, 2], torch.tensor(1.0, dtype=torch.float64))
    assert d[0, 2] > 1.0 * (d[0, 1] + d[1, 2])
    assert d[0, 2] <= 2.0 * (d[0, 1] + d[1, 2])

    # Random outputs violate gamma = 1 too, while angular (a true metric) holds on the same points.
    x = make_outputs("cosine", (3,), 24, seed=5)
    d = cosine.distances(x, x)
    violation = d[:, None, :] - (d[:, :, None] + d[None, :, :])
    assert float(violation.max()) > 0.1
    a = metrics.get_metric("angular").distances(x, x)
    assert float((a[:, None, :] - (a[:, :, None] + a[None, :, :])).max()) <= 1e-12


# --------------------------------------------------------------------------------------------------
# Parity with reference implementations
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 11)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name,ref", [("l2", "euclidean"), ("l1", "cityblock"), ("cosine", "cosine")])
def test_parity_with_scipy_cdist(name, ref, shape, dtype):
    g = torch.Generator().manual_seed(3)
    a = torch.randn(9, *shape, generator=g).to(dtype)
    b = torch.randn(13, *shape, generator=g).to(dtype)
    d = metrics.get_metric(name).distances(a, b)
    assert d.dtype == dtype
    expected = torch.from_numpy(scipy_cdist(as_numpy_rows(a), as_numpy_rows(b), ref)).to(dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(d, expected, rtol=tol, atol=tol)


def test_angular_matches_arccos_and_stays_accurate_when_nearly_parallel():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(8, 5, generator=g, dtype=torch.float64)
    b = torch.randn(6, 5, generator=g, dtype=torch.float64)
    cos = 1.0 - scipy_cdist(a.numpy(), b.numpy(), "cosine")
    expected = torch.from_numpy(np.arccos(np.clip(cos, -1, 1)) / np.pi)
    torch.testing.assert_close(metrics.get_metric("angular").distances(a, b), expected, rtol=1e-9, atol=1e-9)

    # arccos(cos) of nearly parallel vectors loses half the digits; the chord form keeps them.
    v = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    w = torch.tensor([[1.0, 1e-7]], dtype=torch.float64)
    got = float(metrics.get_metric("angular").distances(v, w))
    assert got == pytest.approx(math.atan(1e-7) / math.pi, rel=1e-8)
    assert float(metrics.get_metric("cosine").distances(v, w)) == pytest.approx(1 - math.cos(math.atan(1e-7)), rel=1e-6)


def test_l2_is_robust_to_cancellation():
    # Outputs far from the origin but close to each other: |a|^2 + |b|^2 - 2 a.b in float32 would
    # return noise of size sqrt(eps) * |a| ~ 0.3 here instead of distances ~ 1e-2.
    g = torch.Generator().manual_seed(6)
    base = 1000.0 + torch.randn(1, 64, generator=g)
    x = base + 1e-3 * torch.randn(50, 64, generator=g)
    d = metrics.get_metric("l2").distances(x, x)
    assert d.dtype == torch.float32
    assert bool((d.diagonal() == 0).all())
    expected = torch.from_numpy(scipy_cdist(x.double().numpy(), x.double().numpy())).float()
    torch.testing.assert_close(d, expected, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("bins", [1, 7, 33])
def test_w1_matches_scipy_wasserstein(bins):
    a = make_outputs("w1", (bins,), 6, seed=7)
    b = make_outputs("w1", (bins,), 5, seed=8)
    d = metrics.get_metric("w1").distances(a, b)
    grid = np.arange(bins)
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            expected = wasserstein_distance(grid, grid, a[i].numpy(), b[j].numpy())
            assert float(d[i, j]) == pytest.approx(expected, abs=1e-12)


def test_w1_float32_and_integer_histograms():
    counts = torch.tensor([[0, 3, 1, 0], [2, 0, 0, 2]])  # integer counts: normalised inside
    d = metrics.get_metric("w1").distances(counts, counts)
    assert d.dtype == torch.float64
    expected = wasserstein_distance(np.arange(4), np.arange(4), [0, 3, 1, 0], [2, 0, 0, 2])
    assert float(d[0, 1]) == pytest.approx(expected, abs=1e-12)
    d32 = metrics.get_metric("w1").distances(counts.float(), counts.float())
    assert d32.dtype == torch.float32
    assert float(d32[0, 1]) == pytest.approx(expected, abs=1e-6)


def test_levenshtein_matches_dynamic_programme():
    a = make_outputs("levenshtein", 12, 15, seed=9)
    b = make_outputs("levenshtein", 20, 11, seed=10)
    d = metrics.get_metric("levenshtein").distances(a, b)
    assert d.dtype == torch.float64 and d.shape == (15, 11)
    expected = torch.tensor([[float(edit_distance(s, t)) for t in b] for s in a], dtype=torch.float64)
    assert torch.equal(d, expected)


def test_levenshtein_accepts_tuples_tensors_arrays_and_batches():
    lev = metrics.get_metric("levenshtein")
    seqs = [(5, 6, 7), torch.tensor([5, 7]), np.array([7, 6, 5], dtype=np.uint16), []]
    d = lev.distances(seqs, seqs)
    lists = [[5, 6, 7], [5, 7], [7, 6, 5], []]
    expected = torch.tensor([[float(edit_distance(s, t)) for t in lists] for s in lists], dtype=torch.float64)
    assert torch.equal(d, expected)
    batch = torch.tensor([[1, 2, 3], [1, 3, 3]])  # n sequences of equal length as one tensor
    assert torch.equal(lev.distances(batch, [[1, 2]]), torch.tensor([[1.0], [2.0]], dtype=torch.float64))


def test_levenshtein_distinguishes_tokens_with_equal_hashes():
    # hash(0) == hash(2**61 - 1) in CPython; rapidfuzz compares ints by hash, so raw ids would tie.
    assert hash(0) == hash(2**61 - 1)
    d = metrics.get_metric("levenshtein").distances([[0, 1]], [[2**61 - 1, 1], [0, 1]])
    assert d.tolist() == [[1.0, 0.0]]


def tv_reference(a, b, two_d):
    """Total variation of each difference a_i - b_j, straight from the definition."""
    a, b = a.numpy(), b.numpy()
    out = np.zeros((a.shape[0], b.shape[0]))
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            diff = a[i] - b[j]
            total = np.abs(np.diff(diff, axis=-1)).sum()
            if two_d:
                total += np.abs(np.diff(diff, axis=-2)).sum()
            out[i, j] = total
    return torch.from_numpy(out)


@pytest.mark.parametrize("shape", [(1,), (7,), (33,), (3, 7), (2, 2, 5)], ids=str)
def test_tv1d_matches_definition(shape):
    a = make_outputs("tv1d", shape, 6, seed=11)
    b = make_outputs("tv1d", shape, 4, seed=12)
    d = metrics.get_metric("tv1d").distances(a, b)
    torch.testing.assert_close(d, tv_reference(a, b, two_d=False), rtol=1e-10, atol=1e-10)
    # A pseudometric: constant offsets along the last axis are invisible.
    assert float(metrics.get_metric("tv1d").distances(a[:1], a[:1] + 3.0)) <= 1e-12


@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (1, 7), (5, 6), (3, 4, 5), (1, 33, 2)], ids=str)
def test_tv2d_matches_definition(shape):
    a = make_outputs("tv2d", shape, 5, seed=13)
    b = make_outputs("tv2d", shape, 4, seed=14)
    d = metrics.get_metric("tv2d").distances(a, b)
    torch.testing.assert_close(d, tv_reference(a, b, two_d=True), rtol=1e-10, atol=1e-10)


def test_tv2d_hand_computed():
    a = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]])  # one 2x2 image
    b = torch.zeros(1, 2, 2)
    # Vertical |2-0| + |4-1| = 5, horizontal |1-0| + |4-2| = 3.
    assert float(metrics.get_metric("tv2d").distances(a, b)) == 8.0
    # Channels add up (l1 across channels).
    three = a[:, None].expand(1, 3, 2, 2)
    assert float(metrics.get_metric("tv2d").distances(three, torch.zeros(1, 3, 2, 2))) == 24.0


def test_jaccard_hand_computed():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 2.0, 2.0],  # 0
            [1.0, 1.0, 3.0, 3.0],  # 1: overlaps 0 in a unit square, union 7
            [2.0, 2.0, 3.0, 3.0],  # 2: disjoint from 0 (touches at a corner)
            [0.0, 0.0, 4.0, 4.0],  # 3: contains 1, IoU 4/16
            [1.0, 1.0, 0.0, 0.0],  # 4: no box (x2 <= x1)
            [5.0, 5.0, 5.0, 9.0],  # 5: no box (x2 == x1)
            [2.0, 0.0, 3.0, 2.0],  # 6: shares an edge with 0
        ]
    )
    d = metrics.get_metric("jaccard").distances(boxes, boxes)
    assert float(d[0, 1]) == pytest.approx(1 - 1 / 7)
    assert float(d[0, 2]) == 1.0
    assert float(d[3, 1]) == pytest.approx(1 - 4 / 16)
    assert float(d[0, 6]) == 1.0
    assert float(d[4, 0]) == 1.0 and float(d[0, 5]) == 1.0  # no box vs a box
    assert float(d[4, 5]) == 0.0  # no box vs no box
    assert bool((d.diagonal() == 0).all())

    # Several box slots per output: slot k against slot k, averaged.
    two = torch.stack([boxes[[0, 4]], boxes[[1, 0]]])  # [2 outputs, 2 slots, 4]
    d2 = metrics.get_metric("jaccard").distances(two, two)
    assert float(d2[0, 1]) == pytest.approx(((1 - 1 / 7) + 1.0) / 2)


# --------------------------------------------------------------------------------------------------
# Blocked evaluation
# --------------------------------------------------------------------------------------------------


class BlockSpy:
    """Wraps metrics._fill_blockwise to count blocks and record the largest block result."""

    def __init__(self, monkeypatch):
        self.blocks = 0
        self.max_bytes = 0
        original = metrics._fill_blockwise

        def spy(out, bytes_per_pair, block):
            def counted(r, c):
                result = block(r, c)
                self.blocks += 1
                self.max_bytes = max(self.max_bytes, result.numel() * result.element_size())
                return result

            return original(out, bytes_per_pair, counted)

        monkeypatch.setattr(metrics, "_fill_blockwise", spy)


CHUNK_CASES = [
    ("l2", (7,)),
    ("l1", (3, 5)),
    ("cosine", (7,)),
    ("angular", (7,)),
    ("tv1d", (2, 7)),
    ("tv2d", (2, 3, 4)),
    ("jaccard", (3, 4)),
    ("w1", (9,)),
    ("levenshtein", 9),
]


@pytest.mark.parametrize("name,shape", CHUNK_CASES, ids=lambda v: str(v))
def test_small_blocks_give_the_direct_result(monkeypatch, name, shape):
    assert {n for n, _ in CHUNK_CASES} == set(BUILTINS)
    metric = metrics.get_metric(name)
    a = make_outputs(name, shape, 23, seed=15)
    b = make_outputs(name, shape, 19, seed=16)
    direct = metric.distances(a, b)  # one block at the default budget
    # 64 bytes hold fewer pairs than one row of b, so both rows and columns are split.
    monkeypatch.setattr(metrics, "_CHUNK_BYTES", 64)
    spy = BlockSpy(monkeypatch)
    blocked = metric.distances(a, b)
    assert spy.blocks > 23
    torch.testing.assert_close(blocked, direct, rtol=0, atol=1e-12)


def test_block_shape_respects_budget(monkeypatch):
    monkeypatch.setattr(metrics, "_CHUNK_BYTES", 800)
    assert metrics._block_shape(5, 1000, 8) == (1, 100)  # a row of pairs is over budget: split columns
    assert metrics._block_shape(50, 10, 8) == (10, 10)  # whole rows of b, several rows of a
    assert metrics._block_shape(3, 4, 8) == (3, 4)
    assert metrics._block_shape(3, 4, 10**9) == (1, 1)


def test_large_call_uses_several_blocks_at_default_budget(monkeypatch):
    # 4200 x 4100 float32 distances are 69 MB, over the 64 MiB budget on their own.
    g = torch.Generator().manual_seed(17)
    a = torch.randn(4200, 3, generator=g)
    b = torch.randn(4100, 3, generator=g)
    spy = BlockSpy(monkeypatch)
    d = metrics.get_metric("l1").distances(a, b)
    assert spy.blocks >= 2
    assert spy.max_bytes <= metrics._CHUNK_BYTES
    assert d.shape == (4200, 4100) and d.dtype == torch.float32
    rows = torch.randperm(4200, generator=g)[:40]
    expected = torch.from_numpy(scipy_cdist(a[rows].double().numpy(), b.double().numpy(), "cityblock")).float()
    torch.testing.assert_close(d[rows], expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Dtypes
# --------------------------------------------------------------------------------------------------


def test_result_dtypes():
    l2 = metrics.get_metric("l2")
    x32 = torch.randn(3, 4)
    assert l2.distances(x32, x32).dtype == torch.float32
    assert l2.distances(x32.double(), x32.double()).dtype == torch.float64
    assert l2.distances(x32, x32.double()).dtype == torch.float64
    ints = torch.tensor([[0, 3], [4, 0]])
    d = l2.distances(ints, ints)
    assert d.dtype == torch.float64 and float(d[0, 1]) == 5.0
    assert l2.distances(x32.half(), x32.half()).dtype == torch.float32
    assert l2.distances(torch.randn(0, 4), x32).shape == (0, 3)


def test_gradients_are_not_tracked():
    x = torch.randn(3, 4, requires_grad=True)
    assert not metrics.get_metric("l2").distances(x, x).requires_grad


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_unknown_metric_lists_available():
    with pytest.raises(InvalidParameterError, match="levenshtein"):
        metrics.get_metric("hamming")
    with pytest.raises(InvalidParameterError):
        metrics.get_metric(3)


@pytest.mark.parametrize("gamma", [0.5, 0, -1, float("nan"), float("inf"), True, "2", None])
def test_bad_gamma_rejected(registry, gamma):
    with pytest.raises(InvalidParameterError, match="gamma"):
        metrics.register_metric("bad_gamma", lambda x, y: 0.0, gamma=gamma)
    assert "bad_gamma" not in metrics.available_metrics()
    with pytest.raises(InvalidParameterError):
        metrics.Metric("bad_gamma", gamma, lambda a, b: None, "tensor")


def test_bad_registration_arguments(registry):
    fn = lambda x, y: 0.0  # noqa: E731
    with pytest.raises(InvalidParameterError):
        metrics.register_metric("both", fn, gamma=1, pairwise=lambda a, b: None)
    with pytest.raises(InvalidParameterError):
        metrics.register_metric("neither", gamma=1)
    with pytest.raises(InvalidParameterError):
        metrics.register_metric("graph", fn, gamma=1, kind="graph")
    with pytest.raises(InvalidParameterError):
        metrics.register_metric("", fn, gamma=1)
    with pytest.raises(InvalidParameterError):
        metrics.register_metric("not_callable", 3.0, gamma=1)


def test_duplicate_registration(registry):
    fn = lambda x, y: 0.0  # noqa: E731
    with pytest.raises(InvalidParameterError, match="already registered"):
        metrics.register_metric("l2", fn, gamma=1)
    assert metrics.get_metric("l2").pairwise is metrics._l2
    metrics.register_metric("mine", fn, gamma=1)
    with pytest.raises(InvalidParameterError, match="already registered"):
        metrics.register_metric("mine", fn, gamma=3)
    replaced = metrics.register_metric("mine", fn, gamma=3, overwrite=True)
    assert metrics.get_metric("mine") is replaced and replaced.gamma == 3.0


def test_user_metric_from_a_distance_of_two_outputs(registry):
    m = metrics.register_metric("chebyshev", lambda u, v: float((u - v).abs().max()), gamma=1, description="max norm")
    assert metrics.get_metric("chebyshev") is m and "chebyshev" in metrics.available_metrics()
    a, b = torch.randn(4, 2, 3), torch.randn(5, 2, 3)
    expected = (a[:, None] - b[None]).abs().flatten(2).max(dim=2).values.double()
    torch.testing.assert_close(m.distances(a, b), expected)

    lengths = metrics.register_metric("length_gap", lambda s, t: abs(len(s) - len(t)), gamma=1, kind="sequence")
    assert lengths.distances([[1, 2], [3]], [[], [1, 2, 3]]).tolist() == [[2.0, 1.0], [1.0, 2.0]]


def test_user_pairwise_metric(registry):
    m = metrics.register_metric("l2_cdist", pairwise=lambda a, b: torch.cdist(a, b), gamma=1)
    x = torch.randn(4, 3)
    torch.testing.assert_close(m.distances(x, x), metrics.get_metric("l2").distances(x, x), atol=1e-5, rtol=1e-5)
    ones = metrics.register_metric(
        "int_pairwise", pairwise=lambda a, b: torch.ones(len(a), len(b), dtype=torch.int64), gamma=1
    )
    assert ones.distances(x, x).dtype == torch.float64


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), -1e-12])
def test_user_metric_bad_value_raises(registry, value):
    m = metrics.register_metric("broken", lambda u, v: value, gamma=1)
    with pytest.raises(MetricError, match="broken"):
        m.distances(torch.zeros(2, 3), torch.zeros(3, 3))


def test_user_metric_bad_return_types(registry):
    not_number = metrics.register_metric("not_number", lambda u, v: "far", gamma=1)
    with pytest.raises(MetricError):
        not_number.distances(torch.zeros(2, 3), torch.zeros(2, 3))
    several = metrics.register_metric("several", lambda u, v: u - v, gamma=1)
    with pytest.raises(MetricError):
        several.distances(torch.zeros(2, 3), torch.zeros(2, 3))
    wrong_shape = metrics.register_metric("wrong_shape", pairwise=lambda a, b: torch.zeros(len(b), len(a)), gamma=1)
    with pytest.raises(MetricError, match="shape"):
        wrong_shape.distances(torch.zeros(2, 3), torch.zeros(3, 3))
    not_tensor = metrics.register_metric("not_tensor", pairwise=lambda a, b: [[0.0]], gamma=1)
    with pytest.raises(MetricError):
        not_tensor.distances(torch.zeros(1, 3), torch.zeros(1, 3))


def test_check_distances():
    d = torch.rand(4, 5)
    assert metrics.check_distances(d, "x") is d
    assert metrics.check_distances(torch.zeros(0, 3), "x").shape == (0, 3)
    for bad in (-0.5, float("nan"), float("inf"), -float("inf")):
        e = d.clone()
        e[2, 3] = bad
        with pytest.raises(MetricError, match=r"\(2, 3\)"):
            metrics.check_distances(e, "x")
    with pytest.raises(MetricError):
        metrics.check_distances([[0.0]], "x")


@pytest.mark.parametrize("name", ["cosine", "angular"])
def test_zero_vector_has_no_angle(name):
    x = torch.randn(3, 4)
    x[1] = 0.0
    with pytest.raises(InvalidInputError, match="zero vector"):
        metrics.get_metric(name).distances(x, torch.randn(2, 4))
    with pytest.raises(InvalidInputError, match="zero vector"):
        metrics.get_metric(name).distances(torch.randn(2, 4), x)
    # Extreme but non-zero scales are fine: the direction is what counts.
    tiny = torch.tensor([[1e-30, 0.0], [0.0, 1e-30]])
    assert metrics.get_metric(name).distances(tiny, tiny)[0, 1] > 0.4


@pytest.mark.parametrize("name", [n for n in BUILTINS if n != "levenshtein"])
def test_tensor_metric_input_errors(name):
    metric = metrics.get_metric(name)
    shape = {"tv2d": (3, 4), "jaccard": (2, 4)}.get(name, (4,))
    good = make_outputs(name, shape, 3, seed=18)
    other = make_outputs(name, (*shape[:-1], shape[-1] + 1) if name != "jaccard" else (3, 4), 3, seed=19)
    with pytest.raises(InvalidInputError, match="shape"):
        metric.distances(good, other)
    with pytest.raises(InvalidInputError):
        metric.distances(good.tolist(), good)
    bad = good.clone()
    bad[1].view(-1)[0] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        metric.distances(bad, good)


def test_metric_specific_input_errors():
    w1 = metrics.get_metric("w1")
    h = torch.rand(3, 5)
    negative = h.clone()
    negative[0, 2] = -0.1
    with pytest.raises(InvalidInputError, match="negative"):
        w1.distances(negative, h)
    empty = h.clone()
    empty[2] = 0.0
    with pytest.raises(InvalidInputError, match="zero mass"):
        w1.distances(h, empty)
    with pytest.raises(InvalidInputError):
        w1.distances(torch.rand(3, 2, 5), torch.rand(3, 2, 5))
    with pytest.raises(InvalidInputError, match="4"):
        metrics.get_metric("jaccard").distances(torch.rand(3, 3), torch.rand(3, 3))
    with pytest.raises(InvalidInputError):
        metrics.get_metric("tv2d").distances(torch.rand(3, 5), torch.rand(3, 5))
    with pytest.raises(InvalidInputError):
        metrics.get_metric("tv1d").distances(torch.rand(3), torch.rand(3))


@pytest.mark.parametrize(
    "bad",
    [
        [[1.5, 2.0]],  # floats
        ["abc"],  # text, not tokens
        [[[1, 2], [3, 4]]],  # 2-D item
        [[True, False]],  # booleans
        [[2**70]],  # beyond int64
        [torch.tensor([1.0, 2.0])],
        torch.tensor([[1.0, 2.0]]),  # a float batch
        "abc",
        torch.tensor([1, 2]),  # 1-D: one sequence, not a batch
    ],
    ids=lambda v: type(v).__name__,
)
def test_levenshtein_input_errors(bad):
    with pytest.raises(InvalidInputError):
        metrics.get_metric("levenshtein").distances(bad, [[1, 2]])


@pytest.mark.parametrize("name,shape,output_range,extreme", [
    ("l2", (1, 3, 4), (0.0, 1.0), "checkerboard"),
    ("l1", (5,), (-1.0, 1.0), "checkerboard"),
    ("tv1d", (2, 6), (0.0, 1.0), "checkerboard"),
    ("tv2d", (1, 4, 5), (0.0, 1.0), "checkerboard"),
    ("tv2d", (2, 3, 3), (-1.0, 1.0), "checkerboard"),
    ("tv2d", (4, 6), (0.0, 2.0), "checkerboard"),
    ("cosine", (6,), None, "opposite"),
    ("cosine", (6,), (0.0, 1.0), "orthogonal"),
    ("angular", (6,), None, "opposite"),
    ("angular", (6,), (0.0, 1.0), "orthogonal"),
    ("w1", (7,), None, "ends"),
])
def test_metric_diameter_bounds_every_pair_and_is_attained(name, shape, output_range, extreme):
    """`metrics.diameter` (issue 16 item 4: the scale printed next to eps_out): no two outputs of the space
    are further apart, and a known extreme pair is exactly that far apart."""
    from smoothgen.metrics import diameter

    size = diameter(name, shape, output_range)
    lo, hi = output_range if output_range is not None else (-1.0, 1.0)
    g = torch.Generator().manual_seed(0)
    points = lo + (hi - lo) * torch.rand(400, *shape, generator=g, dtype=torch.float64)
    points = torch.cat([points, lo + (hi - lo) * (torch.rand(400, *shape, generator=g) > 0.5).double()])
    if name == "w1":
        points = points - lo + 1e-3  # histograms: non-negative weights
    points = points[points.flatten(1).abs().sum(1) > 0]  # cosine and angular: no zero vector
    distances = metrics.get_metric(name).distances(points, points)
    assert float(distances.max()) <= size * (1 + 1e-9)
    if extreme == "checkerboard":
        parity = sum(torch.meshgrid(*[torch.arange(k) for k in shape], indexing="ij")) % 2
        a = torch.where(parity == 0, hi, lo).double()
        b = torch.where(parity == 0, lo, hi).double()
    elif extreme == "opposite":
        a = torch.ones(shape, dtype=torch.float64)
        b = -a
    elif extreme == "orthogonal":
        a, b = torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)
        a[0], b[1] = 1.0, 1.0
    else:
        a, b = torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)
        a[0], b[-1] = 1.0, 1.0
    assert float(metrics.get_metric(name).distances(a[None], b[None])[0, 0]) == pytest.approx(size, rel=1e-6)


def test_metric_diameter_is_unknown_without_a_range_or_for_unbounded_metrics():
    from smoothgen.metrics import diameter

    assert diameter("l2", (1, 8, 8)) is None and diameter("tv2d", (1, 8, 8)) is None
    assert diameter("levenshtein", (16,), (0, 255)) is None
    assert diameter("l2", (1, 8, 8), (0.0, 1.0)) == 8.0 and diameter("tv2d", (1, 8, 8), (0.0, 1.0)) == 224.0
    assert diameter("jaccard", (3, 4)) == 1.0
