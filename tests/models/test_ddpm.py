"""Tests of the embedded digits DDPM: architecture, shipped weights and metrics, training, sampling."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from smoothgen.denoise import DDS, DiffusionPurifier
from smoothgen.errors import InvalidParameterError
from smoothgen.models import WEIGHTS_DIR, DigitsDDPM, load_classifier, load_ddpm, load_digits_split, model_info
from smoothgen.models.ddpm import linear_betas, sample
from smoothgen.models.train_common import EVAL_NOISE_SEED
from smoothgen.models.train_ddpm import DDPM_EVAL_SIGMAS, DDPM_KWARGS, ddpm_denoise_mse, ddpm_noise_mse, train_ddpm
from smoothgen.models.train import main

# Floors for the shipped model (its recorded values are well above them; see models.json / RESULTS.md).
MAX_DENOISE_MSE = {0.25: 0.02, 0.5: 0.045}
MIN_DDS_ACCURACY = {0.25: 0.85, 0.5: 0.6}


def _record() -> dict:
    records = [r for r in model_info()["models"].values() if r["kind"] == "ddpm"]
    assert len(records) == 1
    return records[0]


def _tiny(**kwargs) -> DigitsDDPM:
    return DigitsDDPM(**{"hidden": 16, "num_blocks": 1, "embed_dim": 8, "num_timesteps": 20, **kwargs})


def test_architecture_shapes_and_null_class() -> None:
    torch.manual_seed(0)
    model = _tiny()
    x, t = torch.randn(5, 1, 8, 8), torch.arange(5)
    with torch.no_grad():
        out = model(x, t, torch.tensor([0, 1, 2, 3, 10]))
        unconditional = model(x, t)
        explicit_null = model(x, t, torch.full((5,), model.null_class))
    assert out.shape == (5, 1, 8, 8)
    torch.testing.assert_close(unconditional, explicit_null, rtol=0, atol=0)
    assert model.null_class == 10 and model.num_timesteps == 20 and model.sample_shape == (1, 8, 8)
    assert model.betas.dtype == torch.float64 and model.betas.shape == (20,)
    with pytest.raises(ValueError):
        DigitsDDPM(embed_dim=7)


def test_shipped_ddpm_loads_with_its_schedule() -> None:
    record = _record()
    model = load_ddpm()
    assert isinstance(model, DigitsDDPM) and not model.training
    assert record["kwargs"] == DDPM_KWARGS and record["seed"] == 0
    torch.testing.assert_close(model.betas, linear_betas(1000, 1e-4, 0.02), rtol=0, atol=0)
    assert sum(p.numel() for p in model.parameters()) == record["num_parameters"]
    assert (WEIGHTS_DIR / record["file"]).stat().st_size < 1_000_000


def test_shipped_ddpm_metrics_match_the_record_and_purification_helps() -> None:
    record = _record()
    model = load_ddpm()
    split = load_digits_split()
    assert ddpm_noise_mse(model, split.x_test, split.y_test) == pytest.approx(record["test_noise_mse_conditional"], abs=1e-6)
    assert ddpm_noise_mse(model, split.x_test) == pytest.approx(record["test_noise_mse_unconditional"], abs=1e-6)
    x = torch.from_numpy(split.x_test)
    for sigma in DDPM_EVAL_SIGMAS:
        mse = ddpm_denoise_mse(model, split.x_test, sigma)
        assert mse == pytest.approx(record["denoise_test_mse_by_sigma"][str(sigma)], abs=1e-6)
        assert DiffusionPurifier(model, sigma).t_star == record["denoise_t_star_by_sigma"][str(sigma)]
        # Better than just clipping the noisy input to [0, 1].
        noisy = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(EVAL_NOISE_SEED))
        assert mse < 0.5 * float(torch.mean((noisy.clamp(0, 1) - x) ** 2))
        if sigma in MAX_DENOISE_MSE:
            assert mse < MAX_DENOISE_MSE[sigma]


@pytest.mark.parametrize("sigma", sorted(MIN_DDS_ACCURACY))
def test_dds_with_the_clean_classifier_classifies_noisy_digits(sigma: float) -> None:
    split = load_digits_split()
    x, y = torch.from_numpy(split.x_test), torch.from_numpy(split.y_test)
    noisy = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    dds = DDS(DiffusionPurifier(load_ddpm(), sigma), load_classifier(0.0))
    with torch.no_grad():
        accuracy = float((dds(noisy).argmax(dim=1) == y).float().mean())
        clean_only = float((load_classifier(0.0)(noisy).argmax(dim=1) == y).float().mean())
    assert accuracy >= MIN_DDS_ACCURACY[sigma]
    assert accuracy > clean_only  # the purifier is what makes the clean classifier usable under noise


@pytest.mark.slow  # 1000 sequential denoising steps
def test_shipped_ddpm_generates_recognisable_digits() -> None:
    labels = torch.arange(10).repeat_interleave(3)
    images = sample(load_ddpm(), labels, torch.Generator().manual_seed(0))
    assert images.shape == (30, 1, 8, 8)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    with torch.no_grad():
        accuracy = float((load_classifier(0.0)(images).argmax(dim=1) == labels).float().mean())
    assert accuracy >= 0.7  # the full proxy (100 per class) is in benchmarks/RESULTS.md


def test_sampling_is_deterministic_and_guidance_changes_it() -> None:
    torch.manual_seed(0)
    model = _tiny().eval()
    labels = torch.tensor([0, 3, 10])
    a = sample(model, labels, torch.Generator().manual_seed(1))
    b = sample(model, labels, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    guided = sample(model, labels, torch.Generator().manual_seed(1), guidance=2.0)
    assert guided.shape == a.shape and not torch.equal(guided, a)
    assert not torch.equal(sample(model, labels, torch.Generator().manual_seed(2)), a)


def test_ddpm_training_is_deterministic_and_leaves_global_state_alone() -> None:
    rng_before = torch.random.get_rng_state()
    model_a, metrics_a = train_ddpm(epochs=1, seed=0, hidden=32)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    model_b, metrics_b = train_ddpm(epochs=1, seed=0, hidden=32)
    for key, value in model_a.state_dict().items():
        assert torch.equal(value, model_b.state_dict()[key]), key
    assert metrics_a == metrics_b
    assert metrics_a["kind"] == "ddpm" and metrics_a["kwargs"]["hidden"] == 32
    model_c, _ = train_ddpm(epochs=1, seed=1, hidden=32)
    assert any(not torch.equal(v, model_c.state_dict()[k]) for k, v in model_a.state_dict().items())


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"seed": -1}, {"p_uncond": 1.5}, {"p_uncond": -0.1}, {"width": 3}])
def test_ddpm_training_rejects_invalid_parameters(kwargs: dict) -> None:
    with pytest.raises(InvalidParameterError):
        train_ddpm(**kwargs)


def test_train_command_writes_the_ddpm(tmp_path) -> None:
    threads = torch.get_num_threads()
    try:
        assert main(["ddpm", "--epochs", "1", "--out", str(tmp_path), "--threads", str(threads)]) == 0
    finally:
        torch.set_num_threads(threads)
    metadata = json.loads((tmp_path / "models.json").read_text(encoding="utf-8"))
    record = metadata["models"]["digits_ddpm"]
    assert record["kind"] == "ddpm" and record["file"] == "digits_ddpm.safetensors"
    assert np.isfinite(record["final_train_loss"])
