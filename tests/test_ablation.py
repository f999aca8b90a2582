"""Token ablation for SmoothedLM: certificates in substituted tokens (docs/theory.md §4g), checked exactly.

The threat is discrete, so small cases are verified without Monte Carlo: `exact_decode` enumerates
every kept subset, giving the smoothed decoder's exact output at every edited prompt.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pytest
import torch

from smoothgen.engine import Purpose, RandomStream
from smoothgen.errors import InvalidParameterError
from smoothgen.generative import SmoothedLM, TokenAblation, ablation_delta, ablation_radius

MASK = 0


@dataclass
class _Out:
    logits: torch.Tensor
    past_key_values: tuple


class CopyPositionLM(torch.nn.Module):
    """Predicts the token at prompt position j (steeply), or token `default` when j is masked: its exact
    smoothed probability of x_j is k/P, and a substitution at j moves it by exactly Δ_1 = k/P — the
    worst case the certificate must survive."""

    def __init__(self, vocab: int, j: int, default: int, prompt_length: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, vocab)
        with torch.no_grad():
            self.emb.weight.copy_(torch.eye(vocab))  # one-hot rows: the token is readable from its row
        self.j, self.default, self.prompt_length, self.vocab = j, default, prompt_length, vocab

    def get_input_embeddings(self):
        return self.emb

    def forward(self, inputs_embeds, past_key_values=None, use_cache=True):
        past = past_key_values[0] if past_key_values else inputs_embeds[:, :0]
        full = torch.cat([past, inputs_embeds], dim=1)
        token = full[:, self.j].argmax(dim=-1)  # [B]
        token = torch.where(token == MASK, torch.full_like(token, self.default), token)
        logits = torch.full((full.shape[0], inputs_embeds.shape[1], self.vocab), -30.0)
        logits[torch.arange(full.shape[0]), :, token] = 30.0
        return _Out(logits, (full,))


class BagLM(torch.nn.Module):
    """A tiny causal LM with a small vocabulary: logits at position t = W·(mean of the embeddings up to t)
    + b, random weights scaled to make decisions peaked. Small enough to enumerate every substitution."""

    def __init__(self, vocab: int = 9, dim: int = 6, seed: int = 0, scale: float = 6.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Embedding(vocab, dim)
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(vocab, dim, generator=g))
        self.w = torch.nn.Parameter(scale * torch.randn(vocab, dim, generator=g))
        self.b = torch.nn.Parameter(torch.randn(vocab, generator=g))

    def get_input_embeddings(self):
        return self.emb

    def forward(self, inputs_embeds, past_key_values=None, use_cache=True):
        past = past_key_values[0] if past_key_values else inputs_embeds[:, :0]
        full = torch.cat([past, inputs_embeds], dim=1)
        means = full.cumsum(dim=1) / torch.arange(1, full.shape[1] + 1, dtype=full.dtype)[None, :, None]
        logits = means[:, past.shape[1] :] @ self.w.T + self.b
        return _Out(logits, (full,))


class SeeTokenLM(torch.nn.Module):
    """Outputs token `then` whenever token `watch` is visible anywhere in its input (prompt or generated
    tokens), else token `otherwise`. At a prompt without `watch` every ablated copy votes `otherwise`; a
    substitution that writes `watch` at a perturbed position is seen exactly by the copies that keep it."""

    def __init__(self, vocab: int, watch: int, then: int, otherwise: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, vocab)
        with torch.no_grad():
            self.emb.weight.copy_(torch.eye(vocab))
        self.watch, self.then, self.otherwise, self.vocab = watch, then, otherwise, vocab

    def get_input_embeddings(self):
        return self.emb

    def forward(self, inputs_embeds, past_key_values=None, use_cache=True):
        past = past_key_values[0] if past_key_values else inputs_embeds[:, :0]
        full = torch.cat([past, inputs_embeds], dim=1)
        seen = (full.argmax(dim=-1) == self.watch).any(dim=1)  # [B]
        token = torch.where(seen, torch.full_like(seen, self.then, dtype=torch.long),
                            torch.full_like(seen, self.otherwise, dtype=torch.long))
        logits = torch.full((full.shape[0], inputs_embeds.shape[1], self.vocab), -30.0)
        logits[torch.arange(full.shape[0]), :, token] = 30.0
        return _Out(logits, (full,))


# --------------------------------------------------------------------------------------------------
# Δ_r and the radius
# --------------------------------------------------------------------------------------------------


def test_delta_is_the_hitting_probability_of_a_random_subset():
    """Δ_r against a direct count: the share of k-subsets of L positions that meet {0, .., r − 1}."""
    for length, keep in [(6, 2), (7, 3), (5, 5), (4, 9)]:
        subsets = list(itertools.combinations(range(length), min(keep, length)))
        for r in range(length + 1):
            hit = sum(1 for s in subsets if any(p < r for p in s))
            assert ablation_delta(length, keep, r) == Fraction(hit, len(subsets))


def test_radius_is_the_largest_r_with_margin_strictly_above_delta():
    assert ablation_radius(0.5, 10, 3) == -1  # L ≤ 1/2 certifies nothing, not even r = 0
    assert ablation_radius(0.5000001, 10, 3) == 0
    assert ablation_radius(0.7999999, 10, 3) == 0  # Δ_1 = 0.3: needs L > 0.8 strictly
    assert ablation_radius(0.8000001, 10, 3) == 1
    assert ablation_radius(Fraction(4, 5), 10, 3) == 0  # exactly 0.8 (compared as rationals, no rounding)
    assert ablation_radius(1.0, 10, 3) == 1  # Δ_2 = 1 − 56/120 > 1/2
    assert ablation_radius(1.0, 100, 1) == 49  # Δ_r = r/100: r = 49 has 0.5 > 0.49, r = 50 not 0.5 > 0.5


# --------------------------------------------------------------------------------------------------
# The noise space
# --------------------------------------------------------------------------------------------------


def test_copies_keep_exactly_k_uniform_positions_and_never_touch_unperturbed_ones():
    lm = SmoothedLM(BagLM(), TokenAblation(3, MASK), mask=[True] * 6 + [False, False])
    ids = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8])
    key = RandomStream(1, 0).key(Purpose.ESTIMATION)
    embeds = lm.noisy_prompts(ids, lm.prompt_mask(ids), key, 0, 6000)
    kept = (embeds[:, :6] != lm.table[MASK]).any(dim=-1)  # [copies, 6]
    assert bool((kept.sum(dim=1) == 3).all())
    assert torch.equal(embeds[:, 6:], lm.table[ids[6:]].expand(6000, -1, -1))
    frequency = kept.double().mean(dim=0)
    assert torch.allclose(frequency, torch.full((6,), 0.5, dtype=torch.float64), atol=0.03)
    pairs = {tuple(np.flatnonzero(row)) for row in kept.numpy()}
    assert len(pairs) == math.comb(6, 3)  # every subset occurs
    # batch invariance: copy i's subset depends on (key, i) only
    again = torch.cat([lm.noisy_prompts(ids, lm.prompt_mask(ids), key, s, 1000) for s in range(0, 6000, 1000)])
    assert torch.equal(again, embeds)


def test_gaussian_only_certificates_refuse_ablation():
    lm = SmoothedLM(BagLM(), TokenAblation(2, MASK))
    with pytest.raises(InvalidParameterError):
        lm.distribution_bound(0.1)
    with pytest.raises(InvalidParameterError):  # under ablation eps_in counts substituted tokens
        lm.center_certify([1, 2, 3], 2, 0.1, n=10, m=10)
    with pytest.raises(InvalidParameterError):
        TokenAblation(0, MASK)
    with pytest.raises(InvalidParameterError):
        TokenAblation(2, -1)
    with pytest.raises(InvalidParameterError):
        SmoothedLM(BagLM(vocab=9), TokenAblation(2, 50)).generate([1, 2, 3], 1, n0=5, n=5)


# --------------------------------------------------------------------------------------------------
# Oracles
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["probability", "vote"])
def test_copy_position_oracle_exact_probability_and_no_false_certificate(score):
    """p̄(x_j) = k/P exactly; a substitution at j drops it by exactly Δ_1 = k/P, so r = 1 can never be
    certified, while r = 0 is when k/P is comfortably above 1/2. A Δ_r below the truth (e.g. r/P) would
    certify r = 1 here, and the exact decoder at the edited prompt shows the change."""
    P, keep, j = 10, 8, 4
    ids = [3, 5, 2, 7, 6, 1, 4, 8, 2, 3]
    lm = SmoothedLM(CopyPositionLM(9, j, default=8, prompt_length=P), TokenAblation(keep, MASK), batch_size=500,
                    score=score)
    tokens, probs = lm.exact_decode(ids, 1)
    assert tokens == (ids[j],) and probs[0] == pytest.approx(keep / P)
    cert = lm.generate(ids, 1, n0=200, n=4000, alpha=0.001, seed=0)
    assert cert.noise == "ablation" and cert.keep == keep and cert.sigma is None and cert.score == score
    assert cert.bound == ("clopper-pearson" if score == "vote" else "best")
    assert cert.tokens == (ids[j],)
    assert cert.p_lower[0] <= keep / P and cert.step_radius[0] == 0  # certified at r = 0 only
    assert cert.prefix_at(0) == 1 and cert.prefix_at(1) == 0
    edited = list(ids)
    edited[j] = 2
    assert lm.exact_decode(edited, 1)[0] != cert.tokens  # the edit that r = 1 would have had to cover
    assert cert.prefix_under_substitutions(lm.table, {j: 2}) == 0
    assert cert.prefix_under_substitutions(lm.table, {j: ids[j]}) == 1  # no change is no edit


@pytest.mark.parametrize("score", ["probability", "vote"])
def test_every_single_substitution_keeps_the_certified_prefix_exhaustively(score):
    """Item 3: for short prompts, every one-token substitution at every position, with the smoothed
    decoder computed exactly at each edited prompt. A disagreement inside the certified prefix would be a
    certificate failure (probability ≤ α = 10⁻³ per certificate) or a bug; none may occur."""
    checked = certified_steps = 0
    for seed, (ids, keep) in enumerate([([1, 2, 3, 4, 5, 6, 7], 2), ([8, 8, 2, 5, 1, 3, 3, 6], 2), ([4, 7, 1, 2, 6, 5], 1)]):
        lm = SmoothedLM(BagLM(seed=seed), TokenAblation(keep, MASK), batch_size=256, score=score)
        cert = lm.generate(ids, 3, n0=300, n=3000, alpha=0.001, seed=seed)
        exact, _ = lm.exact_decode(ids, 3)
        k1 = cert.prefix_at(1)
        assert exact[: cert.prefix_at(0)] == cert.tokens[: cert.prefix_at(0)]
        certified_steps += k1
        for pos in range(len(ids)):
            for tok in range(1, 9):  # every other non-mask token
                if tok == ids[pos]:
                    continue
                edited = list(ids)
                edited[pos] = tok
                assert lm.exact_decode(edited, max(k1, 1))[0][:k1] == cert.tokens[:k1], (seed, pos, tok)
                checked += 1
    assert certified_steps >= 1, "no prefix was certified at r = 1: the check would be vacuous"
    assert checked > 100


@pytest.mark.parametrize("score", ["probability", "vote"])
def test_sabotaged_delta_is_caught(monkeypatch, score):
    """Δ_r replaced by the too-small r/L: the copy-position model is then certified at r = 1, and the
    exact decoder at the edited prompt refutes it (what the oracle test above guards against)."""
    import smoothgen.generation.noise as noise_spaces  # where Δ_r is defined and used

    monkeypatch.setattr(noise_spaces, "ablation_delta", lambda length, keep, edits: Fraction(max(edits, 0), length))
    P, keep, j = 10, 8, 4
    ids = [3, 5, 2, 7, 6, 1, 4, 8, 2, 3]
    lm = SmoothedLM(CopyPositionLM(9, j, default=8, prompt_length=P), TokenAblation(keep, MASK), batch_size=500,
                    score=score)
    cert = lm.generate(ids, 1, n0=200, n=4000, alpha=0.001, seed=0)
    edited = list(ids)
    edited[j] = 2
    assert cert.prefix_at(1) == 1 and lm.exact_decode(edited, 1)[0] != cert.tokens


def test_vote_score_is_the_share_of_copies_whose_argmax_is_the_token():
    """Votes: p̄_t is the share of ablated copies whose greedy choice is the token (exactly, by enumeration),
    the default under ablation; the certificate's lower bound is Clopper–Pearson of the vote count."""
    from smoothgen import stats

    ids, keep = [1, 2, 3, 4, 5, 6, 7], 2
    model = BagLM(seed=0, scale=1.0)  # soft decisions: probability and vote scores differ
    votes = SmoothedLM(model, TokenAblation(keep, MASK), batch_size=64)
    probs = SmoothedLM(model, TokenAblation(keep, MASK), batch_size=64, score="probability")
    assert votes.score == "vote" and probs.score == "probability"
    subsets = torch.tensor(list(itertools.combinations(range(len(ids)), keep)))
    with torch.no_grad():
        logits = model(inputs_embeds=votes.noise.subset_prompts(votes.table, torch.tensor(ids), torch.ones(7, dtype=torch.bool), subsets)).logits[:, -1]
    share = torch.bincount(logits.argmax(-1), minlength=9).double() / len(subsets)
    mean_softmax = torch.softmax(logits, -1).double().mean(0)
    assert not torch.allclose(share, mean_softmax, atol=0.05)
    tokens, p = votes.exact_decode(ids, 1)
    assert tokens[0] == int(share.argmax()) and p[0] == pytest.approx(float(share.max()))
    tokens, p = probs.exact_decode(ids, 1)
    assert tokens[0] == int(mean_softmax.argmax()) and p[0] == pytest.approx(float(mean_softmax.max()), abs=1e-6)
    cert = votes.generate(ids, 2, n0=100, n=500, alpha=0.01, seed=3)
    for t in range(2):
        count = round(cert.p_mean[t] * cert.n)
        assert cert.p_mean[t] == count / cert.n  # a vote share
        assert cert.p_lower[t] == pytest.approx(stats.clopper_pearson_lower(count, cert.n, cert.alpha_step) - cert.noise_tv)
    with pytest.raises(InvalidParameterError):
        SmoothedLM(model, TokenAblation(keep, MASK), score="majority")


def test_center_certify_under_ablation_counts_edited_tokens():
    """Center smoothing of the generated sequences under ablation (p = 1/2 + Δ + Δ_r). A model that copies
    prompt position j is exactly known: every generated token is x_j when j is kept (probability k/P =
    0.1), else the default token 8. At every prompt with r ≤ 2 substituted tokens the output law is still
    (8, 8, 8) with probability 0.9, so the true smoothed center never moves: the certificate must find that
    center, and too many edits must abstain ("q > 1")."""
    from smoothgen import stats

    P, keep, j = 20, 2, 4
    ids = [3, 5, 2, 7, 6, 1, 4, 8, 2, 3, 1, 2, 3, 4, 5, 6, 7, 1, 2, 3]
    lm = SmoothedLM(CopyPositionLM(9, j, default=8, prompt_length=P), TokenAblation(keep, MASK), batch_size=500)
    cert = lm.center_certify(ids, 3, 2, n=3000, m=3000, delta=0.05, seed=0)
    assert cert.sigma is None and cert.eps_in == 2.0 and cert.metric == "levenshtein"
    assert cert.p == pytest.approx(stats.center_ablation_level(0.05, ablation_delta(P, keep, 2)))
    assert not cert.abstained and cert.center == (8, 8, 8) and cert.eps_out == 0.0
    # Δ_6 = 1 − C(14, 2)/C(20, 2) > 1/2 − Δ: no ball can hold p > 1
    assert lm.center_certify(ids, 3, 6, n=3000, m=3000, delta=0.05, seed=0).reason == "q > 1"
    with pytest.raises(InvalidParameterError):
        lm.center_certify(ids, 3, 1.5, n=100, m=100)


# --------------------------------------------------------------------------------------------------
# The perturbed positions are positional (issue 21, item 4a; docs/theory.md §4g)
# --------------------------------------------------------------------------------------------------

SPECIAL = 7  # the token a content-dependent mask leaves unperturbed


def _all_but_special(ids):
    """A content-dependent mask, as a user might write it: perturb every position except special tokens."""
    return [int(t) != SPECIAL for t in ids]


def test_content_dependent_mask_would_certify_a_changed_output_and_is_refused():
    """The demo of the review. At x (no special token) every ablated copy votes 1, so one edit is
    certified. The edit writes the special token at position 2. With the perturbed set M fixed (the
    smoothed model the proof is about), the copies at x' see it only when they keep position 2 (1 in 6),
    and the output stays 1. With the mask recomputed from x' the position leaves M, is never ablated,
    every copy sees it, and the exact smoothed output is 2: a certified edit whose output changes, with
    probability 1. So a callable mask never sees the tokens: it gets the prompt's length."""
    x = [3, 4, 5, 6, 3, 4]
    edited = list(x)
    edited[2] = SPECIAL
    lm = SmoothedLM(SeeTokenLM(9, SPECIAL, then=2, otherwise=1), TokenAblation(1, MASK), batch_size=500)
    fixed = _all_but_special(x)
    cert = lm.generate(x, 1, n0=50, n=500, alpha=0.001, seed=0, mask=fixed)
    assert cert.tokens == (1,) and cert.step_radius[0] >= 1
    assert cert.prefix_under_substitutions(lm.table, {2: SPECIAL}) == 1  # the edit is covered
    assert lm.exact_decode(edited, 1, mask=fixed)[0] == cert.tokens  # g_M(x') with M fixed: still 1
    assert _all_but_special(edited) != fixed
    assert lm.exact_decode(edited, 1, mask=_all_but_special(edited))[0] == (2,)  # M recomputed from x': 2
    with pytest.raises(InvalidParameterError, match="positional"):
        lm.generate(x, 1, n0=50, n=500, alpha=0.001, seed=0, mask=_all_but_special)
    with pytest.raises(InvalidParameterError, match="positional"):
        SmoothedLM(lm.model, TokenAblation(1, MASK), mask=_all_but_special).exact_decode(x, 1)


def test_a_callable_mask_receives_the_length_only():
    calls = []

    def first_half(length):
        calls.append(length)
        return [i < length // 2 for i in range(length)]

    lm = SmoothedLM(BagLM(), TokenAblation(1, MASK), mask=first_half, batch_size=64)
    cert = lm.generate([1, 2, 3, 4, 5, 6], 1, n0=10, n=20, alpha=0.1, seed=0)
    assert cert.mask == (True, True, True, False, False, False)
    assert calls and all(type(c) is int and c == 6 for c in calls)
    with pytest.raises(InvalidParameterError, match="returned 5 values"):
        lm.generate([1, 2, 3, 4, 5, 6], 1, n0=10, n=20, mask=lambda length: [True] * (length - 1))


# --------------------------------------------------------------------------------------------------
# Partial masks: Δ_r counts the perturbed positions P, not the prompt's length L
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["probability", "vote"])
def test_partial_mask_certificate_against_the_exact_decoder(score):
    """6 of 12 positions perturbed, keep 1: every copy votes 2 at x, and writing the watched token at r
    perturbed positions leaves exactly C(6 − r, 1)/C(6, 1) = 1 − r/6 of the kept subsets blind to it. So the
    exact decoder keeps 2 for r ≤ 2 and flips to 1 at r = 3 (a tie, which goes to the lower id). The
    certificate must claim r = 2: Δ_r over P = 6 positions. Over the prompt's L = 12 (Δ_r = r/12) it would
    claim r = 5, and the exact decoder at three or more edits refutes it."""
    x = [3, 4, 5, 6, 3, 4, 5, 6, 3, 4, 5, 6]
    mask = [True] * 6 + [False] * 6
    lm = SmoothedLM(SeeTokenLM(9, SPECIAL, then=1, otherwise=2), TokenAblation(1, MASK), batch_size=500, score=score)
    cert = lm.generate(x, 1, n0=50, n=500, alpha=0.001, seed=0, mask=mask)
    assert cert.tokens == (2,) and sum(cert.mask) == 6
    claimed = int(cert.step_radius[0])
    assert claimed == ablation_radius(cert.p_lower[0], 6, 1) == 2
    for r in range(1, 7):
        for positions in itertools.combinations(range(6), r):
            edited = list(x)
            for p in positions:
                edited[p] = SPECIAL
            same = lm.exact_decode(edited, 1, mask=mask)[0] == cert.tokens
            assert same == (r <= 2), (r, positions)
            if r <= claimed:  # covered edits keep the certified token
                assert cert.prefix_under_substitutions(lm.table, {p: SPECIAL for p in positions}) == 1 and same


# --------------------------------------------------------------------------------------------------
# The certified prefix stops at the first step that does not cover the radius
# --------------------------------------------------------------------------------------------------


class SeeThenConstantLM(SeeTokenLM):
    """Step 0 as `SeeTokenLM`; every later step outputs token `constant`, whatever it sees. Step 0 is close
    to a tie and later steps are certain: the step radii are not monotone."""

    def __init__(self, vocab: int, watch: int, then: int, otherwise: int, constant: int, prompt_length: int):
        super().__init__(vocab, watch, then, otherwise)
        self.constant, self.prompt_length = constant, prompt_length

    def forward(self, inputs_embeds, past_key_values=None, use_cache=True):
        out = super().forward(inputs_embeds, past_key_values, use_cache)
        start = out.past_key_values[0].shape[1] - inputs_embeds.shape[1]  # position of the first input
        later = torch.arange(start, start + inputs_embeds.shape[1]) >= self.prompt_length  # predicts step ≥ 1
        logits = out.logits.clone()
        logits[:, later] = -30.0
        logits[:, later, self.constant] = 30.0
        return _Out(logits, out.past_key_values)


def test_prefix_stops_at_the_first_uncovered_step():
    """20 positions, keep 1, the watched token at 9 of them: step 0 votes 2 with exact share 11/20, certified
    at r = 0 only (L_0 ≈ 0.53, Δ_1 = 0.05); steps 1 and 2 always give 5, certified at r = 9 (Δ_r = r/20).
    Against one edit the certified prefix is empty, although two of the three steps cover it: writing the
    watched token at a tenth position ties step 0 at 1/2, which goes to token 1, and the exact decoder's
    first token changes. Counting covering steps instead of stopping at the first gap would claim two."""
    ids = [SPECIAL] * 9 + [3, 4, 5, 6, 3, 4, 5, 6, 3, 4, 5]
    lm = SmoothedLM(SeeThenConstantLM(9, SPECIAL, then=1, otherwise=2, constant=5, prompt_length=len(ids)),
                    TokenAblation(1, MASK), batch_size=500)
    cert = lm.generate(ids, 3, n0=200, n=4000, alpha=0.001, seed=0, radius=1)
    assert cert.tokens == (2, 5, 5) and cert.step_radius == (0.0, 9.0, 9.0)
    assert lm.exact_decode(ids, 3) == ((2, 5, 5), (11 / 20, 1.0, 1.0))
    assert cert.prefix_at(0) == 3
    assert cert.prefix_at(1) == 0 and cert.certified_prefix == 0
    assert cert.prefix_under_substitutions(lm.table, {9: SPECIAL}) == 0
    edited = list(ids)
    edited[9] = SPECIAL
    assert lm.exact_decode(edited, 2)[0] == (1, 5)  # the first token changes under this one edit


# --------------------------------------------------------------------------------------------------
# The tie charge of the subset sampler (C(P, 2)·2⁻⁶⁴ per copy, docs/theory.md §4g)
# --------------------------------------------------------------------------------------------------


def test_vote_bound_and_center_check_charge_the_subset_ties(monkeypatch):
    """The real charge (15·2⁻⁶⁴ for P = 6) vanishes next to a Clopper–Pearson bound in double precision, so
    it is inflated to 0.02 per pair, 0.3 per copy: the vote bound must drop by 0.3 (every copy votes 2 at
    x: CP = 0.001^(1/500) = 0.986, margin 0.486 → r = 2; after the charge 0.186 → r = 1, as Δ_1 = 1/6 <
    0.186 < Δ_2 = 1/3), and center smoothing's check must add it to Δ1 (0.055 + 0.3 > Δ = 0.1)."""
    import smoothgen.generation.noise as noise_spaces
    from smoothgen import stats

    x = [3, 4, 5, 6, 3, 4]
    lm = SmoothedLM(SeeTokenLM(9, SPECIAL, then=1, otherwise=2), TokenAblation(1, MASK), batch_size=500)
    cp = stats.clopper_pearson_lower(500, 500, 0.001)
    honest = lm.generate(x, 1, n0=50, n=500, alpha=0.001, seed=0)
    assert honest.noise_tv == math.nextafter(15 * 2.0**-64, math.inf)
    assert honest.p_mean == (1.0,) and honest.step_radius == (2.0,)
    assert not lm.center_certify(x, 1, 0, n=1000, m=1000, delta=0.1, seed=0).abstained
    monkeypatch.setattr(noise_spaces, "SUBSET_TIE_PROBABILITY", 0.02)
    cert = lm.generate(x, 1, n0=50, n=500, alpha=0.001, seed=0)
    assert cert.noise_tv == pytest.approx(0.3, abs=1e-15) and cert.noise_tv >= 15 * 0.02
    assert cert.p_lower[0] == stats.lower_under_gaussian(cp, cert.noise_tv) and cert.p_lower[0] < cp - 0.3 + 1e-12
    assert cert.step_radius == (1.0,)
    center = lm.center_certify(x, 1, 0, n=1000, m=1000, delta=0.1, seed=0)
    assert center.noise_tv == cert.noise_tv
    assert center.abstained and center.reason == "center check failed"
