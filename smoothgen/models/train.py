"""Train the embedded digits models and record their test metrics in `weights/models.json`.

Usage::

    python -m smoothgen.models.train all                      # everything shipped in weights/
    python -m smoothgen.models.train classifier --sigma 0.5   # one classifier
    python -m smoothgen.models.train classifier --sigma 0     # the clean classifier (no noise augmentation)
    python -m smoothgen.models.train autoencoder --epochs 50 --out /tmp/weights
    python -m smoothgen.models.train ddpm                     # the class-conditional digits DDPM

Training is deterministic: the seed fixes the initial weights, the shuffling and every noise draw, and
deterministic algorithms are enforced, so the same command on the same software stack reproduces the
weights bit for bit. The training functions are importable (`train_classifier`, `train_autoencoder`, `train_ddpm`)
and restore the caller's global RNG and determinism settings when they return.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from smoothgen.errors import InvalidParameterError
from smoothgen.models import METADATA_FILENAME, WEIGHTS_DIR
from smoothgen.models.architectures import DigitsAutoencoder, DigitsCNN
from smoothgen.models.ddpm import DigitsDDPM
from smoothgen.models.data import NUM_CLASSES, SPLIT_SEED, TEST_SIZE, load_digits_split
from smoothgen.validate import check_count, check_positive

AUTOENCODER_NAME = "digits_autoencoder"
AUTOENCODER_FILENAME = f"{AUTOENCODER_NAME}.safetensors"
METADATA_FORMAT_VERSION = 1

DEFAULT_SIGMAS: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
"""Noise levels of the shipped classifiers; 0.0 is the clean classifier behind the DDPM purifier (DDS, DiffSmooth)."""

DEFAULT_SEED = 0
DEFAULT_CLASSIFIER_EPOCHS = 150
DEFAULT_AUTOENCODER_EPOCHS = 300
BATCH_SIZE = 64
LEARNING_RATE = 1e-3

AUTOENCODER_LATENT_DIM = 16
AUTOENCODER_NOISE_SIGMAS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)
"""Noise levels the autoencoder is trained on, one drawn per batch, so it behaves under smoothing noise."""

EVAL_NOISE_SEED = 1234
"""Seed of the single noise draw per test image behind the noisy test metrics (independent of training)."""

DDPM_NAME = "digits_ddpm"
DDPM_FILENAME = f"{DDPM_NAME}.safetensors"
DEFAULT_DDPM_EPOCHS = 1500
DDPM_BATCH_SIZE = 128
DDPM_KWARGS: dict[str, Any] = {"hidden": 128, "num_blocks": 4, "embed_dim": 64, "num_classes": NUM_CLASSES,
                               "num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
DDPM_P_UNCOND = 0.2
"""Classifier-free-guidance dropout: the probability that a training image's label is replaced by the
null class. Higher than the usual 0.1 because unconditional purification is the model's main use here."""
DDPM_EVAL_SIGMAS: tuple[float, ...] = (0.25, 0.5, 1.0)
"""Smoothing noise levels at which the one-shot denoising error on the test split is recorded."""


def classifier_filename(sigma: float) -> str:
    """Return the weights file name of the classifier trained at noise level sigma.

    Args:
        sigma: Training noise level.

    Returns:
        For example ``"digits_cnn_sigma0.25.safetensors"``.
    """
    return f"digits_cnn_sigma{float(sigma)}.safetensors"


def classifier_name(sigma: float) -> str:
    """Return the key of the classifier trained at noise level sigma in `models.json`."""
    return f"digits_cnn_sigma{float(sigma)}"


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[torch.Generator]:
    """Seed initialization, enforce deterministic algorithms, and yield a generator for data randomness.

    The global RNG state and the determinism flags are restored on exit, so that training inside a
    test or a notebook does not change the caller's random stream.

    Args:
        seed: The training seed.

    Returns:
        A context manager yielding a CPU `torch.Generator` for shuffling and noise.
    """
    # Two independent streams from one seed: weight initialization (global RNG) and data (generator).
    # Seeding both with `seed` itself would make the init draws and the first noise draws the same stream.
    init_seed, data_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield torch.Generator().manual_seed(data_seed)
        finally:
            torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)


def _noisy(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    # Not clamped to [0, 1]: randomized smoothing certifies exactly x + N(0, sigma^2 I).
    if sigma == 0.0:
        return x
    return x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)


def _num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def classifier_accuracy(
    model: nn.Module, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, sigma: float = 0.0,
    seed: int = EVAL_NOISE_SEED,
) -> float:
    """Return the accuracy of a base classifier on (optionally noisy) images.

    With sigma > 0, each image gets one Gaussian noise draw from a generator seeded with `seed`.

    Args:
        model: Classifier returning logits.
        x: Images.
        y: Labels.
        sigma: Noise level, 0 for clean images.
        seed: Seed of the noise draw.

    Returns:
        The fraction of correct predictions.

    Shapes:
        x: [N, 1, 8, 8]; y: [N].
    """
    sigma = check_positive(sigma, "sigma", allow_zero=True)
    x_t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    y_t = torch.as_tensor(np.asarray(y, dtype=np.int64))
    was_training = model.training
    model.eval()
    try:
        inputs = _noisy(x_t, sigma, torch.Generator().manual_seed(seed))
        predictions = model(inputs).argmax(dim=1)
    finally:
        model.train(was_training)
    return int((predictions == y_t).sum()) / len(y_t)


@torch.no_grad()
def autoencoder_mse(
    model: nn.Module, x: np.ndarray | torch.Tensor, sigma: float = 0.0, seed: int = EVAL_NOISE_SEED
) -> float:
    """Return the per-pixel mean squared error between clean images and the reconstructions of their
    (optionally noisy) versions.

    Args:
        model: Autoencoder.
        x: Clean images.
        sigma: Noise level added to the inputs, 0 for clean inputs.
        seed: Seed of the single noise draw per image.

    Returns:
        The mean squared error over all pixels of all images.

    Shapes:
        x: [N, 1, 8, 8].
    """
    sigma = check_positive(sigma, "sigma", allow_zero=True)
    x_t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    was_training = model.training
    model.eval()
    try:
        reconstructions = model(_noisy(x_t, sigma, torch.Generator().manual_seed(seed)))
    finally:
        model.train(was_training)
    return float(torch.mean((reconstructions.double() - x_t.double()) ** 2))


def _shuffled_batches(
    n: int, batch_size: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    permutation = torch.randperm(n, generator=generator)
    yield from permutation.split(batch_size)


def _fit(
    model: nn.Module,
    num_train: int,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    epochs: int,
    batch_size: int,
    learning_rate: float,
    generator: torch.Generator,
    desc: str,
    progress: bool,
) -> float:
    """Adam with a cosine learning-rate decay over shuffled mini-batches; `batch_loss(indices)` draws
    its own noise from `generator`. Leaves the model in eval mode and returns the last epoch's mean loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    steps = epochs * math.ceil(num_train / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    epoch_loss = float("nan")
    bar = tqdm(range(epochs), desc=desc, file=sys.stderr, disable=not progress)
    for _ in bar:
        total, count = 0.0, 0
        for idx in _shuffled_batches(num_train, batch_size, generator):
            loss = batch_loss(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
            count += len(idx)
        epoch_loss = total / count
        bar.set_postfix(loss=f"{epoch_loss:.5f}")
    model.eval()
    return epoch_loss


def train_classifier(
    sigma: float,
    epochs: int = DEFAULT_CLASSIFIER_EPOCHS,
    seed: int = DEFAULT_SEED,
    *,
    batch_size: int = BATCH_SIZE,
    learning_rate: float = LEARNING_RATE,
    progress: bool = False,
) -> tuple[DigitsCNN, dict[str, Any]]:
    """Train a `DigitsCNN` on the digits training split with Gaussian noise augmentation.

    Every training image gets a fresh N(0, sigma^2 I) draw each time it is seen (not clamped), which
    is the noise the smoothed classifier is evaluated under. sigma = 0 trains on clean images: the
    classifier behind a diffusion purifier (DDS, DiffSmooth). Adam with a cosine learning-rate decay.

    Args:
        sigma: Training noise level (>= 0; 0 = clean training).
        epochs: Passes over the training split.
        seed: Seed of initialization, shuffling and noise.
        batch_size: Images per optimizer step.
        learning_rate: Initial Adam learning rate.
        progress: Whether to show a tqdm progress bar on stderr.

    Returns:
        The trained model in eval mode, and its metadata record: architecture and kwargs, training
        settings, clean and noisy (at sigma) test accuracy, parameter count.
    """
    sigma = check_positive(sigma, "sigma", allow_zero=True)
    epochs = check_count(epochs, "epochs")
    # The seed feeds np.random.SeedSequence (see _deterministic), which needs an integer >= 0.
    seed = check_count(seed, "seed", minimum=0)
    split = load_digits_split()
    x_train = torch.from_numpy(split.x_train)
    y_train = torch.from_numpy(split.y_train)
    kwargs = {"num_classes": NUM_CLASSES}
    with _deterministic(seed) as generator:
        model = DigitsCNN(**kwargs)
        loss_fn = nn.CrossEntropyLoss()

        def batch_loss(idx: torch.Tensor) -> torch.Tensor:
            return loss_fn(model(_noisy(x_train[idx], sigma, generator)), y_train[idx])

        epoch_loss = _fit(model, len(x_train), batch_loss, epochs, batch_size, learning_rate, generator,
                          f"classifier sigma={sigma}", progress)
    metrics: dict[str, Any] = {
        "kind": "classifier",
        "architecture": DigitsCNN.__name__,
        "kwargs": kwargs,
        "sigma": sigma,
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "num_parameters": _num_parameters(model),
        "final_train_loss": epoch_loss,
        "clean_test_accuracy": classifier_accuracy(model, split.x_test, split.y_test),
        "noisy_test_accuracy": classifier_accuracy(model, split.x_test, split.y_test, sigma=sigma),
        "eval_noise_seed": EVAL_NOISE_SEED,
    }
    return model, metrics


def train_autoencoder(
    epochs: int = DEFAULT_AUTOENCODER_EPOCHS,
    seed: int = DEFAULT_SEED,
    *,
    latent_dim: int = AUTOENCODER_LATENT_DIM,
    noise_sigmas: Sequence[float] = AUTOENCODER_NOISE_SIGMAS,
    batch_size: int = BATCH_SIZE,
    learning_rate: float = LEARNING_RATE,
    progress: bool = False,
) -> tuple[DigitsAutoencoder, dict[str, Any]]:
    """Train a denoising `DigitsAutoencoder` on the digits training split.

    Each batch gets one noise level drawn uniformly from `noise_sigmas` and the reconstruction of the
    noisy batch is compared with the clean batch (MSE), so the model keeps working on the noisy inputs
    center smoothing feeds it. Adam with a cosine learning-rate decay.

    Args:
        epochs: Passes over the training split.
        seed: Seed of initialization, shuffling and noise.
        latent_dim: Size of the latent code.
        noise_sigmas: Noise levels (>= 0) drawn per batch.
        batch_size: Images per optimizer step.
        learning_rate: Initial Adam learning rate.
        progress: Whether to show a tqdm progress bar on stderr.

    Returns:
        The trained model in eval mode, and its metadata record: architecture and kwargs, training
        settings, clean test MSE and noisy test MSE (at the largest training noise level and at each).
    """
    epochs = check_count(epochs, "epochs")
    # The seed feeds np.random.SeedSequence (see _deterministic), which needs an integer >= 0.
    seed = check_count(seed, "seed", minimum=0)
    sigmas = [check_positive(s, "noise sigma", allow_zero=True) for s in noise_sigmas]
    if not sigmas:
        raise InvalidParameterError("noise_sigmas must not be empty")
    split = load_digits_split()
    x_train = torch.from_numpy(split.x_train)
    kwargs = {"latent_dim": int(latent_dim)}
    with _deterministic(seed) as generator:
        model = DigitsAutoencoder(**kwargs)

        def batch_loss(idx: torch.Tensor) -> torch.Tensor:
            clean = x_train[idx]
            sigma = sigmas[int(torch.randint(len(sigmas), (), generator=generator))]
            return torch.mean((model(_noisy(clean, sigma, generator)) - clean) ** 2)

        epoch_loss = _fit(model, len(x_train), batch_loss, epochs, batch_size, learning_rate, generator,
                          "autoencoder", progress)
    noisy_sigma = max(sigmas)
    metrics: dict[str, Any] = {
        "kind": "autoencoder",
        "architecture": DigitsAutoencoder.__name__,
        "kwargs": kwargs,
        "noise_sigmas": sigmas,
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "num_parameters": _num_parameters(model),
        "final_train_loss": epoch_loss,
        "clean_test_mse": autoencoder_mse(model, split.x_test),
        "noisy_test_sigma": noisy_sigma,
        "noisy_test_mse": autoencoder_mse(model, split.x_test, sigma=noisy_sigma),
        "noisy_test_mse_by_sigma": {
            str(s): autoencoder_mse(model, split.x_test, sigma=s) for s in sorted(set(sigmas)) if s > 0
        },
        "eval_noise_seed": EVAL_NOISE_SEED,
    }
    return model, metrics


def _ddpm_training_pair(
    model: DigitsDDPM, x: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, ε) for clean images x in [0, 1]: t uniform in [0, T), x_t = sqrt(ᾱ_t)(2x − 1) + sqrt(1 − ᾱ_t)ε."""
    alpha_bar = torch.cumprod(1.0 - model.betas.to(torch.float64), dim=0)
    t = torch.randint(model.num_timesteps, (x.shape[0],), generator=generator)
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    ab = alpha_bar[t].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return ab.sqrt() * (2.0 * x - 1.0) + (1.0 - ab).sqrt() * eps, t, eps


@torch.no_grad()
def ddpm_noise_mse(
    model: DigitsDDPM, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor | None = None,
    seed: int = EVAL_NOISE_SEED,
) -> float:
    """Return the DDPM training loss on clean images: the MSE of ε̂ against ε at a uniformly drawn t per image.

    Args:
        model: The noise-prediction network.
        x: Clean images in [0, 1].
        y: Labels (conditional loss), or None for the null class (unconditional loss).
        seed: Seed of the timestep and noise draws.

    Returns:
        The mean squared error over all pixels of all images.

    Shapes:
        x: [N, 1, 8, 8]; y: [N] or None.
    """
    x_t_clean = torch.as_tensor(np.asarray(x, dtype=np.float32))
    labels = None if y is None else torch.as_tensor(np.asarray(y, dtype=np.int64))
    was_training = model.training
    model.eval()
    try:
        x_t, t, eps = _ddpm_training_pair(model, x_t_clean, torch.Generator().manual_seed(seed))
        prediction = model(x_t, t, labels)
    finally:
        model.train(was_training)
    return float(torch.mean((prediction.double() - eps.double()) ** 2))


@torch.no_grad()
def ddpm_denoise_mse(model: nn.Module, x: np.ndarray | torch.Tensor, sigma: float, seed: int = EVAL_NOISE_SEED) -> float:
    """Return the per-pixel MSE ([0, 1] units) of one-shot purification (THEORY.md §3) of x + N(0, sigma^2 I).

    Args:
        model: The noise-prediction network (with its betas).
        x: Clean images in [0, 1].
        sigma: Smoothing noise level (> 0).
        seed: Seed of the single noise draw per image.

    Returns:
        The mean squared error between the purified and the clean images.

    Shapes:
        x: [N, 1, 8, 8].
    """
    from smoothgen.denoise import DiffusionPurifier

    sigma = check_positive(sigma, "sigma")
    x_t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    was_training = model.training
    model.eval()
    try:
        purified = DiffusionPurifier(model, sigma)(_noisy(x_t, sigma, torch.Generator().manual_seed(seed)))
    finally:
        model.train(was_training)
    return float(torch.mean((purified.double() - x_t.double()) ** 2))


def train_ddpm(
    epochs: int = DEFAULT_DDPM_EPOCHS,
    seed: int = DEFAULT_SEED,
    *,
    p_uncond: float = DDPM_P_UNCOND,
    batch_size: int = DDPM_BATCH_SIZE,
    learning_rate: float = LEARNING_RATE,
    progress: bool = False,
    **model_kwargs: Any,
) -> tuple[DigitsDDPM, dict[str, Any]]:
    """Train the class-conditional digits DDPM (`DigitsDDPM`) on the digits training split.

    The ε-prediction loss of Ho et al. (2020): each image is mapped to [−1, 1], gets a uniform timestep
    t and a fresh noise ε, and the network regresses ε from x_t = sqrt(ᾱ_t)x_0 + sqrt(1−ᾱ_t)ε. With
    probability p_uncond the label is replaced by the null class (classifier-free guidance dropout), so
    the same network is also an unconditional model. Adam with a cosine learning-rate decay.

    Args:
        epochs: Passes over the training split.
        seed: Seed of initialization, shuffling, timesteps, noise and label dropout.
        p_uncond: Probability of training a label as the null class, in [0, 1].
        batch_size: Images per optimizer step.
        learning_rate: Initial Adam learning rate.
        progress: Whether to show a tqdm progress bar on stderr.
        **model_kwargs: Overrides of `DDPM_KWARGS` (hidden, num_blocks, embed_dim, num_timesteps, ...).

    Returns:
        The trained model in eval mode, and its metadata record: architecture and kwargs, training
        settings, test noise-prediction MSE (conditional and unconditional), and the one-shot
        denoising MSE on the test split at each of `DDPM_EVAL_SIGMAS` with its t*.
    """
    from smoothgen.denoise import DiffusionPurifier

    epochs = check_count(epochs, "epochs")
    seed = check_count(seed, "seed", minimum=0)
    p_uncond = check_positive(p_uncond, "p_uncond", allow_zero=True)
    if p_uncond > 1.0:
        raise InvalidParameterError(f"p_uncond must lie in [0, 1], got {p_uncond}")
    unknown = set(model_kwargs) - set(DDPM_KWARGS)
    if unknown:
        raise InvalidParameterError(f"unknown DigitsDDPM arguments {sorted(unknown)}; known: {sorted(DDPM_KWARGS)}")
    kwargs = {**DDPM_KWARGS, **model_kwargs}
    split = load_digits_split()
    x_train = torch.from_numpy(split.x_train)
    y_train = torch.from_numpy(split.y_train)
    with _deterministic(seed) as generator:
        model = DigitsDDPM(**kwargs)

        def batch_loss(idx: torch.Tensor) -> torch.Tensor:
            x_t, t, eps = _ddpm_training_pair(model, x_train[idx], generator)
            drop = torch.rand(len(idx), generator=generator) < p_uncond
            labels = torch.where(drop, torch.full_like(y_train[idx], model.null_class), y_train[idx])
            return torch.mean((model(x_t, t, labels) - eps) ** 2)

        epoch_loss = _fit(model, len(x_train), batch_loss, epochs, batch_size, learning_rate, generator,
                          "ddpm", progress)
    metrics: dict[str, Any] = {
        "kind": "ddpm",
        "architecture": DigitsDDPM.__name__,
        "kwargs": kwargs,
        "p_uncond": p_uncond,
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "num_parameters": _num_parameters(model),
        "final_train_loss": epoch_loss,
        "test_noise_mse_conditional": ddpm_noise_mse(model, split.x_test, split.y_test),
        "test_noise_mse_unconditional": ddpm_noise_mse(model, split.x_test),
        "denoise_t_star_by_sigma": {str(s): DiffusionPurifier(model, s).t_star for s in DDPM_EVAL_SIGMAS},
        "denoise_test_mse_by_sigma": {str(s): ddpm_denoise_mse(model, split.x_test, s) for s in DDPM_EVAL_SIGMAS},
        "eval_noise_seed": EVAL_NOISE_SEED,
    }
    return model, metrics


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _atomic_write_bytes(path: Path, write: Any) -> None:
    # Write next to the target and rename, so an interrupted run never leaves a truncated file behind.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp_name)
        # mkstemp creates the file private (0600); shipped weights must be readable by every user.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def save_model(model: nn.Module, out_dir: Path, filename: str, record: dict[str, Any]) -> dict[str, Any]:
    """Save a model's weights as safetensors and return its metadata record completed with file and hash.

    Args:
        model: The trained model.
        out_dir: Destination folder (created if missing).
        filename: Weights file name inside out_dir.
        record: Metadata record from `train_classifier` / `train_autoencoder`.

    Returns:
        A copy of record with ``file`` and ``sha256`` added.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # One metadata key only: safetensors writes the header metadata in hash-map order, so several
    # keys would make the file bytes (and its sha256 in models.json) differ between identical runs.
    description = {"architecture": record["architecture"], "kwargs": record["kwargs"]}
    header = {"smoothgen": json.dumps(description, sort_keys=True)}
    _atomic_write_bytes(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    return {**record, "file": filename, "sha256": _sha256(path)}


def update_metadata(out_dir: Path, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Merge model records into `out_dir/models.json` (models trained earlier keep their records).

    Args:
        out_dir: Folder holding the weights and the metadata file.
        records: New records by model name.

    Returns:
        The whole metadata written.
    """
    path = out_dir / METADATA_FILENAME
    models: dict[str, Any] = {}
    if path.exists():
        models = dict(json.loads(path.read_text(encoding="utf-8")).get("models", {}))
    models.update(records)
    metadata = {
        "format_version": METADATA_FORMAT_VERSION,
        "dataset": {
            "name": "sklearn.datasets.load_digits",
            "pixel_scale": "value / 16, in [0, 1]",
            "split": f"train_test_split(test_size={TEST_SIZE}, random_state={SPLIT_SEED}, stratify=y)",
            "test_size": TEST_SIZE,
        },
        "torch_version": torch.__version__,
        "models": {name: models[name] for name in sorted(models)},
    }
    text = json.dumps(metadata, indent=2, sort_keys=False) + "\n"
    _atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return metadata


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m smoothgen.models.train",
        description=(
            "Train the embedded digits models deterministically and save them as safetensors, with "
            "their test metrics merged into models.json. Classifiers (DigitsCNN) are trained with "
            "Gaussian noise augmentation x + sigma*N(0, I), the noise randomized smoothing certifies; "
            "the autoencoder (DigitsAutoencoder) learns to reconstruct clean images from inputs with "
            f"noise sigma drawn per batch from {list(AUTOENCODER_NOISE_SIGMAS)}. --sigma 0 trains a clean "
            "classifier (no noise), the one behind the DDPM purifier. The DDPM (DigitsDDPM) is a "
            "class-conditional noise-prediction network with classifier-free-guidance dropout."
        ),
    )
    parser.add_argument(
        "what",
        choices=["classifier", "autoencoder", "ddpm", "all"],
        help="which models to train: the classifiers, the autoencoder, the DDPM, or all of them",
    )
    parser.add_argument(
        "--sigma",
        type=float,
        nargs="+",
        default=None,
        metavar="S",
        help=f"training noise level(s) of the classifiers, 0 = clean (default: {' '.join(map(str, DEFAULT_SIGMAS))})",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        metavar="E",
        help=(
            f"passes over the training split (default: {DEFAULT_CLASSIFIER_EPOCHS} for classifiers, "
            f"{DEFAULT_AUTOENCODER_EPOCHS} for the autoencoder, {DEFAULT_DDPM_EPOCHS} for the DDPM)"
        ),
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="N", help="training seed (default: 0)")
    parser.add_argument(
        "--out",
        type=Path,
        default=WEIGHTS_DIR,
        metavar="DIR",
        help="output folder for the weights and models.json (default: the package's weights folder)",
    )
    parser.add_argument(
        "--threads", type=int, default=2, metavar="T", help="torch CPU threads (default: 2)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see ``python -m smoothgen.models.train --help``.

    Args:
        argv: Arguments without the program name (default: sys.argv[1:]).

    Returns:
        The exit status.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.sigma is not None and args.what in ("autoencoder", "ddpm"):
        parser.error("--sigma applies to classifiers only")
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    sigmas = DEFAULT_SIGMAS if args.sigma is None else tuple(args.sigma)
    for sigma in sigmas:
        if not (math.isfinite(sigma) and sigma >= 0):
            parser.error(f"--sigma must be finite and >= 0, got {sigma}")
    torch.set_num_threads(args.threads)
    out_dir: Path = args.out

    records: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    if args.what in ("classifier", "all"):
        for sigma in sigmas:
            epochs = DEFAULT_CLASSIFIER_EPOCHS if args.epochs is None else args.epochs
            model, record = train_classifier(sigma, epochs, args.seed, progress=True)
            record = save_model(model, out_dir, classifier_filename(sigma), record)
            records[classifier_name(sigma)] = record
            print(
                f"{record['file']}: clean test accuracy {record['clean_test_accuracy']:.4f}, "
                f"noisy (sigma={sigma}) {record['noisy_test_accuracy']:.4f}",
                file=sys.stderr,
            )
    if args.what in ("autoencoder", "all"):
        epochs = DEFAULT_AUTOENCODER_EPOCHS if args.epochs is None else args.epochs
        model, record = train_autoencoder(epochs, args.seed, progress=True)
        record = save_model(model, out_dir, AUTOENCODER_FILENAME, record)
        records[AUTOENCODER_NAME] = record
        print(
            f"{record['file']}: clean test MSE {record['clean_test_mse']:.5f}, "
            f"noisy (sigma={record['noisy_test_sigma']}) {record['noisy_test_mse']:.5f}",
            file=sys.stderr,
        )
    if args.what in ("ddpm", "all"):
        epochs = DEFAULT_DDPM_EPOCHS if args.epochs is None else args.epochs
        model, record = train_ddpm(epochs, args.seed, progress=True)
        record = save_model(model, out_dir, DDPM_FILENAME, record)
        records[DDPM_NAME] = record
        mse = ", ".join(f"sigma={s}: {v:.5f}" for s, v in record["denoise_test_mse_by_sigma"].items())
        print(f"{record['file']}: one-shot denoising test MSE {mse}", file=sys.stderr)
    update_metadata(out_dir, records)
    print(f"wrote {out_dir / METADATA_FILENAME} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
