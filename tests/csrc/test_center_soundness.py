"""Soundness of the C++ core's center certificate, measured: pairs of independent certifications at the
same input (eps_in = 0) on outputs with a known distribution. A certificate claims that, with probability
at least 1 - failure_probability, any other run at x' = x returns a center within eps_out of its own; a
pair breaks the first certificate's claim when both certify and d(center1, center2) > eps_out1. The
violations of 300 pairs must stay below a binomial upper limit for the stated rate.

Also the argument checks of the new parameters and the lower bounds that must stay below 1."""
import math

import numpy as np
import pytest
from scipy.stats import binom

from smoothgen import _core

pytestmark = pytest.mark.skipif(not _core.HAVE_CORE, reason=f"C++ core not built: {_core.REASON}")
C = _core._C
ALPHA1 = ALPHA2 = 0.005
PAIRS = 300


def _limit(rate: float) -> int:
    """Largest violation count a sound certificate with failure rate `rate` exceeds with probability < 1e-3."""
    return int(binom.ppf(1 - 1e-3, PAIRS, rate))


def _atom_and_spread(rng, rows: int, atom: float) -> np.ndarray:
    """1-D outputs: 0 with probability `atom`, else uniform on [5, 100]."""
    x = np.where(rng.random(rows) < atom, 0.0, rng.uniform(5.0, 100.0, rows))
    return x.astype(np.float32).reshape(rows, 1)


def _pair_violations(rng, atom, n, n_check, m, delta, n_candidates):
    violations = both = 0
    certs = []
    for _ in range(PAIRS):
        pair = []
        for _ in range(2):
            sel = _atom_and_spread(rng, n, atom)
            cert = C.center_certify(sel, _atom_and_spread(rng, n_check, atom), _atom_and_spread(rng, m, atom), 1.0,
                                    0.0, delta, ALPHA1, ALPHA2, n_candidates, kind=0)
            pair.append((cert, float(sel[cert["center_index"], 0])))
        (first, c1), (second, c2) = pair
        certs.append(first)
        if first["abstained"] or second["abstained"]:
            continue
        both += 1
        violations += abs(c1 - c2) > first["eps_out"]
    return violations, both, certs


def test_check_counts_the_selection_sample():
    # 60 % of the outputs at 0, 40 % uniform on [5, 100]; the center is chosen from n = 5 selection
    # samples and checked on 10 000. With delta1 taken from the check alone, 15 of 300 first
    # certificates were broken by the second run (20-26 counting either claim) where at most 1 % may be.
    rng = np.random.default_rng(2024)
    violations, both, certs = _pair_violations(rng, 0.6, n=5, n_check=10_000, m=10_000, delta=0.05, n_candidates=0)
    assert violations <= _limit(ALPHA1 + ALPHA2), (violations, both)
    hoeffding_at_5 = C.hoeffding_radius(5, ALPHA1, True)
    assert all(c["delta1"] == hoeffding_at_5 for c in certs)


def test_candidate_variant_fails_no_more_often_than_it_states():
    # 55 % of the outputs at 0, 45 % spread: the exact center is 0 (certified with eps_out = 0 here, as
    # q = 0.536 < 0.55), but a single candidate misses the atom with probability 0.45 and a far candidate
    # u passes the check (its ball of radius u holds the atom), so about 0.55 * 0.45 of the pairs break
    # the first claim. The certificate must state that: failure_probability = alpha1 + alpha2 + 0.48.
    rng = np.random.default_rng(7)
    delta = 0.02
    violations, both, certs = _pair_violations(rng, 0.55, n=10_000, n_check=10_000, m=10_000, delta=delta,
                                               n_candidates=1)
    stated = {c["failure_probability"] for c in certs}
    assert stated == {ALPHA1 + ALPHA2 + (0.5 - delta)}
    assert all(c["candidate_miss"] == 0.5 - delta for c in certs)
    assert violations > _limit(ALPHA1 + ALPHA2), "the scenario no longer exercises the candidate miss"
    assert violations <= _limit(stated.pop()), (violations, both)


def test_exact_variant_charges_no_candidate_miss():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 2000, 8)).astype(np.float32) * 0.1
    for n_candidates in (0, 2000, 5000):
        cert = C.center_certify(x[0], x[1], x[2], 0.25, 0.05, 0.05, ALPHA1, ALPHA2, n_candidates, kind=0)
        assert cert["candidate_miss"] == 0.0 and cert["failure_probability"] == ALPHA1 + ALPHA2
    cert = C.center_certify(x[0], x[1], x[2], 0.25, 0.05, 0.05, ALPHA1, ALPHA2, 30, kind=0)
    assert cert["candidate_miss"] == C.center_candidate_miss(0.05, 30, 2000) == (0.5 - 0.05) ** 30
    assert cert["failure_probability"] == ALPHA1 + ALPHA2 + cert["candidate_miss"]


def test_noise_tv_is_charged_and_checked():
    rng = np.random.default_rng(4)
    sel, chk = (rng.normal(size=(3000, 8)).astype(np.float32) * 0.1 for _ in range(2))
    rad = rng.normal(size=(6000, 8)).astype(np.float32) * 0.1
    args = (sel, chk, rad, 0.25, 0.05, 0.1, ALPHA1, ALPHA2, 30)
    exact = C.center_certify(*args, kind=0)
    tv = 0.01
    cert = C.center_certify(*args, kind=0, noise_tv=tv)
    assert cert["delta1"] == C.hoeffding_radius(3000, ALPHA1, True) + tv == exact["delta1"] + tv
    assert cert["delta2"] == 0.5 - (cert["p_within"] - cert["delta1"])
    assert cert["q"] == cert["p"] + tv + C.hoeffding_radius(6000, ALPHA2) == C.dkw_quantile_level(cert["p"], 6000, ALPHA2, tv)
    assert cert["candidate_miss"] == (0.5 - 0.1 + tv) ** 30 == C.center_candidate_miss(0.1, 30, 3000, tv)
    assert cert["k"] >= exact["k"] and cert["eps_out"] >= exact["eps_out"]
    assert C.center_smoothing_check(cert["p_within"], 3000, ALPHA1, 0.1, 3000, tv) == (
        cert["accepted"], cert["delta1"], cert["delta2"])
    # The old arities still work, with an exact sampler and n_select = n.
    assert C.dkw_quantile_level(0.9, 100, 0.01) == C.dkw_quantile_level(0.9, 100, 0.01, 0.0)
    assert C.center_smoothing_check(0.9, 100, 0.01, 0.2) == C.center_smoothing_check(0.9, 100, 0.01, 0.2, 100, 0.0)
    assert C.center_smoothing_check(0.9, 100, 0.01, 0.2, n_select=None) == C.center_smoothing_check(0.9, 100, 0.01, 0.2)
    assert C.center_candidate_miss(0.1, None, 100) == 0.0
    for bad, message in [(-0.01, "invalid parameter"), (1.0, "invalid parameter"), (math.nan, "non-finite input"),
                         (math.inf, "non-finite input")]:
        with pytest.raises(_core.CoreError, match=message):
            C.center_certify(*args, kind=0, noise_tv=bad)
        with pytest.raises(_core.CoreError, match=message):
            C.dkw_quantile_level(0.5, 100, 0.01, bad)
        with pytest.raises(_core.CoreError, match=message):
            C.center_smoothing_check(0.5, 100, 0.01, 0.2, 100, bad)
        with pytest.raises(_core.CoreError, match=message):
            C.center_candidate_miss(0.1, 3, 100, bad)


def test_check_uses_the_smaller_sample():
    accepted, delta1, delta2 = C.center_smoothing_check(0.9, 10_000, ALPHA1, 0.05, 5)
    assert delta1 == C.hoeffding_radius(5, ALPHA1, True) and delta2 == 0.5 - (0.9 - delta1) and not accepted
    assert C.center_smoothing_check(0.9, 10_000, ALPHA1, 0.05, 10**6) == C.center_smoothing_check(0.9, 10_000, ALPHA1, 0.05)
    with pytest.raises(_core.CoreError, match="n_select"):
        C.center_smoothing_check(0.9, 100, ALPHA1, 0.05, 0)


def test_lower_bounds_stay_below_one():
    # Beta.ppf(0.001; n, 1) = 1 - 6.9e-18 rounded to 1.0 for n = 1e18, and Cohen's radius was +inf.
    n = 10**18
    lower = C.clopper_pearson_lower(n, n, 0.001)
    assert lower < 1.0 and lower == math.nextafter(1.0, 0.0)
    assert math.isfinite(C.cohen_radius(0.25, lower))
    assert math.isfinite(C.max_certifiable_radius(0.25, n, 0.001))
    prediction, radius, p_lower, *_ = C.cohen_certify(np.array([0, 100], dtype=np.int64), np.array([0, n], dtype=np.int64),
                                                      0.25, 0.001)
    assert prediction == 1 and p_lower < 1.0 and math.isfinite(radius)
    assert C.hoeffding_lower(1.0, 2**62, 1 - 1e-16) < 1.0
