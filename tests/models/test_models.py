"""Tests of the embedded digits models: data split, architectures, shipped weights, training script."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from smoothgen.errors import InvalidParameterError
from smoothgen.models import (
    DIGITS_SHAPE,
    NUM_CLASSES,
    WEIGHTS_DIR,
    DigitsAutoencoder,
    DigitsCNN,
    available_classifier_sigmas,
    load_autoencoder,
    load_classifier,
    load_digits_split,
    model_info,
)
from smoothgen.models.train_common import EVAL_NOISE_SEED
from smoothgen.models.train_digits import (
    DEFAULT_SIGMAS,
    autoencoder_mse,
    classifier_accuracy,
    train_autoencoder,
    train_classifier,
)
from smoothgen.models.train_code_lm import DEFAULT_LM_DELETE_PROBS, DEFAULT_LM_GAUSS_SIGMAS, DEFAULT_LM_KEEP_FRACTIONS
from smoothgen.models.train import main

# Minimum clean test accuracy of the shipped classifiers; sigma=1.0 is allowed to be lower.
MIN_CLEAN_ACCURACY = {0.0: 0.95, 0.25: 0.95, 0.5: 0.90, 1.0: 0.80}
MAX_CLEAN_MSE = 0.02
MAX_NOISY_MSE = 0.03
MAX_WEIGHTS_BYTES = 1_000_000
MAX_LM_WEIGHTS_BYTES = 6_000_000  # the byte-level code LM: 0.86 M float32 parameters (3.4 MB); the larger models
MAX_BPE_LM_WEIGHTS_BYTES = 6_500_000  # the BPE code LM: 3.11 M parameters in float16 (6.2 MB)


def _classifier_record(sigma: float) -> dict:
    records = [r for r in model_info()["models"].values() if r["kind"] == "classifier" and r["sigma"] == sigma]
    assert len(records) == 1
    return records[0]


def _autoencoder_record() -> dict:
    records = [r for r in model_info()["models"].values() if r["kind"] == "autoencoder"]
    assert len(records) == 1
    return records[0]


# ----------------------------------------------------------------------------------------------- data


def test_split_sizes_dtypes_and_pixel_range() -> None:
    split = load_digits_split()
    assert split.x_train.shape == (1347, *DIGITS_SHAPE)
    assert split.x_test.shape == (450, *DIGITS_SHAPE)
    assert split.y_train.shape == (1347,) and split.y_test.shape == (450,)
    assert split.x_train.dtype == np.float32 and split.x_test.dtype == np.float32
    assert split.y_train.dtype == np.int64 and split.y_test.dtype == np.int64
    for x in (split.x_train, split.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
        # sklearn's pixels are integers 0..16, scaled by 1/16.
        np.testing.assert_array_equal(x * 16, np.round(x * 16))
    assert set(np.unique(split.y_test)) == set(range(NUM_CLASSES))


def test_split_is_stratified() -> None:
    split = load_digits_split()
    all_counts = np.bincount(np.concatenate([split.y_train, split.y_test]), minlength=NUM_CLASSES)
    test_counts = np.bincount(split.y_test, minlength=NUM_CLASSES)
    expected = all_counts * 450 / all_counts.sum()
    assert np.all(np.abs(test_counts - expected) <= 1.0)


def test_split_is_deterministic_and_the_cache_cannot_be_corrupted() -> None:
    first = load_digits_split()
    second = load_digits_split()
    for a, b in zip(
        (first.x_train, first.y_train, first.x_test, first.y_test),
        (second.x_train, second.y_train, second.x_test, second.y_test),
    ):
        np.testing.assert_array_equal(a, b)
    first.x_test[:] = -1.0
    first.y_test[:] = -1
    third = load_digits_split()
    np.testing.assert_array_equal(third.x_test, second.x_test)
    np.testing.assert_array_equal(third.y_test, second.y_test)
    with pytest.raises(AttributeError):
        third.x_test = third.x_train  # type: ignore[misc]


def test_split_matches_the_documented_sklearn_split() -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    _, x_test, _, y_test = train_test_split(
        digits.data, digits.target, test_size=450, random_state=0, stratify=digits.target
    )
    split = load_digits_split()
    np.testing.assert_array_equal(split.x_test.reshape(450, 64) * 16, x_test)
    np.testing.assert_array_equal(split.y_test, y_test)


# ---------------------------------------------------------------------------------------- architectures


def test_cnn_shapes() -> None:
    x = torch.rand(5, *DIGITS_SHAPE)
    assert DigitsCNN()(x).shape == (5, NUM_CLASSES)
    assert DigitsCNN(num_classes=3)(x).shape == (5, 3)


def test_autoencoder_shapes_and_range() -> None:
    model = DigitsAutoencoder(latent_dim=8)
    # Noisy inputs far outside [0, 1]: the sigmoid still keeps every output pixel in [0, 1].
    x = 3.0 * torch.randn(5, *DIGITS_SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        code = model.encode(x)
        out = model(x)
        decoded = model.decode(code)
    assert code.shape == (5, 8)
    assert out.shape == (5, *DIGITS_SHAPE)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    torch.testing.assert_close(decoded, out, rtol=0, atol=0)


# -------------------------------------------------------------------------------------- shipped models


def test_shipped_models_are_listed_and_their_files_match() -> None:
    assert available_classifier_sigmas() == sorted(DEFAULT_SIGMAS)
    info = model_info()
    # The classifiers, the autoencoder, the DDPM, the code LM and its smoothing-trained fine-tunes, and the
    # text-to-digit diffusers UNet (conditioned on all-MiniLM-L6-v2 embeddings), and the ablation adapter of
    # all-MiniLM-L6-v2.
    num_finetuned_lms = len(DEFAULT_LM_KEEP_FRACTIONS) + len(DEFAULT_LM_GAUSS_SIGMAS) + len(DEFAULT_LM_DELETE_PROBS)
    num_bpe_lms = 2  # code_bpe and code_bpe_delete0.9 (smoothgen.models.train_code_bpe)
    assert len(info["models"]) == len(DEFAULT_SIGMAS) + 5 + num_finetuned_lms + num_bpe_lms
    assert info["models"]["minilm_ablation"]["kind"] == "encoder_adapter"
    for record in info["models"].values():
        path = WEIGHTS_DIR / record["file"]
        assert path.is_file()
        large = record["kind"] in ("lm", "text_ddpm", "encoder_adapter")  # the adapter: 1.4 MB of float16
        limit = MAX_BPE_LM_WEIGHTS_BYTES if "tokenizer_file" in record else MAX_LM_WEIGHTS_BYTES if large else MAX_WEIGHTS_BYTES
        assert path.stat().st_size < limit
        assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"]
    # model_info hands out copies: changing one does not change what the loaders see.
    info["models"].clear()
    assert model_info()["models"]


@pytest.mark.parametrize("sigma", DEFAULT_SIGMAS)
def test_shipped_classifier_accuracy_matches_metadata(sigma: float) -> None:
    record = _classifier_record(sigma)
    model = load_classifier(sigma)
    assert isinstance(model, DigitsCNN)
    assert not model.training
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    assert record["architecture"] == "DigitsCNN" and record["kwargs"] == {"num_classes": NUM_CLASSES}
    assert record["seed"] == 0 and record["epochs"] >= 1

    split = load_digits_split()
    with torch.no_grad():
        predictions = model(torch.from_numpy(split.x_test)).argmax(dim=1).numpy()
    clean_accuracy = float(np.mean(predictions == split.y_test))
    assert clean_accuracy == pytest.approx(record["clean_test_accuracy"], abs=1e-6)
    assert clean_accuracy >= MIN_CLEAN_ACCURACY[sigma]

    noisy = classifier_accuracy(model, split.x_test, split.y_test, sigma=sigma, seed=record["eval_noise_seed"])
    assert noisy == pytest.approx(record["noisy_test_accuracy"], abs=1e-6)


def test_shipped_autoencoder_range_and_mse() -> None:
    record = _autoencoder_record()
    model = load_autoencoder()
    assert isinstance(model, DigitsAutoencoder)
    assert not model.training
    split = load_digits_split()
    x = torch.from_numpy(split.x_test)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        clean_out = model(x)
        noisy_out = model(x + 0.25 * noise)
    for out in (clean_out, noisy_out):
        assert out.shape == x.shape
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0

    clean_mse = float(torch.mean((clean_out.double() - x.double()) ** 2))
    assert clean_mse == pytest.approx(record["clean_test_mse"], abs=1e-6)
    assert clean_mse < MAX_CLEAN_MSE
    assert float(torch.mean((noisy_out.double() - x.double()) ** 2)) < MAX_NOISY_MSE
    noisy_mse = autoencoder_mse(model, split.x_test, sigma=record["noisy_test_sigma"], seed=EVAL_NOISE_SEED)
    assert noisy_mse == pytest.approx(record["noisy_test_mse"], abs=1e-6)


def test_loaders_return_independent_models() -> None:
    first, second = load_classifier(0.25), load_classifier(0.25)
    with torch.no_grad():
        next(first.parameters()).zero_()
    assert not torch.equal(next(first.parameters()), next(second.parameters()))


def test_unknown_sigma_is_rejected_with_the_available_ones() -> None:
    with pytest.raises(InvalidParameterError, match=r"0\.25.*0\.5.*1\.0"):
        load_classifier(0.3)
    with pytest.raises(InvalidParameterError):
        load_classifier(-1.0)
    with pytest.raises(InvalidParameterError):
        load_classifier("0.25")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- compiled variants


def _inputs(batch: int, sigma: float, seed: int) -> torch.Tensor:
    x = torch.from_numpy(load_digits_split().x_test[:batch])
    return x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


# TorchScript still works in torch 2.x but warns that it is deprecated; the check stays because
# deployments that load scripted models (C++ runtimes) exist.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("loader", [lambda: load_classifier(0.25), load_autoencoder], ids=["cnn", "autoencoder"])
def test_torchscript_and_export_match_eager(loader) -> None:
    model = loader()
    x = _inputs(32, 0.25, seed=2)
    x_other_batch = _inputs(7, 0.25, seed=3)
    with torch.no_grad():
        expected = model(x)
        expected_other = model(x_other_batch)

    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), expected, rtol=1e-5, atol=1e-6)

    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: batch},)).module()
    with torch.no_grad():
        torch.testing.assert_close(exported(x), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(exported(x_other_batch), expected_other, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------------- training


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


def _differs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return any(not torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_classifier_training_is_deterministic_and_leaves_global_state_alone() -> None:
    rng_before = torch.random.get_rng_state()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    model_a, metrics_a = train_classifier(0.5, epochs=1, seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert torch.are_deterministic_algorithms_enabled() == deterministic_before

    model_b, metrics_b = train_classifier(0.5, epochs=1, seed=0)
    _assert_same_state(model_a, model_b)
    assert metrics_a == metrics_b
    assert metrics_a["epochs"] == 1 and metrics_a["sigma"] == 0.5
    assert 0.0 <= metrics_a["clean_test_accuracy"] <= 1.0

    model_c, _ = train_classifier(0.5, epochs=1, seed=1)
    assert _differs(model_a, model_c)


def test_sigma_zero_trains_a_clean_classifier() -> None:
    model_a, metrics_a = train_classifier(0.0, epochs=1, seed=0)
    model_b, metrics_b = train_classifier(0.0, epochs=1, seed=0)
    _assert_same_state(model_a, model_b)
    assert metrics_a == metrics_b and metrics_a["sigma"] == 0.0
    # No noise anywhere: the "noisy" test accuracy is the clean one, and training differs from sigma > 0.
    assert metrics_a["noisy_test_accuracy"] == metrics_a["clean_test_accuracy"]
    assert _differs(model_a, train_classifier(0.25, epochs=1, seed=0)[0])


def test_autoencoder_training_is_deterministic() -> None:
    model_a, metrics_a = train_autoencoder(epochs=1, seed=0)
    model_b, metrics_b = train_autoencoder(epochs=1, seed=0)
    _assert_same_state(model_a, model_b)
    assert metrics_a == metrics_b
    model_c, _ = train_autoencoder(epochs=1, seed=1)
    assert _differs(model_a, model_c)


@pytest.mark.parametrize(
    "kwargs", [{"sigma": float("nan")}, {"sigma": -0.5}, {"sigma": 0.5, "epochs": 0}, {"sigma": 0.5, "seed": -1}]
)
def test_training_rejects_invalid_parameters(kwargs: dict) -> None:
    with pytest.raises(InvalidParameterError):
        train_classifier(**kwargs)


def test_train_command_writes_weights_and_metadata(tmp_path) -> None:
    threads = torch.get_num_threads()
    try:
        # The current thread count, so that the command trains exactly as train_classifier does here.
        argv = ["classifier", "--sigma", "0.5", "--epochs", "1", "--out", str(tmp_path), "--threads", str(threads)]
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    metadata = json.loads((tmp_path / "models.json").read_text(encoding="utf-8"))
    assert list(metadata["models"]) == ["digits_cnn_sigma0.5"]
    record = metadata["models"]["digits_cnn_sigma0.5"]
    assert record["file"] == "digits_cnn_sigma0.5.safetensors"
    assert (tmp_path / record["file"]).stat().st_size < MAX_WEIGHTS_BYTES

    _, metrics = train_classifier(0.5, epochs=1, seed=0)
    assert record["clean_test_accuracy"] == metrics["clean_test_accuracy"]
    assert record["noisy_test_accuracy"] == metrics["noisy_test_accuracy"]


def test_train_command_help_and_usage_errors(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "Gaussian noise" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["autoencoder", "--sigma", "0.5"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["ddpm", "--sigma", "0.5"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["classifier", "--sigma", "-0.5"])
    assert exit_info.value.code == 2
