"""Input-dependent (adaptive) noise levels σ(x): docs/theory.md §5.

Smoothing with a σ that depends on the input breaks the usual certificates: the smoothed model at x'
uses σ(x') ≠ σ(x), so Cohen's radius σ(x)·Φ⁻¹(pA) computed at x proves nothing about x' (Súkeník,
Kuvshinov, Günnemann, ICML 2022, "Intriguing properties of input-dependent randomized smoothing").
This module offers two kinds of σ maps and is explicit about which one carries a certificate.

1. `GradientSigma` — seed 000's rule σ(x) = σ_min + (σ_max − σ_min)·(η(x) − η_min)/(η_max − η_min),
   η(x) = ‖∇ₓ L(x)‖₂. A quality heuristic ONLY: a gradient norm has no Lipschitz constant one can
   prove, so nothing certifies its outputs. `adaptive_predict`, `adaptive_center` and
   `adaptive_generate` run smoothing with any σ map and return `AdaptiveResult(certified=False, reason=...)`.

2. `SemiElasticSigma` — σ(x) = σ_b·exp(rate·ρ(x)) with ρ(x) = min(dist(x, S), ρ_max) the (clipped)
   distance to a fixed reference set S. dist(·, S) is 1-Lipschitz and clipping keeps it so, hence
   |ln σ(x) − ln σ(x')| ≤ r‖x − x'‖ with r = |rate| BY CONSTRUCTION (the semi-elasticity of
   Súkeník et al.). `SemiElasticClassifier` certifies classification with it (`semi_elastic_radius`).

The semi-elastic certificate (derivation; ours, following the paper's Neyman–Pearson argument):
at x the smoothed classifier uses σ0 = σ(x) and we hold pA_lower ≤ P(f(x + σ0ε) = A). For x' with
‖x − x'‖ = R', σ1 = σ(x') lies in I(R') = [σ0·e^(−rR'), σ0·e^(rR')]. The smallest possible
P(f(x' + σ1ε) = A) over all base classifiers f with P(f(x + σ0ε) = A) ≥ p is, by the Neyman–Pearson
lemma, Q(S*) for the likelihood-ratio set S* = {z : dQ/dP(z) ≤ t} with P = N(x, σ0²I),
Q = N(x', σ1²I), P(S*) = p. With x = 0, x' = R·e1 and σ1 ≠ σ0, ln dQ/dP is a quadratic in z with
‖z‖²-coefficient (σ1² − σ0²)/(2σ0²σ1²), so S* is a ball (σ1 > σ0) or the complement of a ball
(σ1 < σ0) centred at c = R·σ0²/(σ0² − σ1²)·e1. For z ~ N(μ, s²I), ‖z − c‖²/s² is noncentral χ² with d
degrees of freedom and noncentrality ‖μ − c‖²/s²; here λ_P = R²σ0²/(σ0² − σ1²)² under P and
λ_Q = R²σ1²/(σ0² − σ1²)² under Q. So, with F = the ncx2 CDF:
    σ1 > σ0:  t = F⁻¹(p; d, λ_P),       worst = F(t·σ0²/σ1²; d, λ_Q)
    σ1 < σ0:  t = F⁻¹(1 − p; d, λ_P),   worst = 1 − F(t·σ0²/σ1²; d, λ_Q)
    σ1 = σ0:  worst = Φ(Φ⁻¹(p) − R/σ0)   (Cohen et al.'s halfspace)
(`worst_case_probability`). x' keeps class A when worst > 1/2. The certified radius is the largest R
with W(R) = min_{σ1 ∈ I(R)} worst(R, σ1) > 1/2 (`semi_elastic_radius`); for r = 0 it is Cohen's
σ0·Φ⁻¹(pA_lower). Numerics, all conservative: a radius first tries the cheap sound bound
Φ(Φ⁻¹(p) − R/σ0) − TV(N(0, σ0²I), N(0, σ1²I)) at the interval's ends (TV grows with |ln σ1/σ0|); if
that does not clear 1/2, the minimum over I(R) is taken over a log-spaced grid that includes σ0 and
both endpoints (in every case we tried the minimum sits at an endpoint); worst(R, σ1) is
non-increasing in R and W(R) therefore too (checked numerically in tests/test_adaptive.py), so R is
found by bisection and then re-checked on a grid of radii below it; where scipy's ncx2 loses accuracy
(|ln σ1/σ0| < 1e-5, huge λ) or returns a value above the halfspace's (a feasible set, so an upper
bound on the minimum), the sound but looser bound Φ(Φ⁻¹(p) − R/σ0) − TV(N(0, σ0²I), N(0, σ1²I)) is
used instead. Like every certificate here, it assumes exact arithmetic in the σ map and the noise.
In high dimension the usable r is tiny (≈ 1/√d): a σ that varies enough to help quality shrinks the
radius towards 0 (see `semi_elastic_radius`'s tests); report the gain honestly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch
from scipy.stats import chi2 as _chi2
from scipy.stats import ncx2 as _ncx2
from scipy.stats import norm as _norm

from smoothgen import stats
from smoothgen.center import CenterSmoother
from smoothgen.certificates import ABSTAIN, Prediction
from smoothgen.classify import SmoothedClassifier
from smoothgen.engine import DEFAULT_BATCH_SIZE, Runtime, Sampler
from smoothgen.errors import InvalidInputError, InvalidParameterError
from smoothgen.validate import check_count, check_input, check_positive, check_sigma

__all__ = [
    "NO_CERTIFICATE_REASON",
    "AdaptiveResult",
    "DistanceToSet",
    "GradientSigma",
    "SemiElasticCertificate",
    "SemiElasticClassifier",
    "SemiElasticSigma",
    "adaptive_center",
    "adaptive_generate",
    "adaptive_predict",
    "scale_tv",
    "semi_elastic_radius",
    "worst_case_probability",
    "worst_over_interval",
]

#: Why adaptive-σ outputs outside `SemiElasticClassifier` carry no certificate.
NO_CERTIFICATE_REASON = (
    "input-dependent sigma: the smoothed model at x' uses sigma(x') != sigma(x), so certificates computed "
    "with one fixed sigma do not hold (Sukenik et al., ICML 2022); only classification with a semi-elastic "
    "sigma map (SemiElasticClassifier) is certified"
)

#: Below this |ln σ1/σ0| scipy's ncx2 (noncentrality ~ R²/(2σ0·ln(σ1/σ0))²) is not trusted (it returns NaN
#: near 1e-6); the TV fallback is used.
_MIN_LOG_RATIO = 1e-5

#: Above this noncentrality the ncx2 series gets slow (≈ 0.1 s per value at 1e10, 1 ms at 1e7, 2-core
#: CPU); the TV fallback is used. It only concerns |ln σ1/σ0| ≲ R/(2·10⁴·σ0), where the fallback loses
#: ≈ 0.57·sqrt(d)·|ln σ1/σ0| of probability (≤ 0.005 at d = 3072): near W = 1/2 a radius loss of
#: about 2.5·σ0·0.005.
_MAX_NONCENTRALITY = 1e8

#: σ1 values (log-spaced, both endpoints included) at which the worst case over I(R) is evaluated; the
#: gap between grid points costs TV(N(0, I), N(0, e^(h/64)·I)) of probability (`worst_over_interval`).
DEFAULT_SIGMA_GRID = 257


# --------------------------------------------------------------------------------------------------
# The semi-elastic certificate: pure functions
# --------------------------------------------------------------------------------------------------


def _check_dim(dim: int) -> int:
    return check_count(dim, "dim")


def scale_tv(sigma0: float, sigma1: Any, dim: int) -> np.ndarray:
    """Exact TV(N(0, σ0²I_d), N(0, σ1²I_d)).

    The densities cross on the sphere ‖z‖² = t, t = d·σ0²σ1²·ln(σ1²/σ0²)/(σ1² − σ0²); the TV is the
    difference of the two χ²_d probabilities of the ball ‖z‖² < t.

    Shapes:
        sigma1: scalar or [K] -> same shape.
    """
    s1 = np.asarray(sigma1, dtype=np.float64)
    ratio = (s1 / sigma0) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        # t/σ0² = d·ρ·ln ρ/(ρ − 1) with ρ = σ1²/σ0² (→ d as ρ → 1).
        level = np.where(np.abs(ratio - 1.0) > 0, dim * ratio * np.log(ratio) / (ratio - 1.0), float(dim))
        tv = np.abs(_chi2.cdf(level, dim) - _chi2.cdf(level / ratio, dim))
    return np.where(ratio == 1.0, 0.0, np.clip(tv, 0.0, 1.0))


def _halfspace(p: float, radius: float, sigma0: float, sigma1: np.ndarray) -> np.ndarray:
    """P_{x',σ1} of the halfspace with P_{x,σ0} = p: a feasible set, so an upper bound on the minimum."""
    return _norm.cdf((sigma0 * _norm.ppf(p) - radius) / sigma1)


def worst_case_probability(p: float, radius: float, sigma0: float, sigma1: Any, dim: int) -> np.ndarray:
    """min P(f(x' + σ1ε) = A) over every f with P(f(x + σ0ε) = A) ≥ p, for ‖x − x'‖ = radius (Neyman–Pearson).

    See the module docstring for the ball / complement-of-ball worst case and its noncentral χ²
    probabilities. Values are lower bounds, exact up to scipy's ncx2 accuracy; where that accuracy is
    not trusted the looser Φ(Φ⁻¹(p) − R/σ0) − TV(σ0, σ1) is returned instead.

    Args:
        p: Probability of class A at x under σ0, in [0, 1].
        radius: ‖x − x'‖₂ ≥ 0.
        sigma0: σ at x, > 0.
        sigma1: σ at x' (scalar or array), > 0.
        dim: Input dimension d.

    Returns:
        The worst-case probabilities, shaped like sigma1.
    """
    sigma0 = check_sigma(sigma0)
    radius = check_positive(radius, "radius", allow_zero=True)
    dim = _check_dim(dim)
    if not 0.0 <= p <= 1.0:
        raise InvalidParameterError(f"p must lie in [0, 1], got {p!r}")
    s1 = np.asarray(sigma1, dtype=np.float64).ravel()
    if not np.all(np.isfinite(s1) & (s1 > 0)):
        raise InvalidParameterError("sigma1 must be finite and > 0")
    if p in (0.0, 1.0):
        return np.full(np.shape(sigma1), p, dtype=np.float64)
    cohen = float(_norm.cdf(_norm.ppf(p) - radius / sigma0))
    out = np.full(s1.shape, cohen)
    log_ratio = np.abs(np.log(s1 / sigma0))
    fallback = np.zeros(s1.shape, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):  # σ1 = σ0: inf or 0/0, never "exact"
        lam_all = radius**2 * np.maximum(sigma0, s1) ** 2 / (sigma0**2 - s1**2) ** 2
    exact = (log_ratio >= _MIN_LOG_RATIO) & (lam_all <= _MAX_NONCENTRALITY)
    fallback |= (log_ratio > 0) & ~exact
    if exact.any():
        s = s1[exact]
        diff = sigma0**2 - s**2
        lam_p = radius**2 * sigma0**2 / diff**2
        lam_q = radius**2 * s**2 / diff**2
        up = s > sigma0
        value = np.empty(s.shape)
        with np.errstate(all="ignore"):
            if up.any():
                t = _ncx2_ppf(p, dim, lam_p[up], upper=False)
                value[up] = _ncx2_cdf(t * sigma0**2 / s[up] ** 2, dim, lam_q[up], upper=False)
            if (~up).any():
                t = _ncx2_ppf(p, dim, lam_p[~up], upper=True)
                value[~up] = _ncx2_cdf(t * sigma0**2 / s[~up] ** 2, dim, lam_q[~up], upper=True)
        # Untrusted values: NaN, outside [0, 1], or above a feasible set's probability (the halfspace).
        bad = ~np.isfinite(value) | (value < 0) | (value > 1) | (value > _halfspace(p, radius, sigma0, s) + 1e-9)
        exact_idx = np.flatnonzero(exact)
        out[exact_idx[~bad]] = value[~bad]
        fallback[exact_idx[bad]] = True
    if fallback.any():
        out[fallback] = np.maximum(0.0, cohen - scale_tv(sigma0, s1[fallback], dim))
    return out.reshape(np.shape(sigma1))


def _ncx2_ppf(p: float, dim: int, lam: np.ndarray, upper: bool) -> np.ndarray:
    """Quantile of the (noncentral) χ²: the t with F(t) = p (upper=False) or 1 − F(t) = p (upper=True)."""
    central = lam == 0
    out = np.empty(lam.shape)
    if central.any():
        out[central] = _chi2.isf(p, dim) if upper else _chi2.ppf(p, dim)
    if (~central).any():
        out[~central] = _ncx2.isf(p, dim, lam[~central]) if upper else _ncx2.ppf(p, dim, lam[~central])
    return out


def _ncx2_cdf(t: np.ndarray, dim: int, lam: np.ndarray, upper: bool) -> np.ndarray:
    """F(t) (upper=False) or 1 − F(t) (upper=True) of the (noncentral) χ²."""
    central = lam == 0
    out = np.empty(lam.shape)
    if central.any():
        out[central] = _chi2.sf(t[central], dim) if upper else _chi2.cdf(t[central], dim)
    if (~central).any():
        out[~central] = _ncx2.sf(t[~central], dim, lam[~central]) if upper else _ncx2.cdf(t[~central], dim, lam[~central])
    return out


def _sigma_grid(sigma0: float, log_halfwidth: float, points: int) -> np.ndarray:
    """σ0·exp(u) for u on a uniform grid of [−h, h] with both endpoints and 0 included."""
    if log_halfwidth == 0:
        return np.array([sigma0])
    u = np.linspace(-log_halfwidth, log_halfwidth, points)
    return sigma0 * np.exp(np.union1d(u, [0.0]))


def worst_over_interval(p: float, radius: float, sigma0: float, r: float, dim: int, grid: int = DEFAULT_SIGMA_GRID) -> float:
    """A lower bound on W(R) = min over σ1 ∈ [σ0·e^(−rR), σ0·e^(rR)] of `worst_case_probability`.

    The minimum over a log grid (endpoints and σ0 included) minus the TV between two scales half a grid
    step apart: every σ1 of the interval lies within half a step (in ln σ) of a grid point σ_i, and for
    every set S, P_{x',σ1}(S) ≥ P_{x',σ_i}(S) − TV(N(0, σ_i²I), N(0, σ1²I)), a TV that grows with
    |ln σ1/σ_i|. So the value bounds the continuous minimum without assuming where it lies.
    """
    sigmas = _sigma_grid(sigma0, r * radius, grid)
    worst = float(np.min(worst_case_probability(p, radius, sigma0, sigmas, dim)))
    if sigmas.size > 1:
        half_step = 0.5 * float(np.max(np.diff(np.log(sigmas))))
        worst -= float(scale_tv(1.0, math.exp(half_step), dim))
    return worst


def semi_elastic_radius(
    p_lower: float,
    sigma0: float,
    r: float,
    dim: int,
    *,
    grid: int = DEFAULT_SIGMA_GRID,
    rtol: float = 1e-3,
    check_points: int = 8,
) -> float:
    """Certified ℓ2 radius of a smoothed classifier whose σ map has semi-elasticity r (Súkeník et al. 2022).

    The largest R (up to rtol, rounded down) such that every x' with ‖x − x'‖ ≤ R, smoothed with any
    σ1 ∈ [σ0·e^(−rR), σ0·e^(rR)], still gives class A probability > 1/2, given P(f(x + σ0ε) = A) ≥ p_lower.
    r = 0 returns Cohen's σ0·Φ⁻¹(p_lower) exactly; the radius never exceeds it.

    Args:
        p_lower: Lower bound on pA at x under σ0 (e.g. Clopper–Pearson); ≤ 1/2 gives 0.
        sigma0: σ(x) > 0.
        r: The σ map's semi-elasticity (log-Lipschitz constant) ≥ 0.
        dim: Input dimension d (the number of coordinates the noise is added to).
        grid: σ1 grid points over the interval (both endpoints and σ0 always included).
        rtol: Relative precision of the bisection (the result is its lower end).
        check_points: Radii in (0, R] re-checked after the bisection (guards monotonicity).

    Returns:
        The radius R ≥ 0.
    """
    sigma0 = check_sigma(sigma0)
    r = check_positive(r, "r", allow_zero=True)
    dim = _check_dim(dim)
    grid = check_count(grid, "grid", minimum=2)
    if not 0.0 <= p_lower <= 1.0:
        raise InvalidParameterError(f"p_lower must lie in [0, 1], got {p_lower!r}")
    if not 0 < rtol < 1:
        raise InvalidParameterError(f"rtol must lie in (0, 1), got {rtol!r}")
    cohen = stats.cohen_radius(sigma0, p_lower)  # 0 when p_lower ≤ 1/2
    if r == 0.0 or cohen == 0.0:
        return cohen
    if not math.isfinite(cohen):
        raise InvalidParameterError("p_lower = 1 gives an infinite radius; pass a finite-sample lower bound")

    def holds(radius: float) -> bool:
        # A cheap sound lower bound first: P_{x',σ1}(S) ≥ P_{x',σ0}(S) − TV(σ0, σ1), and the TV grows
        # with |ln σ1/σ0|, so W(R) ≥ Φ(Φ⁻¹(p) − R/σ0) − max TV at the interval's ends.
        ends = sigma0 * np.exp([-r * radius, r * radius])
        if _norm.cdf(_norm.ppf(p_lower) - radius / sigma0) - float(np.max(scale_tv(sigma0, ends, dim))) > 0.5:
            return True
        return worst_over_interval(p_lower, radius, sigma0, r, dim, grid) > 0.5

    lo, hi = 0.0, cohen  # W(R) ≤ worst(R, σ0) = Cohen's value, which is ≤ 1/2 from R = cohen on
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if holds(mid):
            lo = mid
        else:
            hi = mid
    # Re-check radii below the result; on a failure, keep only what passed before it.
    for k in range(1, check_points + 1):
        radius = lo * k / check_points
        if radius > 0 and not holds(radius):
            return lo * (k - 1) / check_points
    return lo


# --------------------------------------------------------------------------------------------------
# σ maps
# --------------------------------------------------------------------------------------------------


class SigmaPolicy(Protocol):
    """A σ map: one input (no batch dimension) -> σ(x) > 0."""

    name: str

    def __call__(self, x: torch.Tensor) -> float: ...


class DistanceToSet:
    """ρ(x) = min(‖x − S‖₂, rho_max): the ℓ2 distance to a finite reference set, clipped. 1-Lipschitz.

    Args:
        reference: The reference points S (e.g. training inputs), [m, *input_shape].
        rho_max: Clip (≥ 0, may be inf); clipping a 1-Lipschitz function keeps it 1-Lipschitz.

    Shapes:
        x: [*input_shape] -> float.
    """

    lipschitz = 1.0

    def __init__(self, reference: torch.Tensor, rho_max: float = math.inf):
        if not isinstance(reference, torch.Tensor) or not torch.is_floating_point(reference) or reference.ndim < 1 or reference.shape[0] < 1:
            raise InvalidInputError("reference must be a non-empty floating tensor [m, *input_shape]")
        if not bool(torch.isfinite(reference).all()):
            raise InvalidInputError("reference contains NaN or Inf")
        if not (isinstance(rho_max, (int, float)) and not isinstance(rho_max, bool) and rho_max >= 0):
            raise InvalidParameterError(f"rho_max must be a number >= 0 (inf allowed), got {rho_max!r}")
        self.reference = reference.detach().reshape(reference.shape[0], -1).to("cpu", torch.float64)
        self.input_shape = tuple(reference.shape[1:])
        self.rho_max = float(rho_max)

    def __call__(self, x: torch.Tensor) -> float:
        x = check_input(x, self.input_shape)
        distances = (self.reference - x.detach().reshape(1, -1).to("cpu", torch.float64)).norm(dim=1)
        return float(min(float(distances.min()), self.rho_max))


class SemiElasticSigma:
    """σ(x) = clip(σ_b·exp(rate·ρ(x)), σ_min, σ_max) with ρ 1-Lipschitz: semi-elasticity r = |rate| by construction.

    |ln σ(x) − ln σ(x')| ≤ |rate|·|ρ(x) − ρ(x')| ≤ r‖x − x'‖ (clipping ln σ to an interval keeps the
    constant). rate > 0: more noise away from the reference set; rate < 0: less.

    Args:
        sigma_base: σ_b > 0 (the σ on the reference set).
        rate: The exponent's slope; r = |rate|.
        rho: A `DistanceToSet` (the only ρ whose constant is guaranteed here).
        sigma_min, sigma_max: Optional clip of σ.
    """

    certified = True

    def __init__(self, sigma_base: float, rate: float, rho: DistanceToSet, sigma_min: float | None = None, sigma_max: float | None = None):
        self.sigma_base = check_sigma(sigma_base)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate):
            raise InvalidParameterError(f"rate must be a finite number, got {rate!r}")
        self.rate = float(rate)
        if not isinstance(rho, DistanceToSet):
            raise InvalidParameterError(
                "rho must be a DistanceToSet: only a map whose Lipschitz constant is guaranteed by construction "
                "gives a semi-elastic sigma"
            )
        self.rho = rho
        self.sigma_min = None if sigma_min is None else check_sigma(sigma_min)
        self.sigma_max = None if sigma_max is None else check_sigma(sigma_max)
        if self.sigma_min is not None and self.sigma_max is not None and self.sigma_min > self.sigma_max:
            raise InvalidParameterError(f"sigma_min {sigma_min} > sigma_max {sigma_max}")
        self.name = f"semi-elastic(sigma_base={self.sigma_base}, r={self.r})"

    @property
    def r(self) -> float:
        """The semi-elasticity (log-Lipschitz constant) |rate|·Lip(ρ)."""
        return abs(self.rate) * self.rho.lipschitz

    def __call__(self, x: torch.Tensor) -> float:
        sigma = self.sigma_base * math.exp(self.rate * self.rho(x))
        if self.sigma_min is not None:
            sigma = max(sigma, self.sigma_min)
        if self.sigma_max is not None:
            sigma = min(sigma, self.sigma_max)
        return sigma


class GradientSigma:
    """Seed 000's gradient-sensitivity rule — a quality heuristic WITHOUT a certificate.

    σ(x) = σ_min + (σ_max − σ_min)·clip((η(x) − η_min)/(η_max − η_min), 0, 1), η(x) = ‖∇ₓ L(model(x), y)‖₂
    with L the cross-entropy at the model's own prediction y = argmax model(x). A gradient norm has no
    provable Lipschitz constant, so this map is not semi-elastic and nothing smoothed with it is
    certified (`certified = False`; the runners below return `AdaptiveResult(certified=False)`).

    Args:
        model: A differentiable classifier: batch [b, *input_shape] -> logits [b, C].
        sigma_min, sigma_max: The σ range, 0 < σ_min ≤ σ_max.
        eta_min, eta_max: The normalisation range of η; set them, or call `fit` on representative inputs.
    """

    certified = False

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], sigma_min: float, sigma_max: float,
                 eta_min: float | None = None, eta_max: float | None = None):
        self.model = model
        self.sigma_min, self.sigma_max = check_sigma(sigma_min), check_sigma(sigma_max)
        if self.sigma_min > self.sigma_max:
            raise InvalidParameterError(f"sigma_min {sigma_min} > sigma_max {sigma_max}")
        self.eta_min = None if eta_min is None else check_positive(eta_min, "eta_min", allow_zero=True)
        self.eta_max = None if eta_max is None else check_positive(eta_max, "eta_max", allow_zero=True)
        self.name = f"gradient(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"

    def sensitivity(self, inputs: torch.Tensor) -> torch.Tensor:
        """η for a batch: per-input ‖∇ₓ L‖₂ (the per-example gradients of a summed loss). Shapes: [b, ...] -> [b]."""
        if not isinstance(inputs, torch.Tensor) or not torch.is_floating_point(inputs) or inputs.ndim < 1:
            raise InvalidInputError("inputs must be a floating tensor [b, *input_shape]")
        x = inputs.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(x)
            loss = torch.nn.functional.cross_entropy(logits, logits.argmax(dim=1).detach(), reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
        return grad.reshape(grad.shape[0], -1).norm(dim=1).detach()

    def fit(self, inputs: torch.Tensor, low: float = 0.05, high: float = 0.95) -> "GradientSigma":
        """Set η_min, η_max to the low/high quantiles of η over representative inputs; returns self."""
        if not 0 <= low < high <= 1:
            raise InvalidParameterError(f"need 0 <= low < high <= 1, got {low}, {high}")
        eta = self.sensitivity(inputs).double()
        self.eta_min, self.eta_max = float(torch.quantile(eta, low)), float(torch.quantile(eta, high))
        return self

    def __call__(self, x: torch.Tensor) -> float:
        if self.eta_min is None or self.eta_max is None:
            raise InvalidParameterError("GradientSigma needs eta_min and eta_max: pass them or call fit()")
        x = check_input(x)
        eta = float(self.sensitivity(x[None])[0])
        span = self.eta_max - self.eta_min
        level = 0.0 if span <= 0 else min(1.0, max(0.0, (eta - self.eta_min) / span))
        return self.sigma_min + (self.sigma_max - self.sigma_min) * level


def _sigma_of(policy: Callable[[torch.Tensor], float], x: torch.Tensor) -> float:
    try:
        return check_sigma(policy(x))
    except InvalidParameterError as exc:
        raise InvalidParameterError(f"the sigma policy returned an invalid sigma: {exc}") from exc


def _policy_name(policy: Any) -> str:
    return str(getattr(policy, "name", type(policy).__name__))


# --------------------------------------------------------------------------------------------------
# Certified: classification with a semi-elastic σ
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SemiElasticCertificate:
    """CERTIFY with a semi-elastic σ map: with probability ≥ 1 − alpha, g(x') = prediction for every
    ‖x' − x‖₂ ≤ radius, where g at x' smooths with σ(x').

    Attributes:
        prediction: The certified class, or ABSTAIN (−1).
        radius: The semi-elastic radius (0 when abstaining).
        naive_radius: Cohen's σ0·Φ⁻¹(p_lower) — what a naive per-input-σ certificate would claim.
            NOT a certificate; reported for comparison only.
        p_lower: Clopper–Pearson lower bound on pA at x under σ0.
        sigma: σ0 = σ(x).
        r: The σ map's semi-elasticity.
        dim: The input dimension the bound was computed for.
    """

    prediction: int
    radius: float
    naive_radius: float
    p_lower: float
    count: int
    selected: int
    sigma: float
    r: float
    dim: int
    n0: int
    n: int
    alpha: float
    seed: int | None
    samples: int

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN

    def to_record(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class SemiElasticClassifier:
    """A smoothed classifier whose σ depends on the input through a semi-elastic map, with its certificate.

    At x it runs Cohen's PREDICT / CERTIFY (`SmoothedClassifier`, same Clopper–Pearson machinery and
    random streams) at σ0 = σ(x), then replaces Cohen's radius by `semi_elastic_radius`.

    Args:
        base: The base classifier (module, Runtime or callable of a batch -> logits).
        num_classes: Number of classes.
        sigma_map: A `SemiElasticSigma` (anything else has no certified semi-elasticity).
        batch_size, input_shape, sampler: As `SmoothedClassifier`.
        grid: σ1 grid points of the worst case (see `semi_elastic_radius`).
    """

    def __init__(
        self,
        base: torch.nn.Module | Runtime | Callable,
        num_classes: int,
        sigma_map: SemiElasticSigma,
        batch_size: int = DEFAULT_BATCH_SIZE,
        input_shape: tuple[int, ...] | None = None,
        sampler: Sampler | None = None,
        grid: int = DEFAULT_SIGMA_GRID,
    ):
        if not isinstance(sigma_map, SemiElasticSigma):
            raise InvalidParameterError(
                f"sigma_map must be a SemiElasticSigma, got {type(sigma_map).__name__}: other sigma maps carry no "
                "certificate (use adaptive_predict for an uncertified prediction)"
            )
        self.base = base
        self.num_classes = check_count(num_classes, "num_classes", minimum=2)
        self.sigma_map = sigma_map
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.sampler = sampler if sampler is not None else Sampler(batch_size)
        self.grid = check_count(grid, "grid", minimum=2)

    def smoothed_at(self, x: torch.Tensor) -> SmoothedClassifier:
        """The fixed-σ smoothed classifier the prediction at x uses (σ = σ(x))."""
        x = check_input(x, self.input_shape)
        # Eager: σ changes with x, and every σ would select (and export) a runtime of its own.
        return SmoothedClassifier(self.base, self.num_classes, _sigma_of(self.sigma_map, x), input_shape=self.input_shape,
                                  sampler=self.sampler, backend="eager")

    def predict(self, x: torch.Tensor, n: int, alpha: float, seed: int | None = None, request_id: int = 0) -> Prediction:
        """PREDICT at σ(x): g(x), or ABSTAIN."""
        return self.smoothed_at(x).predict(x, n, alpha, seed, request_id)

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, seed: int | None = None, request_id: int = 0) -> SemiElasticCertificate:
        """CERTIFY at σ0 = σ(x) (Cohen's steps 1–3), then the semi-elastic radius for the map's r."""
        smoothed = self.smoothed_at(x)
        cert = smoothed.certify(x, n0, n, alpha, seed, request_id)
        dim = int(x.numel())
        radius = 0.0
        if not cert.abstained:
            radius = semi_elastic_radius(cert.p_lower, smoothed.sigma, self.sigma_map.r, dim, grid=self.grid)
        return SemiElasticCertificate(
            prediction=cert.prediction,
            radius=radius,
            naive_radius=cert.radius,
            p_lower=cert.p_lower,
            count=cert.count,
            selected=cert.selected,
            sigma=smoothed.sigma,
            r=self.sigma_map.r,
            dim=dim,
            n0=n0,
            n=n,
            alpha=alpha,
            seed=seed,
            samples=cert.samples,
        )


# --------------------------------------------------------------------------------------------------
# Uncertified: any σ map elsewhere
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdaptiveResult:
    """An output smoothed with an input-dependent σ: usable, but NOT certified.

    Attributes:
        output: What the fixed-σ algorithm returned at σ(x) (a Prediction, a CenterSmoothingResult,
            a mean image, ...). Any radius inside it assumes a fixed σ and does not hold here.
        sigma: σ(x), the noise level used.
        policy: The σ map's name.
        certified: Always False.
        reason: Why there is no certificate.
    """

    output: Any
    sigma: float
    policy: str
    certified: bool = False
    reason: str = NO_CERTIFICATE_REASON
    details: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        output = self.output.to_record() if hasattr(self.output, "to_record") else None
        return {"sigma": self.sigma, "policy": self.policy, "certified": False, "reason": self.reason,
                "output": output, **self.details}


def adaptive_predict(
    base: torch.nn.Module | Runtime | Callable,
    num_classes: int,
    x: torch.Tensor,
    policy: Callable[[torch.Tensor], float],
    n: int = 1000,
    alpha: float = 0.001,
    seed: int | None = None,
    request_id: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> AdaptiveResult:
    """Cohen's PREDICT at σ(x) for any σ map. Uncertified (no radius is claimed)."""
    x = check_input(x)
    sigma = _sigma_of(policy, x)
    prediction = SmoothedClassifier(base, num_classes, sigma, batch_size, backend="eager").predict(x, n, alpha, seed, request_id)
    return AdaptiveResult(prediction, sigma, _policy_name(policy))


def adaptive_center(
    f: torch.nn.Module | Runtime | Callable,
    x: torch.Tensor,
    policy: Callable[[torch.Tensor], float],
    metric: str = "l2",
    n: int = 10_000,
    delta: float = 0.05,
    alpha1: float = 0.005,
    seed: int | None = None,
    request_id: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> AdaptiveResult:
    """Center smoothing's SMOOTH step at σ(x) for any σ map. Uncertified: no ε_out is computed."""
    x = check_input(x)
    sigma = _sigma_of(policy, x)
    smoothed = CenterSmoother(f, sigma, metric, batch_size).smooth(x, n, delta, alpha1, seed, request_id)
    return AdaptiveResult(smoothed, sigma, _policy_name(policy))


def adaptive_generate(
    ddpm: Any,
    policy: Callable[[torch.Tensor], float],
    label: int | None = None,
    *,
    class_embed: torch.Tensor | None = None,
    n: int = 100,
    guidance: float = 0.0,
    num_steps: int | None = None,
    seed: int | None = None,
    request_id: int = 0,
) -> AdaptiveResult:
    """The mean of n smoothed conditional-DDPM samples with σ = σ(conditioning vector). Uncertified.

    Returns:
        AdaptiveResult whose output is the mean image [1, 8, 8] (details: the conditioning vector's label).
    """
    from smoothgen.conditional import SmoothedConditionalDiffusion  # the generation layer sits above this one

    probe = SmoothedConditionalDiffusion(ddpm, 1.0, guidance=guidance, num_steps=num_steps)
    e, label = probe.conditioning(label, class_embed)
    sigma = _sigma_of(policy, e)
    smoothed = SmoothedConditionalDiffusion(ddpm, sigma, guidance=guidance, num_steps=num_steps)
    images = smoothed.samples(class_embed=e, n=check_count(n, "n"), seed=seed, request_id=request_id)
    return AdaptiveResult(images.mean(dim=0), sigma, _policy_name(policy), details={"label": label, "n": n})
