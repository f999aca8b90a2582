"""Statistics behind every certificate: pure functions of counts and distances (no torch, no engine).

Each function names the formula it computes and where it comes from (see docs/theory.md). Special functions
come from SciPy; nothing here is hand-rolled.

The Python code below is the reference implementation. When smoothgen's C++ core is built
(`smoothgen._C`, csrc/: the same formulas with Boost.Math, ~1e-15 relative to SciPy), the functions that
need a special function or a selection (Clopper–Pearson, the binomial test, Φ and Φ⁻¹, the radii, the
order statistic) check their arguments here and then let the core compute the value; the pure
arithmetic ones (Hoeffding/DKW, the order-statistic index, the center check, ε_out) are the same
expression in both and stay here. `SMOOTHGEN_CORE=0` (or `smoothgen._core.disabled()`) runs the reference
only. Values the core declines (non-finite inputs, integers beyond int64) take the reference path, so
behaviour is the same either way.
"""
from __future__ import annotations

import functools
import inspect
import math
import numbers
from fractions import Fraction

import numpy as np
from scipy.stats import beta as _beta
from scipy.stats import binomtest as _binomtest
from scipy.optimize import brentq as _brentq
from scipy.special import betaincc as _betaincc
from scipy.special import betaln as _betaln
from scipy.stats import norm as _norm

from smoothgen.errors import InvalidParameterError

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _core_value(name: str, *args):
    """The C++ core's `name(*args)`, or None when it is not built, switched off, or declines the arguments
    (non-finite values, integers beyond int64): then the caller runs its reference code."""
    from smoothgen import _core  # on first use: loading stats imports nothing beyond smoothgen.errors

    if not all(_INT64_MIN <= a <= _INT64_MAX for a in args if isinstance(a, int) and not isinstance(a, bool)):
        return None
    value = _core.call(name, *args)
    return None if value is _core.NOT_COMPUTED else value


def _real(value, name: str) -> float:
    """A real number that is not a bool and not NaN, as a float; otherwise InvalidParameterError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise InvalidParameterError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _probability(value, name: str) -> float:
    value = _real(value, name)
    if not 0.0 <= value <= 1.0:
        raise InvalidParameterError(f"{name} must lie in [0, 1], got {value!r}")
    return value


def _check_binomial(k: int, n: int) -> None:
    for name, value in (("k", k), ("n", n)):
        if not math.isfinite(_real(value, name)):
            raise InvalidParameterError(f"counts must be finite integers, got {name}={value!r}")
    if int(n) != n or int(k) != k:
        raise InvalidParameterError(f"counts must be integers, got k={k!r}, n={n!r}")
    if n < 1 or k < 0 or k > n:
        raise InvalidParameterError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")


#: The largest double below 1. A lower confidence bound on a probability is at most this: for n ≳ 10¹⁸
#: samples the exact bound rounds to 1.0, and Φ⁻¹(1) = inf would certify an infinite radius.
BELOW_ONE = math.nextafter(1.0, 0.0)


def _below_one(value: float) -> float:
    return min(float(value), BELOW_ONE)


def lower_under_gaussian(p_lower: float, noise_tv: float) -> float:
    """A lower bound on a probability under the exact Gaussian from one under the sampler: p − τ.

    Every event has probability within τ = TV(sampler, Gaussian) under the two (smoothgen.engine.noise);
    the subtraction is rounded down (τ is often far below the resolution of doubles near p).
    """
    noise_tv = _check_noise_tv(noise_tv)
    if noise_tv == 0.0:
        return float(p_lower)
    return max(0.0, math.nextafter(float(p_lower) - noise_tv, -math.inf))


def upper_under_gaussian(p_upper: float, noise_tv: float) -> float:
    """An upper bound on a probability under the exact Gaussian from one under the sampler: p + τ, rounded up."""
    noise_tv = _check_noise_tv(noise_tv)
    if noise_tv == 0.0:
        return float(p_upper)
    return min(1.0, math.nextafter(float(p_upper) + noise_tv, math.inf))


def alpha_under_sampler(alpha: float, n: int, noise_tv: float) -> float:
    """The level at which a test on n sampled copies runs so that it errs with probability ≤ alpha
    under the exact Gaussian: alpha − n·τ (the n copies are within n·τ of i.i.d. Gaussian ones in total
    variation). Raises when n·τ uses up alpha."""
    noise_tv = _check_noise_tv(noise_tv)
    level = float(alpha) - int(n) * noise_tv
    if noise_tv and level > 0:
        level = math.nextafter(level, 0.0)
    if not level > 0.0:
        raise InvalidParameterError(f"alpha = {alpha} is below n·τ = {int(n) * noise_tv:.3g}, the sampler's distance from the Gaussian")
    return level


def _check_alpha(alpha: float) -> None:
    if not (0.0 < _real(alpha, "alpha") < 1.0):
        raise InvalidParameterError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 − alpha) Clopper–Pearson lower confidence bound on a binomial proportion.

    p_lower = Beta.ppf(alpha; k, n − k + 1), and 0 when k = 0 (Clopper & Pearson 1934; the bound of
    Cohen et al. 2019, Alg. CERTIFY, step 3).

    Args:
        k: successes observed.
        n: trials.
        alpha: one-sided error probability.

    Returns:
        The lower bound, in [0, 1).
    """
    _check_binomial(k, n)
    _check_alpha(alpha)
    if k == 0:
        return 0.0
    value = _core_value("clopper_pearson_lower", int(k), int(n), float(alpha))
    if value is None:
        value = _beta.ppf(alpha, k, n - k + 1)
    return _below_one(value)


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided (1 − alpha) Clopper–Pearson upper confidence bound: Beta.ppf(1 − alpha; k + 1, n − k), 1 if k = n.

    Args:
        k: successes observed.
        n: trials.
        alpha: one-sided error probability.

    Returns:
        The upper bound, in (0, 1].
    """
    _check_binomial(k, n)
    _check_alpha(alpha)
    if k == n:
        return 1.0
    value = _core_value("clopper_pearson_upper", int(k), int(n), float(alpha))
    if value is not None:
        return value
    return float(_beta.ppf(1.0 - alpha, k + 1, n - k))


def binomial_test_pvalue(k: int, n: int, p: float = 0.5) -> float:
    """Two-sided exact binomial test p-value of k successes out of n at success probability p.

    Used by Cohen et al.'s PREDICT with the top two counts (scipy.stats.binomtest; SciPy removed the
    older binom_test in 1.12).
    """
    _check_binomial(k, n)
    if not (0.0 < p < 1.0):
        raise InvalidParameterError(f"p must lie strictly between 0 and 1, got {p!r}")
    value = _core_value("binomial_test_pvalue", int(k), int(n), float(p))
    if value is not None:
        return value
    return float(_binomtest(int(k), int(n), p, alternative="two-sided").pvalue)


def hoeffding_radius(n: int, alpha: float, two_sided: bool = False) -> float:
    """Hoeffding deviation for the mean of n samples in [0, 1]: sqrt(ln(1/alpha) / (2n)).

    With probability ≥ 1 − alpha the true mean is ≥ (empirical mean − radius) (one-sided), or within
    ± sqrt(ln(2/alpha) / (2n)) of it (two-sided). Hoeffding (1963). The same expression is the
    Dvoretzky–Kiefer–Wolfowitz bound on an empirical CDF (Massart's constant), which is how center
    smoothing uses it (Δ1 = sqrt(ln(2/α1)/(2n)) and q = p + sqrt(ln(1/α2)/(2m)); docs/theory.md §2).
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise InvalidParameterError(f"n must be an integer >= 1, got {n!r}")
    _check_alpha(alpha)
    return math.sqrt(math.log((2.0 if two_sided else 1.0) / alpha) / (2.0 * n))


def hoeffding_lower(mean: float, n: int, alpha: float) -> float:
    """One-sided (1 − alpha) Hoeffding lower bound on the mean of [0, 1] variables, clipped at 0."""
    return _below_one(max(0.0, _probability(mean, "mean") - hoeffding_radius(n, alpha)))


def hoeffding_upper(mean: float, n: int, alpha: float) -> float:
    """One-sided (1 − alpha) Hoeffding upper bound on the mean of [0, 1] variables, clipped at 1."""
    return min(1.0, _probability(mean, "mean") + hoeffding_radius(n, alpha))


def _check_noise_tv(noise_tv: float) -> float:
    if isinstance(noise_tv, bool) or not isinstance(noise_tv, (int, float)) or not (0.0 <= noise_tv < 1.0):
        raise InvalidParameterError(f"noise_tv must be a number in [0, 1), got {noise_tv!r}")
    return float(noise_tv)


def dkw_quantile_level(p: float, m: int, alpha: float, noise_tv: float = 0.0) -> float:
    """Level q = p + τ + sqrt(ln(1/alpha) / (2m)) at which the empirical CDF of m samples is read.

    By the one-sided DKW inequality (Massart 1990), with probability ≥ 1 − alpha the ⌈q·m⌉-th order
    statistic of m i.i.d. samples is ≥ the (p + τ)-quantile of the sampled distribution, hence ≥ the
    p-quantile of every distribution within total variation τ of it (the exact Gaussian's, when τ is
    the sampler's `noise_tv`). docs/theory.md §2, CERTIFY step 1.
    """
    if not (0.0 <= p <= 1.0):
        raise InvalidParameterError(f"p must lie in [0, 1], got {p!r}")
    return float(p) + _check_noise_tv(noise_tv) + hoeffding_radius(m, alpha)


def order_statistic_index(q: float, m: int) -> int | None:
    """1-based index k = ⌈q·m⌉ of the order statistic that upper-bounds the q-quantile, or None if q > 1.

    The certificate uses the k-th smallest of m values itself, never an interpolated quantile, which
    can fall below the order statistic the DKW bound assumes (docs/theory.md §2).
    """
    if isinstance(m, bool) or int(m) != m or m < 1:
        raise InvalidParameterError(f"m must be an integer >= 1, got {m!r}")
    if not math.isfinite(q) or q < 0:
        raise InvalidParameterError(f"q must be a finite number >= 0, got {q!r}")
    if q > 1.0:
        return None
    # Plain ceil: rounding q·m upward can only pick a larger (more conservative) order statistic.
    k = math.ceil(q * m)
    return max(1, min(int(k), int(m)))


def order_statistic(values: np.ndarray, k: int) -> float:
    """The k-th smallest (1-based) of values, by selection (np.partition), not by sorting or interpolation."""
    v = np.asarray(values).ravel()
    if not (1 <= k <= v.size):
        raise InvalidParameterError(f"order statistic index {k} outside 1..{v.size}")
    if v.dtype in (np.float32, np.float64) and v.flags.c_contiguous:
        # The same k-th smallest value by std::nth_element, without the partitioned copy.
        value = _core_value("order_statistic", v, int(k))
        if value is not None:
            return value
    return float(np.partition(v, k - 1)[k - 1])


def normal_cdf(z: float) -> float:
    """Standard normal CDF Φ(z)."""
    z = _real(z, "z")
    value = _core_value("normal_cdf", float(z)) if math.isfinite(z) else None
    if value is not None:
        return value
    return float(_norm.cdf(z))


def normal_ppf(p: float) -> float:
    """Standard normal quantile Φ⁻¹(p) (−inf at 0, +inf at 1)."""
    p = _probability(p, "p")
    value = _core_value("normal_ppf", float(p)) if 0.0 <= p <= 1.0 else None
    if value is not None:
        return value
    return float(_norm.ppf(p))


def cohen_radius(sigma: float, p_lower: float) -> float:
    """Certified ℓ2 radius σ·Φ⁻¹(pA_lower) of Cohen et al. (2019), Theorem 1 with pB = 1 − pA.

    Only meaningful when p_lower > 1/2 (the caller abstains otherwise); returns 0 for p_lower ≤ 1/2.
    """
    if not (_real(sigma, "sigma") > 0 and math.isfinite(sigma)):
        raise InvalidParameterError(f"sigma must be a finite number > 0, got {sigma!r}")
    p_lower = _probability(p_lower, "p_lower")
    if p_lower <= 0.5:
        return 0.0
    value = _core_value("cohen_radius", float(sigma), float(p_lower))
    if value is not None:
        return value
    return float(sigma * _norm.ppf(p_lower))


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """Largest radius any certificate with n samples can give: σ·Φ⁻¹(alpha^(1/n)) (all n votes for one class).

    With k = n the Clopper–Pearson lower bound is Beta.ppf(alpha; n, 1) = alpha^(1/n) exactly.
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise InvalidParameterError(f"n must be an integer >= 1, got {n!r}")
    _check_alpha(alpha)
    return cohen_radius(sigma, _below_one(alpha ** (1.0 / n)))


def center_smoothing_check(
    p: float, n: int, alpha1: float, delta: float, n_select: int | None = None, noise_tv: float = 0.0
) -> tuple[bool, float, float]:
    """Acceptance check of center smoothing's SMOOTH step (Kumar & Goldstein 2021; docs/theory.md §2).

    Δ1 = sqrt(ln(2/α1)/(2·min(n, n_select))) + τ, Δ2 = 1/2 − (p − Δ1); accept when max(Δ1, Δ2) ≤ Δ.

    Why min(n, n_select): at a neighbour x' the proof needs (a) more than half of the n_select samples
    that choose f̂(x') inside a ball of mass ≥ 1/2 + Δ, which fails with probability ≤ exp(−2·n_select·Δ²)
    ≤ α1/2 only when Δ ≥ Δ1(n_select), and (b) the check's Hoeffding bound at its n fresh samples
    (α1/2). Why + τ: the samples come from a sampler within total variation τ per copy of the exact
    Gaussian, so every probability the proof uses is known only up to ±τ.

    Args:
        p: fraction of n fresh samples within r̂ of the center.
        n: number of fresh samples of the check.
        alpha1: error probability of the smoothing step.
        delta: the tolerance Δ of the certificate, in (0, 1/2).
        n_select: samples that chose the center (default n, as `CenterSmoother` draws).
        noise_tv: τ, the sampler's per-copy total variation from the exact Gaussian.

    Returns:
        (accepted, Δ1, Δ2).
    """
    if not (0.0 < delta < 0.5):
        raise InvalidParameterError(f"delta must lie strictly between 0 and 1/2, got {delta!r}")
    if not (0.0 <= p <= 1.0):
        raise InvalidParameterError(f"p must lie in [0, 1], got {p!r}")
    n_select = n if n_select is None else n_select
    delta1 = hoeffding_radius(min(n, n_select), alpha1, two_sided=True) + _check_noise_tv(noise_tv)
    delta2 = 0.5 - (p - delta1)
    return (max(delta1, delta2) <= delta, delta1, delta2)


def center_candidate_miss(delta: float, n_candidates: int | None, n: int, noise_tv: float = 0.0) -> float:
    """Probability, charged to the certificate, that none of the candidates of the high-dimensional
    variant lies in the ball the proof needs: (1/2 − Δ + τ)^k for k = n_candidates < n, else 0.

    The β = 2γ approximation at a neighbour x' needs one candidate inside a ball of mass ≥ 1/2 + Δ
    (≥ 1/2 + Δ − τ under the sampler); the k candidates are i.i.d. samples, so all miss it with
    probability ≤ (1/2 − Δ + τ)^k. When every sample is a candidate (n_candidates None or ≥ n) the
    Hoeffding step of `center_smoothing_check` already puts more than half of them there.

    Args:
        delta: the tolerance Δ in (0, 1/2).
        n_candidates: k, or None for the exact min-median center.
        n: the selection samples.
        noise_tv: τ, the sampler's per-copy total variation from the exact Gaussian.
    """
    if not (0.0 < delta < 0.5):
        raise InvalidParameterError(f"delta must lie strictly between 0 and 1/2, got {delta!r}")
    noise_tv = _check_noise_tv(noise_tv)
    if n_candidates is None or n_candidates >= n:
        return 0.0
    if isinstance(n_candidates, bool) or int(n_candidates) != n_candidates or n_candidates < 1:
        raise InvalidParameterError(f"n_candidates must be an integer >= 1, got {n_candidates!r}")
    return float(min(1.0, 0.5 - delta + noise_tv) ** int(n_candidates))


def center_certify_level(eps_in: float, sigma: float, delta: float) -> float:
    """p = Φ(Φ⁻¹(1/2 + Δ) + ε1/σ): the probability mass the certified ball must hold (docs/theory.md §2)."""
    if not (0.0 < delta < 0.5):
        raise InvalidParameterError(f"delta must lie strictly between 0 and 1/2, got {delta!r}")
    if not (eps_in >= 0 and math.isfinite(eps_in)):
        raise InvalidParameterError(f"eps_in must be a finite number >= 0, got {eps_in!r}")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise InvalidParameterError(f"sigma must be a finite number > 0, got {sigma!r}")
    value = _core_value("center_certify_level", float(eps_in), float(sigma), float(delta))
    if value is not None:
        return value
    return float(_norm.cdf(_norm.ppf(0.5 + delta) + eps_in / sigma))


def center_ablation_level(delta: float, delta_r: float) -> float:
    """p = 1/2 + Δ + Δ_r: the mass the certified ball must hold under token ablation (docs/theory.md §2 with §4g).

    Kumar & Goldstein's proof needs one fact about the smoothing distribution at every x' of the threat
    model: a ball B = B(ẑ, R̂) with P_x(B) ≥ p still has P_x'(B) ≥ 1/2 + Δ. Gaussian noise gives it with
    p = Φ(Φ⁻¹(1/2 + Δ) + ε1/σ) (`center_certify_level`). Under randomized ablation (keep k of L
    positions), x' differing from x in r positions has |P_x(S) − P_x'(S)| ≤ Δ_r = 1 − C(L − r, k)/C(L, k)
    for EVERY output event S (the ablated inputs coincide unless the kept subset meets an edited
    position; Levine & Feizi 2020), so p = 1/2 + Δ + Δ_r suffices. Δ_r comes from
    `smoothgen.generative.ablation_delta` (an exact fraction). Randomized deletion gives the same fact with
    Δ_r = 1 − p^r for r inserted, deleted or substituted tokens (docs/theory.md §4j, `deletion_delta`), so
    this level serves it too.

    Computed in exact rational arithmetic and rounded up to a double. The result exceeds 1 when
    Δ_r > 1/2 − Δ: no ball holds that mass, so no certificate at r edits exists (the caller abstains
    with "q > 1", as for a Gaussian ε_in too large for σ and m).

    Args:
        delta: the tolerance Δ ∈ (0, 1/2).
        delta_r: Δ_r ∈ [0, 1] (a float or a `fractions.Fraction`).

    Returns:
        p, in (1/2, 3/2 + Δ].
    """
    if not (0.0 < delta < 0.5):
        raise InvalidParameterError(f"delta must lie strictly between 0 and 1/2, got {delta!r}")
    if not isinstance(delta_r, numbers.Rational):
        delta_r = _real(delta_r, "delta_r")
    if not (0 <= delta_r <= 1):
        raise InvalidParameterError(f"delta_r must lie in [0, 1], got {delta_r!r}")
    exact = Fraction(1, 2) + Fraction(float(delta)) + Fraction(delta_r)
    value = float(exact)
    if Fraction(value) < exact:  # never state a smaller level than the proof needs
        value = math.nextafter(value, math.inf)
    return value


def center_eps_out(gamma: float, beta: float, r_hat: float) -> float:
    """Certified output radius ε2 = γ·(1 + β)·R̂ (Kumar & Goldstein 2021, Thm 1 with a relaxed triangle)."""
    if not (gamma >= 1 and beta >= 1 and r_hat >= 0):
        raise InvalidParameterError(f"need gamma >= 1, beta >= 1, r_hat >= 0, got {gamma}, {beta}, {r_hat}")
    if r_hat == 0:  # ε2 = 0 even where γ·(1 + β) overflows (inf·0 would be NaN)
        return 0.0
    return float(gamma * (1.0 + beta) * r_hat)


# --------------------------------------------------------------------------------------------------
# Bounded ([0, 1]) scores: confidence bounds on a mean (docs/theory.md §4b/§4c)
# --------------------------------------------------------------------------------------------------


def _check_count_n(n: int, minimum: int = 1) -> int:
    if isinstance(n, bool) or int(n) != n or n < minimum:
        raise InvalidParameterError(f"n must be an integer >= {minimum}, got {n!r}")
    return int(n)


def empirical_bernstein_radius(variance: float, n: int, alpha: float) -> float:
    """Empirical Bernstein deviation for the mean of n i.i.d. samples in [0, 1].

    sqrt(2·V_n·ln(2/alpha)/n) + 7·ln(2/alpha)/(3·(n − 1)), where V_n is the unbiased sample variance
    (denominator n − 1). Maurer & Pontil (2009), "Empirical Bernstein bounds and sample variance
    penalization", Theorem 4: with probability ≥ 1 − alpha, E[Z] ≥ mean − radius (one-sided; the
    ln(2/alpha) already pays for estimating the variance). Apply it to 1 − Z for the upper side.

    Much tighter than Hoeffding when the scores vary little (a confident model: V_n ≈ 0), slightly
    looser when V_n is near its maximum 1/4.

    Args:
        variance: the unbiased sample variance V_n of the n scores, in [0, 1/4] up to rounding.
        n: number of samples (≥ 2).
        alpha: one-sided error probability.

    Returns:
        The deviation (may exceed 1: the caller clips its bound to [0, 1]).
    """
    n = _check_count_n(n, 2)
    _check_alpha(alpha)
    if not (variance >= 0 and math.isfinite(variance)):
        # Rounding of a sum-of-squares formula can give −1e−17: the caller should clip; NaN is a bug.
        if math.isfinite(variance) and variance > -1e-12:
            variance = 0.0
        else:
            raise InvalidParameterError(f"variance must be a finite number >= 0, got {variance!r}")
    log_term = math.log(2.0 / alpha)
    return math.sqrt(2.0 * variance * log_term / n) + 7.0 * log_term / (3.0 * (n - 1))


def empirical_bernstein_lower(mean: float, variance: float, n: int, alpha: float) -> float:
    """One-sided (1 − alpha) empirical Bernstein lower bound on the mean of [0, 1] scores, clipped at 0.

    mean − sqrt(2·V_n·ln(2/alpha)/n) − 7·ln(2/alpha)/(3·(n − 1)) (Maurer & Pontil 2009, Thm 4).
    """
    if not (0.0 <= mean <= 1.0):
        raise InvalidParameterError(f"mean must lie in [0, 1], got {mean!r}")
    return _below_one(max(0.0, float(mean) - empirical_bernstein_radius(variance, n, alpha)))


#: Methods of `bounded_mean_lower`.
BOUNDED_MEAN_METHODS = ("hoeffding", "bernstein", "best")


def bounded_mean_lower(mean: float, variance: float, n: int, alpha: float, method: str = "best") -> float:
    """One-sided (1 − alpha) lower confidence bound on E[Z] for i.i.d. Z in [0, 1].

    Args:
        mean: the sample mean of the n scores.
        variance: their unbiased sample variance (ignored by "hoeffding").
        n: number of samples.
        alpha: one-sided error probability of the returned bound.
        method: "hoeffding" (mean − sqrt(ln(1/alpha)/(2n)), Hoeffding 1963), "bernstein" (Maurer &
            Pontil 2009, Thm 4; needs n ≥ 2), or "best": the larger of the two, each computed at
            alpha/2 (union bound: both hold together with probability ≥ 1 − alpha, so their maximum
            is a valid (1 − alpha) bound). With n = 1, "best" is Hoeffding at alpha.

    Returns:
        The lower bound, in [0, 1].
    """
    if method not in BOUNDED_MEAN_METHODS:
        raise InvalidParameterError(f"method must be one of {BOUNDED_MEAN_METHODS}, got {method!r}")
    _check_alpha(alpha)
    n = _check_count_n(n)
    if not (0.0 <= mean <= 1.0):
        raise InvalidParameterError(f"mean must lie in [0, 1], got {mean!r}")
    if method == "hoeffding" or (method == "best" and n < 2):
        return hoeffding_lower(mean, n, alpha)
    if method == "bernstein":
        return empirical_bernstein_lower(mean, variance, n, alpha)
    return max(hoeffding_lower(mean, n, alpha / 2.0), empirical_bernstein_lower(mean, variance, n, alpha / 2.0))


def generation_step_radius(sigma: float, lower: float, upper: float) -> float:
    """Certified radius of one step of smoothed greedy decoding (docs/theory.md §4c, from §4b).

    R_t = (σ/2)·(Φ⁻¹(L) − Φ⁻¹(U)) if L > U else 0, where L lower-bounds the smoothed probability p̄_a
    of the chosen token and U upper-bounds every other token's p̄_b (U = 1 − L is always valid). Since
    x ↦ σ·Φ⁻¹(p̄_b(x)) is 1-Lipschitz for every b (Salman et al. 2019, App. A, Lemma 2), the top token
    stays a for every embedding perturbation with ‖Δ‖_F < R_t. With U = 1 − L this is σ·Φ⁻¹(L).

    Args:
        sigma: noise standard deviation σ > 0.
        lower: L ∈ [0, 1].
        upper: U ∈ [0, 1].

    Returns:
        R_t ≥ 0 (inf only if L = 1 or U = 0, which no finite sample gives).
    """
    if not (_real(sigma, "sigma") > 0 and math.isfinite(sigma)):
        raise InvalidParameterError(f"sigma must be a finite number > 0, got {sigma!r}")
    lower, upper = _probability(lower, "lower"), _probability(upper, "upper")
    if lower <= upper:
        return 0.0
    return float(0.5 * sigma * (normal_ppf(lower) - normal_ppf(upper)))


# --------------------------------------------------------------------------------------------------
# Sample-free bounds for smoothed generators (docs/theory.md §4a)
# --------------------------------------------------------------------------------------------------


def _check_shift(delta_norm: float, sigma: float) -> None:
    if not (delta_norm >= 0 and math.isfinite(delta_norm)):
        raise InvalidParameterError(f"delta_norm must be a finite number >= 0, got {delta_norm!r}")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise InvalidParameterError(f"sigma must be a finite number > 0, got {sigma!r}")


def tv_bound(delta_norm: float, sigma: float, noise_tv: float = 0.0) -> float:
    """Total-variation bound TV(P_x, P_x') ≤ 2Φ(‖Δ‖/(2σ)) − 1 for a generator smoothed in input space.

    The TV distance between N(x, σ²I) and N(x', σ²I) with ‖x − x'‖ = ‖Δ‖ is exactly 2Φ(‖Δ‖/(2σ)) − 1;
    by the data-processing inequality no post-processing can increase it (docs/theory.md §4a).

    Valid ONLY when the condition reaches the output solely through z = x + ε with a FIXED σ (no
    input-dependent σ), and everything after (decoder, sampler, diffusion steps, token sampling) uses
    randomness independent of ε and of x. One output = one noise draw; it says nothing about an
    aggregate of many draws (use §4c/§4d certificates for those).

    With noise from a sampler within total variation τ = noise_tv of N(0, σ²I) (smoothgen.engine.noise),
    the sampled input distributions at x and x' are each within τ of the Gaussian ones: + 2τ.

    Args:
        delta_norm: ‖Δ‖₂ (Frobenius norm for embedding matrices) of the input perturbation.
        sigma: the fixed noise standard deviation.
        noise_tv: τ, the sampler's per-copy distance from the Gaussian (0: the exact Gaussian).

    Returns:
        The bound, in [0, 1].
    """
    _check_shift(delta_norm, sigma)
    tv = float(2.0 * _norm.cdf(delta_norm / (2.0 * sigma)) - 1.0)
    return upper_under_gaussian(upper_under_gaussian(tv, noise_tv), noise_tv)


def wasserstein_bound(delta_norm: float, sigma: float, diameter: float, p: float = 1.0, noise_tv: float = 0.0) -> float:
    """W_p(P_x, P_x') ≤ D·TV^(1/p) for output distributions on a space of diameter D (docs/theory.md §4a).

    Any coupling achieving TV moves mass TV at most D, so W_p^p ≤ D^p·TV. Same validity conditions
    as `tv_bound` (fixed σ, downstream randomness independent of the noise).

    Args:
        delta_norm: ‖Δ‖₂ of the input perturbation.
        sigma: the fixed noise standard deviation.
        diameter: D, the largest distance between two outputs (e.g. T for Levenshtein on sequences of
            at most T tokens, 2 for unit vectors under ℓ2).
        p: the order p ≥ 1.
        noise_tv: τ of the sampler (as in `tv_bound`).

    Returns:
        The bound on W_p.
    """
    if not (diameter >= 0 and math.isfinite(diameter)):
        raise InvalidParameterError(f"diameter must be a finite number >= 0, got {diameter!r}")
    if not (p >= 1 and math.isfinite(p)):
        raise InvalidParameterError(f"p must be a finite number >= 1, got {p!r}")
    return float(diameter * tv_bound(delta_norm, sigma, noise_tv) ** (1.0 / p))


def event_probability_bound(p_event: float, delta_norm: float, sigma: float, noise_tv: float = 0.0) -> float:
    """Lower bound Φ(Φ⁻¹(P_x(S)) − ‖Δ‖/σ) on P_x'(S), for every output event S (docs/theory.md §4a).

    Gaussian differential privacy is closed under post-processing (Dvijotham et al., ICLR 2020;
    equivalently Salman et al. 2019 Lemma 2 applied to h = 1_S): σ·Φ⁻¹(P_x(S)) is 1-Lipschitz in x.
    Swap the roles (or use 1 − p for the complement) for an upper bound. Same validity conditions as
    `tv_bound`. If p_event is itself estimated, pass a lower confidence bound on it.

    Args:
        p_event: P_x(S) (or a lower bound on it), in [0, 1].
        delta_norm: ‖Δ‖₂ of the input perturbation.
        sigma: the fixed noise standard deviation.
        noise_tv: τ of the sampler: P_x(S) under the sampler bounds the Gaussian's from below after − τ,
            and the result moves back to the sampler with another − τ.

    Returns:
        The lower bound on P_x'(S), in [0, 1].
    """
    _check_shift(delta_norm, sigma)
    if not (0.0 <= p_event <= 1.0):
        raise InvalidParameterError(f"p_event must lie in [0, 1], got {p_event!r}")
    gaussian = lower_under_gaussian(p_event, noise_tv)
    return lower_under_gaussian(float(_norm.cdf(_norm.ppf(gaussian) - delta_norm / sigma)), noise_tv)


# --------------------------------------------------------------------------------------------------
# Mean smoothing of bounded vector outputs (docs/theory.md §4e)
# --------------------------------------------------------------------------------------------------


def mean_smoothing_bound(output_bound: float, delta_norm: float, sigma: float) -> float:
    """‖F(x) − F(x')‖₂ ≤ 2B·(2Φ(‖Δ‖/(2σ)) − 1) for F(x) = E f(x + ε) and ‖f − c‖₂ ≤ B (docs/theory.md §4e).

    For any fixed vector c, F(x) − F(x') = ∫ (f − c) d(P_x − P_x'), whose norm is at most
    B·‖P_x − P_x'‖₁ = 2B·TV(P_x, P_x'), and the TV is `tv_bound`. Outputs clipped to a box [lo, hi]^k
    have B = (hi − lo)·sqrt(k)/2 around the box's center, so 2B is the box's ℓ2 diameter. The bound is
    attained (a two-point f whose sign is a halfspace indicator), so the factor 2 cannot be dropped.

    This bounds the EXPECTATION F. An empirical mean of N samples moves further, by at most
    `vector_mean_deviation` with probability ≥ 1 − alpha at each input.

    Args:
        output_bound: B ≥ 0.
        delta_norm: ‖Δ‖₂ of the input perturbation.
        sigma: the fixed noise standard deviation.

    Returns:
        The bound, in [0, 2B).
    """
    if not (output_bound >= 0 and math.isfinite(output_bound)):
        raise InvalidParameterError(f"output_bound must be a finite number >= 0, got {output_bound!r}")
    return float(2.0 * output_bound * tv_bound(delta_norm, sigma))


def vector_mean_deviation(output_bound: float, n: int, alpha: float) -> float:
    """Confidence radius of the mean of n i.i.d. vectors with ‖X_i − c‖₂ ≤ B: (B/√n)·(1 + sqrt(2·ln(1/alpha))).

    With probability ≥ 1 − alpha, ‖(1/n)Σ X_i − E X‖₂ ≤ this radius, in any dimension. Proof: Z =
    ‖mean − E X‖ has E Z ≤ sqrt(E Z²) = sqrt(E‖X − E X‖²/n) ≤ B/√n; replacing one X_i moves Z by at
    most 2B/n, so McDiarmid's bounded-differences inequality gives P(Z ≥ E Z + t) ≤ exp(−n·t²/(2B²)).

    Args:
        output_bound: B ≥ 0.
        n: number of vectors averaged.
        alpha: error probability.

    Returns:
        The radius.
    """
    if not (output_bound >= 0 and math.isfinite(output_bound)):
        raise InvalidParameterError(f"output_bound must be a finite number >= 0, got {output_bound!r}")
    n = _check_count_n(n)
    _check_alpha(alpha)
    return float(output_bound / math.sqrt(n) * (1.0 + math.sqrt(2.0 * math.log(1.0 / alpha))))


# --------------------------------------------------------------------------------------------------
# Anytime-valid tests of a Bernoulli mean: a betting confidence sequence (docs/theory.md §6)
# --------------------------------------------------------------------------------------------------

#: Safety margins on the log-capital before it counts as having reached ln(1/alpha): BETTING_LOG_MARGIN nats
#: plus BETTING_RELATIVE_MARGIN times the size of the terms the closed form adds (n·|ln m| and alike, ~10⁵
#: at n = 10⁵), far above the rounding of doubles and of SciPy's betaln/betaincc (~1e-14 relative). They cost
#: a factor e^(1e-6 + 1e-12·size) on 1/alpha: 1.0000011 at n = 10⁵.
BETTING_LOG_MARGIN = 1e-6
BETTING_RELATIVE_MARGIN = 1e-12


def _betting_args(k: int, n: int, m: float) -> float:
    _check_binomial(k, n)
    m = _real(m, "m")
    if not (0.0 < m < 1.0):
        raise InvalidParameterError(f"m must lie strictly between 0 and 1, got {m!r}")
    return m


def betting_log_wealth(k: int, n: int, m: float) -> float:
    """ln K_n(m): the capital after n Bernoulli outcomes (k ones) of a bettor against H0: p ≤ m.

    The bettor splits one unit of capital uniformly over the bet fractions u ∈ [0, 1] and, on each
    outcome X_i, multiplies the part at fraction u by 1 + (u/m)·(X_i − m) (u/m is the stake λ; u = 1
    is the largest stake that cannot go negative). A mixture of constant bets is itself a betting
    strategy with predictable stakes λ_i (the capital-weighted mean of u/m after X_1..X_{i−1}: Cover's
    universal portfolio), so K is the capital process of a betting confidence sequence (Waudby-Smith &
    Ramdas, JRSSB 2024, "Estimating means of bounded random variables by betting"; its regret against
    the best constant bet: Orabona & Jun, IEEE Trans. Inf. Theory 2024). Under H0 every factor has mean
    1 + λ(p − m) ≤ 1, so K is a nonnegative supermartingale with K_0 = 1, and by Ville's inequality
    P(K_n ≥ 1/alpha for some n) ≤ alpha — at any stopping time, however often it is looked at.

    It depends on the outcomes only through (k, n) (each constant bet does), so checking after batches
    of any size is the same process seen less often. With p₁ = m + (1 − m)u the integral is closed-form:
        K_n(m) = B(k + 1, n − k + 1) · P(Beta(k + 1, n − k + 1) > m) / (m^k (1 − m)^(n − k + 1)),
    and K_n(m) is non-increasing in m (every factor 1 + u(1 − m)/m and 1 − u is).

    Args:
        k: ones observed (votes for the selected class).
        n: outcomes observed.
        m: the null's upper end, in (0, 1).

    Returns:
        ln K_n(m) (−inf when the capital underflows to 0).
    """
    m = _betting_args(k, n, m)
    return _betting_log_wealth(int(k), int(n), m)[0]


def _betting_log_wealth(k: int, n: int, m: float) -> tuple[float, float]:
    """(ln K_n(m), the summed size of its terms, which bounds its rounding error relative to one ulp)."""
    a, b = k + 1, n - k + 1
    tail = float(_betaincc(a, b, m))  # P(Beta(a, b) > m); it underflows to 0 only above k/n, where K_n(m) ≤ 1
    log_tail = math.log(tail) if tail > 0.0 else -math.inf
    terms = (float(_betaln(a, b)), log_tail, -k * math.log(m), -b * math.log1p(-m))
    return float(sum(terms)), float(sum(abs(t) for t in terms if math.isfinite(t)))


def _betting_excess(k: int, n: int, m: float, log_level: float) -> float:
    """ln K_n(m) − ln(1/alpha), less the safety margins: ≥ 0 means the capital has surely reached 1/alpha."""
    value, size = _betting_log_wealth(k, n, m)
    return value - log_level - BETTING_LOG_MARGIN - BETTING_RELATIVE_MARGIN * size


def betting_proves_above(k: int, n: int, m: float, alpha: float) -> bool:
    """True when the betting capital against H0: p ≤ m has reached 1/alpha (`betting_log_wealth`):
    then p > m, wrongly with probability ≤ alpha over the whole sequence of checks (Ville's inequality),
    whenever the caller stops. Rounding margins (`BETTING_LOG_MARGIN`, `BETTING_RELATIVE_MARGIN`) are
    required on top of ln(1/alpha)."""
    m = _betting_args(k, n, m)
    _check_alpha(alpha)
    return bool(_betting_excess(int(k), int(n), m, math.log(1.0 / alpha)) >= 0.0)


def betting_first_decision(m: float, alpha: float, most: int) -> int | None:
    """The fewest outcomes that can prove p > m: the smallest n ≤ `most` at which n ones out of n make
    `betting_proves_above` true (None when not even `most` do). Before it no check can certify, so a
    sequential test may look first there; any schedule of looks is as sound (Ville's inequality holds at
    every stopping time), this one only wastes no copies. Found by bisection on the all-ones wealth, which
    grows with n (each one multiplies it by 1 + λ(1 − m) ≥ 1), and checked at the result."""
    m = _betting_args(0, 1, m)
    _check_alpha(alpha)
    most = int(most)
    if most < 1 or not betting_proves_above(most, most, m, alpha):
        return None
    lo, hi = 1, most
    while lo < hi:
        mid = (lo + hi) // 2
        if betting_proves_above(mid, mid, m, alpha):
            hi = mid
        else:
            lo = mid + 1
    return lo


def betting_lower(k: int, n: int, alpha: float) -> float:
    """Lower end of the betting confidence sequence for p at (k, n): a value L with K_n(L) ≥ 1/alpha.

    Because K_n(m) is non-increasing in m, P(p ≤ L_n for some n) ≤ P(K_n(p) ≥ 1/alpha for some n) ≤ alpha:
    the bound holds at every n at once (Waudby-Smith & Ramdas 2024). Found by scipy.optimize.brentq on
    ln K_n(m) = ln(1/alpha) + margins, then stepped down until K_n(L) is checked to reach the level, so the
    returned value is never above the exact root (0 when K_n(m) < 1/alpha for every m > 0).

    Args:
        k: ones observed.
        n: outcomes observed.
        alpha: error probability of the whole sequence.

    Returns:
        L, in [0, 1).
    """
    _check_binomial(k, n)
    _check_alpha(alpha)
    k, n = int(k), int(n)
    log_level = math.log(1.0 / alpha)

    def excess(m: float) -> float:
        return _betting_excess(k, n, m, log_level)

    lo = 1e-300
    hi = k / n if k < n else BELOW_ONE  # K_n(k/n) ≤ 1: no bet gains at the maximum-likelihood value
    if k == 0 or not excess(lo) >= 0.0:
        return 0.0
    if excess(hi) >= 0.0:  # impossible in exact arithmetic (K_n(hi) ≤ 1); refuse to guess
        raise InvalidParameterError(f"betting_lower: no root below {hi!r} for k={k}, n={n}, alpha={alpha}")
    root = float(_brentq(excess, lo, hi, xtol=1e-300, rtol=4.0 * np.finfo(float).eps, maxiter=500))
    step = 8.0 * np.finfo(float).eps * root
    for _ in range(64):
        if excess(root) >= 0.0:
            return _below_one(root)
        root, step = root - step, 2.0 * step
        if root <= lo:
            break
    return 0.0


def betting_upper(k: int, n: int, alpha: float) -> float:
    """Upper end of the betting confidence sequence: 1 − (lower end for the zeros, n − k of n), rounded up.

    P(p ≥ U_n for some n) ≤ alpha, by `betting_lower` applied to 1 − p."""
    _check_binomial(k, n)
    lower_of_zeros = betting_lower(int(n) - int(k), n, alpha)
    if lower_of_zeros == 0.0:
        return 1.0
    return min(1.0, math.nextafter(1.0 - lower_of_zeros, math.inf))


# --------------------------------------------------------------------------------------------------
# Every public function: bad arguments are an InvalidParameterError, whatever they are
# --------------------------------------------------------------------------------------------------

#: Keyword arguments that are flags, the only places a bool is an argument.
_FLAG_ARGUMENTS = frozenset({"two_sided"})


def _refuses_bad_arguments(fn):
    """Wrap a public function of numbers: a bool where a number belongs, an argument Python cannot
    compare or convert (None, a string, a list: TypeError/ValueError/OverflowError from the arithmetic), or
    a NaN result (a bound that says nothing) becomes an InvalidParameterError naming the function."""

    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidParameterError(f"{fn.__name__}: {exc}") from exc
        for name, value in bound.arguments.items():
            if isinstance(value, (bool, np.bool_)) and name not in _FLAG_ARGUMENTS:
                raise InvalidParameterError(f"{fn.__name__}: {name} must be a number, not a bool ({value!r})")
        try:
            result = fn(*args, **kwargs)
        except InvalidParameterError:
            raise
        except (TypeError, ValueError, OverflowError, ZeroDivisionError) as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise InvalidParameterError(f"{fn.__name__}: invalid arguments ({reason})") from exc
        values = result if isinstance(result, tuple) else (result,)
        if any(isinstance(v, float) and math.isnan(v) for v in values):
            raise InvalidParameterError(f"{fn.__name__}: no bound for these arguments (the formula gives NaN)")
        return result

    return checked


for _name in (
    "lower_under_gaussian", "upper_under_gaussian", "alpha_under_sampler", "clopper_pearson_lower",
    "clopper_pearson_upper", "binomial_test_pvalue", "hoeffding_radius", "hoeffding_lower", "hoeffding_upper",
    "dkw_quantile_level", "order_statistic_index", "order_statistic", "normal_cdf", "normal_ppf", "cohen_radius",
    "max_certifiable_radius", "center_smoothing_check", "center_candidate_miss", "center_certify_level",
    "center_eps_out", "center_ablation_level", "betting_first_decision", "empirical_bernstein_radius", "empirical_bernstein_lower", "bounded_mean_lower",
    "generation_step_radius", "tv_bound", "wasserstein_bound", "event_probability_bound", "mean_smoothing_bound",
    "vector_mean_deviation", "betting_log_wealth", "betting_proves_above", "betting_lower", "betting_upper",
):
    globals()[_name] = _refuses_bad_arguments(globals()[_name])
del _name
