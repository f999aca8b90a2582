"""Every certificate pays for the sampler's distance from the Gaussian of its proof (issue 10.5).

The noise is Box–Muller of 64-bit uniforms with u1 ≥ 2⁻⁶⁵: per copy of d coordinates it is within
τ(d) = ⌈d/2⌉·2⁻⁶⁴ of N(0, σ²I) in total variation (smoothgen.engine.noise). A probability bound under
the sampler, moved out by τ, bounds the probability under the Gaussian. These tests pin that each
certificate moves its bounds (strictly: the shift is rounded outward even where τ is below a double's
resolution) and records τ.
"""
import math
import re

import numpy as np
import pytest
import torch

from smoothgen import CenterSmoother, SmoothedClassifier, stats
from smoothgen.engine import noise_tv
from smoothgen.errors import InvalidParameterError

from oracles import Constant, Linear


def test_shift_helpers_round_outward():
    tau = noise_tv(64)
    assert 0 < tau < 1e-15
    assert stats.lower_under_gaussian(0.9, tau) < 0.9  # τ ≪ ulp(0.9), still strictly lower
    assert stats.upper_under_gaussian(0.9, tau) > 0.9
    assert stats.lower_under_gaussian(0.9, 0.0) == 0.9
    assert stats.lower_under_gaussian(0.5, 0.25) < 0.25 + 1e-15
    assert stats.lower_under_gaussian(1e-20, 0.1) == 0.0 and stats.upper_under_gaussian(1.0, 0.1) == 1.0
    assert stats.alpha_under_sampler(0.001, 10, 1e-5) < 0.001 - 1e-4 + 1e-12
    with pytest.raises(InvalidParameterError):
        stats.alpha_under_sampler(0.001, 1000, 1e-5)  # n·τ uses up alpha
    with pytest.raises(InvalidParameterError):
        stats.lower_under_gaussian(0.5, -1e-3)


def test_classification_certificate_charges_tau():
    clf = SmoothedClassifier(Constant(1, 3), 3, 0.5)
    x = torch.zeros(4, 4)
    cert = clf.certify(x, 10, 1000, 0.001, seed=0)
    assert cert.noise_tv == noise_tv(16) > 0
    cp = stats.clopper_pearson_lower(cert.count, 1000, 0.001)
    assert cert.p_lower < cp and cert.p_lower >= cp - 1e-15
    assert cert.radius == stats.cohen_radius(0.5, cert.p_lower) < stats.cohen_radius(0.5, cp)
    assert cert.to_record()["noise_tv"] == cert.noise_tv


def test_sequential_certificate_charges_tau():
    clf = SmoothedClassifier(Constant(1, 3), 3, 0.5)
    cert = clf.certify_at(torch.zeros(8), 0.5, 0.001, n0=10, looks=(100, 1000), seed=0)
    level = 0.001 / 2
    assert cert.p_lower < stats.clopper_pearson_lower(cert.count, cert.samples, level)
    assert cert.p_upper == 1.0 or cert.p_upper > stats.clopper_pearson_upper(cert.count, cert.samples, level)
    assert cert.noise_tv == noise_tv(8)


def test_predict_tests_at_alpha_less_n_tau(monkeypatch):
    """PREDICT runs its binomial test at α − n·τ: with τ inflated the test must refuse or tighten."""
    import smoothgen.classify as classify

    clf = SmoothedClassifier(Constant(1, 3), 3, 0.5)
    pred = clf.predict(torch.zeros(4), 200, 0.001, seed=0)
    assert pred.noise_tv == noise_tv(4) and pred.prediction == 1
    # With τ = 4·10⁻⁶ per copy, 200 copies use up α = 0.001 (n·τ = 8·10⁻⁴ leaves 2·10⁻⁴): p-values just
    # under 0.001 no longer count.
    monkeypatch.setattr(classify, "noise_tv", lambda numel: 4e-6)
    assert clf.predict(torch.zeros(4), 200, 0.001, seed=0).prediction == 1  # p ≈ 1e-60, still significant
    monkeypatch.setattr(classify, "noise_tv", lambda numel: 1e-5)
    with pytest.raises(InvalidParameterError):
        clf.predict(torch.zeros(4), 200, 0.001, seed=0)


def test_center_certificate_charges_tau():
    gen = torch.Generator().manual_seed(0)
    model = Linear(torch.randn(2, 5, generator=gen))
    cert = CenterSmoother(model, 0.25, "l2").certify(torch.zeros(5), 0.1, n=500, m=1000, seed=0)
    tau = noise_tv(5)
    assert cert.noise_tv == tau
    p = stats.center_certify_level(0.1, 0.25, 0.05)
    assert cert.q == p + tau + stats.hoeffding_radius(1000, 0.005)
    smoothed = CenterSmoother(model, 0.25, "l2").smooth(torch.zeros(5), n=500, seed=0)
    assert smoothed.delta1 == stats.hoeffding_radius(500, 0.005, two_sided=True) + tau


def test_center_check_charges_a_large_tau(monkeypatch):
    """Δ1 = sqrt(ln(2/α1)/(2n)) + τ. The real τ (~1e-19) is below a double's resolution next to the
    Hoeffding term, so τ is inflated to 0.1: at n = 1000, α1 = 0.005 the Hoeffding term is 0.0547, and with
    every sample at the center (p = 1) the check accepts at Δ = 0.1 only without τ."""
    import smoothgen.center as center

    hoeffding = stats.hoeffding_radius(1000, 0.005, two_sided=True)
    assert 0.054 < hoeffding < 0.055
    assert stats.center_smoothing_check(1.0, 1000, 0.005, 0.1) == (True, hoeffding, 0.5 - (1.0 - hoeffding))
    accepted, delta1, delta2 = stats.center_smoothing_check(1.0, 1000, 0.005, 0.1, noise_tv=0.1)
    assert not accepted and delta1 == hoeffding + 0.1 and delta2 == 0.5 - (1.0 - delta1)
    model = Constant(1, 3)  # every output identical: p = 1 exactly
    assert not CenterSmoother(model, 0.25, "l2").smooth(torch.zeros(5), n=1000, delta=0.1, seed=0).abstained
    monkeypatch.setattr(center, "noise_tv", lambda numel: 0.1)
    smoothed = CenterSmoother(model, 0.25, "l2").smooth(torch.zeros(5), n=1000, delta=0.1, seed=0)
    assert smoothed.p == 1.0 and smoothed.noise_tv == 0.1
    assert smoothed.abstained and smoothed.delta1 == hoeffding + 0.1
    cert = CenterSmoother(model, 0.25, "l2").certify(torch.zeros(5), 0.1, n=1000, m=1000, delta=0.1, seed=0)
    assert cert.abstained and cert.reason == "center check failed"
    assert cert.q == stats.center_certify_level(0.1, 0.25, 0.1) + 0.1 + stats.hoeffding_radius(1000, 0.005)


def test_sample_free_bounds_add_two_tau():
    assert stats.tv_bound(0.0, 1.0, 1e-3) == pytest.approx(2e-3)
    assert stats.tv_bound(0.3, 1.0, 1e-3) == pytest.approx(stats.tv_bound(0.3, 1.0) + 2e-3)
    assert stats.wasserstein_bound(0.3, 1.0, 5.0, 1, 1e-3) == pytest.approx(5 * (stats.tv_bound(0.3, 1.0) + 2e-3))
    lower = stats.event_probability_bound(0.9, 0.3, 1.0, 1e-3)
    assert lower == pytest.approx(stats.event_probability_bound(0.899, 0.3, 1.0) - 1e-3)


def test_lm_certificate_charges_tau():
    from smoothgen import SmoothedLM
    from smoothgen.models import load_lm

    lm = SmoothedLM(load_lm(), 0.01)
    cert = lm.generate(list(b"def "), 2, n0=5, n=20, alpha=0.01, seed=0)
    assert cert.noise_tv == noise_tv(len(cert.prompt) * lm.dim) > 0
    for t in range(len(cert.tokens)):
        unshifted = stats.bounded_mean_lower(cert.p_mean[t], cert.p_variance[t], cert.n, cert.alpha_step, cert.bound)
        assert cert.p_lower[t] < unshifted or unshifted == 0.0
    bound = lm.distribution_bound(0.0, 4, prompt_length=len(cert.prompt))
    assert bound.noise_tv == cert.noise_tv and bound.tv >= 2 * cert.noise_tv and bound.w1 == 4 * bound.tv


def test_truncation_radius_bounds_every_pair():
    """The sampler's pairs never exceed radius sqrt(−2 ln 2⁻⁶⁵): the truncation whose Gaussian mass,
    exp(−r²/2) = 2⁻⁶⁵ ≤ 2⁻⁶⁴, is what τ charges per pair."""
    from smoothgen.kernels.reference import philox_normal_reference

    r_max = math.sqrt(-2.0 * math.log(2.0**-65))
    noise = philox_normal_reference(2**63 + 12345, 0, 4000, 64).reshape(-1, 2)
    assert float(noise.norm(dim=1).max()) <= r_max * (1 + 1e-6)
    assert math.exp(-r_max**2 / 2) <= 2.0**-64
    # and the first moments are those of N(0, 1)
    values = noise.reshape(-1).double()
    assert abs(float(values.mean())) < 0.01 and abs(float(values.std()) - 1.0) < 0.01
    assert np.isclose(float((values.abs() > 1.959964).double().mean()), 0.05, atol=0.005)


def test_the_documented_truncation_radius_is_the_samplers():
    """Every "sqrt(N ln 2) ≈ R" the theory and the noise code state is the largest radius the sampler makes:
    the pair of words w0 = w1 = 0 gives u1 = 2⁻⁶⁵ (exact in float32), so −2 ln u1 = 130 ln 2."""
    from pathlib import Path

    from smoothgen.kernels.reference import _pair_normal

    zero = np.zeros(1, dtype=np.uint64)
    lane0, lane1 = _pair_normal(zero, zero, zero)
    largest = math.hypot(float(lane0[0]), float(lane1[0]))
    assert largest == pytest.approx(math.sqrt(130 * math.log(2)), rel=1e-6)
    root = Path(__file__).resolve().parents[1]
    stated = []
    for name in ("docs/theory.md", "engine/noise.py", "kernels/reference.py", "kernels/README.md"):
        text = (root / name).read_text(encoding="utf-8")
        for n, r in re.findall(r"sqrt\((\d+) ln 2\)(?: ≈ (\d+\.\d+))?", text):
            stated.append((name, n, r))
            assert int(n) == 130, (name, n)
            assert not r or abs(float(r) - largest) < 0.005, (name, r)
        assert "9.42" not in text, name
    assert {name for name, _, _ in stated} == {"docs/theory.md", "engine/noise.py", "kernels/reference.py", "kernels/README.md"}
