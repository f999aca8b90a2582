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
from smoothgen.generative import SmoothedLM, TokenAblation, sequential_looks
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


def _ever_above(p: float, level: float, alpha: float, looks: list[int], lower) -> float:
    """P(at some look n in `looks` the lower bound lower(k, n, alpha) exceeds level), votes Bernoulli(p): a
    dynamic program over the vote count. Any stopping rule on those looks certifies falsely at most this often."""
    alive = np.ones(1)
    crossed, n = 0.0, 0
    for look in looks:
        count = look - n
        alive, n = np.convolve(alive, binom.pmf(np.arange(count + 1), count, p)), look
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
    regular = sequential_looks(check_every, max_samples, level, alpha, "check_every")
    assert regular == [*range(check_every, max_samples + 1, check_every)]
    exact = _ever_above(level, level, alpha, regular, stats.betting_lower)
    assert exact <= alpha
    # The looks generate makes by default: one more, first, at the fewest copies that could certify.
    looks = sequential_looks(check_every, max_samples, level, alpha)
    first = stats.betting_first_decision(level, alpha, max_samples)
    assert not stats.betting_proves_above(first - 1, first - 1, level, alpha)
    assert looks == ([first, *regular] if first < check_every else regular)
    assert _ever_above(level, level, alpha, looks, stats.betting_lower) <= alpha
    # The naive rule — a fixed-n Clopper–Pearson bound recomputed at every check — is not anytime valid.
    naive = _ever_above(level, level, alpha, regular, stats.clopper_pearson_lower)
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
    # Every stop is a look: the first at the fewest copies that could certify (4 at α = 0.2), then every 10.
    looks = sequential_looks(10, 400, 0.5, 0.2)
    assert looks[:3] == [4, 10, 20] and set(drawn) <= set(looks)


def test_a_sabotaged_sequence_fails_the_boundary_oracle(monkeypatch):
    """The confidence sequence replaced by a fixed-n Clopper–Pearson bound, recomputed at every check (to
    stop) and at the stop (to certify): the same runs then certify the boundary step far more often than α."""
    cp = stats.clopper_pearson_lower
    monkeypatch.setattr(stats, "betting_lower", cp)
    monkeypatch.setattr(stats, "betting_proves_above", lambda k, n, m, alpha: cp(k, n, alpha) > m)
    wrong, _ = _boundary_runs()
    assert binomtest(wrong, 150, 0.2, alternative="greater").pvalue < 1e-3, wrong


def test_a_unanimous_prompt_stops_at_the_first_check_with_the_same_tokens():
    """Every copy agrees: the estimation stops at its first look — after check_every copies, or by default
    at the fewest that can certify two edits (p^2 = 0.81: a share above 0.69 at α/3), fewer than 50."""
    lm = SmoothedLM(SeeTokenLM(6, watch=WATCH, then=THEN, otherwise=OTHERWISE), TokenDeletion(0.9), batch_size=500)
    ids, mask = [4, 1, 2, 2, 1, 5], [False, True, True, True, True, False]
    fixed = lm.generate(ids, 3, n0=50, n=2000, alpha=0.001, seed=0, mask=mask, radius=2)
    late = lm.generate(ids, 3, n0=50, n=2000, alpha=0.001, seed=0, mask=mask, radius=2, sequential=True, check_every=50,
                       first_check="check_every")
    seq = lm.generate(ids, 3, n0=50, n=2000, alpha=0.001, seed=0, mask=mask, radius=2, sequential=True, check_every=50)
    level = stats.upper_under_gaussian(lm.noise.certify_threshold(2, 4), seq.noise_tv)
    earliest = stats.betting_first_decision(level, 0.001 / 3, 50)
    assert 20 < earliest < 50
    for cert, n in ((late, 50), (seq, earliest)):
        assert cert.tokens == fixed.tokens and cert.certified_prefix == fixed.certified_prefix == 3
        assert cert.sequential and cert.bound == "betting" and cert.max_samples == 2000 and cert.n == n
        expected = stats.lower_under_gaussian(stats.betting_lower(n, n, 0.001 / 3), cert.noise_tv)
        assert all(lower == expected for lower in cert.p_lower)
    assert (seq.first_check, late.first_check, fixed.first_check) == ("earliest", "check_every", None)
    assert fixed.n == 2000 and not fixed.sequential and fixed.max_samples == 2000
    assert seq.check_every == 50 and fixed.check_every is None
    with pytest.raises(InvalidParameterError, match="first_check"):
        lm.generate(ids, 1, n0=5, n=10, mask=mask, sequential=True, first_check="soon")


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


def test_documents_from_before_the_earliest_look_recompute_with_their_schedule():
    """A served sequential generation signed before first_check existed looked first after check_every
    copies: its params have no first_check, and `smoothgen verify --recompute` must rebuild that schedule."""
    from smoothgen import jobs
    from smoothgen.text_generation import load_lm_spec

    lm, tokenizer, name = load_lm_spec(None, "cpu", "delete")
    params = {"noise": "delete", "max_new_tokens": 2, "n0": 20, "n": 400, "alpha": 0.001, "perturb": None, "keep": None,
              "mask_token": None, "edits": 1, "sigma": None, "radius": None, "delete_prob": 0.9, "sequential": True,
              "check_every": 40}
    prompt = "import os\nimport s"
    old = jobs.served_generate(lm, tokenizer, name, prompt, params, seed=3, request_id=0, batch_size=250)
    new = jobs.served_generate(lm, tokenizer, name, prompt, {**params, "first_check": "earliest"}, seed=3, request_id=0,
                               batch_size=250)
    assert old["first_check"] == "check_every" and old["n"] % 40 == 0
    assert new["first_check"] == "earliest" and new["n"] <= old["n"]
