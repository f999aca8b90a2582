"""Certified generation that stops when it knows (`SmoothedLM.generate(sequential=True)`, issue 24 item 3).

Each step's vote share gets a betting confidence sequence at α/T (docs/theory.md §6): anytime valid, so
the estimation may stop as soon as the prefix at the requested radius is decided. The oracles: the exact
probability, over every path of votes, that a step whose share sits exactly at the level is ever
certified (a dynamic program; a Clopper–Pearson bound at every check, the naive rule, exceeds α), and the
whole pipeline at that boundary over many seeds.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, binomtest

from smoothgen import stats
from smoothgen.deletion import TokenDeletion
from smoothgen.errors import InvalidParameterError
from smoothgen.generative import SmoothedLM, TokenAblation
from test_ablation import BagLM, SeeTokenLM

WATCH, THEN, OTHERWISE = 3, 1, 2


def _first_k(n: int, above) -> int:
    """Smallest k in [0, n] with above(k) (monotone in k), n + 1 if none."""
    lo, hi = 0, n + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if above(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _ever_above(p: float, level: float, alpha: float, check_every: int, max_samples: int, lower) -> float:
    """P(at some check n = check_every, 2·check_every, ..., max_samples the lower bound lower(k, n, alpha)
    exceeds level), votes Bernoulli(p): a dynamic program over the vote count. Any stopping rule certifies
    falsely at most this often."""
    alive = np.ones(1)
    step = binom.pmf(np.arange(check_every + 1), check_every, p)
    crossed, n = 0.0, 0
    while n < max_samples:
        alive, n = np.convolve(alive, step), n + check_every
        k = _first_k(n, lambda k: lower(k, n, alpha) > level)
        crossed += alive[k:].sum()
        alive[k:] = 0.0
    return float(crossed)


@pytest.mark.parametrize(("level", "alpha", "check_every", "max_samples"), [
    (0.6, 0.05, 10, 1000),       # 1/2 + Δ_1 of deletion at p = 0.9
    (0.5, 0.1, 5, 600),
    (0.6, 0.001 / 16, 50, 1000), # the CLI's defaults: α/T at T = 16, checks every 50
])
def test_a_step_at_its_level_is_certified_with_probability_at_most_alpha_exactly(level, alpha, check_every, max_samples):
    exact = _ever_above(level, level, alpha, check_every, max_samples, stats.betting_lower)
    assert exact <= alpha
    # The naive rule — a fixed-n Clopper–Pearson bound recomputed at every check — is not anytime valid.
    naive = _ever_above(level, level, alpha, check_every, max_samples, stats.clopper_pearson_lower)
    if alpha >= 0.05:
        assert naive > 1.5 * alpha


def _boundary_lm() -> SmoothedLM:
    """Deletion at p = 1/2 of a run holding one WATCH token: P(THEN) = P(OTHERWISE) = 1/2 exactly, so a
    certificate of either at radius 0 (which needs a share above 1/2) is always false."""
    return SmoothedLM(SeeTokenLM(6, watch=WATCH, then=THEN, otherwise=OTHERWISE), TokenDeletion(0.5), batch_size=500)


def _boundary_runs(runs: int = 150, alpha: float = 0.2) -> tuple[int, list[int]]:
    lm = _boundary_lm()
    ids, mask = [4, 1, WATCH, 2, 5], [False, True, True, True, False]
    assert lm.exact_decode(ids, 1, mask=mask)[1][0] == pytest.approx(0.5)
    wrong, drawn = 0, []
    for seed in range(runs):
        cert = lm.generate(ids, 1, n0=10, n=400, alpha=alpha, seed=seed, mask=mask, sequential=True, check_every=10)
        wrong += cert.certified_prefix >= 1
        drawn.append(cert.n)
    return wrong, drawn


def test_the_pipeline_at_the_boundary_certifies_falsely_at_most_alpha():
    wrong, drawn = _boundary_runs()
    assert binomtest(wrong, 150, 0.2, alternative="greater").pvalue > 1e-3, wrong
    assert max(drawn) <= 400 and min(drawn) >= 10


def test_a_sabotaged_sequence_fails_the_boundary_oracle(monkeypatch):
    """The confidence sequence replaced by a fixed-n Clopper–Pearson bound, recomputed at every check (to
    stop) and at the stop (to certify): the same runs then certify the boundary step far more often than α."""
    cp = stats.clopper_pearson_lower
    monkeypatch.setattr(stats, "betting_lower", cp)
    monkeypatch.setattr(stats, "betting_proves_above", lambda k, n, m, alpha: cp(k, n, alpha) > m)
    wrong, _ = _boundary_runs()
    assert binomtest(wrong, 150, 0.2, alternative="greater").pvalue < 1e-3, wrong


def test_a_unanimous_prompt_stops_at_the_first_check_with_the_same_tokens():
    lm = SmoothedLM(SeeTokenLM(6, watch=WATCH, then=THEN, otherwise=OTHERWISE), TokenDeletion(0.9), batch_size=500)
    ids, mask = [4, 1, 2, 2, 1, 5], [False, True, True, True, True, False]
    fixed = lm.generate(ids, 3, n0=50, n=2000, alpha=0.001, seed=0, mask=mask, radius=2)
    seq = lm.generate(ids, 3, n0=50, n=2000, alpha=0.001, seed=0, mask=mask, radius=2, sequential=True, check_every=50)
    assert seq.tokens == fixed.tokens and seq.certified_prefix == fixed.certified_prefix == 3
    assert seq.sequential and seq.bound == "betting" and seq.max_samples == 2000 and seq.n == 50
    expected = stats.lower_under_gaussian(stats.betting_lower(50, 50, 0.001 / 3), seq.noise_tv)
    assert all(lower == expected for lower in seq.p_lower)
    assert fixed.n == 2000 and not fixed.sequential and fixed.max_samples == 2000
    assert seq.check_every == 50 and fixed.check_every is None


def test_an_undecidable_step_ends_the_prefix_and_stops_the_estimation():
    """At the boundary the first step can never be proved above 1/2 + Δ_1 (needs 0.75 here): once it is
    proved below, the estimation stops well before n."""
    lm = _boundary_lm()
    ids, mask = [4, 1, WATCH, 2, 5], [False, True, True, True, False]
    cert = lm.generate(ids, 2, n0=20, n=5000, alpha=0.01, seed=1, mask=mask, radius=1, sequential=True, check_every=20)
    assert cert.certified_prefix == 0 and cert.n < 5000


def test_sequential_certificates_hold_against_the_exact_decoder():
    """Every token certified at r = 1 by a sequential run is the exact smoothed decoder's at every prompt
    one substitution away (ablation, a tiny LM, all subsets): the early stop costs no soundness."""
    ids = [1, 2, 3, 4, 5, 6, 7]
    lm = SmoothedLM(BagLM(seed=2), TokenAblation(2, 0), batch_size=256, score="vote")
    cert = lm.generate(ids, 3, n0=300, n=4000, alpha=0.001, seed=0, radius=1, sequential=True)
    k1 = cert.prefix_at(1)
    assert k1 >= 1 and cert.n < 4000
    for pos in range(len(ids)):
        for tok in range(1, 9):
            edited = list(ids)
            edited[pos] = tok
            assert lm.exact_decode(edited, k1)[0][:k1] == cert.tokens[:k1]
    with pytest.raises(InvalidParameterError, match="vote"):  # the betting sequence bounds 0/1 votes
        SmoothedLM(BagLM(seed=0), TokenAblation(2, 0), score="probability").generate(ids, 1, sequential=True)


def test_bad_check_every_is_refused():
    lm = SmoothedLM(BagLM(seed=0), TokenAblation(2, 0))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidParameterError, match="check_every"):
            lm.generate([1, 2, 3], 1, n0=5, n=10, sequential=True, check_every=bad)


def test_the_level_each_noise_space_certifies_at():
    from smoothgen.generative import EmbeddingGaussian, ablation_delta
    from smoothgen.deletion import deletion_delta

    assert TokenAblation(2, 0).certify_threshold(1, 10) == 0.5 + float(ablation_delta(10, 2, 1))
    assert TokenDeletion(0.9).certify_threshold(2, 10) == 0.5 + float(deletion_delta(0.9, 2))
    assert EmbeddingGaussian(0.5).certify_threshold(0.5, 10) == pytest.approx(stats.normal_cdf(1.0))
    assert math.isclose(EmbeddingGaussian(0.5).certify_threshold(0.0, 10), 0.5)
