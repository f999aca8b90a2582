"""Statistics: each bound against its definition, its edge cases, and a Monte Carlo coverage check."""
import math

import numpy as np
import pytest
from scipy.stats import beta, binom, norm

from smoothgen import stats
from smoothgen.errors import InvalidParameterError


@pytest.mark.parametrize("k,n", [(1, 1), (0, 10), (5, 10), (10, 10), (999, 1000), (50_000, 100_000)])
def test_clopper_pearson_matches_beta_quantiles(k, n):
    alpha = 0.001
    lower = stats.clopper_pearson_lower(k, n, alpha)
    upper = stats.clopper_pearson_upper(k, n, alpha)
    assert lower == (0.0 if k == 0 else pytest.approx(beta.ppf(alpha, k, n - k + 1), rel=1e-12))
    assert upper == (1.0 if k == n else pytest.approx(beta.ppf(1 - alpha, k + 1, n - k), rel=1e-12))
    assert 0.0 <= lower <= k / n <= upper <= 1.0


def test_clopper_pearson_defining_property():
    # The lower bound p_L solves P(Binom(n, p_L) >= k) = alpha.
    k, n, alpha = 37, 50, 0.01
    p_lower = stats.clopper_pearson_lower(k, n, alpha)
    assert binom.sf(k - 1, n, p_lower) == pytest.approx(alpha, rel=1e-9)
    p_upper = stats.clopper_pearson_upper(k, n, alpha)
    assert binom.cdf(k, n, p_upper) == pytest.approx(alpha, rel=1e-9)


def test_clopper_pearson_coverage_monte_carlo():
    # The one-sided bound must cover the true p in at least 1 - alpha of the experiments.
    rng = np.random.default_rng(0)
    p, n, alpha, runs = 0.8, 60, 0.1, 4000
    ks = rng.binomial(n, p, size=runs)
    misses = sum(stats.clopper_pearson_lower(int(k), n, alpha) > p for k in ks)
    assert binom.sf(misses - 1, runs, alpha) > 1e-3  # not significantly above alpha


def test_binomial_test_pvalue():
    assert stats.binomial_test_pvalue(50, 100) == pytest.approx(1.0)
    assert stats.binomial_test_pvalue(100, 100) == pytest.approx(2 * 0.5**100, rel=1e-9)
    assert stats.binomial_test_pvalue(60, 100) == pytest.approx(0.056887933640431, rel=1e-9)


def test_hoeffding_and_dkw():
    assert stats.hoeffding_radius(100, 0.05) == pytest.approx(math.sqrt(math.log(20) / 200))
    assert stats.hoeffding_radius(100, 0.05, two_sided=True) == pytest.approx(math.sqrt(math.log(40) / 200))
    assert stats.hoeffding_lower(0.01, 100, 0.05) == 0.0
    assert stats.hoeffding_upper(0.99, 100, 0.05) == 1.0
    assert stats.dkw_quantile_level(0.9, 10_000, 0.005) == pytest.approx(0.9 + math.sqrt(math.log(200) / 20_000))


def test_order_statistic_is_not_interpolated():
    values = np.array([5.0, 1.0, 4.0, 2.0, 3.0])
    assert stats.order_statistic_index(0.5, 5) == 3  # ceil(2.5)
    assert stats.order_statistic(values, 3) == 3.0
    # q = 0.61 of 5 values: ceil(3.05) = 4 -> the 4th smallest, 4.0; np.quantile would interpolate 3.44.
    k = stats.order_statistic_index(0.61, 5)
    assert k == 4 and stats.order_statistic(values, k) == 4.0
    assert np.quantile(values, 0.61) < 4.0
    assert stats.order_statistic_index(1.0, 5) == 5
    assert stats.order_statistic_index(1.0000001, 5) is None
    assert stats.order_statistic_index(0.0, 5) == 1


def test_order_statistic_upper_bounds_quantile_with_dkw():
    # With q = p + sqrt(ln(1/a)/(2m)), the ceil(q m)-th order statistic exceeds the true p-quantile
    # in at least 1 - a of the experiments (DKW).
    rng = np.random.default_rng(1)
    p, m, a, runs = 0.9, 200, 0.1, 2000
    true_quantile = norm.ppf(p)
    k = stats.order_statistic_index(stats.dkw_quantile_level(p, m, a), m)
    misses = sum(stats.order_statistic(rng.standard_normal(m), k) < true_quantile for _ in range(runs))
    assert binom.sf(misses - 1, runs, a) > 1e-3


def test_cohen_radius_and_max_radius():
    assert stats.cohen_radius(0.5, 0.5) == 0.0
    assert stats.cohen_radius(0.5, 0.975) == pytest.approx(0.5 * 1.959963984540054)
    sigma, n, alpha = 0.25, 10_000, 0.001
    expected = sigma * norm.ppf(alpha ** (1 / n))
    assert stats.max_certifiable_radius(sigma, n, alpha) == pytest.approx(expected, rel=1e-12)
    # All n votes for one class: Clopper-Pearson gives alpha^(1/n) exactly.
    assert stats.clopper_pearson_lower(n, n, alpha) == pytest.approx(alpha ** (1 / n), rel=1e-12)


def test_center_smoothing_formulas():
    accepted, d1, d2 = stats.center_smoothing_check(0.5, 10_000, 0.005, 0.05)
    assert d1 == pytest.approx(math.sqrt(math.log(2 / 0.005) / 20_000))
    assert d2 == pytest.approx(0.5 - (0.5 - d1))
    assert accepted
    assert not stats.center_smoothing_check(0.4, 10_000, 0.005, 0.05)[0]
    assert not stats.center_smoothing_check(0.9, 10, 0.005, 0.05)[0]  # n too small: Delta1 > Delta
    p = stats.center_certify_level(0.2, 0.1, 0.05)
    assert p == pytest.approx(norm.cdf(norm.ppf(0.55) + 2.0))
    assert stats.center_eps_out(1.0, 2.0, 1.5) == pytest.approx(4.5)
    assert stats.center_eps_out(2.0, 4.0, 1.0) == pytest.approx(10.0)
    # R̂ = 0 certifies 0 even when γ·(1 + β) overflows (inf·0 would be NaN, the fuzzer found it in C++).
    assert stats.center_eps_out(1e300, 1e300, 0.0) == 0.0
    assert stats.center_eps_out(1e300, 1e300, 1.0) == math.inf


@pytest.mark.parametrize(
    "call",
    [
        lambda: stats.clopper_pearson_lower(5, 4, 0.1),
        lambda: stats.clopper_pearson_lower(-1, 4, 0.1),
        lambda: stats.clopper_pearson_lower(1, 0, 0.1),
        lambda: stats.clopper_pearson_lower(1, 4, 0.0),
        lambda: stats.clopper_pearson_upper(1, 4, 1.0),
        lambda: stats.clopper_pearson_lower(1.5, 4, 0.1),
        lambda: stats.binomial_test_pvalue(1, 4, 1.0),
        lambda: stats.hoeffding_radius(0, 0.1),
        lambda: stats.cohen_radius(0.0, 0.9),
        lambda: stats.cohen_radius(1.0, 1.5),
        lambda: stats.max_certifiable_radius(1.0, 0, 0.1),
        lambda: stats.order_statistic_index(0.5, 0),
        lambda: stats.order_statistic_index(float("nan"), 5),
        lambda: stats.order_statistic(np.arange(3.0), 4),
        lambda: stats.center_smoothing_check(0.5, 100, 0.01, 0.5),
        lambda: stats.center_certify_level(-0.1, 1.0, 0.05),
        lambda: stats.center_eps_out(0.5, 1.0, 1.0),
    ],
)
def test_impossible_parameters_raise(call):
    with pytest.raises(InvalidParameterError):
        call()


def test_stats_does_not_import_torch():
    # stats.py must stay a pure module (the C++ core mirrors it); load it on its own, with the package
    # stubbed, and check that torch never gets imported.
    import subprocess
    import sys

    code = (
        "import importlib.util, sys, types\n"
        "pkg = types.ModuleType('smoothgen'); pkg.__path__ = []\n"
        "errors = types.ModuleType('smoothgen.errors'); errors.InvalidParameterError = ValueError\n"
        "sys.modules.update({'smoothgen': pkg, 'smoothgen.errors': errors})\n"
        "spec = importlib.util.spec_from_file_location('smoothgen.stats', sys.argv[1])\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'smoothgen')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, stats.__file__], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['smoothgen', 'smoothgen.errors']"


# ------------------------------------------------------------------ SmoothGen bounds (docs/theory.md §4a, §4e)


@pytest.mark.parametrize(("shift", "sigma"), [(0.1, 1.0), (0.5, 0.25), (2.0, 0.5), (0.0, 1.0)])
def test_tv_bound_is_the_exact_tv_of_two_gaussians(shift, sigma):
    from scipy.integrate import quad

    # TV(N(0, σ²), N(Δ, σ²)) = ½∫|p − q|, integrated numerically: the two shifted Gaussians attain §4a.
    half_l1 = 0.5 * quad(lambda z: abs(norm.pdf(z, 0, sigma) - norm.pdf(z, shift, sigma)), -12 * sigma, shift + 12 * sigma,
                         points=[shift / 2], limit=200)[0]
    assert stats.tv_bound(shift, sigma) == pytest.approx(half_l1, abs=1e-9)
    assert stats.wasserstein_bound(shift, sigma, diameter=3.0) == pytest.approx(3.0 * half_l1, abs=1e-8)
    assert stats.mean_smoothing_bound(2.0, shift, sigma) == pytest.approx(4.0 * half_l1, abs=1e-8)


def test_event_probability_bound_is_attained_by_a_halfspace():
    sigma, shift = 0.5, 0.3
    for p in (0.2, 0.5, 0.9):
        # S = {z < σΦ⁻¹(p)} has P_0(S) = p and P_shift(S) = Φ(Φ⁻¹(p) − shift/σ): the bound is tight.
        assert stats.event_probability_bound(p, shift, sigma) == pytest.approx(norm.cdf(norm.ppf(p) - shift / sigma))


def test_vector_mean_deviation_covers_the_mean_at_its_level():
    rng = np.random.default_rng(7)
    bound, n, alpha, trials = 1.0, 20, 0.05, 4000
    radius = stats.vector_mean_deviation(bound, n, alpha)
    # Vectors on the unit sphere of R^3 pushed towards one pole: E X known in closed form by symmetry
    # (estimated here from 10^6 draws), every ‖X‖ = 1 = B around c = 0.
    def draw(size):
        v = rng.normal(size=(size, 3)) + np.array([0.0, 0.0, 1.5])
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    mean = draw(1_000_000).mean(axis=0)
    misses = sum(np.linalg.norm(draw(n).mean(axis=0) - mean) > radius for _ in range(trials))
    assert misses / trials <= alpha
    # The radius is not vacuous-by-construction: a quarter of it is missed often.
    assert sum(np.linalg.norm(draw(n).mean(axis=0) - mean) > radius / 4 for _ in range(500)) > 25


def test_smoothgen_bounds_reject_bad_parameters():
    for call in (lambda: stats.tv_bound(-1.0, 1.0), lambda: stats.tv_bound(1.0, 0.0),
                 lambda: stats.mean_smoothing_bound(-1.0, 0.1, 1.0), lambda: stats.vector_mean_deviation(1.0, 0, 0.1),
                 lambda: stats.vector_mean_deviation(math.inf, 5, 0.1), lambda: stats.empirical_bernstein_radius(0.1, 1, 0.1)):
        with pytest.raises(InvalidParameterError):
            call()


@pytest.mark.parametrize("n", [10**16, 10**18, 2**62])
def test_lower_bounds_never_round_to_one(n):
    """Issue 10.7: with all n votes, the exact bound α^(1/n) rounds to 1.0 for n ≳ 10¹⁸ and Φ⁻¹(1) = inf
    would certify an infinite radius. Lower bounds stop at the largest double below 1."""
    p = stats.clopper_pearson_lower(n, n, 0.001)
    assert p < 1.0 and math.isfinite(stats.cohen_radius(0.25, p))
    for method in stats.BOUNDED_MEAN_METHODS:
        lower = stats.bounded_mean_lower(1.0, 0.0, n, 0.001, method)
        assert lower < 1.0 and math.isfinite(stats.generation_step_radius(0.5, lower, 1.0 - lower))
    assert stats.hoeffding_lower(1.0, n, 0.001) < 1.0
    assert math.isfinite(stats.max_certifiable_radius(0.25, n, 0.001))


@pytest.mark.parametrize(("fn", "args"), [
    (stats.hoeffding_lower, (5, 2, 0.25)),          # a mean outside [0, 1] gave 4.41
    (stats.hoeffding_upper, (-1, 2, 0.25)),
    (stats.normal_ppf, (1.5,)),                     # gave NaN
    (stats.normal_ppf, (float("nan"),)),
    (stats.normal_cdf, (float("nan"),)),
    (stats.generation_step_radius, (0.5, 0.3, False)),  # a bool as a probability gave inf
    (stats.cohen_radius, (0.5, True)),
    (stats.clopper_pearson_lower, (float("nan"), 10, 0.1)),
    (stats.clopper_pearson_lower, (3, float("inf"), 0.1)),
    (stats.clopper_pearson_lower, (3, 10, "0.1")),
    (stats.clopper_pearson_lower, (3, 10, True)),
    (stats.clopper_pearson_upper, (None, 10, 0.1)),
])
def test_bad_arguments_are_invalid_parameter_errors(fn, args):
    """Issue 13.5: every public stats function answers bad arguments with a SmoothgenError."""
    with pytest.raises(InvalidParameterError):
        fn(*args)
