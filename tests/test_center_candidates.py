"""Center smoothing's high-dimensional variant: the candidate miss is charged (issue 10.1).

With k candidates, β = 2γ at a neighbour x' needs one candidate inside the ball of mass ≥ 1/2 + Δ;
all k miss it with probability (1/2 − Δ)^k, which the certificate must add to α1 + α2.
"""
import math

import pytest
import torch
from scipy.stats import binom, norm

from smoothgen import CenterSmoother, stats
from smoothgen.errors import InvalidParameterError


class Jump(torch.nn.Module):
    """f(z) = 0 if z₀ < Φ⁻¹(0.7) else 10, as a one-element output."""

    def forward(self, z):
        return torch.where(z[:, :1] < norm.ppf(0.7), 0.0, 10.0)


def _violations(k, runs=100):
    smoother = CenterSmoother(Jump(), 1.0, "l2", n_candidates=k)
    x, x_moved = torch.zeros(2), torch.tensor([-0.1, 0.0])
    bad, failure = 0, None
    for seed in range(runs):
        cert = smoother.certify(x, 0.1, n=2000, m=2000, seed=seed)
        moved = smoother.smooth(x_moved, n=2000, seed=10_000 + seed)
        failure = cert.failure_probability
        if cert.abstained or moved.abstained:
            continue
        bad += float(torch.abs(cert.center - moved.center)) > cert.eps_out
    return bad, failure


@pytest.mark.parametrize("k", [1, 2])
def test_violation_rate_is_within_the_charged_failure_probability(k):
    """The review's reproduction: at k = 1 about 20 of 100 pairs violated ε_out while 1 % was claimed.
    The stated failure probability now includes (1/2 − Δ)^k, and the violations stay within it."""
    bad, failure = _violations(k)
    # A one-sided binomial test at level 1e-6: a certificate claiming only α1 + α2 = 0.01 fails here.
    assert bad <= binom.ppf(1 - 1e-6, 100, failure), (bad, failure)
    assert bad > binom.ppf(1 - 1e-6, 100, 0.01), "the example no longer exercises the candidate miss"
    assert failure == pytest.approx(0.01 + 0.45**k, rel=1e-9)


def test_exact_center_charges_nothing_and_holds():
    bad, failure = _violations(None, runs=30)
    assert failure == pytest.approx(0.01)
    assert bad == 0


def test_candidate_miss_formula():
    assert stats.center_candidate_miss(0.05, None, 100) == 0.0
    assert stats.center_candidate_miss(0.05, 100, 100) == 0.0  # every sample is a candidate
    assert stats.center_candidate_miss(0.05, 30, 10_000) == pytest.approx(0.45**30)
    assert stats.center_candidate_miss(0.05, 3, 10_000, noise_tv=0.01) == pytest.approx(0.46**3)
    for bad in (0, -1, 1.5):
        with pytest.raises(InvalidParameterError):
            stats.center_candidate_miss(0.05, bad, 100)
    with pytest.raises(InvalidParameterError):
        stats.center_candidate_miss(0.05, 3, 100, noise_tv=1.0)


def test_record_states_the_charge():
    smoother = CenterSmoother(Jump(), 1.0, "l2", n_candidates=3)
    record = smoother.certify(torch.zeros(2), 0.1, n=500, m=500, seed=0).to_record()
    assert record["candidate_miss"] == pytest.approx(0.45**3)
    assert record["failure_probability"] == pytest.approx(0.01 + 0.45**3)
    assert record["noise_tv"] > 0


def test_check_uses_the_smaller_of_selection_and_check_sizes():
    """Issue 10.2 (Python twin of the C++ fix): Δ1 at min(n_select, n_check)."""
    accepted, d1, _ = stats.center_smoothing_check(0.9, 10_000, 0.005, 0.05, n_select=5)
    assert d1 == pytest.approx(math.sqrt(math.log(2 / 0.005) / 10)) and not accepted
    assert stats.center_smoothing_check(0.9, 10_000, 0.005, 0.05)[0]
