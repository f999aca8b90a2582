"""Certificates: one frozen dataclass per kind, carrying the parameters that produced it.

A record can be re-checked and re-plotted later from these fields alone (`to_record` gives the JSON
form written to results files).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: The class index reported when the smoothed classifier abstains (as in Cohen et al.'s code).
ABSTAIN = -1


def _record(obj: Any, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name not in exclude}


@dataclass(frozen=True)
class Prediction:
    """Result of PREDICT (Cohen et al. 2019): the top class, or ABSTAIN when the test is not significant.

    Attributes:
        prediction: the predicted class, or ABSTAIN (−1).
        pvalue: two-sided binomial test p-value of the top count against the runner-up at 1/2.
        count_top, count_second: the two largest class counts among the n samples.
    """

    prediction: int
    pvalue: float
    count_top: int
    count_second: int
    sigma: float
    n: int
    alpha: float
    seed: int | None
    noise_tv: float = 0.0  # τ: per-copy total variation between the sampled noise and N(0, σ²I), charged to the bound

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN

    def to_record(self) -> dict[str, Any]:
        return _record(self)


@dataclass(frozen=True)
class ClassificationCertificate:
    """Result of CERTIFY (Cohen et al. 2019): a class and an ℓ2 radius, or ABSTAIN with radius 0.

    Holds with probability ≥ 1 − alpha: g(x') = prediction for every ‖x' − x‖₂ < radius.

    Attributes:
        prediction: the certified class, or ABSTAIN (−1).
        radius: σ·Φ⁻¹(p_lower) (0 when abstaining).
        p_lower: one-sided (1 − alpha) Clopper–Pearson lower bound on pA from the estimation sample,
            minus noise_tv (so that it bounds pA under the exact Gaussian, not only under the sampler).
        count: votes for the selected class among the estimation samples drawn (nA).
        selected: the class chosen from the selection sample (also when abstaining).
        samples: estimation samples actually drawn: less than n when the run stopped early because
            even n votes for the class could not have lifted p_lower above 1/2 (the same abstention
            the full run gives).
    """

    prediction: int
    radius: float
    p_lower: float
    count: int
    selected: int
    sigma: float
    n0: int
    n: int
    alpha: float
    seed: int | None
    samples: int = -1
    noise_tv: float = 0.0  # τ: per-copy total variation between the sampled noise and N(0, σ²I), charged to the bound

    def __post_init__(self) -> None:
        if self.samples == -1:
            object.__setattr__(self, "samples", self.n)

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN

    def to_record(self) -> dict[str, Any]:
        return _record(self)


@dataclass(frozen=True)
class SequentialCertificate:
    """Answer of CERTIFY-AT: is the smoothed classifier certified at `radius` around x?

    The test of pA > Φ(radius/σ) looks at the estimation sample after `looks[k]` samples, with a
    Clopper–Pearson bound at level alpha/K at each of the K looks (Bonferroni), and stops at the first
    look that decides (method "looks"); or, with method "betting", checks a betting confidence sequence
    after every `check_every` samples up to `max_samples` and stops at the first check that decides
    (docs/theory.md §6). With probability ≥ 1 − alpha, `certified` implies g(x') = prediction for every
    ‖x' − x‖₂ < radius.

    Attributes:
        prediction: the class chosen from the selection sample, or ABSTAIN (−1) when not certified.
        certified: True when the lower bound cleared Φ(radius/σ) at some look.
        decision: "certified", "rejected" (an upper bound proved pA ≤ Φ(radius/σ): no n would certify),
            or "undecided" (the last look came without either).
        p_lower, p_upper: the bounds at the deciding (or last) look, each at level alpha/K, moved out by
            noise_tv (bounds under the exact Gaussian); for "betting", the ends of the confidence sequence
            at the stop (each holds with probability ≥ 1 − alpha at every n at once), moved out by noise_tv.
        certified_radius: σ·Φ⁻¹(p_lower) at that look (≥ radius when certified; 0 if p_lower ≤ 1/2).
        samples: estimation samples drawn (the look that decided); n0 selection samples come on top.
        looks: the looks of method "looks" (empty for "betting").
        method: "looks" or "betting".
        max_samples, check_every: the betting test's most samples and samples between checks (None for "looks").
    """

    prediction: int
    certified: bool
    decision: str
    radius: float
    certified_radius: float
    p_lower: float
    p_upper: float
    count: int
    samples: int
    selected: int
    sigma: float
    n0: int
    looks: tuple[int, ...]
    alpha: float
    seed: int | None
    noise_tv: float = 0.0  # τ: per-copy total variation between the sampled noise and N(0, σ²I), charged to the bound
    method: str = "looks"
    max_samples: int | None = None
    check_every: int | None = None

    @property
    def abstained(self) -> bool:
        return not self.certified

    def to_record(self) -> dict[str, Any]:
        record = _record(self)
        record["looks"] = list(self.looks)
        return record


@dataclass(frozen=True)
class CenterSmoothingResult:
    """Result of center smoothing's SMOOTH step (Kumar & Goldstein 2021).

    Attributes:
        center: the chosen center ẑ (one model output), kept even when abstaining.
        center_radius: r̂, the median distance of ẑ to the selection samples.
        p: fraction of fresh samples within r̂ of ẑ.
        delta1, delta2: Δ1 = sqrt(ln(2/α1)/(2n)) + noise_tv, Δ2 = 1/2 − (p − Δ1).
        abstained: True when max(Δ1, Δ2) > Δ.
    """

    center: Any
    center_radius: float
    p: float
    delta1: float
    delta2: float
    abstained: bool
    n: int
    delta: float
    alpha1: float
    n_candidates: int | None
    seed: int | None
    noise_tv: float = 0.0  # τ: per-copy total variation between the sampled noise and N(0, σ²I), charged to the bound

    def to_record(self) -> dict[str, Any]:
        return _record(self, exclude=("center",))


@dataclass(frozen=True)
class CenterCertificate:
    """Center-smoothing certificate: with probability ≥ 1 − failure_probability, for every
    ‖x' − x‖₂ ≤ eps_in, d(f̂(x), f̂(x')) ≤ eps_out. failure_probability = α1 + α2 + candidate_miss.

    Attributes:
        center: the smoothed output f̂(x) = ẑ.
        abstained: True when no certificate could be given (see `reason`).
        reason: why it abstained: "center check failed" or "q > 1" (ε_in too large for σ and m).
        eps_in: the certified input radius ε1.
        eps_out: ε2 = γ·(1 + β)·R̂ (inf when abstaining).
        r_hat: R̂, the ⌈q·m⌉-th smallest distance of m fresh samples to ẑ.
        center_radius: r̂ from the SMOOTH step.
        smoothing_error: d(ẑ, f(x)), how far the smoothed output is from the base model's clean output.
        p, q: the probability level Φ(Φ⁻¹(1/2 + Δ) + ε1/σ) and its DKW-corrected level.
        gamma, beta: the metric's relaxed-triangle constant and the center's approximation factor 2γ.
        noise_tv: τ, the sampler's per-copy total variation from N(0, σ²I): added to Δ1 and to q.
        candidate_miss: (1/2 − Δ + τ)^k with k = n_candidates < n, the chance that no candidate of the
            high-dimensional variant lies in the ball the β = 2γ bound needs (0 for the exact center).
        failure_probability: α1 + α2 + candidate_miss, what the certificate may fail with.
    """

    center: Any
    abstained: bool
    reason: str | None
    eps_in: float
    eps_out: float
    r_hat: float
    center_radius: float
    smoothing_error: float
    p: float
    q: float
    sigma: float
    metric: str
    gamma: float
    beta: float
    n: int
    m: int
    delta: float
    alpha1: float
    alpha2: float
    n_candidates: int | None
    seed: int | None
    noise_tv: float = 0.0
    candidate_miss: float = 0.0

    @property
    def failure_probability(self) -> float:
        return min(1.0, self.alpha1 + self.alpha2 + self.candidate_miss)

    def to_record(self) -> dict[str, Any]:
        return {**_record(self, exclude=("center",)), "failure_probability": self.failure_probability}
