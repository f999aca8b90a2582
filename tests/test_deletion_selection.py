"""Token deletion's selection copies (docs/theory.md §4j, "Selection copies"): each keeps exactly the mean
number of perturbed tokens, so a certified generation's guess decodes as one batch. The estimation copies
still follow the deletion distribution, and that is what the certificate rests on: a model that answers
differently at the selection copies' length than on average is the oracle — its guess is wrong, never
certified, and certified falsely as soon as the estimation is (deliberately) drawn like the selection.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from smoothgen.deletion import TokenDeletion
from smoothgen.engine import Purpose, RandomStream
from smoothgen.generative import SmoothedLM
from test_ablation import _Out
from test_deletion import _mask

A, B = 1, 2


class LengthLM(torch.nn.Module):
    """Answers A at the position `length` − 1 (a prompt copy of exactly `length` tokens) and B everywhere
    else: under deletion its smoothed first token is B unless half the copies have that length."""

    def __init__(self, length: int, vocab: int = 6):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, vocab)
        with torch.no_grad():
            self.emb.weight.copy_(torch.eye(vocab))
        self.length, self.vocab = length, vocab

    def get_input_embeddings(self):
        return self.emb

    def forward(self, inputs_embeds, past_key_values=None, use_cache=True):
        past = past_key_values[0] if past_key_values else inputs_embeds[:, :0]
        full = torch.cat([past, inputs_embeds], dim=1)
        positions = torch.arange(past.shape[1], full.shape[1])
        token = torch.where(positions == self.length - 1, A, B)  # [T]
        logits = torch.full((full.shape[0], inputs_embeds.shape[1], self.vocab), -30.0)
        logits[:, torch.arange(positions.numel()), token] = 30.0
        return _Out(logits, (full,))


@pytest.mark.parametrize(("p", "perturbed", "k"), [
    (0.9, 48, 5),    # 4.8 rounds to 5
    (0.9, 44, 4),    # 4.4 rounds to 4
    (0.5, 3, 2),     # 1.5: halves round up
    (0.5, 4, 2),
    (0.99, 10, 0),   # 0.1 rounds to 0: the copies keep only the fixed head and tail
    (0.1, 7, 6),     # 6.3
    (0.5, 0, 0),
])
def test_a_selection_copy_keeps_the_mean_number_of_perturbed_tokens_rounded(p, perturbed, k):
    assert TokenDeletion(p).selection_size(perturbed) == k


def test_selection_copies_keep_a_uniformly_random_subset_of_that_size_and_every_fixed_token():
    noise = TokenDeletion(0.6)
    mask = torch.tensor(_mask(8, 2, 1))  # 5 perturbed positions: each copy keeps round(2.0) = 2 of them
    key = RandomStream(4, 0).key(Purpose.SELECTION)
    kept = noise.selection_kept(mask, key, 0, 20_000)
    assert kept[:, ~mask.numpy()].all()
    assert (kept[:, mask.numpy()].sum(axis=1) == 2).all()
    subsets = list(itertools.combinations(range(5), 2))
    index = {s: i for i, s in enumerate(subsets)}
    counts = np.bincount([index[tuple(np.nonzero(row)[0])] for row in kept[:, mask.numpy()]], minlength=len(subsets))
    assert scipy_stats.chisquare(counts).pvalue > 1e-4  # all C(5, 2) subsets equally likely
    # Copy i is a pure function of (key, i): the same whatever the chunking.
    assert (noise.selection_kept(mask, key, 17, 9) == kept[17:26]).all()
    # One length: every selection batch is a single tensor of 2 + 2 + 1 positions.
    table = torch.eye(20)
    groups = noise.selection_groups(table, torch.arange(10, 18), mask, key, 0, 300)
    assert len(groups) == 1 and tuple(groups[0].shape) == (300, 5, 20)


def test_a_certified_generation_selects_from_one_batch_and_decode_still_from_the_deletion_distribution():
    lm = SmoothedLM(LengthLM(4), TokenDeletion(0.5), batch_size=64)
    ids, mask = torch.tensor([3, 4, 5, 3, 4, 5]), torch.tensor(_mask(6, 1, 1))
    key = RandomStream(0, 0).key(Purpose.SELECTION)
    selection = lm._selection_batches(ids, mask, key, 200, None)
    assert [tuple(b.shape[:2]) for b in selection] == [(64, 4), (64, 4), (64, 4), (8, 4)]  # chunks, one length
    copies = lm._copy_batches(ids, mask, key, 200, None)
    assert sum(b.shape[0] for b in copies) == 200 and len({b.shape[1] for b in copies}) == 5  # 2 + 0..4


def _oracle(p: float = 0.5):
    """Head 1, run of 4, tail 1, p = 1/2: selection copies keep 2 of the 4 (length 4, all answer A); a copy
    of independent deletions has length 4 with probability C(4, 2)/2⁴ = 3/8, so the smoothed decoder's
    first token is B with probability exactly 5/8."""
    lm = SmoothedLM(LengthLM(4), TokenDeletion(p), batch_size=500)
    ids, mask = [3, 4, 5, 3, 4, 5], _mask(6, 1, 1)
    return lm, ids, mask


def test_a_guess_the_smoothed_decoder_does_not_make_is_never_certified():
    lm, ids, mask = _oracle()
    tokens, probs = lm.exact_decode(ids, 1, mask=mask)
    assert tokens == (B,) and probs[0] == pytest.approx(5 / 8, abs=1e-12)
    assert lm.decode(ids, 1, 2000, seed=0, mask=mask) == (B,)  # decode: the deletion distribution
    for seed in range(5):
        cert = lm.generate(ids, 1, n0=30, n=3000, alpha=0.001, seed=seed, mask=mask)
        assert cert.tokens == (A,) and cert.p_selection == (1.0,)  # every selection copy has length 4
        assert abs(cert.p_mean[0] - 3 / 8) < 0.04  # the estimation sees the deletion distribution
        assert cert.prefix_at(0) == 0 and cert.step_radius[0] < 0  # and certifies nothing
        seq = lm.generate(ids, 1, n0=30, n=3000, alpha=0.001, seed=seed, mask=mask, sequential=True, radius=0)
        assert seq.tokens == (A,) and seq.prefix_at(0) == 0


def test_estimation_drawn_like_the_selection_is_caught(monkeypatch):
    """Sabotage: estimation copies drawn like the selection copies (all of length 4) vote A unanimously, and
    A is certified — against the exact decoder's B. So the test above can fail."""
    monkeypatch.setattr(TokenDeletion, "prompt_groups", TokenDeletion.selection_groups)
    lm, ids, mask = _oracle()
    cert = lm.generate(ids, 1, n0=30, n=3000, alpha=0.001, seed=0, mask=mask)
    assert cert.tokens == (A,) and cert.prefix_at(0) == 1
    assert lm.exact_decode(ids, 1, mask=mask)[0] == (B,)


def test_with_a_better_guess_the_same_prompt_certifies_the_smoothed_token():
    """The guess is only a guess: where the selection copies' length is the usual one (p = 0.9, a run of 4:
    k = round(0.4) = 0, and P(nothing kept) = 0.9⁴ = 0.656), a model answering A there is certified."""
    lm = SmoothedLM(LengthLM(2), TokenDeletion(0.9), batch_size=500)
    ids, mask = [3, 4, 5, 3, 4, 5], _mask(6, 1, 1)
    tokens, probs = lm.exact_decode(ids, 1, mask=mask)
    assert tokens == (A,) and probs[0] == pytest.approx(0.9**4, abs=1e-12)
    cert = lm.generate(ids, 1, n0=30, n=3000, alpha=0.001, seed=0, mask=mask)
    assert cert.tokens == (A,) and cert.prefix_at(0) == 1 and 0.6 < cert.p_lower[0] < 0.9**4


def test_selection_noise_draws_deletion_copies_and_the_record_says_which():
    """selection="noise" chooses from independent deletions (the smoothed decoder's own B here); the record
    names the selection under deletion only, and an unknown one is refused before any decoding."""
    from smoothgen.errors import InvalidParameterError
    from smoothgen.generative import TokenAblation

    lm, ids, mask = _oracle()
    cert = lm.generate(ids, 1, n0=200, n=3000, alpha=0.001, seed=0, mask=mask, selection="noise")
    assert cert.tokens == (B,) and cert.selection == "noise" and cert.prefix_at(0) == 1
    assert lm.generate(ids, 1, n0=30, n=100, seed=0, mask=mask).selection == "equal-length"
    assert lm.generate(ids, 1, n0=0, n=100, seed=0, mask=mask).selection is None  # the clean prompt chose
    ablated = SmoothedLM(LengthLM(4), TokenAblation(2, 0), batch_size=64)
    assert ablated.generate(ids, 1, n0=30, n=100, seed=0, mask=mask).selection is None
    for bad in ("independent", None, 1):
        with pytest.raises(InvalidParameterError, match="selection must be one of"):
            lm.generate(ids, 1, n0=30, n=100, seed=0, mask=mask, selection=bad)
