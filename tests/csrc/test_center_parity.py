"""Center smoothing in the C++ core against the torch reference: distances to float32 tolerance,
selections (medians, order statistics, centers) exactly."""
import math

import numpy as np
import pytest
import torch

from smoothgen import CenterSmoother, _core
from smoothgen.center import _core_metric, _core_rows, median_distances, median_distances_reference, min_median_center
from smoothgen.metrics import get_metric

from oracles import Linear

pytestmark = pytest.mark.skipif(not _core.HAVE_CORE, reason=f"C++ core not built: {_core.REASON}")
C = _core._C
METRICS = ("l2", "l1", "cosine", "tv1d", "tv2d")
# Output shapes per metric: awkward sizes (1, primes, remainders of every SIMD width and tile).
SHAPES = {
    "l2": [(1,), (7,), (16,), (17,), (64,), (129,), (3, 5, 7)],
    "l1": [(1,), (7,), (33,), (64,), (2, 3, 11)],
    "cosine": [(2,), (7,), (64,), (97,), (4, 4, 4)],
    "tv1d": [(1,), (2,), (13,), (3, 17), (2, 2, 31)],
    "tv2d": [(1, 1), (5, 7), (3, 8, 8), (1, 13, 2), (2, 1, 9)],
}


def core_distances(name, a, b):
    return torch.from_numpy(C.pairwise_distances(_core_rows(a), _core_rows(b), **_core_metric(get_metric(name), a, b)))


@pytest.mark.parametrize("name", METRICS)
def test_pairwise_distances_match_the_reference(name):
    g = torch.Generator().manual_seed(0)
    metric = get_metric(name)
    for shape in SHAPES[name]:
        for n_a, n_b in [(1, 1), (5, 3), (13, 31)]:
            a = torch.randn(n_a, *shape, generator=g) * 3 + 1
            b = torch.randn(n_b, *shape, generator=g) * 3 + 1
            want = metric.distances(a, b)
            got = core_distances(name, a, b)
            scale = float(want.abs().max()) + 1e-30
            torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-6 * scale, msg=f"{name} {shape} {n_a}x{n_b}")


@pytest.mark.parametrize("name", ["l2", "l1", "tv1d", "tv2d", "cosine"])
def test_close_points_far_from_the_origin(name):
    # Where |a|^2 + |b|^2 - 2ab cancels catastrophically: the core computes directly, like the reference.
    g = torch.Generator().manual_seed(1)
    shape = (3, 8, 8) if name == "tv2d" else (192,)
    x = 1e4 + 1e-2 * torch.randn(20, *shape, generator=g)
    want = get_metric(name).distances(x, x)
    got = core_distances(name, x, x)
    assert torch.all(torch.diagonal(got) == 0) or name == "cosine"
    scale = float(want.abs().max())
    # Cosine distances here (~1e-12) sit at float32's rounding floor of unit vectors in both paths.
    atol = 1e-10 if name == "cosine" else 1e-5 * scale
    torch.testing.assert_close(got, want, rtol=1e-4, atol=atol)


def test_kth_smallest_rows_is_torch_kthvalue():
    g = torch.Generator().manual_seed(2)
    for rows, cols in [(1, 1), (3, 2), (17, 101), (64, 1000)]:
        values = torch.randn(rows, cols, generator=g)
        values[:, ::3] = values[:, :1].clone()  # ties
        for k in {1, cols, (cols + 1) // 2}:
            want = torch.kthvalue(values, k, dim=1).values
            assert torch.equal(torch.from_numpy(C.kth_smallest_rows(values.numpy(), k)), want)


@pytest.mark.parametrize("name", METRICS)
def test_medians_are_the_exact_selection_of_the_distances(name):
    g = torch.Generator().manual_seed(3)
    shape = {"tv2d": (2, 5, 6), "tv1d": (3, 10)}.get(name, (30,))
    for n in (1, 2, 9, 100, 257):
        x = torch.randn(n, *shape, generator=g)
        d = core_distances(name, x, x)
        want = torch.kthvalue(d, (n + 1) // 2, dim=1).values  # the reference selection, on the core's distances
        assert torch.equal(median_distances(x, x, get_metric(name)), want)
        ref = median_distances_reference(x, x, get_metric(name))
        torch.testing.assert_close(want, ref, rtol=2e-5, atol=1e-6 * float(ref.abs().max() + 1e-30))


@pytest.mark.parametrize("name", ["l2", "l1", "tv1d", "tv2d"])
def test_centers_are_exact_on_integer_outputs(name):
    # Integer outputs make these distances exact in any summation order: medians tie for real, and the
    # chosen center must be the reference's (torch.argmin: the first index of the smallest median).
    g = torch.Generator().manual_seed(4)
    shape = {"tv2d": (2, 3, 4), "tv1d": (4, 6)}.get(name, (24,))
    metric = get_metric(name)
    for n in (1, 2, 3, 10, 101, 400):
        for n_candidates in (None, 1, 7, 10_000):
            x = torch.randint(-2, 3, (n, *shape), generator=g).float()
            center, radius = min_median_center(x, metric, n_candidates)
            with _core.disabled():
                ref_center, ref_radius = min_median_center(x, metric, n_candidates)
            assert torch.equal(center, ref_center) and radius == ref_radius, (n, n_candidates)
            medians = median_distances_reference(x, x, metric)[: n if n_candidates is None else n_candidates]
            index, core_radius = C.min_median_center(_core_rows(x), n_candidates or 0, **_core_metric(metric, x))
            assert index == int(torch.argmin(medians)) and core_radius == float(medians.min())


@pytest.mark.parametrize("name", METRICS)
@pytest.mark.parametrize("n_candidates", [None, 30])
def test_centers_match_on_continuous_outputs(name, n_candidates):
    g = torch.Generator().manual_seed(5)
    shape = {"tv2d": (3, 6, 6), "tv1d": (4, 16)}.get(name, (48,))
    metric = get_metric(name)
    for trial in range(4):
        x = torch.randn(300, *shape, generator=g) * 0.3 + torch.randn(*shape, generator=g)
        center, radius = min_median_center(x, metric, n_candidates)
        with _core.disabled():
            ref_center, ref_radius = min_median_center(x, metric, n_candidates)
        ref_medians = median_distances_reference(x if n_candidates is None else x[:n_candidates], x, metric)
        top2 = torch.topk(ref_medians, 2, largest=False).values
        if float(top2[1] - top2[0]) > 1e-4 * float(top2[0]):  # a clear winner: the same index, exactly
            assert torch.equal(center, ref_center), (name, trial)
        else:  # a float32 near-tie: either is a min-median center within rounding
            assert radius == pytest.approx(ref_radius, rel=1e-5)
        assert radius == pytest.approx(ref_radius, rel=2e-5)


def test_half_precision_outputs_use_the_core_like_the_reference():
    x = torch.randn(50, 16).half()
    center, radius = min_median_center(x, get_metric("l2"))
    with _core.disabled():
        ref_center, ref_radius = min_median_center(x, get_metric("l2"))
    assert torch.equal(center, ref_center) and radius == pytest.approx(ref_radius, rel=1e-5)


@pytest.mark.parametrize("name", ["l2", "cosine", "tv2d"])
def test_center_smoother_certify_matches_the_reference(name):
    torch.manual_seed(0)
    shape = (2, 4, 4) if name == "tv2d" else (32,)
    model = torch.nn.Sequential(Linear(torch.randn(math.prod(shape), 6)), torch.nn.Unflatten(1, shape))
    smoother = CenterSmoother(model, sigma=0.25, metric=name, batch_size=500)
    x = torch.randn(6)
    kwargs = dict(eps_in=0.1, n=2000, m=4000, delta=0.1, seed=3)
    cert = smoother.certify(x, **kwargs)
    with _core.disabled():
        ref = smoother.certify(x, **kwargs)
    assert not cert.abstained and not ref.abstained
    assert torch.equal(cert.center, ref.center)
    assert cert.center_radius == pytest.approx(ref.center_radius, rel=2e-5)
    assert cert.r_hat == pytest.approx(ref.r_hat, rel=2e-5)
    assert cert.eps_out == pytest.approx(ref.eps_out, rel=2e-5)
    assert cert.p == pytest.approx(ref.p, rel=1e-12) and cert.q == pytest.approx(ref.q, rel=1e-12)
    assert cert.smoothing_error == pytest.approx(ref.smoothing_error, rel=1e-4, abs=1e-6)


def test_core_center_certify_matches_the_python_steps():
    # The whole certificate in one core call (the C ABI's path) against the Python steps on the same buffers.
    from smoothgen import stats

    rng = np.random.default_rng(6)
    sel, chk, rad = (rng.normal(size=(rows, 8)).astype(np.float32) * 0.1 for rows in (3000, 3000, 6000))
    cert = C.center_certify(sel, chk, rad, 0.25, 0.05, 0.05, 0.005, 0.005, 0, kind=0)
    metric = get_metric("l2")
    with _core.disabled():
        center, radius = min_median_center(torch.from_numpy(sel), metric)
        p_within = float((metric.distances(torch.from_numpy(chk), center)[:, 0] <= radius).sum()) / 3000
        accepted, d1, d2 = stats.center_smoothing_check(p_within, 3000, 0.005, 0.05)
        p = stats.center_certify_level(0.05, 0.25, 0.05)
        q = stats.dkw_quantile_level(p, 6000, 0.005)
        k = stats.order_statistic_index(q, 6000)
        r_hat = stats.order_statistic(metric.distances(torch.from_numpy(rad), center)[:, 0].numpy(), k)
    assert torch.equal(torch.from_numpy(sel[cert["center_index"]]), center[0])
    assert cert["center_radius"] == pytest.approx(radius, rel=2e-5)
    assert cert["p_within"] == pytest.approx(p_within, abs=2 / 3000) and cert["accepted"] == accepted
    assert cert["p"] == pytest.approx(p, rel=1e-12) and cert["q"] == pytest.approx(q, rel=1e-12) and cert["k"] == k
    assert cert["r_hat"] == pytest.approx(r_hat, rel=2e-5) and cert["eps_out"] == pytest.approx(3 * r_hat, rel=2e-5)
    assert cert["reason"] is None and not cert["abstained"]
