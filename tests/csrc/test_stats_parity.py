"""Every statistic of the C++ core against the Python reference (SciPy) over randomized inputs: 1e-12 relative."""
import math

import numpy as np
import pytest

from smoothgen import _core, stats

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
    assert math.isnan(stats.normal_ppf(1.5)) and math.isnan(stats.normal_ppf(math.nan))
    with pytest.raises(TypeError):  # beyond int64: SciPy's own error, not the core's
        stats.clopper_pearson_lower(2**70, 2**71, 0.1)
    assert stats.order_statistic(np.array([3, 1, 2]), 2) == 2.0  # integers: reference
    with pytest.raises(Exception) as core_error:
        stats.clopper_pearson_lower(11, 10, 0.1)
    with _core.disabled(), pytest.raises(Exception) as reference_error:
        stats.clopper_pearson_lower(11, 10, 0.1)
    assert str(core_error.value) == str(reference_error.value)
