"""User metrics compiled by numba (smoothgen.kernels.numba_metrics through smoothgen.metrics.register_metric)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from smoothgen import metrics
from smoothgen.center import min_median_center
from smoothgen.errors import InvalidParameterError, MetricError
from smoothgen.kernels import numba_metrics



@pytest.fixture(autouse=True)
def numba_installed():
    """numba is part of the test environment: its absence fails these tests instead of skipping them."""
    numba, why = numba_metrics.numba_module()
    if numba is None:
        pytest.fail(f"{why}; install it with pip install -c constraints.txt numba (kernels/README.md)")

WEIGHTS = np.linspace(0.5, 2.0, 12)


def edit_distance(s, t):
    """Levenshtein distance of two 1-D integer arrays, two-row dynamic programme (numba-compilable)."""
    m, n = len(s), len(t)
    prev = np.arange(n + 1)
    cur = np.zeros(n + 1, dtype=np.int64)
    for i in range(1, m + 1):
        cur[0] = i
        for j in range(1, n + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (s[i - 1] != t[j - 1]))
        prev, cur = cur, prev
    return prev[n]


def weighted_l2(u, v):
    """sqrt(sum_i w_i (u_i − v_i)²), a metric for positive weights (numba-compilable)."""
    total = 0.0
    for i in range(u.shape[0]):
        diff = u[i] - v[i]
        total += WEIGHTS[i] * diff * diff
    return np.sqrt(total)


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(metrics, "_REGISTRY", dict(metrics._REGISTRY))
    monkeypatch.delenv("SMOOTHGEN_KERNELS", raising=False)
    monkeypatch.setattr(numba_metrics, "_logged", set())
    return metrics._REGISTRY


@pytest.fixture
def numba_calls(monkeypatch):
    """Counts the calls that the compiled parallel loop answered."""
    calls = []
    original = numba_metrics.NumbaPairwise.__call__

    def counted(self, a, b):
        result = original(self, a, b)
        calls.append(self.name)
        return result

    monkeypatch.setattr(numba_metrics.NumbaPairwise, "__call__", counted)
    return calls


def token_sequences(n, seed):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, 5, size=rng.integers(0, 25)).tolist() for _ in range(n)]
    seqs[-1] = list(seqs[0])
    return seqs


def test_edit_distance_compiles_and_matches_levenshtein(registry, numba_calls):
    m = metrics.register_metric("edit", edit_distance, gamma=1, kind="sequence")
    a, b = token_sequences(40, 1), token_sequences(31, 2)
    # Sequences given as lists, tensors and a 2-D array all reach the compiled loop.
    b[3] = torch.tensor(b[3], dtype=torch.int32)
    d = m.distances(a, b)
    assert numba_calls == ["edit"]
    assert d.dtype == torch.float64 and d.shape == (40, 31)
    expected = metrics.get_metric("levenshtein").distances(a, [list(map(int, s)) for s in b])
    assert torch.equal(d, expected)
    grid = np.arange(12).reshape(3, 4)
    assert m.distances(grid, grid[::-1].copy()).tolist() == [[4.0, 4.0, 0.0], [4.0, 0.0, 4.0], [0.0, 4.0, 4.0]]


def test_weighted_l2_compiles_and_matches_torch(registry, numba_calls):
    m = metrics.register_metric("weighted_l2", weighted_l2, gamma=1)
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(50, 12, generator=g), torch.randn(23, 12, generator=g)
    d = m.distances(a, b)
    assert numba_calls == ["weighted_l2"]
    w = torch.from_numpy(WEIGHTS)
    expected = ((a.double()[:, None] - b.double()[None]) ** 2 * w).sum(-1).sqrt()
    torch.testing.assert_close(d, expected, rtol=1e-12, atol=1e-12)
    # Center smoothing's center selection runs through it: the same center as the direct computation.
    samples = torch.randn(101, 12, generator=g)
    center, radius = min_median_center(samples, m)
    full = ((samples.double()[:, None] - samples.double()[None]) ** 2 * w).sum(-1).sqrt()
    medians = torch.kthvalue(full, 51, dim=1).values
    assert torch.equal(center, samples[int(torch.argmin(medians)) : int(torch.argmin(medians)) + 1])
    assert radius == pytest.approx(float(medians.min()), rel=1e-12)


def test_multi_dimensional_outputs_keep_their_shape(registry, numba_calls):
    def corner_gap(u, v):  # items keep their [3, 4] shape: u[2, 3] is the last entry
        return abs(u[2, 3] - v[2, 3]) + abs(u[0, 1] - v[0, 1])

    m = metrics.register_metric("corner_gap", corner_gap, gamma=1)
    a, b = torch.randn(6, 3, 4), torch.randn(5, 3, 4)
    d = m.distances(a, b)
    assert numba_calls == ["corner_gap"]
    a, b = a.double(), b.double()
    expected = (a[:, None, 2, 3] - b[None, :, 2, 3]).abs() + (a[:, None, 0, 1] - b[None, :, 0, 1]).abs()
    torch.testing.assert_close(d, expected)


def test_functions_numba_cannot_compile_fall_back_with_one_log(registry, numba_calls, caplog):
    m = metrics.register_metric("torchy", lambda u, v: float((u - v).abs().max()), gamma=1)
    a = torch.randn(4, 3)
    with caplog.at_level(logging.WARNING, logger="smoothgen.kernels"):
        d1 = m.distances(a, a)
        d2 = m.distances(a, a)
    assert numba_calls == []
    torch.testing.assert_close(d1, (a[:, None] - a[None]).abs().amax(-1).double())
    assert torch.equal(d1, d2)
    logs = [r.getMessage() for r in caplog.records if "'torchy' runs as a Python double loop" in r.getMessage()]
    assert len(logs) == 1


def test_jit_true_raises_when_numba_cannot_compile(registry):
    m = metrics.register_metric("torchy_strict", lambda u, v: float((u - v).abs().max()), gamma=1, jit=True)
    with pytest.raises(MetricError, match="jit=True"):
        m.distances(torch.randn(3, 2), torch.randn(3, 2))


def test_jit_false_and_the_reference_override_keep_the_plain_loop(registry, numba_calls, monkeypatch):
    calls = []

    def counting(u, v):
        calls.append(1)
        return float(abs(u - v).sum())

    a = torch.randn(5, 2)
    metrics.register_metric("plain", counting, gamma=1, jit=False).distances(a, a)
    assert len(calls) == 25 and numba_calls == []
    monkeypatch.setenv("SMOOTHGEN_KERNELS", "reference")
    metrics.register_metric("plain_env", lambda u, v: float(abs(u - v).sum()), gamma=1).distances(a, a)
    assert numba_calls == []
    with pytest.raises(InvalidParameterError, match="jit"):
        metrics.register_metric("bad_jit", pairwise=lambda a, b: torch.zeros(len(a), len(b)), gamma=1, jit=True)


def test_runtime_errors_surface_through_the_plain_loop(registry):
    """Bounds are checked in the compiled loop; the plain loop then raises the Python error."""
    m = metrics.register_metric("out_of_range", lambda u, v: u[10] - v[0], gamma=1)
    with pytest.raises(IndexError):
        m.distances(torch.randn(3, 4), torch.randn(2, 4))


def test_invalid_distances_are_still_checked(registry):
    m = metrics.register_metric("negative", lambda u, v: -1.0, gamma=1)
    with pytest.raises(MetricError, match="negative"):
        m.distances(torch.zeros(2, 3), torch.zeros(2, 3))


def test_empty_batches(registry):
    m = metrics.register_metric("edit_empty", edit_distance, gamma=1, kind="sequence")
    assert m.distances([], [[1, 2]]).shape == (0, 1)
    assert m.distances([[]], [[1, 2], []]).tolist() == [[2.0, 0.0]]
