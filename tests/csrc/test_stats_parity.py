"""Every statistic of the C++ core against the Python reference (SciPy) over randomized inputs: 1e-12 relative."""
import math

import numpy as np
import pytest

from smoothgen import _core, stats
from smoothgen.errors import InvalidParameterError

pytestmark = pytest.mark.skipif(not _core.HAVE_CORE, reason=f"C++ core not built: {_core.REASON}")
C = _core._C
REL = 1e-12


def close(a, b, rel=REL, abs_=1e-300):
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= max(abs_, rel * max(abs(a), abs(b)))


def ref(fn, *args):
    with _core.disabled():
        return fn(*args)


def counts(rng, size):
    """(k, n) pairs over many scales, edges included."""
    n = np.unique(np.concatenate([[1, 2, 3, 10, 100, 100_000, 10**6], np.exp(rng.uniform(0, math.log(10**6), size)).astype(int)]))
    out = []
    for v in n:
        v = int(v)
        for k in {0, 1, v // 2, v - 1, v, int(rng.integers(0, v + 1))}:
            if 0 <= k <= v:
                out.append((k, v))
    return out


def alphas(rng, size):
    return [0.001, 0.05, 0.5, 1e-10] + list(np.exp(rng.uniform(math.log(1e-12), math.log(0.9), size)))


def test_clopper_pearson_parity():
    rng = np.random.default_rng(0)
    for (k, n), alpha in zip(counts(rng, 60), alphas(rng, 10**4)):
        for name in ("clopper_pearson_lower", "clopper_pearson_upper"):
            want, got = ref(getattr(stats, name), k, n, alpha), getattr(C, name)(k, n, alpha)
            assert close(got, want), (name, k, n, alpha, got, want)


def test_binomial_test_parity():
    rng = np.random.default_rng(1)
    cases = [(60, 100, 0.5), (50, 100, 0.5), (100, 100, 0.5), (0, 7, 0.5), (3, 20, 0.3), (17, 20, 0.3), (1, 1, 0.5)]
    for _ in range(150):
        n = int(np.exp(rng.uniform(0, math.log(20_000))))
        p = float(rng.choice([0.5, rng.uniform(0.01, 0.99)]))
        k = int(np.clip(rng.normal(p * n, 2 * math.sqrt(n * p * (1 - p)) + 1), 0, n))
        cases.append((k, n, p))
    for k, n, p in cases:
        want, got = ref(stats.binomial_test_pvalue, k, n, p), C.binomial_test_pvalue(k, n, p)
        assert close(got, want, abs_=1e-290), (k, n, p, got, want)


def test_normal_parity():
    rng = np.random.default_rng(2)
    zs = list(rng.normal(0, 3, 300)) + [0.0, -0.0, 1e-300, -37.5, 37.5, 8.0, -8.0, 1.0 / 3.0]
    for z in zs:
        assert close(C.normal_cdf(float(z)), ref(stats.normal_cdf, float(z)), abs_=1e-300), z
    ps = list(rng.uniform(0, 1, 300)) + [0.0, 1.0, 0.5, 1e-300, 1e-17, 1 - 1e-16, 0.975, 0.5 + 1e-12]
    for p in ps:
        assert close(C.normal_ppf(float(p)), ref(stats.normal_ppf, float(p)), abs_=1e-15), p


def test_radius_and_level_parity():
    rng = np.random.default_rng(3)
    for _ in range(300):
        sigma = float(np.exp(rng.uniform(-5, 2)))
        p_lower = float(rng.uniform(0, 1))
        assert close(C.cohen_radius(sigma, p_lower), ref(stats.cohen_radius, sigma, p_lower), abs_=1e-15)
        n, alpha = int(np.exp(rng.uniform(0, 14))), float(np.exp(rng.uniform(-25, -0.1)))
        assert close(C.max_certifiable_radius(sigma, n, alpha), ref(stats.max_certifiable_radius, sigma, n, alpha))
        eps_in, delta = float(rng.uniform(0, 2)), float(rng.uniform(1e-6, 0.5 - 1e-6))
        assert close(C.center_certify_level(eps_in, sigma, delta), ref(stats.center_certify_level, eps_in, sigma, delta))
    assert C.cohen_radius(0.5, 1.0) == ref(stats.cohen_radius, 0.5, 1.0) == math.inf


def test_arithmetic_statistics_are_identical():
    rng = np.random.default_rng(4)
    for _ in range(500):
        n = int(np.exp(rng.uniform(0, 20)))
        alpha = float(np.exp(rng.uniform(-30, -0.01)))
        mean, p = float(rng.uniform(0, 1)), float(rng.uniform(0, 1))
        delta = float(rng.uniform(1e-6, 0.499))
        for two_sided in (False, True):
            assert C.hoeffding_radius(n, alpha, two_sided) == stats.hoeffding_radius(n, alpha, two_sided)
        assert C.hoeffding_lower(mean, n, alpha) == stats.hoeffding_lower(mean, n, alpha)
        assert C.hoeffding_upper(mean, n, alpha) == stats.hoeffding_upper(mean, n, alpha)
        assert C.dkw_quantile_level(p, n, alpha) == stats.dkw_quantile_level(p, n, alpha)
        assert C.center_smoothing_check(p, n, alpha, delta) == stats.center_smoothing_check(p, n, alpha, delta)
        q = float(rng.choice([rng.uniform(0, 1.2), 1.0, 0.0, p + stats.hoeffding_radius(n, alpha)]))
        want = stats.order_statistic_index(q, n)
        assert C.order_statistic_index(q, n) == (0 if want is None else want)
        gamma, beta, r_hat = float(rng.uniform(1, 3)), float(rng.uniform(1, 6)), float(rng.exponential())
        assert C.center_eps_out(gamma, beta, r_hat) == stats.center_eps_out(gamma, beta, r_hat)


def test_order_statistic_is_exact():
    rng = np.random.default_rng(5)
    for size in (1, 2, 7, 100, 1001):
        for dtype in (np.float32, np.float64):
            values = rng.normal(size=size).astype(dtype)
            values[rng.integers(0, size, size // 3)] = values[0]  # ties
            for k in {1, size, (size + 1) // 2, int(rng.integers(1, size + 1))}:
                want = ref(stats.order_statistic, values, k)
                assert C.order_statistic(values, k) == want
                assert stats.order_statistic(values, k) == want  # the dispatched path
    copy = values.copy()
    C.order_statistic(values, 3)
    assert np.array_equal(values, copy)  # the input is not reordered


def test_dispatched_functions_take_the_core_and_agree():
    # The public stats functions, core on, against themselves with the core off.
    for k, n, alpha in [(990, 1000, 0.001), (5, 10, 0.05), (0, 10, 0.1), (10, 10, 0.1)]:
        assert close(stats.clopper_pearson_lower(k, n, alpha), ref(stats.clopper_pearson_lower, k, n, alpha))
        assert close(stats.clopper_pearson_upper(k, n, alpha), ref(stats.clopper_pearson_upper, k, n, alpha))
    assert close(stats.binomial_test_pvalue(60, 100), ref(stats.binomial_test_pvalue, 60, 100))
    # Inputs the core declines take the reference path: same results and same errors.
    assert stats.normal_cdf(math.inf) == 1.0 and stats.normal_cdf(-math.inf) == 0.0
    for bad in (1.5, math.nan):  # refused before either path (issue 13.5: was NaN)
        with pytest.raises(InvalidParameterError):
            stats.normal_ppf(bad)
    with pytest.raises(InvalidParameterError):  # beyond int64: SciPy cannot, and says so as a SmoothgenError
        stats.clopper_pearson_lower(2**70, 2**71, 0.1)
    assert stats.order_statistic(np.array([3, 1, 2]), 2) == 2.0  # integers: reference
    with pytest.raises(Exception) as core_error:
        stats.clopper_pearson_lower(11, 10, 0.1)
    with _core.disabled(), pytest.raises(Exception) as reference_error:
        stats.clopper_pearson_lower(11, 10, 0.1)
    assert str(core_error.value) == str(reference_error.value)


# --- the soundness fixes of center smoothing: the C++ formulas and their Python twins ------------------

def _has_parameter(fn, name):
    import inspect

    return name in inspect.signature(fn).parameters


@pytest.mark.skipif(not hasattr(stats, "center_candidate_miss"), reason="Python twin stats.center_candidate_miss not landed yet")
def test_center_candidate_miss_parity():
    rng = np.random.default_rng(6)
    cases = [(0.05, 30, 10_000, 0.0), (0.05, 1, 10_000, 0.0), (0.05, 9_999, 10_000, 0.0), (0.05, 30, 10_000, 0.1),
             (0.499999, 2, 3, 0.0), (1e-9, 1000, 10**6, 1e-12), (0.2, 5, 5, 0.3), (0.2, 6, 5, 0.3), (0.1, None, 50, 0.2)]
    for _ in range(500):
        n = int(np.exp(rng.uniform(0, 14))) + 1
        k = rng.choice([None, int(rng.integers(1, n + 1)), n, n + 7, 1, 30])
        cases.append((float(rng.uniform(1e-6, 0.5 - 1e-6)), None if k is None else int(k), n,
                      float(rng.choice([0.0, rng.uniform(0, 0.2), 10 ** rng.uniform(-12, -2)]))))
    for delta, k, n, tv in cases:
        want, got = stats.center_candidate_miss(delta, k, n, tv), C.center_candidate_miss(delta, k, n, tv)
        assert close(got, want, rel=1e-15, abs_=0.0), (delta, k, n, tv, got, want)
        if k is None or k >= n:
            assert got == want == 0.0
    # A probability: both cap at 1 when noise_tv pushes 1/2 - delta + noise_tv past 1.
    for delta, k, n, tv in [(0.05, 3, 100, 0.9), (0.01, 1, 2, 0.51), (0.25, 40, 41, 0.75)]:
        assert C.center_candidate_miss(delta, k, n, tv) == stats.center_candidate_miss(delta, k, n, tv) == 1.0
    for bad in (-0.1, 1.0, math.nan):
        with pytest.raises(ValueError):
            C.center_candidate_miss(0.05, 3, 100, bad)
        with pytest.raises(ValueError):
            stats.center_candidate_miss(0.05, 3, 100, bad)


@pytest.mark.skipif(not _has_parameter(stats.dkw_quantile_level, "noise_tv")
                    or not _has_parameter(stats.center_smoothing_check, "n_select"),
                    reason="Python twins with n_select / noise_tv not landed yet")
def test_center_check_and_level_parity_with_selection_size_and_noise_tv():
    rng = np.random.default_rng(7)
    for _ in range(1000):
        n, n_select, m = (int(np.exp(rng.uniform(0, 16))) for _ in range(3))
        alpha, p = float(np.exp(rng.uniform(-25, -0.01))), float(rng.uniform(0, 1))
        delta = float(rng.uniform(1e-6, 0.499))
        tv = float(rng.choice([0.0, rng.uniform(0, 0.5), 10 ** rng.uniform(-15, -1)]))
        for sel in (n_select, None, n, 1):
            got = C.center_smoothing_check(p, n, alpha, delta, sel, tv)
            want = stats.center_smoothing_check(p, n, alpha, delta, n_select=sel, noise_tv=tv)
            assert got[0] == want[0] and close(got[1], want[1], rel=1e-15) and close(got[2], want[2], rel=1e-15, abs_=1e-16), (
                p, n, alpha, delta, sel, tv, got, want)
        assert close(C.dkw_quantile_level(p, m, alpha, tv), stats.dkw_quantile_level(p, m, alpha, noise_tv=tv), rel=1e-15)
    # The selection size is what the old check ignored: 5 selection samples dominate 10 000 check samples.
    assert C.center_smoothing_check(0.9, 10_000, 0.005, 0.05, 5) == stats.center_smoothing_check(0.9, 10_000, 0.005, 0.05, n_select=5)
    assert not stats.center_smoothing_check(0.9, 10_000, 0.005, 0.05, n_select=5)[0]
    for bad in (-0.1, 1.0, math.nan):
        for fn in (lambda tv: C.dkw_quantile_level(0.5, 100, 0.01, tv),
                   lambda tv: stats.dkw_quantile_level(0.5, 100, 0.01, noise_tv=tv),
                   lambda tv: C.center_smoothing_check(0.5, 100, 0.01, 0.1, 100, tv),
                   lambda tv: stats.center_smoothing_check(0.5, 100, 0.01, 0.1, n_select=100, noise_tv=tv)):
            with pytest.raises(ValueError):
                fn(bad)


def test_lower_bounds_below_one_parity():
    # Both paths cap the Clopper-Pearson and Hoeffding lower bounds below 1 (k = n = 1e18 rounded to 1).
    n = 10**18
    assert C.clopper_pearson_lower(n, n, 0.001) == ref(stats.clopper_pearson_lower, n, n, 0.001) == math.nextafter(1.0, 0.0)
    assert C.hoeffding_lower(1.0, 2**62, 1 - 1e-16) == ref(stats.hoeffding_lower, 1.0, 2**62, 1 - 1e-16) < 1.0
