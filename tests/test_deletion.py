"""Token deletion for SmoothedLM: certificates in edit distance (docs/theory.md §4j), checked exactly.

`exact_decode` enumerates every deletion pattern with its probability, so the smoothed decoder's output at
every prompt with an inserted, deleted or substituted token is known exactly: a certified prefix that
changes there is a certificate failure or a bug, never Monte Carlo noise.
"""
from __future__ import annotations

import random
from fractions import Fraction

import numpy as np
import pytest
import torch

from smoothgen.deletion import TokenDeletion, deletion_delta, deletion_radius
from smoothgen.engine import Purpose, RandomStream
from smoothgen.errors import InvalidParameterError
from smoothgen.generative import SmoothedLM
from test_ablation import BagLM, SeeTokenLM

WATCH, THEN, OTHERWISE = 3, 1, 2


def _mask(length: int, head: int, tail: int) -> list[bool]:
    return [head <= i < length - tail for i in range(length)]


# --------------------------------------------------------------------------------------------------
# Δ_r and the radius
# --------------------------------------------------------------------------------------------------


def test_delta_is_one_minus_p_to_the_r_exactly():
    assert deletion_delta(0.5, 0) == 0 and deletion_delta(0.5, -1) == 0
    assert deletion_delta(0.5, 1) == Fraction(1, 2) and deletion_delta(0.5, 3) == Fraction(7, 8)
    assert deletion_delta(0.75, 2) == Fraction(7, 16)
    assert deletion_delta(0.9, 1) == 1 - Fraction(0.9)  # the float's exact value, not 1/10


@pytest.mark.parametrize(("lower", "p", "radius"), [
    (0.5, 0.75, -1), (0.25, 0.75, -1),       # L <= 1/2 certifies nothing
    (0.75, 0.75, 0),                         # L = 1/2 + Δ_1 exactly: strict inequality fails at r = 1
    (np.nextafter(0.75, 1), 0.75, 1),
    (0.9375, 0.75, 1),                       # 1/2 + Δ_2 = 1/2 + 7/16
    (np.nextafter(0.9375, 1), 0.75, 2),
    (1.0, 0.5, 0),                           # Δ_1 = 1/2: not even L = 1 covers an edit
    (1.0, 0.9, 6), (0.99827, 0.9, 6),        # 0.9^6 = 0.531 > 1/2 + ..., 0.9^7 = 0.478
    (1.0, 0.999, 692),                       # the float estimate corrected by exact powers
])
def test_radius_is_the_largest_r_with_margin_strictly_above_delta(lower, p, radius):
    r = deletion_radius(float(lower), p)
    assert r == radius
    if r >= 0:
        assert Fraction(float(lower)) - Fraction(1, 2) > deletion_delta(p, r)
    assert Fraction(float(lower)) - Fraction(1, 2) <= deletion_delta(p, r + 1)


@pytest.mark.parametrize("bad", [0, 1, 0.0, 1.0, -0.1, 1.5, True, "0.5", float("nan"), None])
def test_delete_prob_must_be_a_probability_strictly_inside(bad):
    with pytest.raises(InvalidParameterError, match="delete_prob"):
        TokenDeletion(bad)


# --------------------------------------------------------------------------------------------------
# Copies
# --------------------------------------------------------------------------------------------------


def test_copies_delete_each_perturbed_token_with_p_and_never_an_unperturbed_one():
    noise = TokenDeletion(0.3)
    mask = torch.tensor(_mask(8, 2, 1))
    key = RandomStream(1, 0).key(Purpose.SELECTION)
    kept = noise.kept(mask, key, 0, 20_000)
    assert kept[:, ~mask.numpy()].all()
    rate = 1 - kept[:, mask.numpy()].mean(axis=0)  # per position, 20 000 Bernoulli(0.3)
    assert np.all(np.abs(rate - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 20_000))
    together = np.corrcoef(kept[:, 2], kept[:, 3])[0, 1]
    assert abs(together) < 0.03  # independent positions
    # Copy i is a pure function of (key, i): the same whatever the chunking.
    assert (noise.kept(mask, key, 5, 7) == kept[5:12]).all()
    # Kept tokens close up in order; groups by length, ascending.
    ids = torch.arange(10, 18)
    groups = noise.groups(ids, kept[:50])
    assert sum(g.shape[0] for g in groups) == 50
    assert [g.shape[1] for g in groups] == sorted({int(n) for n in kept[:50].sum(axis=1)})
    for g in groups:
        assert (g[:, :2] == torch.tensor([10, 11])).all() and (g[:, -1] == 17).all()
        assert (g[:, 1:] > g[:, :-1]).all()


def test_the_threshold_rounding_is_charged():
    noise = TokenDeletion(0.9)
    assert noise.threshold >= Fraction(0.9) * 2**64 and noise.threshold - Fraction(0.9) * 2**64 < 1
    assert noise.noise_tv(12, 4, perturbed=5) >= 5 * 2.0**-64 and noise.noise_tv(12, 4, perturbed=0) == 0.0


def test_the_perturbed_positions_must_be_one_run_with_an_empty_token_when_everything_may_go():
    lm = SmoothedLM(BagLM(), TokenDeletion(0.5))
    with pytest.raises(InvalidParameterError, match="one contiguous run"):
        lm.generate([1, 2, 3, 4], 1, n0=10, n=10, mask=[True, False, True, False])
    with pytest.raises(InvalidParameterError, match="empty_token_id"):
        lm.generate([1, 2, 3, 4], 1, n0=10, n=10)  # the whole prompt perturbed: a copy can be empty
    with pytest.raises(InvalidParameterError, match="perturbs no position"):
        lm.generate([1, 2, 3, 4], 1, n0=10, n=10, mask=[False] * 4)
    with pytest.raises(InvalidParameterError, match="outside the vocabulary"):
        SmoothedLM(BagLM(), TokenDeletion(0.5, empty_token_id=99)).generate([1, 2, 3, 4], 1, n0=10, n=10)
    with pytest.raises(InvalidParameterError, match="empty_token_id"):
        TokenDeletion(0.5, empty_token_id=-1)


def test_an_empty_copy_is_fed_the_empty_token():
    """With every position perturbed and p close to 1 most copies are empty: they see only the empty token."""
    lm = SmoothedLM(SeeTokenLM(5, watch=4, then=THEN, otherwise=OTHERWISE), TokenDeletion(0.99, empty_token_id=4))
    dist = lm.next_token_distribution([2, 2, 2], 2000, seed=0)
    assert dist[THEN] > 0.95  # empty copies see token 4 (0.99^3 of them), the others do not
    tokens, probs = lm.exact_decode([2, 2, 2], 1)
    assert tokens == (THEN,) and probs[0] == pytest.approx(0.99**3)


def test_what_token_deletion_does_not_support_is_refused():
    lm = SmoothedLM(BagLM(), TokenDeletion(0.5))
    with pytest.raises(InvalidParameterError, match="deletion patterns exceed"):
        lm.exact_decode(list(range(1, 9)) * 2, 1, mask=[True] * 15 + [False], max_subsets=1000)
    with pytest.raises(InvalidParameterError, match="delta"):
        lm.decode([1, 2, 3], 1, 5, mask=[True, True, False], delta=torch.zeros(3, lm.dim))


# --------------------------------------------------------------------------------------------------
# The oracle: a model whose smoothed decision is known in closed form, and the bound attained
# --------------------------------------------------------------------------------------------------


def _watch_lm(p: float) -> SmoothedLM:
    return SmoothedLM(SeeTokenLM(6, watch=WATCH, then=THEN, otherwise=OTHERWISE), TokenDeletion(p), batch_size=1000)


def test_insertions_move_the_smoothed_probability_by_exactly_delta_r():
    """The model answers THEN iff it sees WATCH. A prompt with c copies of WATCH in the run gives
    P(THEN) = 1 − p^c exactly; inserting r of them into a prompt without any moves P(OTHERWISE) from 1 to
    p^r: by exactly Δ_r = 1 − p^r, so the bound is tight."""
    p = 0.8
    lm = _watch_lm(p)
    head, tail = [4], [5]
    for c in range(4):
        ids = head + [1, 2] + [WATCH] * c + [2] + tail
        mask = _mask(len(ids), 1, 1)
        tokens, probs = lm.exact_decode(ids, 1, mask=mask)
        expected = 1 - p**c
        assert probs[0] == pytest.approx(max(expected, 1 - expected), abs=1e-12)
        assert tokens == ((THEN,) if expected > 0.5 else (OTHERWISE,))
        assert 1 - (p**c if tokens == (OTHERWISE,) else 1 - p**c) == pytest.approx(
            float(deletion_delta(p, c)) if tokens == (OTHERWISE,) else 1 - float(deletion_delta(p, c)), abs=1e-12)


def test_the_oracle_certificate_is_exactly_as_large_as_it_may_be():
    """At a prompt without WATCH every copy votes OTHERWISE; the certificate's r* must be such that r*
    inserted WATCH tokens leave OTHERWISE (p^r* > 1/2) — true for the r* it gives — and r* + 1 insertions
    may flip it: the exact decoder shows they do when p^(r*+1) < 1/2 (no room for a larger radius)."""
    p = 0.9
    lm = _watch_lm(p)
    ids = [4, 1, 2, 2, 1, 5]
    mask = _mask(len(ids), 1, 1)
    cert = lm.generate(ids, 1, n0=100, n=4000, alpha=0.001, seed=0, mask=mask)
    assert cert.noise == "deletion" and cert.delete_prob == p and cert.keep is None and cert.score == "vote"
    assert cert.tokens == (OTHERWISE,) and cert.p_lower[0] > 0.998
    r = int(cert.step_radius[0])
    assert r == 6 == deletion_radius(cert.p_lower[0], p)
    for inserted in range(r + 1):  # covered: the exact decoder keeps OTHERWISE
        edited = ids[:3] + [WATCH] * inserted + ids[3:]
        assert lm.exact_decode(edited, 1, mask=_mask(len(edited), 1, 1), max_subsets=1 << 12)[0] == (OTHERWISE,)
    edited = ids[:3] + [WATCH] * (r + 1) + ids[3:]  # one more: flipped, so no larger certificate is sound
    assert lm.exact_decode(edited, 1, mask=_mask(len(edited), 1, 1), max_subsets=1 << 12)[0] == (THEN,)


def test_a_sabotaged_radius_is_caught(monkeypatch):
    """Δ_r replaced by the too-small 1 − p^(r/2): the oracle prompt is certified at r* = 13, and the exact
    decoder at the prompt with 7 inserted WATCH tokens refutes it."""
    import smoothgen.deletion as deletion

    real = deletion.deletion_radius
    monkeypatch.setattr(deletion, "deletion_radius", lambda lower, p: real(lower, p**0.5))
    p = 0.9
    lm = _watch_lm(p)
    ids = [4, 1, 2, 2, 1, 5]
    cert = lm.generate(ids, 1, n0=100, n=4000, alpha=0.001, seed=0, mask=_mask(len(ids), 1, 1))
    assert cert.prefix_at(7) == 1
    edited = ids[:3] + [WATCH] * 7 + ids[3:]
    assert lm.exact_decode(edited, 1, mask=_mask(len(edited), 1, 1), max_subsets=1 << 14)[0] != cert.tokens


# --------------------------------------------------------------------------------------------------
# Exhaustive: every single insertion, deletion and substitution of short prompts
# --------------------------------------------------------------------------------------------------


def single_edits(run: list[int], vocab: range) -> list[list[int]]:
    """Every run one insertion (at either end too), deletion or substitution away (also used by test_encoders)."""
    out = []
    for i in range(len(run) + 1):  # insertions, at either end too
        out += [run[:i] + [tok] + run[i:] for tok in vocab]
    for i in range(len(run)):
        out.append(run[:i] + run[i + 1:])  # deletions
        out += [run[:i] + [tok] + run[i + 1:] for tok in vocab if tok != run[i]]  # substitutions
    return out


@pytest.mark.parametrize("score", ["probability", "vote"])
def test_every_single_edit_keeps_the_prefix_certified_at_one_edit_exhaustively(score):
    """For short prompts (a fixed head and tail around a run of 5), every single inserted, deleted or
    substituted token of the run, with the smoothed decoder computed exactly at each edited prompt; and
    a sample of two-edit prompts against the prefix certified at r = 2."""
    rng = random.Random(0)
    checked = certified_one = certified_two = 0
    cases = [([1], [2, 3, 4, 5, 6], [7, 8], 0.6), ([8], [8, 2, 5, 1, 3], [6], 0.5), ([4, 7], [1, 2, 6, 5, 3], [2], 0.85)]
    for seed, (head, run, tail, p) in enumerate(cases):
        lm = SmoothedLM(BagLM(seed=seed), TokenDeletion(p), batch_size=256, score=score)
        ids = head + run + tail
        mask = _mask(len(ids), len(head), len(tail))
        cert = lm.generate(ids, 3, n0=300, n=3000, alpha=0.001, seed=seed, mask=mask)
        exact, _ = lm.exact_decode(ids, 3, mask=mask)
        assert exact[: cert.prefix_at(0)] == cert.tokens[: cert.prefix_at(0)]
        k1, k2 = cert.prefix_at(1), cert.prefix_at(2)
        certified_one += k1
        certified_two += k2
        for edited_run in single_edits(run, range(1, 9)):
            edited = head + edited_run + tail
            out = lm.exact_decode(edited, max(k1, 1), mask=_mask(len(edited), len(head), len(tail)))[0]
            assert out[:k1] == cert.tokens[:k1], (seed, edited_run)
            checked += 1
        for _ in range(40):  # two edits: one single edit on top of another
            once = rng.choice(single_edits(run, range(1, 9)))
            twice = rng.choice(single_edits(once, range(1, 9)))
            edited = head + twice + tail
            out = lm.exact_decode(edited, max(k2, 1), mask=_mask(len(edited), len(head), len(tail)))[0]
            assert out[:k2] == cert.tokens[:k2], (seed, twice)
    assert certified_one >= 2 and certified_two >= 1, "nothing certified: the check would be vacuous"
    assert checked > 250


def test_cached_and_recomputed_decoding_agree_under_deletion():
    lm = SmoothedLM(BagLM(seed=3), TokenDeletion(0.5), batch_size=64)
    ids, mask = [1, 2, 3, 4, 5, 6, 7, 8], _mask(8, 1, 2)
    a = lm.generate(ids, 4, n0=100, n=500, seed=1, mask=mask)
    b = lm.generate(ids, 4, n0=100, n=500, seed=1, mask=mask, use_cache=False)
    assert a.tokens == b.tokens and a.p_lower == b.p_lower and a.step_radius == b.step_radius
    assert a.noise_tv == TokenDeletion(0.5).noise_tv(8, lm.dim, 5) > 0
    record = a.to_dict()
    assert record["noise"] == "deletion" and record["delete_prob"] == 0.5
    # Different batch sizes cut copies differently; the sums are the same.
    c = SmoothedLM(BagLM(seed=3), TokenDeletion(0.5), batch_size=7).generate(ids, 4, n0=100, n=500, seed=1, mask=mask)
    assert c.tokens == a.tokens and c.p_lower == pytest.approx(a.p_lower)
