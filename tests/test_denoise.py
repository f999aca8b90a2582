"""Tests of diffusion-purified smoothing (smoothgen.denoise, docs/theory.md §3) and its CLI options."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm

from oracles import LinearBinary
from smoothgen import SmoothedClassifier
from smoothgen.cli import main as cli_main
from smoothgen.denoise import (
    DDS,
    DiffSmooth,
    DiffusionPurifier,
    DiffusersNoiseModel,
    alphas_cumprod,
    select_timestep,
)
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError

# β = 0.1..0.5: ᾱ = 0.9, 0.72, 0.504, 0.3024, 0.1512 and sqrt(1−ᾱ)/sqrt(ᾱ) =
# 0.3333, 0.6236, 0.9921, 1.5188, 2.3693 (computed by hand).
HAND_BETAS = [0.1, 0.2, 0.3, 0.4, 0.5]


class Identity(torch.nn.Module):
    def forward(self, x):
        return x


class OracleNoise(torch.nn.Module):
    """ε_θ that knows the clean image: returns exactly the noise in x_t, computed from the t it is given."""

    def __init__(self, clean: torch.Tensor, betas):
        super().__init__()
        self.clean = clean
        self.betas = torch.as_tensor(betas, dtype=torch.float64)
        self.seen_t = []

    def forward(self, x_t, t):
        self.seen_t.append(t.clone())
        ab = torch.cumprod(1 - self.betas, 0)[t].to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        return (x_t - ab.sqrt() * (2 * self.clean - 1)) / (1 - ab).sqrt()


class ZeroNoise(torch.nn.Module):
    def __init__(self, betas, num_timesteps=None, out_shape=None):
        super().__init__()
        self.betas = torch.tensor(betas, dtype=torch.float64)
        if num_timesteps is not None:
            self.num_timesteps = num_timesteps
        self.out_shape = out_shape

    def forward(self, x_t, t):
        return torch.zeros(self.out_shape if self.out_shape is not None else x_t.shape)


# ------------------------------------------------------------------------------------------- schedule


@pytest.mark.parametrize(
    "sigma, expected", [(0.1, 0), (0.16, 0), (0.17, 1), (0.3, 1), (0.32, 2), (0.49, 2), (0.5, 3), (0.75, 3), (1.0, 4), (1.18, 4)]
)
def test_t_star_matches_the_hand_computed_schedule(sigma, expected):
    alpha_bar = alphas_cumprod(HAND_BETAS)
    np.testing.assert_allclose(alpha_bar.numpy(), [0.9, 0.72, 0.504, 0.3024, 0.1512], rtol=1e-12)
    assert select_timestep(alpha_bar, sigma) == expected
    assert DiffusionPurifier(ZeroNoise(HAND_BETAS), sigma).t_star == expected


def test_t_star_of_the_standard_linear_schedule_against_a_plain_loop():
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    for sigma in (0.12, 0.25, 0.5, 1.0):
        product, expected = 1.0, None
        for t, beta in enumerate(betas):
            product *= 1.0 - beta
            if math.sqrt(1.0 - product) / math.sqrt(product) >= 2 * sigma:
                expected = t
                break
        purifier = DiffusionPurifier(ZeroNoise(betas), sigma)
        assert purifier.t_star == expected
        assert purifier.sqrt_alpha_bar == pytest.approx(math.sqrt(math.prod(1 - b for b in betas[: expected + 1])), rel=1e-12)


def test_sigma_too_large_for_the_schedule_is_rejected():
    with pytest.raises(InvalidParameterError, match="too large"):
        DiffusionPurifier(ZeroNoise(HAND_BETAS), 1.2)  # needs ratio 2.4 > 2.3693


@pytest.mark.parametrize(
    "betas", [[], [[0.1, 0.2]], [0.1, 0.0], [0.1, 1.0], [0.1, float("nan")], [0.1, -0.2], "abc"], ids=repr
)
def test_bad_schedules_are_rejected(betas):
    with pytest.raises(InvalidParameterError):
        DiffusionPurifier(ZeroNoise([0.1]), 0.1, betas=betas)


def test_schedule_length_must_match_the_model():
    with pytest.raises(InvalidParameterError, match="5 timesteps but its schedule has 4"):
        DiffusionPurifier(ZeroNoise(HAND_BETAS[:4], num_timesteps=5), 0.25)
    with pytest.raises(InvalidParameterError, match="3 timesteps"):
        DiffusionPurifier(ZeroNoise(HAND_BETAS), 0.25, num_timesteps=3)


def test_a_model_without_betas_needs_them_passed():
    with pytest.raises(InvalidParameterError, match="betas"):
        DiffusionPurifier(Identity(), 0.25)
    assert DiffusionPurifier(lambda x_t, t: torch.zeros_like(x_t), 0.25, betas=HAND_BETAS).t_star == 1


# ------------------------------------------------------------------------------------------- one-shot


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5, 1.0])
def test_oracle_noise_recovers_the_clean_image_exactly(sigma):
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    clean = torch.rand(16, 1, 8, 8, generator=gen)
    noisy = clean + sigma * torch.randn(clean.shape, generator=gen)
    oracle = OracleNoise(clean, betas)
    purifier = DiffusionPurifier(oracle, sigma)
    restored = purifier(noisy)
    torch.testing.assert_close(restored, clean, rtol=0, atol=2e-6)
    assert torch.equal(oracle.seen_t[0], torch.full((16,), purifier.t_star))
    # Without the oracle the error is of the order of the noise: the test is not trivially satisfied.
    assert float((noisy.clamp(0, 1) - clean).abs().max()) > 0.1


def test_zero_noise_prediction_gives_the_clipped_noisy_input():
    purifier = DiffusionPurifier(ZeroNoise(HAND_BETAS), 0.25)
    x = torch.tensor([-0.7, 0.0, 0.3, 1.0, 1.8]).reshape(1, 5)
    torch.testing.assert_close(purifier(x), x.clamp(0, 1), rtol=0, atol=1e-6)


def test_wrong_shapes_give_clear_errors():
    from smoothgen.models.ddpm import DigitsDDPM

    purifier = DiffusionPurifier(DigitsDDPM(hidden=8, num_blocks=1, embed_dim=4), 0.25)
    assert purifier(torch.rand(3, 1, 8, 8)).shape == (3, 1, 8, 8)
    with pytest.raises(InvalidInputError, match=r"\(1, 8, 8\)"):
        purifier(torch.rand(3, 1, 7, 7))
    with pytest.raises(InvalidInputError):
        purifier(torch.rand(1, 8, 8))  # one image without its batch dimension
    with pytest.raises(InvalidInputError):
        purifier(torch.zeros(3, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(ModelOutputError, match="shape"):
        DiffusionPurifier(ZeroNoise(HAND_BETAS, out_shape=(2, 3)), 0.25)(torch.rand(4, 3))
    with pytest.raises(ModelOutputError, match="failed"):
        DiffusionPurifier(lambda x_t, t: x_t @ torch.ones(5, 5), 0.25, betas=HAND_BETAS)(torch.rand(4, 3))


def test_diffusers_style_outputs_are_unwrapped():
    class Out:
        def __init__(self, sample):
            self.sample = sample

    class Unet(torch.nn.Module):
        def forward(self, x_t, t):
            return Out(torch.zeros_like(x_t))

    class Config:
        num_train_timesteps = 5
        prediction_type = "epsilon"

    class Scheduler:
        config = Config()
        betas = torch.tensor(HAND_BETAS)

    model = DiffusersNoiseModel(Unet(), Scheduler())
    purifier = DiffusionPurifier(model, 0.25)
    assert purifier.t_star == 1
    x = torch.rand(2, 3)
    torch.testing.assert_close(purifier(x), x, rtol=0, atol=1e-6)
    Scheduler.config.prediction_type = "v_prediction"
    with pytest.raises(InvalidParameterError, match="epsilon"):
        DiffusersNoiseModel(Unet(), Scheduler())


# ------------------------------------------------------------------------------------ DDS, DiffSmooth


class IdentityPurifier(Identity):
    pass


def test_linear_oracle_soundness_dds_and_diffsmooth():
    """Around a linear classifier with an identity purifier, DDS is the linear classifier and DiffSmooth's
    smoothed classifier is still sign(w·x + b) (its vote probability is an increasing function of the
    margin, 1/2 at 0): the exact robust radius is |w·x+b|/‖w‖ for both. Radii above it may occur in at
    most about an alpha fraction of runs, as in test_classify's oracle test."""
    model = LinearBinary(torch.tensor([1.0, 2.0, -2.0]), 0.3)
    x = torch.tensor([0.2, 0.1, -0.1])
    exact = model.exact_radius(x)
    sigma, alpha, n0, n, runs = 0.5, 0.1, 50, 500, 400
    for base in (DDS(IdentityPurifier(), model), DiffSmooth(IdentityPurifier(), model, 5, 0.25, seed=0)):
        smoothed = SmoothedClassifier(base, 2, sigma, batch_size=550)
        exceed = certified = 0
        for seed in range(runs):
            if isinstance(base, DiffSmooth):
                base.reseed(seed)
            cert = smoothed.certify(x, n0, n, alpha, seed=seed)
            certified += not cert.abstained
            exceed += (not cert.abstained) and cert.radius > exact
        assert certified > runs // 2, type(base).__name__
        assert binom.sf(exceed - 1, runs, alpha) > 1e-3, f"{type(base).__name__}: {exceed}/{runs} radii exceed the exact radius"


def test_diffsmooth_local_noise_has_sigma_prime_and_is_independent_of_the_smoothing_noise():
    """With m = 1 and an identity purifier around a linear classifier, f(x+δ) = [w·(x+δ+ε') + b > 0], so
    pA = Φ(|w·x+b| / (‖w‖·sqrt(σ² + σ'²))) exactly. A wrong σ' (or noise correlated with δ) moves it."""
    model = LinearBinary(torch.tensor([0.6, 0.8]), 0.0)
    x = torch.tensor([0.5, 0.0])  # margin 0.3
    sigma, local_sigma, n = 0.25, 0.5, 40_000
    base = DiffSmooth(IdentityPurifier(), model, local_samples=1, local_sigma=local_sigma, seed=3)
    cert = SmoothedClassifier(base, 2, sigma, batch_size=n).certify(x, 100, n, 0.001, seed=1)
    expected = norm.cdf(0.3 / math.hypot(sigma, local_sigma))
    assert cert.prediction == 1
    assert cert.count / n == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / n))
    # DDS around the same classifier is the classifier itself: pA = Φ(0.3 / σ).
    cert = SmoothedClassifier(DDS(IdentityPurifier(), model), 2, sigma, batch_size=n).certify(x, 100, n, 0.001, seed=1)
    assert cert.count / n == pytest.approx(norm.cdf(0.3 / sigma), abs=0.01)


class Recorder(torch.nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.seen = []
        self.num_classes = num_classes

    def forward(self, x):
        self.seen.append(x.clone())
        return x.reshape(x.shape[0], -1)[:, : self.num_classes]


def test_diffsmooth_runs_b_times_m_copies_as_one_batch_and_averages_probabilities():
    recorder = Recorder()
    base = DiffSmooth(IdentityPurifier(), recorder, local_samples=4, local_sigma=0.3, seed=0)
    x = torch.arange(2 * 3, dtype=torch.float32).reshape(2, 3)
    out = base(x)
    assert len(recorder.seen) == 1 and recorder.seen[0].shape == (8, 3)
    copies = recorder.seen[0].reshape(4, 2, 3)  # [m, b, ...]
    assert torch.unique(copies.reshape(8, 3), dim=0).shape[0] == 8  # every local copy has its own noise
    expected = torch.log(torch.softmax(copies, dim=2).mean(dim=0))
    torch.testing.assert_close(out, expected)
    np.testing.assert_allclose(float((copies - x).std()), 0.3, rtol=0.6)  # 24 draws: loose, scale only


def test_diffsmooth_output_stays_finite_when_a_probability_underflows():
    class Extreme(torch.nn.Module):
        def forward(self, x):
            return torch.stack([torch.zeros(x.shape[0]), torch.full((x.shape[0],), 1e4)], dim=1)

    out = DiffSmooth(IdentityPurifier(), Extreme(), 3, 0.1, seed=0)(torch.zeros(5, 2))
    assert bool(torch.isfinite(out).all()) and bool((out.argmax(dim=1) == 1).all())


def test_diffsmooth_determinism_with_a_seed():
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    clf = Recorder(num_classes=10)
    a = DiffSmooth(IdentityPurifier(), clf, 5, 0.25, seed=11)
    b = DiffSmooth(IdentityPurifier(), clf, 5, 0.25, seed=11)
    first = a(x)
    torch.testing.assert_close(first, b(x), rtol=0, atol=0)
    assert not torch.equal(a(x), first)  # the stream moves on
    a.reseed(11)
    torch.testing.assert_close(a(x), first, rtol=0, atol=0)  # and restarts
    a.reseed(11, request_id=1)
    assert not torch.equal(a(x), first)
    assert not torch.equal(DiffSmooth(IdentityPurifier(), clf, 5, 0.25, seed=12)(x), first)
    assert not torch.equal(DiffSmooth(IdentityPurifier(), clf, 5, 0.25)(x), DiffSmooth(IdentityPurifier(), clf, 5, 0.25)(x))


def test_seed_request_pairs_that_share_32_bit_words_get_different_local_noise():
    """(s + b·2³², r) and (s, b + r·2³²) are the same list of 32-bit words [s, b, r]: keyed as variable-width
    entries they drew the same local noise. Keyed by the engine's fixed-width words they do not."""
    x = torch.zeros(3, 1, 4, 4)
    clf = Recorder(num_classes=10)
    base = DiffSmooth(IdentityPurifier(), clf, 2, 0.25)
    base.reseed(1 + 2 * 2**32, request_id=3)
    base(x)
    base.reseed(1, request_id=2 + 3 * 2**32)
    base(x)
    base.reseed(1 + 2 * 2**32, request_id=3)
    base(x)
    first, second, again = clf.seen
    assert torch.equal(first, again)
    assert not torch.equal(first, second)
    with pytest.raises(InvalidParameterError):
        base.reseed(1, request_id=2**64)


def test_certificates_are_reproducible_with_seeds():
    from smoothgen.models.ddpm import DigitsDDPM

    torch.manual_seed(0)
    ddpm, clf = DigitsDDPM(hidden=16, num_blocks=1, embed_dim=8), torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(1))

    def certify(local_seed):
        base = DiffSmooth(DiffusionPurifier(ddpm, 0.5), clf, 5, 0.25, seed=local_seed)
        return SmoothedClassifier(base, 10, 0.5, batch_size=64).certify(x, 20, 300, 0.01, seed=0)

    assert certify(1) == certify(1)
    dds = SmoothedClassifier(DDS(DiffusionPurifier(ddpm, 0.5), clf), 10, 0.5, batch_size=64)
    assert dds.certify(x, 20, 300, 0.01, seed=0) == dds.certify(x, 20, 300, 0.01, seed=0)


@pytest.mark.parametrize("kwargs", [{"local_samples": 0}, {"local_samples": 2.5}, {"local_sigma": 0.0},
                                    {"local_sigma": -1.0}, {"local_sigma": float("nan")}, {"seed": -1}])
def test_diffsmooth_rejects_bad_parameters(kwargs):
    with pytest.raises(InvalidParameterError):
        DiffSmooth(IdentityPurifier(), Recorder(), **kwargs)


def test_diffsmooth_rejects_a_classifier_with_the_wrong_batch():
    class Bad(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(1, 3)

    with pytest.raises(ModelOutputError, match="logits"):
        DiffSmooth(IdentityPurifier(), Bad(), 2, 0.1, seed=0)(torch.zeros(4, 3))


# ------------------------------------------------------------------------------------------------ CLI


def _cli(tmp_path, *extra):
    out = tmp_path / "r.jsonl"
    code = cli_main(["certify", "--num", "2", "--n0", "20", "--n", "200", "--out", str(out), "--no-progress", *extra])
    return code, out


@pytest.mark.parametrize("denoiser", ["dds", "diffsmooth"])
def test_cli_certify_with_a_denoiser(tmp_path, capsys, denoiser):
    code, out = _cli(tmp_path, "--denoiser", denoiser, "--sigma", "0.5", "--seed", "3")
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["idx"] for r in records] == [0, 1]
    assert records[0]["denoiser"] == denoiser and "digits_ddpm" in records[0]["model"]
    if denoiser == "diffsmooth":
        assert records[0]["local_samples"] == 5 and records[0]["local_sigma"] == 0.25
        # Its local copies are noisy at sigma' = 0.25: the classifier trained at 0.25 by default.
        assert "digits_cnn_sigma0.25" in records[0]["model"]
    else:
        assert "digits_cnn_sigma0.0" in records[0]["model"]
    # Reproducible per input: certifying input 1 alone gives the same record as in the run of two.
    single = tmp_path / "single.jsonl"
    assert cli_main(["certify", "--start", "1", "--num", "1", "--n0", "20", "--n", "200", "--out", str(single),
                     "--no-progress", "--denoiser", denoiser, "--sigma", "0.5", "--seed", "3"]) == 0
    again = json.loads(single.read_text())
    for key in ("predict", "radius", "count", "p_lower"):
        assert again[key] == records[1][key]


@pytest.mark.parametrize(("extra", "want"), [
    (["--local-sigma", "0.5"], "digits_cnn_sigma0.5"),        # an embedded classifier trained at sigma'
    (["--local-sigma", "0.3"], "digits_cnn_sigma0.0"),        # none trained at 0.3: the clean one
    (["--classifier-sigma", "0"], "digits_cnn_sigma0.0"),     # an explicit choice wins
])
def test_cli_diffsmooth_default_classifier_follows_sigma_prime(tmp_path, capsys, extra, want):
    out = tmp_path / "r.jsonl"
    code = cli_main(["certify", "--num", "1", "--n0", "10", "--n", "20", "--out", str(out), "--no-progress",
                     "--denoiser", "diffsmooth", "--local-samples", "2", "--sigma", "0.5", *extra])
    assert code == 0, capsys.readouterr().err
    assert want in json.loads(out.read_text())["model"]


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_cli_dds_on_onnxruntime_gives_the_eager_certificates(tmp_path, capsys):
    runs = {}
    for backend in ("eager", "onnxruntime"):
        code, out = _cli(tmp_path / backend, "--denoiser", "dds", "--sigma", "0.5", "--backend", backend)
        assert code == 0, capsys.readouterr().err
        runs[backend] = [json.loads(line) for line in out.read_text().splitlines()]
    for eager, onnx in zip(runs["eager"], runs["onnxruntime"]):
        assert onnx["backend"] == "onnxruntime" and eager["backend"] == "eager"
        # Float differences between the runtimes could flip a vote on a boundary: counts agree within 1.
        assert onnx["predict"] == eager["predict"] and abs(onnx["count"] - eager["count"]) <= 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--denoiser", "diffsmooth", "--local-samples", "0"], "--local-samples"),
        (["--denoiser", "diffsmooth", "--local-sigma", "0"], "--local-sigma"),
        (["--denoiser", "diffsmooth", "--local-sigma", "-0.1"], "--local-sigma"),
        (["--denoiser", "dds", "--local-samples", "3"], "--local-samples applies only with --denoiser diffsmooth"),
        (["--local-sigma", "0.2"], "applies only"),
        (["--ddpm", "tests.oracles:wrong_width_factory"], "applies only"),
        (["--denoiser", "dds", "--sigma", "100"], "too large"),
        (["--denoiser", "dds", "--classifier-sigma", "0.3"], "no embedded classifier"),
        (["--denoiser", "dds", "--ddpm", "oracles:wrong_width_factory"], "betas"),
        (["--denoiser", "diffsmooth", "--backend", "onnxruntime"], "eager only"),
        (["--model", "oracles:wrong_width_factory", "--denoiser", "dds", "--classifier-sigma", "0.25"], "cannot be combined"),
    ],
)
def test_cli_denoiser_errors_exit_2_with_one_line(tmp_path, capsys, extra, message):
    code, out = _cli(tmp_path, *extra)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
