"""Center smoothing of a sentence encoder's pooled embedding (issue 11, item 4): `smoothgen.encoders`.

A tiny randomly initialised BERT (no weights downloaded) under both token noise spaces, and an analytic
oracle for the ablation certificate: a toy encoder whose output is one of three points, so that the
exact output distribution at ANY prompt is a count over the C(P, k) kept subsets, and the exact
smoothed center at every prompt within r substitutions can be enumerated and compared with what the
certificate claims. With Δ_r dropped from the level (p = 1/2 + Δ) the same oracle finds a violation.
"""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch

from smoothgen import stats
from smoothgen.center import CenterNoise, CenterSmoother
from smoothgen.encoders import PromptNoise, SmoothedEncoder
from smoothgen.engine import Purpose
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError, SmoothgenError
from smoothgen.generative import EmbeddingGaussian, TokenAblation, ablation_delta
from smoothgen.metrics import get_metric

transformers = pytest.importorskip("transformers")

COSINE = get_metric("cosine")
PROMPT = [2, 11, 17, 23, 5, 8, 3]


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64)
    return transformers.BertModel(config).eval()


# --------------------------------------------------------------------------------------------------
# The encoder wrapper
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_clean_embedding_is_the_models_pooled_output(bert, pooling):
    enc = SmoothedEncoder(bert, 0.1, pooling=pooling)
    with torch.no_grad():
        hidden = bert(input_ids=torch.tensor([PROMPT])).last_hidden_state[0]
    expected = {"mean": hidden.mean(0), "cls": hidden[0], "max": hidden.max(0).values}[pooling]
    torch.testing.assert_close(enc.embed(PROMPT), expected, rtol=1e-6, atol=1e-6)


def test_both_noise_spaces_certify(bert):
    # Δ = 0.1: at n = 1500 the check's Δ1 = 0.045 leaves room for the median ball's ≈ 1/2 of fresh samples.
    gauss = SmoothedEncoder(bert, 0.05).center_certify(PROMPT, eps_in=0.01, n=1500, m=1500, delta=0.1, seed=0)
    ablate = SmoothedEncoder(bert, TokenAblation(keep=1, mask_token_id=4)).center_certify(
        PROMPT, edits=1, n=1500, m=1500, delta=0.1, seed=0)
    for cert in (gauss, ablate):
        assert not cert.abstained and cert.reason is None
        assert (cert.metric, cert.gamma, cert.beta) == ("cosine", 2.0, 4.0)
        assert cert.eps_out == pytest.approx(10 * cert.r_hat) and 0 < cert.eps_out < math.inf
        assert cert.center.shape == (16,)
        assert cert.failure_probability == pytest.approx(0.01)
        assert cert.noise_tv > 0
    assert gauss.sigma == 0.05 and gauss.eps_in == 0.01
    assert gauss.p == stats.center_certify_level(0.01, 0.05, 0.1)
    # Ablation: p = 1/2 + Δ + Δ_1 with Δ_1 = 1 − C(6, 1)/C(7, 1) = 1/7; the unit is edited tokens.
    assert ablate.sigma is None and ablate.eps_in == 1.0
    assert ablate.p == pytest.approx(0.6 + 1 / 7, abs=1e-15) and Fraction(ablate.p) >= Fraction(1, 2) + Fraction(0.1) + Fraction(1, 7)
    assert ablate.q == pytest.approx(ablate.p + ablate.noise_tv + math.sqrt(math.log(200) / 3000))


def test_ablation_level_beyond_one_abstains_without_drawing_the_radius_samples(bert):
    enc = SmoothedEncoder(bert, TokenAblation(keep=4, mask_token_id=4))
    cert = enc.center_certify(PROMPT, edits=1, n=1500, m=1500, delta=0.1, seed=0)  # Δ_1 = 4/7: p > 1
    assert cert.abstained and cert.reason == "q > 1" and cert.eps_out == math.inf and cert.p > 1
    assert not enc.center_certify(PROMPT, edits=0, n=1500, m=1500, delta=0.1, seed=0).abstained  # Δ_0 = 0


def test_copies_are_reproducible_batch_invariant_and_purposes_are_independent(bert):
    for noise in (0.1, TokenAblation(keep=3, mask_token_id=4)):
        enc = SmoothedEncoder(bert, noise, batch_size=64)
        a = enc.samples(PROMPT, 50, seed=7, purpose=Purpose.CENTER)
        b = SmoothedEncoder(bert, noise, batch_size=9).samples(PROMPT, 50, seed=7, purpose=Purpose.CENTER)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # copy i depends on (key, i) only
        assert torch.equal(a, enc.samples(PROMPT, 50, seed=7, purpose=Purpose.CENTER))
        check = enc.samples(PROMPT, 50, seed=7, purpose=Purpose.CENTER_CHECK)
        other_seed = enc.samples(PROMPT, 50, seed=8, purpose=Purpose.CENTER)
        other_request = enc.samples(PROMPT, 50, seed=7, request_id=1, purpose=Purpose.CENTER)
        for fresh in (check, other_seed, other_request):
            assert not torch.equal(a, fresh)
    # Copies under ablation: exactly `keep` positions kept, the rest the mask token.
    noise = PromptNoise(TokenAblation(keep=3, mask_token_id=4), bert.get_input_embeddings().weight.detach(),
                        torch.ones(len(PROMPT), dtype=torch.bool))
    ids = noise.check_input(PROMPT)
    from smoothgen.engine import RandomStream
    copies = noise.copies(ids, RandomStream(0).key(Purpose.CENTER), 0, 20)
    tokens = torch.cdist(copies.reshape(-1, 16), noise.table).argmin(1).reshape(20, -1)
    assert bool(((tokens == ids) | (tokens == 4)).all()) and bool(((tokens == ids).sum(1) == 3).all())


def test_certificate_is_reproducible_and_its_center_is_a_selection_sample(bert):
    enc = SmoothedEncoder(bert, TokenAblation(keep=2, mask_token_id=4), batch_size=128)
    c1 = enc.center_certify(PROMPT, edits=1, n=600, m=600, delta=0.1, seed=3)
    c2 = enc.center_certify(PROMPT, edits=1, n=600, m=600, delta=0.1, seed=3)
    assert c1.to_record() == c2.to_record() and torch.equal(c1.center, c2.center)
    selection = enc.samples(PROMPT, 600, seed=3, purpose=Purpose.CENTER)
    assert bool((selection == c1.center).all(1).any())
    smoothed = enc.smooth(PROMPT, n=600, delta=0.1, seed=3)
    assert torch.equal(smoothed.center, c1.center) and smoothed.center_radius == c1.center_radius


def test_string_prompts_go_through_the_tokenizer(bert):
    vocab = {"<cls>": 2, "the": 11, "cat": 17, "sat": 23, "<sep>": 3}

    def hf_like(text):
        return {"input_ids": [2] + [vocab[w] for w in text.split()] + [3], "attention_mask": None}

    class EncodeOnly:
        def encode(self, text):
            return hf_like(text)["input_ids"]

    expected = SmoothedEncoder(bert, 0.1).embed([2, 11, 17, 23, 3])
    for tok in (hf_like, EncodeOnly()):
        assert torch.equal(SmoothedEncoder(bert, 0.1, tokenizer=tok).embed("the cat sat"), expected)


def test_a_sentence_transformer_is_unwrapped(bert):
    class Transformer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.auto_model = bert

    class Pooling(torch.nn.Module):
        def __init__(self, **modes):
            super().__init__()
            for name in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens"):
                setattr(self, f"pooling_mode_{name}", modes.get(name, False))

    class FakeST(torch.nn.Sequential):
        tokenizer = None

    st = FakeST(Transformer(), Pooling(cls_token=True))
    torch.testing.assert_close(SmoothedEncoder(st, 0.1).embed(PROMPT), SmoothedEncoder(bert, 0.1, pooling="cls").embed(PROMPT))
    with pytest.raises(InvalidParameterError, match="pooling"):
        SmoothedEncoder(FakeST(Transformer(), Pooling(mean_sqrt_len_tokens=True)), 0.1)


def test_bad_arguments_are_smoothgen_errors(bert):
    ablate = SmoothedEncoder(bert, TokenAblation(keep=2, mask_token_id=4))
    gauss = SmoothedEncoder(bert, 0.1)
    cases = [
        (lambda: SmoothedEncoder(bert, 0.0), InvalidParameterError),
        (lambda: SmoothedEncoder(bert, True), InvalidParameterError),
        (lambda: SmoothedEncoder(bert, "gauss"), InvalidParameterError),
        (lambda: SmoothedEncoder(bert, TokenAblation(2, 50)), InvalidParameterError),  # mask token out of vocab
        (lambda: SmoothedEncoder(bert, 0.1, pooling="median"), InvalidParameterError),
        (lambda: SmoothedEncoder(bert, 0.1, batch_size=0), InvalidParameterError),
        (lambda: SmoothedEncoder(bert, 0.1, n_candidates=0), InvalidParameterError),
        (lambda: SmoothedEncoder(bert, 0.1, metric="nope"), InvalidParameterError),
        (lambda: SmoothedEncoder(torch.nn.Linear(2, 2), 0.1), InvalidInputError),
        (lambda: gauss.center_certify(PROMPT, edits=1), InvalidParameterError),      # edits with Gaussian
        (lambda: ablate.center_certify(PROMPT, eps_in=0.1), InvalidParameterError),  # eps_in with ablation
        (lambda: gauss.center_certify(PROMPT), InvalidParameterError),
        (lambda: ablate.center_certify(PROMPT), InvalidParameterError),
        (lambda: ablate.center_certify(PROMPT, edits=-1), InvalidParameterError),
        (lambda: ablate.center_certify(PROMPT, edits=1.5), InvalidParameterError),
        (lambda: ablate.center_certify(PROMPT, edits=True), InvalidParameterError),
        (lambda: gauss.center_certify(PROMPT, eps_in=-0.1), InvalidParameterError),
        (lambda: gauss.center_certify(PROMPT, eps_in=float("nan")), InvalidParameterError),
        (lambda: gauss.center_certify(PROMPT, eps_in=0.1, n=0), InvalidParameterError),
        (lambda: gauss.center_certify(PROMPT, eps_in=0.1, delta=0.5), InvalidParameterError),
        (lambda: gauss.center_certify(PROMPT, eps_in=0.1, alpha2=1.0), InvalidParameterError),
        (lambda: gauss.embed("no tokenizer"), InvalidInputError),
        (lambda: gauss.embed([]), InvalidInputError),
        (lambda: gauss.embed([1, 50]), InvalidInputError),                          # id out of range
        (lambda: gauss.embed([1, -1]), InvalidInputError),
        (lambda: gauss.embed([1.5, 2.0]), InvalidInputError),
        (lambda: gauss.embed([1] * 65), InvalidInputError),                         # longer than the model
        (lambda: gauss.smooth(PROMPT, mask=[True] * 3), InvalidInputError),          # wrong mask length
        (lambda: gauss.smooth(PROMPT, mask=[False] * len(PROMPT)), InvalidParameterError),
        (lambda: gauss.samples(PROMPT, 0), InvalidParameterError),
        (lambda: SmoothedEncoder(bert, 0.1, pooling=lambda h, a: h).embed(PROMPT), ModelOutputError),
        (lambda: CenterSmoother(torch.nn.Identity()), InvalidParameterError),        # neither sigma nor noise
        (lambda: CenterSmoother(torch.nn.Identity(), 0.5, noise=object()), InvalidParameterError),
        (lambda: CenterSmoother(torch.nn.Identity(), noise=object()), InvalidParameterError),
        (lambda: stats.center_ablation_level(0.05, 1.5), InvalidParameterError),
        (lambda: stats.center_ablation_level(0.05, float("nan")), InvalidParameterError),
        (lambda: stats.center_ablation_level(0.5, 0.1), InvalidParameterError),
        (lambda: stats.center_ablation_level(True, 0.1), InvalidParameterError),
        (lambda: stats.center_ablation_level(0.05, None), InvalidParameterError),
        (lambda: stats.center_ablation_level(0.05, "0.1"), InvalidParameterError),
    ]
    for call, error in cases:
        with pytest.raises(error) as info:
            call()
        assert isinstance(info.value, SmoothgenError)


def test_ablation_level_is_exact_and_rounded_up():
    for delta, dr in ((0.05, Fraction(1, 7)), (0.1, Fraction(1, 3)), (0.05, Fraction(0)), (0.3, Fraction(2, 3))):
        p = stats.center_ablation_level(delta, dr)
        exact = Fraction(1, 2) + Fraction(delta) + dr
        assert Fraction(p) >= exact and p == pytest.approx(float(exact), abs=1e-15)
    assert stats.center_ablation_level(0.05, 0.3) == pytest.approx(0.85)
    assert stats.center_ablation_level(0.05, 1) > 1  # no ball can hold it: the certificate abstains


# --------------------------------------------------------------------------------------------------
# Exact oracles: the smoothed center at every prompt within r substitutions
# --------------------------------------------------------------------------------------------------


def _exact_distribution(enc: SmoothedEncoder, prompts: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled outputs of every kept subset of every prompt (all positions perturbed): [N, S, H], S = C(L, k)
    equally likely subsets (the exact ablation distribution, no sampling)."""
    length = prompts.shape[1]
    subsets = torch.tensor(list(itertools.combinations(range(length), keep)), dtype=torch.long)
    mask = torch.ones(length, dtype=torch.bool)
    rows = torch.cat([enc.noise.subset_prompts(enc.table, p, mask, subsets) for p in prompts])
    with torch.no_grad():
        out = torch.cat([enc._encode(rows[i:i + 4096]) for i in range(0, rows.shape[0], 4096)])
    return out.reshape(prompts.shape[0], subsets.shape[0], -1), subsets


def _exact_centers(outputs: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The min-median centers of a uniform distribution over `outputs` [S, H] (every support point whose
    population median distance, the smallest t with P(d ≤ t) ≥ 1/2, is minimal up to 1e-6), and that median."""
    d = COSINE.distances(outputs, outputs).double()  # [S, S]
    s = outputs.shape[0]
    medians = torch.sort(d, dim=1).values[:, (s + 1) // 2 - 1]  # P(d ≤ t) ≥ 1/2 ⇔ at least ⌈S/2⌉ points
    best = float(medians.min())
    return outputs[medians <= best + 1e-6], best


def _edited_prompts(ids: list[int], vocab: int, r: int) -> torch.Tensor:
    """Every prompt that differs from ids in 1..r positions (any other token of the vocabulary)."""
    out = []
    for size in range(1, r + 1):
        for positions in itertools.combinations(range(len(ids)), size):
            choices = [[v for v in range(vocab) if v != ids[p]] for p in positions]
            for tokens in itertools.product(*choices):
                new = list(ids)
                for p, t in zip(positions, tokens):
                    new[p] = t
                out.append(new)
    return torch.tensor(out, dtype=torch.long)


def _worst_violation(enc: SmoothedEncoder, ids: list[int], cert, r: int) -> float:
    """max over prompts x' within r substitutions and over their exact smoothed centers z' of
    d(ẑ, z') − ε_out (≤ 0: the certificate holds everywhere), and the DKW event at x itself."""
    keep = enc.noise.keep
    at_x, _ = _exact_distribution(enc, torch.tensor([ids]), keep)
    inside = float((COSINE.distances(at_x[0], cert.center[None])[:, 0] <= cert.r_hat).double().mean())
    assert inside >= cert.p - 1e-12, "P_x(B(ẑ, R̂)) < p: the DKW event failed (probability ≤ α2) or R̂ is wrong"
    worst = -math.inf
    edited, _ = _exact_distribution(enc, _edited_prompts(ids, enc.vocab_size, r), keep)
    for outputs in edited:
        centers, _ = _exact_centers(outputs)
        worst = max(worst, float(COSINE.distances(centers, cert.center[None]).max()) - cert.eps_out)
    return worst


HOT, WEAK, PLAIN, MASK = 2, 1, 0, 3
THETA = 0.175  # radians between A and A': d_cos(A, A') = 1 − cos θ ≈ 0.0153


class ThreePointEncoder(torch.nn.Module):
    """A toy encoder with one-hot token embeddings (vocabulary PLAIN, WEAK, HOT, MASK). Its output at every
    position is B = (0, 1) if some position holds HOT, else A' = (cos θ, sin θ) if some holds WEAK, else
    A = (1, 0). Under ablation (keep k of L) at a prompt with h HOT and w WEAK tokens, exactly:
    P(B) = 1 − C(L−h, k)/C(L, k), P(A) = C(L−h−w, k)/C(L, k), P(A') = the rest."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(4, 4)
        with torch.no_grad():
            self.emb.weight.copy_(torch.eye(4))

    def get_input_embeddings(self):
        return self.emb

    def forward(self, inputs_embeds, attention_mask=None):
        hot = (inputs_embeds[..., HOT] > 0.5).any(1, keepdim=True)
        weak = (inputs_embeds[..., WEAK] > 0.5).any(1, keepdim=True)
        a = torch.tensor([1.0, 0.0]).expand(hot.shape[0], 2)
        a2 = torch.tensor([math.cos(THETA), math.sin(THETA)]).expand_as(a)
        b = torch.tensor([0.0, 1.0]).expand_as(a)
        out = torch.where(hot, b, torch.where(weak, a2, a))
        return (out[:, None, :].expand(-1, inputs_embeds.shape[1], -1),)


TOY_PROMPT = [WEAK] + [PLAIN] * 9  # L = P = 10: P_x(A') = 1 − C(9, k)/C(10, k), P_x(A) = the rest


def test_toy_encoder_matches_its_closed_form():
    enc = SmoothedEncoder(ThreePointEncoder(), TokenAblation(keep=2, mask_token_id=MASK), pooling="cls")
    for ids, h, w in ((TOY_PROMPT, 0, 1), ([HOT, WEAK, WEAK] + [PLAIN] * 7, 1, 2)):
        out, subsets = _exact_distribution(enc, torch.tensor([ids]), 2)
        total = math.comb(10, 2)
        p_b = float((out[0, :, 1] == 1).double().mean())
        p_a = float((out[0, :, 0] == 1).double().mean())
        assert p_b == pytest.approx(1 - math.comb(10 - h, 2) / total)
        assert p_a == pytest.approx(math.comb(10 - h - w, 2) / total)


@pytest.mark.parametrize("r", [1, 2])
def test_ablation_certificate_against_exact_centers_of_every_edited_prompt(r):
    """For every prompt within r substitutions (435 at r = 2), the exact smoothed center stays within ε_out.

    At x (k = 2 of L = 10): P(A) = 0.8, P(A') = 0.2. At r = 2, q = 1/2 + Δ + Δ_2 + slack = 0.96 > 0.8, so
    R̂ = d(A, A') and ε_out = 10·d(A, A') ≈ 0.15 (a real claim: the diameter is 2, and B, at distance ≈ 1,
    is never reachable); two more WEAK tokens make A' the exact center, two HOT ones put 0.38 on B.
    (At r = 1, q = 0.79 against P(A) = 0.8: this seed's R̂ is d(A, A') too.)"""
    enc = SmoothedEncoder(ThreePointEncoder(), TokenAblation(keep=2, mask_token_id=MASK), pooling="cls", batch_size=500)
    cert = enc.center_certify(TOY_PROMPT, edits=r, n=2000, m=2000, seed=0)
    assert not cert.abstained
    assert _worst_violation(enc, TOY_PROMPT, cert, r) <= 1e-6
    assert cert.p == pytest.approx(0.55 + float(ablation_delta(10, 2, r)))
    assert 0 < cert.eps_out < 0.2


def test_the_oracle_catches_a_level_without_delta_r(monkeypatch):
    """Sabotage: p = 1/2 + Δ (Δ_r dropped). Then R̂ = 0 (A holds 0.8 > q), ε_out = 0, yet two WEAK
    substitutions move the exact center to A'. The oracle above must see it."""
    honest = stats.center_ablation_level
    monkeypatch.setattr(stats, "center_ablation_level", lambda delta, delta_r: honest(delta, 0))
    enc = SmoothedEncoder(ThreePointEncoder(), TokenAblation(keep=2, mask_token_id=MASK), pooling="cls", batch_size=500)
    cert = enc.center_certify(TOY_PROMPT, edits=2, n=2000, m=2000, seed=0)
    assert not cert.abstained and cert.eps_out == 0.0
    assert _worst_violation(enc, TOY_PROMPT, cert, 2) > 0.01


def test_bert_ablation_certificate_against_every_single_substitution(bert):
    """The real (tiny) encoder: every one of the 6·49 single-token substitutions of a 6-token prompt,
    its exact smoothed center over all C(6, 2) = 15 kept subsets, within ε_out of the certified center."""
    ids = [2, 11, 17, 23, 5, 3]
    enc = SmoothedEncoder(bert, TokenAblation(keep=2, mask_token_id=4), batch_size=500)
    cert = enc.center_certify(ids, edits=1, n=2000, m=3000, delta=0.1, seed=0)
    assert not cert.abstained
    assert _worst_violation(enc, ids, cert, 1) <= 1e-6
    assert cert.p == pytest.approx(0.6 + 1 / 3)


def test_prompt_noise_is_a_center_noise(bert):
    noise = PromptNoise(EmbeddingGaussian(0.1), bert.get_input_embeddings().weight.detach(), torch.ones(3, dtype=torch.bool))
    assert isinstance(noise, CenterNoise)
    assert noise.level(None, 0.2, 0.05) == stats.center_certify_level(0.2, 0.1, 0.05)
    with pytest.raises(InvalidParameterError):
        PromptNoise("gauss", noise.table, noise.mask)
    with pytest.raises(InvalidParameterError):
        PromptNoise(TokenAblation(1, 99), noise.table, noise.mask)


def test_partial_mask_ablation_certificate_against_exact_centers():
    """TOY_PROMPT's 10 positions perturbed, 10 more PLAIN ones held fixed (L = 20, P = 10). The exact law at
    every prompt within two substitutions of the perturbed positions is a count over the C(10, 2) kept
    subsets, as with every position perturbed, so the certificate must be the one of P = 10: p = 1/2 + Δ +
    Δ_2(10, 2) and ε_out ≈ 10·d(A, A'). With Δ_2 over L = 20 positions (0.195 instead of 0.378), q = 0.77
    falls below P_x(A) = 0.8 (at m = 4000 the sample share of A lies 3 standard deviations above q), R̂ = 0
    and ε_out = 0, which two WEAK substitutions refute."""
    ids = TOY_PROMPT + [PLAIN] * 10
    mask = torch.tensor([True] * 10 + [False] * 10)
    enc = SmoothedEncoder(ThreePointEncoder(), TokenAblation(keep=2, mask_token_id=MASK), pooling="cls", batch_size=500)
    cert = enc.center_certify(ids, edits=2, n=2000, m=4000, seed=0, mask=mask.tolist())
    assert not cert.abstained and cert.eps_out > 0
    assert cert.p == pytest.approx(0.55 + float(ablation_delta(10, 2, 2)))
    subsets = torch.tensor(list(itertools.combinations(range(10), 2)), dtype=torch.long)

    def exact(prompts: torch.Tensor) -> torch.Tensor:  # [N, 20] -> [N, 45, 2]: every kept subset, exactly
        rows = torch.cat([enc.noise.subset_prompts(enc.table, p, mask, subsets) for p in prompts])
        with torch.no_grad():
            return enc._encode(rows).reshape(prompts.shape[0], subsets.shape[0], -1)

    at_x = exact(torch.tensor([ids]))[0]
    assert float((COSINE.distances(at_x, cert.center[None])[:, 0] <= cert.r_hat).double().mean()) >= cert.p - 1e-12
    edited = _edited_prompts(TOY_PROMPT, enc.vocab_size, 2)
    edited = torch.cat([edited, torch.full((edited.shape[0], 10), PLAIN)], dim=1)
    worst = -math.inf
    for outputs in exact(edited):
        centers, _ = _exact_centers(outputs)
        worst = max(worst, float(COSINE.distances(centers, cert.center[None]).max()) - cert.eps_out)
    assert worst <= 1e-6


# --------------------------------------------------------------------------------------------------
# Mean smoothing under ablation (docs/theory.md §4i): exact means, every edited prompt, tightness
# --------------------------------------------------------------------------------------------------

ANTI_PLAIN, ANTI_HOT, ANTI_MASK = 0, 1, 2


class AntipodalEncoder(torch.nn.Module):
    """Outputs e1 unless a HOT token is visible, then −e1: at a prompt of PLAIN tokens with HOT written at r
    perturbed positions, F = e1·(1 − 2Δ_r) exactly, so ‖F(x) − F(x')‖ = 2Δ_r attains the bound."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(3, 3)
        with torch.no_grad():
            self.emb.weight.copy_(torch.eye(3))

    def get_input_embeddings(self):
        return self.emb

    def forward(self, inputs_embeds, attention_mask=None):
        hot = (inputs_embeds[..., ANTI_HOT] > 0.5).any(1, keepdim=True)
        e1 = torch.tensor([1.0, 0.0]).expand(hot.shape[0], 2)
        out = torch.where(hot, -e1, e1)
        return (out[:, None, :].expand(-1, inputs_embeds.shape[1], -1),)


def _exact_mean_distances(enc: SmoothedEncoder, ids: list[int], cert, r: int) -> tuple[float, float]:
    """max over every prompt x' within r substitutions of (‖F(x) − F(x')‖₂ − l2_bound, d_cos − cosine_bound),
    with F(x') the exact mean over all C(P, k) subsets."""
    worst_l2 = worst_cos = -math.inf
    for edited in _edited_prompts(ids, enc.vocab_size, r).tolist():
        other = enc.mean_certify(edited, edits=0)
        assert other.exact
        gap = float((cert.mean - other.mean).norm())
        cos = float(1 - torch.nn.functional.cosine_similarity(cert.mean, other.mean, dim=0))
        worst_l2 = max(worst_l2, gap - cert.l2_bound)
        worst_cos = max(worst_cos, cos - cert.cosine_bound)
    return worst_l2, worst_cos


@pytest.mark.parametrize("r", [1, 2])
def test_mean_certificate_holds_at_every_edited_prompt_and_is_attained(r):
    enc = SmoothedEncoder(AntipodalEncoder(), TokenAblation(keep=2, mask_token_id=ANTI_MASK), pooling="cls", batch_size=64)
    ids = [ANTI_PLAIN] * 10
    cert = enc.mean_certify(ids, edits=r)
    assert cert.exact and cert.copies == 45 and cert.alpha == 0.0
    assert cert.l2_bound == pytest.approx(2 * float(ablation_delta(10, 2, r)))
    worst_l2, worst_cos = _exact_mean_distances(enc, ids, cert, r)
    assert worst_l2 <= 0 and worst_cos <= 0
    assert worst_l2 == pytest.approx(0, abs=1e-9)  # r HOT tokens move F by exactly 2·Δ_r


def test_mean_cosine_bound_holds_for_a_two_dimensional_toy():
    enc = SmoothedEncoder(ThreePointEncoder(), TokenAblation(keep=2, mask_token_id=MASK), pooling="cls", batch_size=64)
    cert = enc.mean_certify(TOY_PROMPT, edits=1)
    assert 0 < cert.cosine_bound < 2
    worst_l2, worst_cos = _exact_mean_distances(enc, TOY_PROMPT, cert, 1)
    assert worst_l2 <= 0 and worst_cos <= 0


def test_the_mean_oracle_catches_a_halved_edit_bound(monkeypatch):
    """Sabotage: Δ_r halved. HOT tokens then move the exact mean beyond the claimed l2 bound."""
    import smoothgen.encoders as encoders

    honest = encoders.ablation_delta
    monkeypatch.setattr(encoders, "ablation_delta", lambda P, k, r: honest(P, k, r) / 2)
    enc = SmoothedEncoder(AntipodalEncoder(), TokenAblation(keep=2, mask_token_id=ANTI_MASK), pooling="cls", batch_size=64)
    ids = [ANTI_PLAIN] * 10
    cert = enc.mean_certify(ids, edits=1)
    worst_l2, _ = _exact_mean_distances(enc, ids, cert, 1)
    assert worst_l2 > 0.05


@pytest.mark.parametrize("p", [0.5, 0.8])
def test_mean_certificate_under_deletion_holds_at_every_single_edit_and_is_attained(p):
    """Token deletion (§4j): every prompt whose run is one insertion, deletion or substitution away moves the
    exact mean by at most 2·Δ_1 = 2(1 − p); inserting one HOT token into a PLAIN run moves it by exactly that.
    Two HOT insertions move it by exactly 2·Δ_2."""
    from smoothgen.deletion import TokenDeletion, deletion_delta
    from test_deletion import single_edits

    enc = SmoothedEncoder(AntipodalEncoder(), TokenDeletion(p), pooling="cls", batch_size=64)
    head, run, tail = [ANTI_PLAIN], [ANTI_PLAIN] * 6, [ANTI_PLAIN]
    mask = lambda length: [0 < i < length - 1 for i in range(length)]  # noqa: E731 - the same head and tail at every length
    cert = enc.mean_certify(head + run + tail, edits=1, mask=mask)
    assert cert.exact and cert.copies == 2**6 and cert.keep is None and cert.delete_prob == p
    assert cert.l2_bound == pytest.approx(2 * float(deletion_delta(p, 1)))
    worst = -math.inf
    for edited in single_edits(run, range(3)):
        other = enc.mean_certify(head + edited + tail, edits=0, mask=mask)
        worst = max(worst, float((cert.mean - other.mean).norm()) - cert.l2_bound)
    assert worst <= 1e-12 and worst == pytest.approx(0, abs=1e-9)
    two = enc.mean_certify(head + run[:3] + [ANTI_HOT, ANTI_HOT] + run[3:] + tail, edits=0, mask=mask)
    assert float((cert.mean - two.mean).norm()) == pytest.approx(2 * float(deletion_delta(p, 2)))


def test_the_deletion_mean_oracle_catches_a_halved_bound(monkeypatch):
    import smoothgen.encoders as encoders
    from smoothgen.deletion import TokenDeletion

    honest = encoders.deletion_delta
    monkeypatch.setattr(encoders, "deletion_delta", lambda p, r: honest(p, r) / 2)
    enc = SmoothedEncoder(AntipodalEncoder(), TokenDeletion(0.8), pooling="cls", batch_size=64)
    mask = lambda length: [0 < i < length - 1 for i in range(length)]  # noqa: E731
    ids = [ANTI_PLAIN] * 8
    cert = enc.mean_certify(ids, edits=1, mask=mask)
    other = enc.mean_certify(ids[:4] + [ANTI_HOT] + ids[4:], edits=0, mask=mask)
    assert float((cert.mean - other.mean).norm()) > cert.l2_bound + 0.1


def test_sampled_deletion_mean_lies_within_its_sampling_error(bert):
    from smoothgen.deletion import TokenDeletion

    ids = [2, 11, 17, 23, 5, 8, 9, 3]
    mask = [False] + [True] * 6 + [False]
    enc = SmoothedEncoder(bert, TokenDeletion(0.7), batch_size=500)
    exact = enc.mean_certify(ids, edits=1, mask=mask)
    sampled = enc.mean_certify(ids, edits=1, mask=mask, max_subsets=10, n=3000, alpha=0.01, seed=0)
    assert exact.exact and exact.copies == 64 and not sampled.exact and sampled.copies == 3000
    assert float((sampled.mean - exact.mean).norm()) <= sampled.sampling_error
    # Center smoothing of the same encoder under deletion runs on copies of every length (tests/test_center_deletion.py
    # checks its certificates exactly): its center is the pooled embedding of one copy.
    center = enc.center_certify(ids, edits=1, mask=mask, n=200, m=200, delta=0.1, seed=0)
    assert center.eps_in == 1 and center.p == pytest.approx(0.6 + 0.3) and center.center.shape == exact.mean.shape
    for bad in (lambda: enc.mean_certify(ids, edits=1, mask=[True, False] * 4),
                lambda: enc.center_certify(ids, edits=1, mask=[True, False] * 4)):
        with pytest.raises(InvalidParameterError, match="contiguous"):
            bad()


def test_sampled_mean_lies_within_its_sampling_error_of_the_exact_one(bert):
    ids = [2, 11, 17, 23, 5, 8, 9, 3]
    enc = SmoothedEncoder(bert, TokenAblation(keep=3, mask_token_id=4), batch_size=500)
    exact = enc.mean_certify(ids, edits=1)
    sampled = enc.mean_certify(ids, edits=1, max_subsets=10, n=4000, alpha=0.01, seed=0)
    assert exact.exact and exact.copies == math.comb(8, 3) and not sampled.exact and sampled.copies == 4000
    assert sampled.alpha == 0.01 and sampled.sampling_error > 0
    assert float((sampled.mean - exact.mean).norm()) <= sampled.sampling_error
    assert sampled.norm_lower == pytest.approx(sampled.norm - sampled.sampling_error)
    assert sampled.cosine_bound >= exact.cosine_bound - 1e-12  # the weaker norm bound can only widen it
    # the exact mean is the mean of the enumerated copies, whatever the batch size
    again = SmoothedEncoder(bert, TokenAblation(keep=3, mask_token_id=4), batch_size=7).mean_certify(ids, edits=1)
    assert torch.allclose(again.mean, exact.mean, atol=1e-6)


def test_cosine_bound_is_the_tangent_angle():
    from smoothgen.encoders import cosine_bound

    rho, eps = 0.8, 0.3
    bound = cosine_bound(eps, rho)
    assert bound == pytest.approx(1 - math.sqrt(1 - (eps / rho) ** 2))
    torch.manual_seed(0)
    u = torch.tensor([rho, 0.0, 0.0], dtype=torch.float64)
    v = u + eps * torch.nn.functional.normalize(torch.randn(20000, 3, dtype=torch.float64), dim=-1)
    cos = 1 - torch.nn.functional.cosine_similarity(v, u[None], dim=-1)
    assert float(cos.max()) <= bound and float(cos.max()) > 0.99 * bound
    assert cosine_bound(0.9, 0.8) == 2.0 and cosine_bound(0.1, 0.0) == 2.0


def test_mean_certify_refuses_what_it_cannot_certify(bert):
    gauss = SmoothedEncoder(bert, 0.1)
    with pytest.raises(InvalidParameterError, match="token ablation"):
        gauss.mean_certify(PROMPT, edits=1)
    enc = SmoothedEncoder(bert, TokenAblation(keep=2, mask_token_id=4))
    for kwargs in ({"edits": -1}, {"edits": 1.5}, {"edits": 1, "max_subsets": 0},
                   {"edits": 1, "max_subsets": 1, "alpha": 2.0}, {"edits": 1, "max_subsets": 1, "n": 0}):
        with pytest.raises(SmoothgenError):
            enc.mean_certify(PROMPT, **kwargs)
    record = enc.mean_certify(PROMPT, edits=0).to_record()
    assert record["l2_bound"] == 0 and record["cosine_bound"] == 0 and "mean" not in record
