"""Train the digits classifiers (clean and under Gaussian noise) and the digits autoencoder.

``python -m smoothgen.models.train classifier`` / ``autoencoder`` (`smoothgen.models.train`)."""
from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from smoothgen.errors import InvalidParameterError
from smoothgen.models.architectures import DigitsAutoencoder, DigitsCNN
from smoothgen.models.data import NUM_CLASSES, load_digits_split
from smoothgen.validate import check_count, check_positive
from smoothgen.models.train_common import DEFAULT_SEED, EVAL_NOISE_SEED, _deterministic, _num_parameters


AUTOENCODER_NAME = "digits_autoencoder"


AUTOENCODER_FILENAME = f"{AUTOENCODER_NAME}.safetensors"


DEFAULT_SIGMAS: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
"""Noise levels of the shipped classifiers; 0.0 is the clean classifier behind the DDPM purifier (DDS, DiffSmooth)."""


DEFAULT_CLASSIFIER_EPOCHS = 150


DEFAULT_AUTOENCODER_EPOCHS = 300


BATCH_SIZE = 64


LEARNING_RATE = 1e-3


AUTOENCODER_LATENT_DIM = 16


AUTOENCODER_NOISE_SIGMAS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)
"""Noise levels the autoencoder is trained on, one drawn per batch, so it behaves under smoothing noise."""


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


def _noisy(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    # Not clamped to [0, 1]: randomized smoothing certifies exactly x + N(0, sigma^2 I).
    if sigma == 0.0:
        return x
    return x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)


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
