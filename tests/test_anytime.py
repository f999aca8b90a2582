"""The anytime-valid sequential test: `certify_at(method="betting")` (docs/theory.md §6, issue 15 part 2).

A betting confidence sequence (Waudby-Smith & Ramdas) is checked after every `check_every` samples with no
correction for the number of checks; Ville's inequality keeps the chance of ever certifying wrongly at
≤ alpha. The oracles: the linear classifier placed exactly AT the threshold (pA = Φ(r/σ), the worst case
for a false certificate), a Monte Carlo binomial test over many seeds of the whole pipeline, and an exact
dynamic program over the vote counts of the same decision rule. Each oracle is shown to fail on a
sabotaged sequence (a fixed-n Clopper–Pearson bound checked at every batch; a wealth threshold of
1/(2 alpha) instead of 1/alpha).
"""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.stats import binom, binomtest, norm

import smoothgen.classify as classify
from smoothgen import ABSTAIN, SmoothedClassifier, stats
from smoothgen.engine import Purpose, RandomStream, noise_tv
from smoothgen.errors import InvalidParameterError, SmoothgenError
from smoothgen.jobs import certify_record

from oracles import Constant, LinearBinary, Recorder

# The boundary oracle: f(x) = [x > 0] on R¹, σ = 0.5, x = 0.25, so pA = Φ(0.5) = Φ(r/σ) at r = 0.25 exactly.
SIGMA, AT_THRESHOLD = 0.5, 0.25


def _boundary_classifier(**kwargs) -> SmoothedClassifier:
    return SmoothedClassifier(LinearBinary(torch.tensor([1.0]), 0.0), 2, SIGMA, **kwargs)


def _cp_at_every_check(k, n, m, alpha):
    """Sabotage: a fixed-n Clopper–Pearson bound at alpha, as if each check were the only one."""
    return k > 0 and stats.clopper_pearson_lower(k, n, alpha) > m


def _half_threshold(k, n, m, alpha):
    """Sabotage: capital 1/(2 alpha) instead of 1/alpha."""
    return stats.betting_log_wealth(k, n, m) >= math.log(1.0 / (2.0 * alpha))


# ---------------------------------------------------------------- (a), (b) Monte Carlo oracle of the pipeline
ORACLE = dict(alpha=0.2, n0=20, max_samples=500, check_every=5)


def _false_certifications(runs: int) -> int:
    smoothed = _boundary_classifier(batch_size=500)
    x = torch.tensor([AT_THRESHOLD])
    return sum(smoothed.certify_at(x, AT_THRESHOLD, ORACLE["alpha"], n0=ORACLE["n0"], method="betting",
                                   max_samples=ORACLE["max_samples"], check_every=ORACLE["check_every"], seed=s).certified
               for s in range(runs))


@pytest.fixture(scope="module")
def boundary_runs():
    """(false certifications, runs) of the pipeline at the threshold, shared by the tests that read them."""
    runs = 1000
    return _false_certifications(runs), runs


def test_betting_false_certification_rate_at_most_alpha(boundary_runs):
    """At pA = Φ(r/σ) every certificate at r is wrong. 100 checks per run, no correction for them: the
    rate must stay ≤ alpha (one-sided binomial test). The exact rate of this configuration is 0.113
    (`test_exact_false_certification_probability`); with capital 1/(2 alpha) it is 0.269 and this test fails."""
    wrong, runs = boundary_runs
    alpha = ORACLE["alpha"]
    assert binomtest(wrong, runs, alpha, alternative="greater").pvalue > 1e-3, f"{wrong}/{runs} wrong certifications"
    assert wrong > 0.05 * runs  # and the test is not vacuous: the sequence does approach its level
    # ... and it has power below the exact radius.
    smoothed = _boundary_classifier(batch_size=500)
    right = sum(smoothed.certify_at(torch.tensor([AT_THRESHOLD]), 0.1, alpha, n0=20, method="betting", max_samples=500,
                                    check_every=5, seed=s).certified for s in range(50))
    assert right >= 45


def test_sabotaged_sequence_fails_the_oracle(monkeypatch):
    """The same oracle with the confidence sequence replaced by a fixed-n Clopper–Pearson bound checked at
    every batch (no correction for 100 looks): its false-certification rate is far above alpha, and the
    binomial test says so — the oracle above can fail."""
    monkeypatch.setattr(stats, "betting_proves_above", _cp_at_every_check)
    runs, alpha = 300, ORACLE["alpha"]
    wrong = _false_certifications(runs)
    assert binomtest(wrong, runs, alpha, alternative="greater").pvalue < 1e-3, f"only {wrong}/{runs} wrong certifications"


# ---------------------------------------------------------------- exact oracle: the decision rule's false-certification probability
def _first_k(n: int, m: float, alpha: float, proves) -> int:
    """Smallest k with proves(k, n, m, alpha) (it is monotone in k), n + 1 if none."""
    lo, hi = 0, n + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if proves(mid, n, m, alpha):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _exact_certification_probability(p, radius, alpha, check_every, max_samples, proves=None):
    """P(the betting test of certify_at ever certifies) when every vote is 1 with probability p: a dynamic
    program over the vote count at each check, with certify_at's two stopping rules (its nulls, τ included)."""
    proves = proves or stats.betting_proves_above
    tau = noise_tv(1)
    threshold = stats.normal_cdf(radius / SIGMA)
    certify_above = stats.upper_under_gaussian(threshold, tau)
    zeros_above = math.nextafter(1.0 - stats.lower_under_gaussian(threshold, tau), math.inf)
    alive = np.ones(1)  # P(k votes so far and still running), k = 0..n
    step = binom.pmf(np.arange(check_every + 1), check_every, p)
    certified, n = 0.0, 0
    while n < max_samples:
        alive, n = np.convolve(alive, step), n + check_every
        k_certify = _first_k(n, certify_above, alpha, proves)
        certified += alive[k_certify:].sum()
        alive[k_certify:] = 0.0
        zeros_reject = _first_k(n, zeros_above, alpha, proves)  # rejected iff n − k ≥ zeros_reject
        alive[: max(0, n - zeros_reject + 1)] = 0.0
    return float(certified)


@pytest.mark.parametrize(("alpha", "check_every", "max_samples"), [
    (0.2, 5, 500),       # the Monte Carlo oracle's configuration
    (0.2, 1, 1000),      # a check after every sample: the sequence comes closest to its level
    (0.05, 1, 1000),
    (0.001, 10, 5000),
])
def test_exact_false_certification_probability(alpha, check_every, max_samples):
    """Exact, not sampled: at pA = Φ(r/σ) the betting rule certifies with probability ≤ alpha; a fixed-n
    Clopper–Pearson bound at every check, or capital 1/(2 alpha), exceeds alpha in the same setting."""
    pa = norm.cdf(AT_THRESHOLD / SIGMA)
    exact = _exact_certification_probability(pa, AT_THRESHOLD, alpha, check_every, max_samples)
    assert exact <= alpha
    sabotaged = _exact_certification_probability(pa, AT_THRESHOLD, alpha, check_every, max_samples, _cp_at_every_check)
    assert sabotaged > 2 * alpha
    if check_every == 1:  # close enough to alpha that half the capital shows
        assert exact > 0.75 * alpha
        assert _exact_certification_probability(pa, AT_THRESHOLD, alpha, check_every, max_samples, _half_threshold) > alpha


def test_exact_oracle_matches_the_pipeline(boundary_runs):
    """The dynamic program describes what certify_at does: below the threshold it certifies rarely, above
    it almost always, and the pipeline's rate at the threshold matches the exact one (±4 sd)."""
    pa = norm.cdf(AT_THRESHOLD / SIGMA)
    assert _exact_certification_probability(norm.cdf(0.3), AT_THRESHOLD, 0.2, 5, 500) < 0.05
    assert _exact_certification_probability(pa, 0.1, 0.2, 5, 500) > 0.95
    exact = _exact_certification_probability(pa, AT_THRESHOLD, 0.2, 5, 500)
    wrong, runs = boundary_runs
    assert abs(wrong / runs - exact) < 4 * math.sqrt(exact * (1 - exact) / runs), (wrong, exact)


# ---------------------------------------------------------------- (c) the formula
@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (7, 10), (10, 10), (30, 40), (3, 40)])
@pytest.mark.parametrize("m", [0.05, 0.5, 0.8413447460685429, 0.97])
def test_log_wealth_is_the_average_over_bet_fractions(k, n, m):
    """Closed form = ∫₀¹ ∏ (1 + (u/m)(X_i − m)) du = ∫₀¹ (1 + u(1 − m)/m)^k (1 − u)^(n − k) du."""
    value, _ = quad(lambda u: (1 + u * (1 - m) / m) ** k * (1 - u) ** (n - k), 0.0, 1.0, epsabs=0, epsrel=1e-12, limit=200)
    assert stats.betting_log_wealth(k, n, m) == pytest.approx(math.log(value), rel=1e-9, abs=1e-9)


def test_mixture_is_a_betting_strategy_with_predictable_stakes():
    """The same capital is reached by betting, before each outcome, the capital-weighted mean stake u/m of
    the outcomes so far (Cover's universal portfolio): a betting process, valid at any stopping time."""
    rng = np.random.default_rng(0)
    m = 0.7
    outcomes = rng.random(40) < 0.8
    capital, k = 1.0, 0
    for n, x in enumerate(outcomes):
        def weight(u):
            return (1 + u * (1 - m) / m) ** k * (1 - u) ** (n - k)
        stake = quad(lambda u: (u / m) * weight(u), 0, 1, epsrel=1e-12)[0] / quad(weight, 0, 1, epsrel=1e-12)[0]
        assert 0 <= stake <= 1 / m  # never more than the capital can lose
        capital *= 1 + stake * (float(x) - m)
        k += int(x)
        assert math.log(capital) == pytest.approx(stats.betting_log_wealth(k, n + 1, m), abs=1e-9)


def test_wealth_is_monotone_and_the_sequence_ends_are_tight():
    alpha = 0.001
    level = math.log(1 / alpha)
    grid = np.linspace(0.01, 0.99, 99)
    for k, n in [(90, 100), (100, 100), (9_700, 10_000), (99_990, 100_000)]:
        wealth = [stats.betting_log_wealth(k, n, m) for m in grid]
        assert all(b <= a + 1e-12 for a, b in zip(wealth, wealth[1:]))  # non-increasing in m
        assert stats.betting_log_wealth(k - 1, n, 0.5) <= stats.betting_log_wealth(k, n, 0.5)  # non-decreasing in k
        lower = stats.betting_lower(k, n, alpha)
        assert stats.betting_log_wealth(k, n, lower) >= level  # a valid end: its capital reached 1/alpha
        assert stats.betting_log_wealth(k, n, lower * (1 + 1e-9)) < level + 1e-3  # and nearly the largest
        assert stats.betting_proves_above(k, n, lower * (1 - 1e-9), alpha)
        assert lower < k / n <= stats.betting_upper(k, n, alpha)
    # All n votes agree: K_n(m) = (1 − m^(n+1)) / ((n + 1) m^n (1 − m)), root of K = 1/alpha by hand.
    n = 500
    from scipy.optimize import brentq
    level += stats.BETTING_LOG_MARGIN  # (the relative margin adds ~1e-9 nats at n = 500)
    root = brentq(lambda m: math.log1p(-m ** (n + 1)) - math.log(n + 1) - n * math.log(m) - math.log1p(-m) - level, 0.5, 1 - 1e-12)
    assert stats.betting_lower(n, n, alpha) == pytest.approx(root, rel=1e-9)
    assert stats.betting_upper(0, n, alpha) == pytest.approx(1 - root, rel=1e-9)
    assert stats.betting_lower(0, n, alpha) == 0.0 and stats.betting_upper(n, n, alpha) == 1.0


def test_betting_bounds_are_at_least_as_wide_as_fixed_n_clopper_pearson():
    """The price of checking at every n: at any single n the sequence is wider than the fixed-n bound."""
    for k, n in [(95, 100), (950, 1_000), (9_800, 10_000)]:
        assert stats.betting_lower(k, n, 0.001) < stats.clopper_pearson_lower(k, n, 0.001)
        assert stats.betting_upper(k, n, 0.001) > stats.clopper_pearson_upper(k, n, 0.001)


# ---------------------------------------------------------------- (c) agreement with the exact radius
def test_betting_decisions_agree_with_the_exact_radius():
    """Certified at r ⇒ the exact radius |w·x + b|/‖w‖ exceeds r (pA > Φ(r/σ)); rejected ⇒ it is below r;
    every reported bound contains the true pA."""
    model = LinearBinary(torch.tensor([0.6, 0.8]), 0.0)
    sigma = 0.25
    smoothed = SmoothedClassifier(model, 2, sigma, batch_size=2_000)
    seen = set()
    for i, margin in enumerate([0.02, 0.1, 0.2, 0.3, 0.45]):
        x = torch.tensor([margin / 0.6, 0.0])
        exact = model.exact_radius(x)
        pa = norm.cdf(exact / sigma)
        for radius in (0.05, 0.15, 0.25, 0.4):
            cert = smoothed.certify_at(x, radius, 0.001, n0=100, method="betting", max_samples=20_000, seed=i)
            seen.add(cert.decision)
            assert cert.p_lower <= pa <= cert.p_upper
            if cert.certified:
                assert exact > radius and cert.prediction == 1
                assert radius <= cert.certified_radius <= exact
            elif cert.decision == "rejected":
                assert exact < radius and cert.prediction == ABSTAIN and cert.certified_radius < radius
    assert {"certified", "rejected"} <= seen


def test_betting_stops_at_the_first_check_that_decides():
    easy = SmoothedClassifier(Constant(3), 10, 0.5).certify_at(torch.zeros(4), 0.5, 0.001, n0=10, seed=0, method="betting")
    assert easy.certified and easy.decision == "certified" and easy.prediction == 3 and easy.samples == 100
    assert easy.certified_radius >= 0.5 and easy.method == "betting" and easy.looks == ()
    assert easy.max_samples == 100_000 and easy.check_every == 100
    record = easy.to_record()
    assert record["method"] == "betting" and record["looks"] == [] and record["max_samples"] == 100_000
    hopeless = SmoothedClassifier(LinearBinary(torch.tensor([1.0, 0.0]), 0.0), 2, 0.5).certify_at(
        torch.tensor([0.25, 0.0]), 1.0, 0.001, seed=0, method="betting")
    assert hopeless.decision == "rejected" and hopeless.samples == 100 and hopeless.prediction == ABSTAIN
    # An input that needs several checks: the check before the deciding one had not decided.
    model = LinearBinary(torch.tensor([1.0, 0.0]), 0.0)
    smoothed = SmoothedClassifier(model, 2, 0.5, batch_size=64)
    x = torch.tensor([0.6, 0.0])  # pA = Φ(1.2) ≈ 0.885 against Φ(0.5) ≈ 0.69 at r = 0.25
    cert = smoothed.certify_at(x, 0.25, 0.001, n0=50, method="betting", check_every=10, max_samples=5_000, seed=3)
    assert cert.certified and 10 < cert.samples < 5_000 and cert.samples % 10 == 0
    before = cert.samples - 10
    counts = smoothed.sampler.counts(model, x, before, 0.5, 2, RandomStream(3, 0).key(Purpose.ESTIMATION))
    threshold = stats.upper_under_gaussian(norm.cdf(0.5), noise_tv(2))
    assert not stats.betting_proves_above(int(counts[cert.selected]), before, threshold, 0.001)


def test_betting_continues_one_stream_disjoint_from_selection():
    model = LinearBinary(torch.tensor([1.0, 0.0]), 0.0)
    x = torch.tensor([0.05, 0.0])
    smoothed = SmoothedClassifier(model, 2, 0.5, batch_size=64)
    cert = smoothed.certify_at(x, 0.2, 0.001, n0=50, method="betting", check_every=30, max_samples=1_000, seed=4)
    assert cert.decision in ("rejected", "undecided")
    full = smoothed.sampler.counts(model, x, cert.samples, 0.5, 2, RandomStream(4, 0).key(Purpose.ESTIMATION))
    assert cert.count == int(full[cert.selected])
    recorder = Recorder()
    cert = SmoothedClassifier(recorder, 2, 0.5, batch_size=64).certify_at(torch.zeros(3), 0.3, 0.01, n0=100,
                                                                          method="betting", check_every=50, seed=7)
    rows = torch.cat(recorder.seen)
    assert rows.shape == (100 + cert.samples, 3)
    assert torch.unique(rows, dim=0).shape[0] == rows.shape[0]  # no noisy copy was used twice


def test_betting_charges_tau(monkeypatch):
    """The bettor tests the sampled vote's mean against Φ(r/σ) + τ: with an inflated τ that puts the null
    at 1, nothing can be certified; the reported bounds move out by τ."""
    smoothed = SmoothedClassifier(Constant(1, 2), 2, 0.5)
    x = torch.zeros(4)
    radius = 0.5 * norm.ppf(0.96)
    cert = smoothed.certify_at(x, radius, 0.001, n0=10, method="betting", seed=0)
    assert cert.certified and cert.noise_tv == noise_tv(4)
    sequence_end = max(stats.betting_lower(cert.count, cert.samples, 0.001),
                       stats.upper_under_gaussian(stats.normal_cdf(radius / 0.5), cert.noise_tv))
    assert stats.normal_cdf(radius / 0.5) - 1e-15 <= cert.p_lower < sequence_end  # moved down by τ, rounded down
    monkeypatch.setattr(classify, "noise_tv", lambda numel: 0.05)
    blocked = smoothed.certify_at(x, radius, 0.001, n0=10, method="betting", max_samples=2_000, seed=0)
    assert not blocked.certified and blocked.decision == "undecided" and blocked.samples == 2_000
    assert blocked.p_lower <= 1 - 0.05 and blocked.noise_tv == 0.05


# ---------------------------------------------------------------- (c) arguments and records
@pytest.mark.parametrize("kwargs", [
    dict(method="bogus"), dict(method=None), dict(method=1),
    dict(method="betting", looks=(100, 1000)),
    dict(method="looks", max_samples=1000), dict(check_every=10),
    dict(method="betting", max_samples=0), dict(method="betting", max_samples=True),
    dict(method="betting", max_samples=1e5), dict(method="betting", check_every=0),
    dict(method="betting", check_every=2.5), dict(method="betting", check_every="100"),
    dict(method="betting", radius=0.0), dict(method="betting", alpha=1.0), dict(method="betting", n0=0),
])
def test_betting_bad_arguments(kwargs, linear_binary):
    args = dict(x=torch.zeros(2), radius=0.5, alpha=0.01) | kwargs
    with pytest.raises(InvalidParameterError):
        SmoothedClassifier(linear_binary, 2, 0.5).certify_at(**args)


@pytest.mark.parametrize(("fn", "args"), [
    (stats.betting_log_wealth, (3, 10, 0.0)), (stats.betting_log_wealth, (3, 10, 1.0)),
    (stats.betting_log_wealth, (11, 10, 0.5)), (stats.betting_log_wealth, (3, 0, 0.5)),
    (stats.betting_log_wealth, (3, 10, float("nan"))), (stats.betting_log_wealth, (True, 10, 0.5)),
    (stats.betting_proves_above, (3, 10, 0.5, 0.0)), (stats.betting_lower, (3, 10, 1.5)),
    (stats.betting_upper, (-1, 10, 0.1)), (stats.betting_lower, (3, 10, None)),
])
def test_betting_stats_bad_arguments(fn, args):
    with pytest.raises(InvalidParameterError):
        fn(*args)


def test_certify_record_says_which_test_ran():
    smoothed = SmoothedClassifier(Constant(2, 3), 3, 0.5)
    x = np.zeros(4, dtype=np.float32)
    betting = certify_record(smoothed, x, 5, 2, n0=10, n=None, alpha=0.001, seed=0, target_radius=0.25,
                             sequential="betting", max_samples=1_000, check_every=50)
    assert betting["sequential"] == "betting" and betting["decision"] == "certified" and betting["samples"] == 50
    assert betting["correct"] is True and betting["radius"] >= 0.25
    looks = certify_record(smoothed, x, 5, 2, n0=10, n=None, alpha=0.001, seed=0, target_radius=0.25, looks=[100, 1000])
    assert looks["sequential"] == "looks" and looks["samples"] == 100
    with pytest.raises(SmoothgenError):
        certify_record(smoothed, x, 5, 2, n0=10, n=None, alpha=0.001, seed=0, target_radius=0.5, sequential="nope")


def test_cli_sequential_betting(tmp_path, capsys):
    import json

    from smoothgen.cli import main

    out = tmp_path / "b.jsonl"
    code = main(["certify", "--num", "3", "--target-radius", "0.25", "--sequential", "betting", "--max-samples", "2000",
                 "--check-every", "50", "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in open(out, encoding="utf-8")]
    assert len(records) == 3
    for r in records:
        assert r["sequential"] == "betting" and r["max_samples"] == 2000 and r["check_every"] == 50 and "looks" not in r
        assert r["target_radius"] == 0.25 and r["n"] is None and r["samples"] % 50 == 0 and r["samples"] <= 2000
        assert r["radius"] >= 0.25 if r["decision"] == "certified" else r["radius"] == 0.0
    # The default with --target-radius is betting; giving --looks selects the looks.
    default, looks = tmp_path / "d.jsonl", tmp_path / "l.jsonl"
    assert main(["certify", "--num", "1", "--target-radius", "0.25", "--no-progress", "--out", str(default)]) == 0
    assert main(["certify", "--num", "1", "--target-radius", "0.25", "--looks", "100,1000", "--no-progress",
                 "--out", str(looks)]) == 0
    (d,), (lk,) = ([json.loads(line) for line in open(p, encoding="utf-8")] for p in (default, looks))
    assert d["sequential"] == "betting" and d["max_samples"] == 100_000 and d["check_every"] == 100
    assert lk["sequential"] == "looks" and lk["looks"] == [100, 1000] and "max_samples" not in lk
    capsys.readouterr()
    for bad in (["--sequential", "betting"], ["--target-radius", "0.5", "--sequential", "betting", "--looks", "100,1000"],
                ["--target-radius", "0.5", "--sequential", "looks", "--max-samples", "1000"],
                ["--target-radius", "0.5", "--check-every", "10", "--looks", "100,1000"],
                ["--max-samples", "1000"], ["--target-radius", "0.5", "--sequential", "betting", "--check-every", "0"],
                ["--target-radius", "0.5", "--sequential", "betting", "--max-samples", "-5"],
                ["--target-radius", "0.5", "--sequential", "nope"]):
        bad_out = tmp_path / "bad.jsonl"
        try:
            code = main(["certify", "--num", "1", "--no-progress", "--out", str(bad_out), *bad])
        except SystemExit as exc:  # argparse's own refusal (an unknown choice)
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) <= 2, (bad, err)
        assert not bad_out.exists()
