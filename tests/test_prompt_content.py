"""Content certificates in prompt edits (`smoothgen.prompt_content`): token ablation before the text encoder.

The threat is discrete, so small cases are checked without Monte Carlo: with a deterministic encoder,
generator and classifier, the smoothed class at ANY prompt is a count over the C(P, k) kept subsets
(`PromptContentSmoother.exact_probabilities`). The exhaustive check enumerates every prompt within the
certified number of substitutions of the perturbed positions and compares its exact smoothed class with
the certified one; with the edit bound sabotaged the same check must find a violation. Nothing is
downloaded: every model is built here, tiny and random, or written by hand.
"""
from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
import torch

import smoothgen.generation.noise as noise_spaces
from smoothgen.conditional import ConditionalGenerator, DiffusersGenerator
from smoothgen.engine import Purpose, RandomStream
from smoothgen.errors import InvalidInputError, InvalidParameterError, SmoothgenError
from smoothgen.generative import TokenAblation, ablation_delta
from smoothgen.prompt_content import PromptContentCertificate, PromptContentSmoother, token_edit_distance, tokenize
from tiny_models import one_thread, tiny_unet  # noqa: F401 - one_thread: an autouse fixture

transformers = pytest.importorskip("transformers")


# --------------------------------------------------------------------------------------------------
# Hand-written and tiny random models
# --------------------------------------------------------------------------------------------------


class OneHotEncoder(torch.nn.Module):
    """An encoder whose last hidden state is its input: one-hot token rows, so the mean-pooled conditioning
    counts the tokens the copy kept, and the "hidden" conditioning shows the ablated prompt itself."""

    def __init__(self, vocab: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, vocab)
        with torch.no_grad():
            self.emb.weight.copy_(torch.eye(vocab))

    def get_input_embeddings(self):
        return self.emb

    def forward(self, inputs_embeds, attention_mask=None):
        return (inputs_embeds,)


class Identity(ConditionalGenerator):
    """A deterministic generator: the image is the conditioning vector (no randomness of its own)."""

    def __init__(self, cond_shape):
        super().__init__()
        self._cond_shape = tuple(cond_shape)
        self.reseed(0)

    cond_shape = property(lambda self: self._cond_shape)
    output_shape = property(lambda self: self._cond_shape)
    _noise_shape = property(lambda self: (1,))

    def forward(self, embeds):
        return self._check_conditioning(embeds).clone()


class Projection(ConditionalGenerator):
    """A deterministic generator of 2×2 "images" from a [L, H] hidden state: tanh(W·vec(e) + b), fixed random W."""

    def __init__(self, shape, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        size = shape[0] * shape[1]
        self.w = torch.randn(size, 4, generator=g) / size**0.5
        self.b = torch.randn(4, generator=g)
        self.shape = tuple(shape)
        self.reseed(0)

    cond_shape = property(lambda self: self.shape)
    output_shape = property(lambda self: (1, 2, 2))
    _noise_shape = property(lambda self: (1,))

    def forward(self, embeds):
        e = self._check_conditioning(embeds).flatten(1)
        return torch.tanh(e @ self.w + self.b).reshape(-1, 1, 2, 2)


class Noisy(ConditionalGenerator):
    """A random generator: the conditioning plus its own keyed noise; keeps every noise batch it drew."""

    def __init__(self, cond_shape):
        super().__init__()
        self._cond_shape = tuple(cond_shape)
        self.drawn: list[torch.Tensor] = []
        self.seen: list[torch.Tensor] = []
        self.reseed(0)

    cond_shape = property(lambda self: self._cond_shape)
    output_shape = property(lambda self: self._cond_shape)
    _noise_shape = property(lambda self: self._cond_shape)

    def forward(self, embeds):
        e = self._check_conditioning(embeds)
        z = self._noise(e.shape[0], e.device)
        self.drawn.append(z.clone())
        self.seen.append(e.clone())
        return e + 0.01 * z


class LinearClassifier(torch.nn.Module):
    def __init__(self, features: int, classes: int, seed: int = 0, bias: float = 0.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(features, classes, generator=g)
        self.b = torch.zeros(classes)
        self.b[0] = bias
        self.num_classes = classes

    def forward(self, images):
        return images.flatten(1) @ self.w + self.b


# The HOT toy: vocabulary MASK, PLAIN, PLAIN2, HOT. Class 1 when the copy kept a HOT token, else class 0.
MASK, PLAIN, PLAIN2, HOT = 0, 1, 2, 3


def hot_classifier(images):
    hot = images[:, HOT] > 0.05  # the mean-pooled one-hot share of HOT (≥ 1/L when a HOT token was kept)
    return torch.stack([(~hot).float(), hot.float()], dim=1)


def hot_smoother(keep: int = 2, **kwargs) -> PromptContentSmoother:
    return PromptContentSmoother(OneHotEncoder(4), Identity((4,)), hot_classifier, TokenAblation(keep, MASK),
                                 num_classes=2, batch_size=256, **kwargs)


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=7, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16)
    return transformers.BertModel(config).eval()


def bert_smoother(bert, keep: int, seed: int = 0) -> PromptContentSmoother:
    """The tiny BERT's whole last hidden state [6, 16] -> a fixed random projection -> a biased linear classifier
    (bias 2 on class 0: exact class shares between 0.6 and 1 on BERT_PROMPTS, so some certify and some not)."""
    return PromptContentSmoother(bert, Projection((6, 16), seed), LinearClassifier(4, 3, seed, bias=2.0),
                                 TokenAblation(keep, MASK), conditioning="hidden", batch_size=512)


# --------------------------------------------------------------------------------------------------
# The exhaustive check
# --------------------------------------------------------------------------------------------------


def edited_prompts(ids: list[int], positions: list[int], vocab: int, r: int):
    """Every prompt that differs from ids in 1..r of `positions` (any other token, the mask token included)."""
    for size in range(1, r + 1):
        for where in itertools.combinations(positions, size):
            for tokens in itertools.product(*[[v for v in range(vocab) if v != ids[p]] for p in where]):
                new = list(ids)
                for p, t in zip(where, tokens):
                    new[p] = t
                yield new, size


def violations(smoother: PromptContentSmoother, cert: PromptContentCertificate) -> list[tuple]:
    """Every prompt within cert.certified_edits substitutions of the perturbed positions whose EXACT smoothed
    class is not the certified one, or whose exact probability of it falls below p_A(x) − Δ_d."""
    if cert.abstained or cert.certified_edits < 1:
        return []
    ids, mask = list(cert.prompt_ids), list(cert.mask)
    positions = [i for i, on in enumerate(mask) if on]
    exact_x = smoother.exact_probabilities(ids, mask=mask, protect=[])
    a = cert.prediction
    bad = []
    for new, d in edited_prompts(ids, positions, smoother.vocab_size, cert.certified_edits):
        exact = smoother.exact_probabilities(new, mask=mask, protect=[])
        top = max(range(len(exact)), key=lambda j: exact[j])
        if exact[a] <= Fraction(1, 2) or top != a or exact[a] < exact_x[a] - ablation_delta(len(positions), cert.keep, d):
            bad.append((tuple(new), top, exact[a]))
    return bad


def test_hot_toy_exact_probabilities_are_the_closed_form():
    """P(class 1) = 1 − C(P − h, k)/C(P, k) = Δ_h at a prompt with h HOT tokens: a direct count."""
    smoother = hot_smoother(keep=2)
    for h in range(7):
        ids = [HOT] * h + [PLAIN] * (6 - h)
        assert smoother.exact_probabilities(ids)[1] == ablation_delta(6, 2, h)


def test_edit_bound_holds_exactly_and_is_attained():
    """The oracle of the bound itself: exact probabilities at x and at every x' within r substitutions
    differ by at most Δ_r (tiny random BERT), and by exactly Δ_r for the HOT toy (r HOT tokens written
    into a prompt without one): Δ_r cannot be lowered."""
    # Tightness.
    smoother = hot_smoother(keep=2)
    x = [PLAIN, PLAIN2, PLAIN, PLAIN2, PLAIN, PLAIN2]
    for r in range(1, 7):
        edited = [HOT] * r + x[r:]
        moved = smoother.exact_probabilities(edited)[1] - smoother.exact_probabilities(x)[1]
        assert moved == ablation_delta(6, 2, r)


@pytest.mark.parametrize("keep", [1, 2])
def test_edit_bound_on_a_tiny_random_bert(bert, keep):
    smoother = bert_smoother(bert, keep)
    x = BERT_PROMPTS[0]
    exact_x = smoother.exact_probabilities(x)
    worst = Fraction(0)
    for new, d in edited_prompts(x, list(range(6)), 7, 2):
        exact = smoother.exact_probabilities(new)
        gap = max(abs(p - q) for p, q in zip(exact, exact_x))
        assert gap <= ablation_delta(6, keep, d), (new, gap)
        worst = max(worst, gap / ablation_delta(6, keep, d))
    assert worst > Fraction(1, 2)  # the edits do move the model: the check is not vacuous


#: Prompts of the exhaustive check on the tiny BERT: P = 6, vocabulary of 7 (mask 0), each under keep 1 and 2.
BERT_PROMPTS = [[1, 1, 2, 3, 5, 6], [4, 4, 4, 2, 2, 6], [5, 3, 1, 6, 2, 4], [6, 6, 5, 5, 4, 4], [3, 2, 1, 3, 2, 1]]
BERT_CASES = [(ids, keep) for ids in BERT_PROMPTS for keep in (1, 2)]


def test_exhaustive_check_of_the_sampled_certificate_on_a_tiny_random_bert(bert):
    """The exhaustive small case: for every prompt, the sampled certificate (n0 = 50, n = 400, α = 0.001);
    for every prompt within its certified edits (substitutions at any perturbed position, any token), the
    exact smoothed class over all C(P, k) subsets must be the certified class, with probability at least
    p_A(x) − Δ_d. At least one certificate covers one edit or more, or the check would be vacuous."""
    certified = checked = 0
    for case, (ids, keep) in enumerate(BERT_CASES):
        smoother = bert_smoother(bert, keep)
        cert = smoother.certify(ids, edits=1, n0=50, n=400, alpha=0.001, seed=case)
        exact = smoother.exact_probabilities(ids)
        if not cert.abstained:
            assert cert.p_lower <= exact[cert.prediction]  # the Clopper–Pearson event (fails w.p. ≤ α)
        assert violations(smoother, cert) == [], (ids, cert.certified_edits)
        certified += cert.certified_edits >= 1
        checked += sum(1 for _ in edited_prompts(ids, list(range(len(ids))), 7, max(cert.certified_edits, 0)))
    assert certified >= 2 and checked > 200, (certified, checked)


def test_exhaustive_check_of_the_hot_toy_and_the_sabotaged_bound_is_caught(monkeypatch):
    """The HOT toy at a prompt without HOT: every copy votes 0, p_lower = α^(1/n). Honest Δ: one edit
    certified (1/2 + Δ_1 = 0.83 < p_lower < 1/2 + Δ_2 = 1.1), and no prompt within one edit changes class.
    Sabotage (Δ_r halved): four edits certified, yet writing HOT at two positions makes class 1 the exact
    smoothed class (Δ_2 = 0.6 > 1/2). The exhaustive check must turn red."""
    x = [PLAIN, PLAIN2, PLAIN, PLAIN2, PLAIN, PLAIN2]
    smoother = hot_smoother(keep=2)
    honest = smoother.certify(x, edits=1, n0=50, n=300, seed=0)
    assert honest.prediction == 0 and honest.certified_edits == 1 and honest.certified
    assert violations(smoother, honest) == []

    original = noise_spaces.ablation_delta
    monkeypatch.setattr(noise_spaces, "ablation_delta", lambda length, keep, edits: original(length, keep, edits) / 2)
    sabotaged = smoother.certify(x, edits=1, n0=50, n=300, seed=0)
    assert sabotaged.certified_edits == 4
    bad = violations(smoother, sabotaged)
    assert bad and all(top == 1 for _, top, _ in bad)
    assert any(sum(t == HOT for t in new) == 2 for new, _, _ in bad)


def test_dropping_the_binomial_term_is_caught(monkeypatch):
    """The other sabotage: Δ_r = r/P (the C(P − r, k) term dropped). The content sits in one position j;
    copies that miss it vote 'nothing'. With k = 5 of P = 6, P(content) = 5/6, and r/P = 1/6 certifies one
    edit, which the exact class at the edited prompt refutes (the true Δ_1 = 5/6)."""
    smoother = PromptContentSmoother(OneHotEncoder(4), Identity((4,)), content_classifier, TokenAblation(5, MASK),
                                     num_classes=3, batch_size=256)
    x = [PLAIN, PLAIN, HOT, PLAIN, PLAIN, PLAIN]
    honest = smoother.certify(x, n0=50, n=2000, seed=0)
    assert honest.certified_edits == 0 and not honest.certified and violations(smoother, honest) == []
    monkeypatch.setattr(noise_spaces, "ablation_delta", lambda length, keep, edits: Fraction(max(edits, 0), length))
    sabotaged = smoother.certify(x, n0=50, n=2000, seed=0)
    assert sabotaged.certified_edits >= 1 and violations(smoother, sabotaged)


# --------------------------------------------------------------------------------------------------
# Short prompts and protect
# --------------------------------------------------------------------------------------------------


def content_classifier(images):
    """Class 0 when the copy kept a PLAIN2 token, class 1 when it kept a HOT token, else 2 ('nothing seen')."""
    plain2, hot = images[:, PLAIN2] > 0, images[:, HOT] > 0
    return torch.stack([plain2.float(), hot.float() * (~plain2).float(), (~plain2 & ~hot).float()], dim=1)


def test_one_content_token_is_never_certified_at_one_edit_unless_protected():
    """The content (HOT, class 1) in one of P = 6 positions: a copy sees it with probability k/P, and one edit
    needs more than 1/2 + k/P, so no k and no sample size certifies r = 1; the abstention text says why.
    Protecting that position keeps it in every copy: then the other five positions' edits are covered."""
    x = [PLAIN, PLAIN, HOT, PLAIN, PLAIN, PLAIN]
    for keep in range(1, 6):
        smoother = PromptContentSmoother(OneHotEncoder(4), Identity((4,)), content_classifier, TokenAblation(keep, MASK),
                                         num_classes=3, batch_size=256)
        assert smoother.exact_probabilities(x)[1] == Fraction(keep, 6)
        cert = smoother.certify(x, n0=30, n=3000, seed=keep)
        assert not (cert.prediction == 1 and cert.certified_edits >= 1)  # the content is never certified
        if cert.certified_edits <= 0:
            assert "protect the content" in cert.statement
        assert violations(smoother, cert) == []  # what is certified ("nothing seen", class 2) is sound
    smoother = PromptContentSmoother(OneHotEncoder(4), Identity((4,)), content_classifier, TokenAblation(1, MASK),
                                     num_classes=3, batch_size=256, content="digit")
    cert = smoother.certify(x, n0=30, n=300, seed=0, protect=2)
    assert cert.prediction == 1 and cert.protected == (2,) and cert.perturbed == 5
    assert cert.mask == (True, True, False, True, True, True)
    assert cert.certified_edits == 2  # Δ_2 = 2/5, Δ_3 = 3/5 > 1/2
    assert violations(smoother, cert) == []
    # An edit of the protected position is not covered, and it does change the class.
    edited = list(x)
    edited[2] = PLAIN2
    assert cert.covers(edited) == (False, "edits protected or special position(s) [2], which the certificate holds fixed")
    assert smoother.exact_probabilities(edited, protect=2)[0] == 1
    assert cert.covers([PLAIN2, PLAIN2, HOT, PLAIN, PLAIN, PLAIN])[0]
    assert not cert.covers([PLAIN2, PLAIN2, HOT, PLAIN2, PLAIN, PLAIN])[0]  # three edits
    assert "changes the token count" in cert.covers(x + [PLAIN])[1]
    words = cert.statement
    assert "the generated digit is 1" in words and "at most 2 tokens among positions 0, 1, 3, 4, 5" in words
    assert "protected positions 2 are never ablated" in words and "insertions and deletions are not covered" in words


def test_the_perturbed_positions_are_fixed_from_the_clean_prompt():
    """protect by substring is resolved once, on the clean prompt, and the certificate's mask is positional:
    the exhaustive check above edits x' at those positions with the SAME mask (the claim of docs/theory.md
    §4g). A mask callable receives the length only."""
    calls = []

    def first_five(length):
        calls.append(length)
        return [i < 5 for i in range(length)]

    smoother = hot_smoother(keep=1, mask=first_five)
    cert = smoother.certify([PLAIN] * 7, n0=20, n=200, seed=0, protect=[0])
    assert cert.mask == (False, True, True, True, True, False, False)
    assert calls and all(type(c) is int and c == 7 for c in calls)


# --------------------------------------------------------------------------------------------------
# Disjoint samples, independent generator randomness, reproducibility
# --------------------------------------------------------------------------------------------------


def test_selection_and_estimation_copies_are_disjoint_and_the_generator_stream_is_separate():
    """The n0 selection copies are the ablation's SELECTION stream, the n estimation copies its ESTIMATION
    stream, and the generator's own noise is one keyed stream whose first n0 copies go to selection and the
    next n to estimation: no copy (subset or ω) is used twice, and n_A counts estimation votes only."""
    gen = Noisy((6, 4))
    smoother = PromptContentSmoother(OneHotEncoder(4), gen, lambda im: hot_classifier(im.mean(1)), TokenAblation(2, MASK),
                                     num_classes=2, conditioning="hidden", batch_size=16)
    x = [PLAIN, HOT, PLAIN2, PLAIN, PLAIN2, PLAIN]
    n0, n = 20, 50
    cert = smoother.certify(x, n0=n0, n=n, seed=5, request_id=3)
    seen = torch.cat(gen.seen).argmax(-1)  # the ablated prompts the generator was conditioned on, in order
    ids, mask = torch.tensor(x), torch.ones(6, dtype=torch.bool)
    stream = RandomStream(5, 3)
    selection = smoother.noise.ablated_ids(ids, mask, stream.key(Purpose.SELECTION), 0, n0)
    estimation = smoother.noise.ablated_ids(ids, mask, stream.key(Purpose.ESTIMATION), 0, n)
    assert torch.equal(seen[:n0], selection) and torch.equal(seen[n0:], estimation)
    assert not torch.equal(selection[:n0], estimation[:n0])
    hot_seen = (estimation == HOT).any(1)
    assert cert.count == int((hot_seen if cert.selected == 1 else ~hot_seen).sum())  # estimation votes only
    drawn = torch.cat(gen.drawn)
    gen.reseed(5, 3)
    expected = gen._noise(n0 + n, torch.device("cpu"))
    assert torch.equal(drawn, expected) and gen._copies == n0 + n
    again = smoother.certify(x, n0=n0, n=n, seed=5, request_id=3)
    assert again.to_record() == cert.to_record()


def test_batch_size_does_not_change_the_certificate(bert):
    a = PromptContentSmoother(bert, Projection((6, 16)), LinearClassifier(4, 3, bias=2.0), TokenAblation(2, MASK),
                              conditioning="hidden", batch_size=7)
    b = PromptContentSmoother(bert, Projection((6, 16)), LinearClassifier(4, 3, bias=2.0), TokenAblation(2, MASK),
                              conditioning="hidden", batch_size=64)
    ra = a.certify([2, 5, 3, 6, 4, 1], n0=30, n=100, seed=1).to_record()
    rb = b.certify([2, 5, 3, 6, 4, 1], n0=30, n=100, seed=1).to_record()
    assert ra == rb


# --------------------------------------------------------------------------------------------------
# Tokenizers: special tokens, substrings, token strings
# --------------------------------------------------------------------------------------------------


WORDS = {"[PAD]": 0, "[MASK]": 1, "[CLS]": 2, "[SEP]": 3, "[UNK]": 4, "a": 5, "handwritten": 6, "seven": 7, "the": 8,
         "digit": 9, "three": 10, "of": 11, "image": 12}


def word_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(WORDS, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                                  special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, mask_token="[MASK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]")


class SevenOrThree(torch.nn.Module):
    """Classifies the mean-pooled one-hot conditioning: 7 kept -> class 7, 3 (word 'three') -> class 3, else 0."""

    num_classes = 10

    def forward(self, images):
        out = torch.zeros(images.shape[0], 10)
        out[:, 0] = 0.5
        out[:, 7] = images[:, WORDS["seven"]] * 100
        out[:, 3] = images[:, WORDS["three"]] * 100
        return out


def word_smoother(**kwargs):
    return PromptContentSmoother(OneHotEncoder(len(WORDS)), Identity((len(WORDS),)), SevenOrThree(),
                                 TokenAblation(1, WORDS["[MASK]"]), tokenizer=word_tokenizer(), batch_size=128,
                                 content="digit", **kwargs)


def test_string_prompts_hold_special_tokens_fixed_and_protect_substrings():
    smoother = word_smoother()
    text = "a handwritten image of the digit seven"
    cert = smoother.certify(text, n0=20, n=200, seed=0, protect="seven")
    assert cert.prompt == text and cert.tokens[0] == "[CLS]" and cert.tokens[-1] == "[SEP]"
    assert cert.special == (0, 8) and cert.protected == (7,)
    assert cert.mask == (False, True, True, True, True, True, True, False, False)
    assert cert.prediction == 7 and cert.certified_edits >= 2  # keep 1 of 6: Δ_r = r/6
    words = cert.statement
    assert "among positions 1 ('a'), 2 ('handwritten')" in words and "7 ('seven')" in words
    assert "special tokens at 0 ('[CLS]'), 8 ('[SEP]') are held fixed" in words
    record = cert.to_record()
    assert record["certified"] and record["statement"] == words and record["protected"] == [7]
    assert violations(smoother, cert) == []
    # Protecting by position is the same certificate.
    assert smoother.certify(text, n0=20, n=200, seed=0, protect=[7]).to_record() == record
    # Without protect, "seven" is one content token of 7: seen by 1 copy in 7, so what is certified is the
    # digit of the copies that miss it (class 0 here), never the 7 the prompt asks for.
    bare = smoother.certify(text, n0=20, n=500, seed=0)
    assert bare.perturbed == 7 and bare.prediction == 0 and violations(smoother, bare) == []
    assert smoother.exact_probabilities(list(bare.prompt_ids), mask=list(bare.mask))[7] == Fraction(1, 7)


def test_tokenize_and_token_edit_distance():
    ids, offsets, special = tokenize(word_tokenizer(), "the digit seven")
    assert ids == [2, 8, 9, 7, 3] and special == [True, False, False, False, True] and offsets[3] == (10, 15)

    class EncodeOnly:
        def encode(self, text):
            return [WORDS[w] for w in text.split()]

    assert tokenize(EncodeOnly(), "the digit") == ([8, 9], None, None)
    assert token_edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert token_edit_distance([1, 2, 3], [1, 5, 3]) == 1
    assert token_edit_distance([1, 2, 3], [1, 3]) == 1
    assert token_edit_distance([1, 2, 3], [3, 2, 1, 4]) == 3


# --------------------------------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------------------------------


def test_bad_arguments_are_smoothgen_errors():
    smoother = hot_smoother(keep=2)
    words = word_smoother()
    x = [PLAIN] * 6
    cases = [
        (lambda: smoother.certify(x, edits=-1), InvalidParameterError),
        (lambda: smoother.certify(x, edits=True), InvalidParameterError),
        (lambda: smoother.certify(x, edits=1.5), InvalidParameterError),
        (lambda: smoother.certify(x, n0=0), InvalidParameterError),
        (lambda: smoother.certify(x, n=0), InvalidParameterError),
        (lambda: smoother.certify(x, alpha=1.0), InvalidParameterError),
        (lambda: smoother.certify(x, protect=6), InvalidParameterError),           # out of range
        (lambda: smoother.certify(x, protect=-1), InvalidParameterError),
        (lambda: smoother.certify(x, protect=[True]), InvalidParameterError),
        (lambda: smoother.certify(x, protect=[0, 1, 2, 3, 4, 5]), InvalidParameterError),  # covers everything
        (lambda: smoother.certify(x, protect=[0, 1, 2, 3]), InvalidParameterError),  # keep 2 >= P = 2
        (lambda: smoother.certify(x, protect=1.5), InvalidParameterError),
        (lambda: smoother.certify(x, protect="PLAIN"), InvalidParameterError),     # a substring of ids
        (lambda: smoother.certify([PLAIN, PLAIN]), InvalidParameterError),          # keep 2 >= P = 2
        (lambda: smoother.certify(x, mask=[False] * 6), InvalidParameterError),
        (lambda: smoother.certify(x, mask=[True] * 5), InvalidInputError),
        (lambda: smoother.certify([]), InvalidInputError),
        (lambda: smoother.certify([PLAIN, 9]), InvalidInputError),                 # outside the vocabulary
        (lambda: smoother.certify("no tokenizer"), InvalidInputError),
        (lambda: words.certify("the digit seven", protect="eight"), InvalidParameterError),
        (lambda: words.certify("the digit seven", protect=""), InvalidParameterError),
        (lambda: words.certify("   "), InvalidInputError),
        (lambda: PromptContentSmoother(OneHotEncoder(4), Identity((4,)), hot_classifier, 0.5, num_classes=2),
         InvalidParameterError),                                                     # Gaussian noise
        (lambda: PromptContentSmoother(OneHotEncoder(4), Identity((4,)), hot_classifier, TokenAblation(1, 4),
                                       num_classes=2), InvalidParameterError),       # mask token outside
        (lambda: PromptContentSmoother(OneHotEncoder(4), torch.nn.Identity(), hot_classifier, TokenAblation(1, 0),
                                       num_classes=2), InvalidParameterError),       # not a ConditionalGenerator
        (lambda: PromptContentSmoother(OneHotEncoder(4), Identity((4,)), hot_classifier, TokenAblation(1, 0)),
         InvalidParameterError),                                                     # no num_classes
        (lambda: PromptContentSmoother(OneHotEncoder(4), Identity((4,)), hot_classifier, TokenAblation(1, 0),
                                       num_classes=2, conditioning="cls"), InvalidParameterError),
        (lambda: PromptContentSmoother(OneHotEncoder(4), Identity((4,)), hot_classifier, TokenAblation(1, 0),
                                       num_classes=2, class_names=["a"]), InvalidParameterError),
        (lambda: PromptContentSmoother(OneHotEncoder(4), Identity((4,)), hot_classifier, TokenAblation(1, 0),
                                       num_classes=2, batch_size=0), InvalidParameterError),
        (lambda: PromptContentSmoother(torch.nn.Linear(2, 2), Identity((4,)), hot_classifier, TokenAblation(1, 0),
                                       num_classes=2), InvalidInputError),
        (lambda: smoother.subset_classes(x, max_subsets=3), InvalidParameterError),
    ]
    for call, error in cases:
        with pytest.raises(error) as info:
            call()
        assert isinstance(info.value, SmoothgenError)


# --------------------------------------------------------------------------------------------------
# Diffusers: any pipeline whose text encoder is a Hugging Face model
# --------------------------------------------------------------------------------------------------


class Brightness(torch.nn.Module):
    """A content classifier of generated images: dark (0) or bright (1) by mean pixel."""

    num_classes = 2

    def forward(self, images):
        m = images.flatten(1).mean(1, keepdim=True)
        return torch.cat([0.5 - m, m - 0.5], dim=1) * 50


def test_stable_diffusion_layout_clip_text_encoder_and_unet_with_hidden_states():
    """A tiny random CLIPTextModel (whose forward takes input_ids, not inputs_embeds) feeding its whole last
    hidden state [L, H] to a tiny UNet2DConditionModel as encoder_hidden_states, DDIM with η = 1 (random
    steps from the generator's keyed stream): the certificate is reproducible and its record complete."""
    diffusers = pytest.importorskip("diffusers")
    config = transformers.CLIPTextConfig(vocab_size=20, hidden_size=12, intermediate_size=24, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=8, eos_token_id=19,
                                         bos_token_id=18, pad_token_id=19)
    torch.manual_seed(0)
    clip = transformers.CLIPTextModel(config).eval()
    prompt = [18, 3, 4, 5, 6, 7, 8, 19]
    gen = DiffusersGenerator(tiny_unet(12), diffusers.DDIMScheduler(num_train_timesteps=100), cond_shape=(8, 12),
                             num_steps=3, eta=1.0)
    smoother = PromptContentSmoother(clip, gen, Brightness(), TokenAblation(2, 0), conditioning="hidden", batch_size=16,
                                     mask=[False] + [True] * 6 + [False])
    assert not smoother._feeds_embeds
    with torch.no_grad():
        expected = clip(input_ids=torch.tensor([prompt])).last_hidden_state
    torch.testing.assert_close(smoother.encode(torch.tensor([prompt])), expected)
    cert = smoother.certify(prompt, n0=8, n=24, seed=0)
    assert cert.perturbed == 6 and cert.samples in (24, 8) and cert.n == 24
    assert cert.to_record() == smoother.certify(prompt, n0=8, n=24, seed=0).to_record()
    record = cert.to_record()
    for key in ("prediction", "certified_edits", "p_lower", "mask", "statement", "delta_exact", "keep"):
        assert key in record
    images = smoother.samples(prompt, 4, seed=0)
    assert images.shape == (4, 1, 8, 8) and bool(((images >= 0) & (images <= 1)).all())


def test_text_digits_layout_pooled_sentence_embedding_through_the_class_projection(bert):
    """The embedded text-to-digit model's layout with tiny random parts: a BERT encoder's normalized
    mean-pooled embedding [H] reaching a UNet both as a one-token encoder_hidden_states and through the
    "projection" class embedding (`text_digits.conditioning_kwargs`)."""
    diffusers = pytest.importorskip("diffusers")
    from smoothgen.models import text_digits

    unet = tiny_unet(16, class_embed_type="projection", projection_class_embeddings_input_dim=16)
    gen = DiffusersGenerator(unet, diffusers.DDIMScheduler(num_train_timesteps=100), cond_shape=(16,), num_steps=3,
                             condition_on=lambda c: {"encoder_hidden_states": c[:, None, :], "class_labels": c})
    smoother = PromptContentSmoother(bert, gen, Brightness(), TokenAblation(1, 0), normalize=True, batch_size=16)
    cond = smoother.encode(torch.tensor([[2, 5, 3, 6]]))
    assert cond.shape == (1, 16) and float(cond.detach().norm()) == pytest.approx(1.0, abs=1e-5)
    cert = smoother.certify([2, 5, 3, 6], n0=8, n=24, seed=0)
    assert cert.n == 24 and cert.keep == 1
    assert text_digits.conditioning_kwargs(cond)["class_labels"].shape == (1, 16)


# --------------------------------------------------------------------------------------------------
# The command line: smoothgen generate --text PROMPT --noise ablate
# --------------------------------------------------------------------------------------------------


def test_cli_text_ablate_prints_which_edits_are_covered(tmp_path, capsys):
    """The embedded text-to-digit model smoothed over its prompt's tokens: the record holds the certificate
    (its words say which positions may be edited and which are protected) and every rewording with its token
    edit distance, covered exactly when it is a substitution of at most certified_edits perturbed tokens."""
    pytest.importorskip("diffusers")
    from smoothgen.cli import main as cli_main

    png, out = tmp_path / "t.png", tmp_path / "t.json"
    argv = ["generate", "--text", "a handwritten image of the digit seven", "--noise", "ablate", "--protect", "seven",
            "--keep", "1", "--samples", "40", "--selection-samples", "10", "--steps", "3", "--no-progress",
            "--png", str(png), "--out", str(out)]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import json

    record = json.loads(out.read_text())
    cert = record["content_certificate"]
    assert record["noise"] == "ablate" and cert["keep"] == 1 and cert["n"] == 40 and cert["edits"] == 1
    assert record["encoder"].endswith("minilm_ablation adapter")  # the default: the encoder trained for ablation
    assert cert["protected"] == [8] and cert["special"] == [0, 9] and cert["tokens"][8] == "seven"
    assert cert["mask"] == [False] + [True] * 7 + [False, False]
    from smoothgen.models import text_digits
    from smoothgen.prompt_content import tokenize

    tokenizer = text_digits.load_text_tokenizer()
    assert len(record["variants"]) > 20
    for v in record["variants"]:  # recomputed here from the tokens: covered iff a substitution of at most r*
        ids = tokenize(tokenizer, v["text"])[0]  # perturbed positions (seven, [CLS] and [SEP] are held fixed)
        same_count = len(ids) == len(cert["prompt_ids"])
        differ = [i for i, (a, b) in enumerate(zip(ids, cert["prompt_ids"])) if a != b] if same_count else None
        expected = (cert["prediction"] != -1 and same_count and len(differ) <= cert["certified_edits"]
                    and all(cert["mask"][i] for i in differ))
        assert v["covered"] == expected, v
        if not same_count:
            assert v["substitutions"] is None and "changes the token count" in v["reason"]
    assert record["covered_variants"] == sum(v["covered"] for v in record["variants"])
    assert cert["statement"] in printed and "insertions and deletions change the token count" in printed


@pytest.mark.parametrize(("argv", "message"), [
    (["--keep", "1"], "--keep applies with --text --noise ablate"),
    (["--protect", "seven"], "--protect applies with --text --noise ablate"),
    (["--encoder", "stock"], "--encoder applies with --text --noise ablate"),
    (["--noise", "ablate", "--sigma", "0.1"], "--sigma applies to Gaussian noise"),
    (["--noise", "ablate", "--protect", "eight"], "does not occur"),
    (["--noise", "ablate", "--protect", "pos:x"], "pos:"),
    (["--noise", "ablate", "--protect", "pos:99"], "outside the prompt"),
    (["--noise", "ablate", "--protect", "pos:1,2,3,4"], "nothing is left"),
    (["--noise", "ablate", "--edits", "-1"], "--edits"),
    (["--noise", "ablate", "--keep", "0"], "--keep"),
    (["--noise", "ablate", "--keep", "4"], "keep = 4 must be below the 4 perturbed positions"),
    (["--noise", "ablate", "--perturb", "all"], "--perturb applies to text generation"),
])
def test_cli_text_ablate_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    from smoothgen.cli import main as cli_main

    png = tmp_path / "t.png"
    assert cli_main(["generate", "--text", "a handwritten seven", *argv, "--png", str(png), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_cli_unknown_encoder_is_argparse_one_line_exit_2(capsys):
    from smoothgen.cli import main as cli_main

    with pytest.raises(SystemExit) as stop:
        cli_main(["generate", "--text", "a handwritten seven", "--noise", "ablate", "--encoder", "bogus"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and "invalid choice: 'bogus'" in err, err


def test_cli_protect_is_refused_for_language_models(capsys):
    from smoothgen.cli import main as cli_main

    assert cli_main(["generate", "--protect", "x", "--max-new-tokens", "1"]) == 2
    assert "--protect applies with --text --noise ablate" in capsys.readouterr().err


def test_the_benchmark_summary_counts_what_its_records_hold():
    """benchmarks/prompt_content.py --summary: the RESULTS.md tables are computed from the records, per setting."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        import prompt_content as bench
    finally:
        sys.path.pop(0)

    def record(correct, edits, p_lower, smoothed, rewordings):
        return {"encoder": "ablation", "protect_digit": True, "redundancy": 2, "keep": 1, "correct": correct,
                "certified_edits": edits, "p_lower": p_lower, "smoothed_correct": smoothed, "smoothed_copies": 10,
                "unsmoothed_accuracy": 1.0, "stock_unsmoothed_accuracy": 0.8, "rewordings": rewordings}

    row = lambda covered, injected, unsmoothed, smoothed: {  # noqa: E731
        "covered": covered, "injected": injected, "keeps_unsmoothed": unsmoothed, "keeps_smoothed": smoothed}
    records = [record(True, 3, 0.9, 9, [row(True, False, True, True), row(True, True, False, True)]),
               record(True, 0, 0.6, 7, [row(False, True, False, False)]),
               record(False, -1, 0.2, 2, []),
               {"encoder": "ablation", "protect_digit": True, "redundancy": 2, "keep": 1, "error": "too short"}]
    tables = bench.summary(records)
    first, second = [line for line in tables.splitlines() if line.startswith("| ablation")]
    assert first == ("| ablation | yes | 2 | 1 | 4 | 2/3 (67 %) | 1/3 (33 %) | 0.600 | 0 | 0.600 | 1.000 | 0.800 "
                     "| 0.750 |")
    assert second == ("| ablation | yes | 2 | 1 | 1 | 1/1 (100 %) / 1/1 (100 %) | 0 | 0/0 / 0/0 | 1 | 0/1 (0 %) / "
                      "1/1 (100 %) | 1 | 0/1 (0 %) / 0/1 (0 %) |")
