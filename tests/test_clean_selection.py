"""`SmoothedLM.generate(n0=0)`: the base model's own greedy decoding of the clean prompt chooses the tokens.

The certificate only needs the chosen tokens to be independent of the estimation copies (docs/theory.md
§4c), and the clean prompt is a function of the input alone. The oracles: the exact smoothed decoder
(`exact_decode`, every ablation subset or deletion pattern enumerated) at every prompt a certificate covers,
a model whose clean token is NOT the smoothed decoder's (the certificate must then certify nothing), and the
boundary model whose clean token has smoothed share exactly 1/2 (a certificate is false every time it is
given: at most α of the runs).
"""
from __future__ import annotations

import pytest
import torch
from scipy.stats import binomtest

from smoothgen.deletion import TokenDeletion
from smoothgen.errors import InvalidParameterError
from smoothgen.generative import SmoothedLM, TokenAblation
from test_ablation import BagLM, SeeTokenLM

WATCH, THEN, OTHERWISE = 3, 1, 2


def _plain(lm: SmoothedLM, ids: list[int], steps: int) -> tuple[int, ...]:
    return lm._greedy(lm.table[torch.tensor(ids)][None], steps)[0]


@pytest.mark.parametrize("noise", ["ablation", "deletion", "gaussian"])
def test_the_tokens_are_the_models_own_greedy_decoding(noise):
    space = {"ablation": TokenAblation(3, 0), "deletion": TokenDeletion(0.8, empty_token_id=0), "gaussian": 0.5}[noise]
    lm = SmoothedLM(BagLM(seed=4), space, batch_size=64)
    ids = [3, 3, 4, 5, 6, 7, 8]
    expected = _plain(lm, ids, 4)
    assert expected != lm.generate(ids, 4, n0=200, n=50, seed=0).tokens  # here the smoothed vote differs
    for use_cache in (True, False):
        cert = lm.generate(ids, 4, n0=0, n=50, seed=0, use_cache=use_cache)
        assert cert.tokens == expected and cert.n0 == 0
        assert len(cert.p_selection) == 4 and all(0.0 < p <= 1.0 for p in cert.p_selection)
    with pytest.raises(InvalidParameterError, match="n0"):
        lm.generate(ids, 1, n0=-1, n=10)


def test_an_embedding_perturbation_moves_the_clean_guess_too():
    """`delta` (attacks) perturbs the prompt the guess is made from, as it perturbs every copy."""
    lm = SmoothedLM(BagLM(seed=4), 0.5, batch_size=64)
    ids = [3, 3, 4, 5, 6, 7, 8]
    delta = torch.zeros(len(ids), lm.dim)
    delta[2] = 40.0 * (lm.table[1] - lm.table[4])
    moved = lm._greedy((lm.table[torch.tensor(ids)] + delta)[None], 3)[0]
    assert moved != _plain(lm, ids, 3)
    assert lm.generate(ids, 3, n0=0, n=20, seed=0, delta=delta).tokens == moved
    with pytest.raises(InvalidParameterError, match="delta is an embedding perturbation"):
        SmoothedLM(BagLM(seed=4), TokenAblation(3, 0)).generate(ids, 3, n0=0, n=20, delta=delta)


def test_a_clean_token_the_smoothed_decoder_does_not_choose_is_never_certified():
    """Deletion at p = 0.9 of the run holding WATCH: the clean model sees it (THEN), nine copies in ten do
    not (OTHERWISE, exactly 0.9). The guess THEN is returned and certified at no radius, not even 0."""
    lm = SmoothedLM(SeeTokenLM(6, watch=WATCH, then=THEN, otherwise=OTHERWISE), TokenDeletion(0.9), batch_size=500)
    ids, mask = [4, 1, WATCH, 2, 5], [False, True, True, True, False]
    exact, shares = lm.exact_decode(ids, 2, mask=mask)
    assert exact == (OTHERWISE, OTHERWISE) and shares[0] == pytest.approx(0.9)
    for sequential in (False, True):
        cert = lm.generate(ids, 2, n0=0, n=400, alpha=0.001, seed=0, mask=mask, sequential=sequential)
        assert cert.tokens == (THEN, THEN) and cert.certified_prefix == 0 and cert.prefix_at(0) == 0
        assert cert.p_lower[0] < 0.5
    # Ablation: BagLM(seed=2) chooses 1 on the clean prompt, its smoothed decoder 2 (share 0.95).
    bag = SmoothedLM(BagLM(seed=2), TokenAblation(2, 0), batch_size=256)
    assert bag.exact_decode([1, 2, 3, 4, 5, 6, 7], 1)[0] == (2,)
    cert = bag.generate([1, 2, 3, 4, 5, 6, 7], 3, n0=0, n=2000, seed=0)
    assert cert.tokens == (1, 1, 1) and cert.prefix_at(0) == 0


def test_a_sabotaged_score_certifies_the_wrong_clean_token(monkeypatch):
    """The oracle above bites: scoring every copy's own argmax instead of the chosen token (the bug this
    mode would invite) certifies THEN, which the exact smoothed decoder does not produce."""
    monkeypatch.setattr(SmoothedLM, "_token_scores",
                        lambda self, logits, target: torch.ones(logits.shape[0], logits.shape[1], dtype=torch.float64))
    lm = SmoothedLM(SeeTokenLM(6, watch=WATCH, then=THEN, otherwise=OTHERWISE), TokenDeletion(0.9), batch_size=500)
    ids, mask = [4, 1, WATCH, 2, 5], [False, True, True, True, False]
    cert = lm.generate(ids, 2, n0=0, n=400, alpha=0.001, seed=0, mask=mask)
    assert cert.certified_prefix >= 1 and cert.tokens[0] != lm.exact_decode(ids, 1, mask=mask)[0][0]


def _boundary_runs(runs: int = 150, alpha: float = 0.2) -> int:
    """Deletion at p = 1/2 of a run holding WATCH: the clean guess THEN has smoothed share exactly 1/2, so
    every certificate of it (at radius 0: a share above 1/2) is false."""
    lm = SmoothedLM(SeeTokenLM(6, watch=WATCH, then=THEN, otherwise=OTHERWISE), TokenDeletion(0.5), batch_size=500)
    ids, mask = [4, 1, WATCH, 2, 5], [False, True, True, True, False]
    assert lm.exact_decode(ids, 1, mask=mask)[1][0] == pytest.approx(0.5)
    wrong = 0
    for seed in range(runs):
        cert = lm.generate(ids, 1, n0=0, n=400, alpha=alpha, seed=seed, mask=mask, sequential=True, check_every=10)
        assert cert.tokens == (THEN,)
        wrong += cert.certified_prefix >= 1
    return wrong


def test_at_the_boundary_the_clean_guess_is_certified_falsely_at_most_alpha():
    wrong = _boundary_runs()
    assert binomtest(wrong, 150, 0.2, alternative="greater").pvalue > 1e-3, wrong


def test_a_sabotaged_bound_fails_the_boundary_oracle(monkeypatch):
    """The same runs with the betting sequence replaced by Clopper–Pearson recomputed at every look certify
    the boundary token far more often than α."""
    from smoothgen import stats

    cp = stats.clopper_pearson_lower
    monkeypatch.setattr(stats, "betting_lower", cp)
    monkeypatch.setattr(stats, "betting_proves_above", lambda k, n, m, alpha: cp(k, n, alpha) > m)
    wrong = _boundary_runs()
    assert binomtest(wrong, 150, 0.2, alternative="greater").pvalue < 1e-3, wrong


@pytest.mark.parametrize("sequential", [False, True])
def test_certified_clean_tokens_hold_against_the_exact_decoder_at_every_single_substitution(sequential):
    """Every token certified at r = 1 is the exact smoothed decoder's at every prompt one substitution away
    (ablation keep 2 of 7, a tiny LM whose clean and smoothed decoders agree here)."""
    ids = [1, 2, 3, 4, 5, 6, 7]
    lm = SmoothedLM(BagLM(seed=5), TokenAblation(2, 0), batch_size=256)
    cert = lm.generate(ids, 3, n0=0, n=2000, alpha=0.001, seed=0, radius=1, sequential=sequential)
    k1 = cert.prefix_at(1)
    assert k1 == 3 and cert.tokens == _plain(lm, ids, 3)
    for pos in range(len(ids)):
        for tok in range(1, 9):
            edited = list(ids)
            edited[pos] = tok
            assert lm.exact_decode(edited, k1)[0][:k1] == cert.tokens[:k1]
