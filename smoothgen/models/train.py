"""Train the embedded models (digits models, code LM) and record their metrics in `weights/models.json`.

Usage::

    python -m smoothgen.models.train all                      # everything shipped in weights/
    python -m smoothgen.models.train classifier --sigma 0.5   # one classifier
    python -m smoothgen.models.train classifier --sigma 0     # the clean classifier (no noise augmentation)
    python -m smoothgen.models.train autoencoder --epochs 50 --out /tmp/weights
    python -m smoothgen.models.train ddpm                     # the class-conditional digits DDPM
    python -m smoothgen.models.train lm                       # the byte-level code LM (Python stdlib corpus)
    python -m smoothgen.models.train lm-ablate --keep-fraction 0.25   # code LM fine-tuned for token ablation
    python -m smoothgen.models.train lm-gauss --sigma 0.5     # code LM fine-tuned for Gaussian embedding noise
    python -m smoothgen.models.train lm-delete --delete-prob 0.9   # code LM fine-tuned for token deletion
    python -m smoothgen.models.train encoder-ablate           # LoRA adapter: all-MiniLM-L6-v2 for token ablation

Training is deterministic: the seed fixes the initial weights, the shuffling and every noise draw, and
deterministic algorithms are enforced, so the same command on the same software stack reproduces the
weights bit for bit (with the same ``--threads``; for the code LM, whose corpus is the running interpreter's
standard library, also the same Python release). The code LM takes about 10 minutes on 2 idle CPU cores
(1 200 steps of 32 × 256 bytes, 28 CPU-minutes). The smoothing-trained LMs (``lm-ablate``, ``lm-gauss``) are
fine-tuned from the code LM (500 steps each, a few minutes, plus about a minute and a half of evaluation);
they start from the weights in the package (or from the code LM trained by the same command, for ``all``).
The training functions are importable (`train_classifier`, `train_autoencoder`, `train_ddpm`, `train_lm`,
`finetune_lm`) and restore the caller's global RNG and determinism settings when they return.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import platform
import sys
import sysconfig
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from smoothgen.errors import InvalidParameterError
from smoothgen.models import DEFAULT_LM_NAME, METADATA_FILENAME, WEIGHTS_DIR, load_lm, load_tokenizer, model_info
from smoothgen.models.architectures import DigitsAutoencoder, DigitsCNN
from smoothgen.models.data import NUM_CLASSES, SPLIT_SEED, TEST_SIZE, load_digits_split
from smoothgen.models.ddpm import DigitsDDPM
from smoothgen.models.lm import DEFAULT_LM_KWARGS, VOCAB_SIZE, CodeLM
from smoothgen.results import write_atomically
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

LM_NAME = DEFAULT_LM_NAME
LM_FILENAME = f"{LM_NAME}.safetensors"
LM_KWARGS: dict[str, int] = dict(DEFAULT_LM_KWARGS)
LM_TOKENIZER = "UTF-8 bytes (vocabulary 256, no special tokens)"
DEFAULT_LM_STEPS = 1200
LM_BATCH_SIZE = 32
LM_LEARNING_RATE = 2e-3
LM_WARMUP_STEPS = 100
LM_WEIGHT_DECAY = 0.01
LM_HELDOUT_MODULUS = 20
"""A stdlib file is held out when sha256(its path relative to the stdlib folder) is 0 modulo this (~5%)."""
LM_EXCLUDED_DIRS: frozenset[str] = frozenset({
    "site-packages", "dist-packages", "__pycache__", "test", "tests", "idlelib", "lib2to3",
    "encodings", "pydoc_data", "ensurepip",
})
"""Folders (at any depth) left out of the LM corpus: installed packages, test suites, and generated or
table-like modules (codec tables, the pydoc topic strings), which are not representative Python code.
Folders named ``config-*`` (platform build files) are left out too."""
LM_SLICE_CHARS = 1024
"""Characters per held-out file in the fixed evaluation slice recorded for tests (`lm_heldout_slice`)."""

LM_NOISE_KINDS: tuple[str, ...] = ("ablate", "gauss", "delete")
"""Smoothing distributions `finetune_lm` trains for: token ablation, Gaussian embedding noise, token deletion."""
DEFAULT_LM_KEEP_FRACTIONS: tuple[float, ...] = (0.1, 0.25)
"""Keep fractions of the shipped ablation-trained LMs (``code_lm_ablate0.25``)."""
DEFAULT_LM_GAUSS_SIGMAS: tuple[float, ...] = (0.5,)
"""Embedding noise levels of the shipped Gaussian-trained LMs (``code_lm_gauss0.5``)."""
DEFAULT_LM_DELETE_PROBS: tuple[float, ...] = (0.9,)
"""Deletion probabilities of the shipped deletion-trained LMs (``code_lm_delete0.9``)."""
ABLATION_MASK_TOKEN = 0
"""The ablation MASK token: byte 0 (NUL), which the training corpus never contains."""
DEFAULT_FINETUNE_STEPS = 500
FINETUNE_LEARNING_RATE = 3e-4
FINETUNE_WARMUP_STEPS = 25
FINETUNE_PROMPT_LENGTHS: tuple[int, int] = (8, 160)
"""Inclusive range of the prompt length drawn per training window (the rest of the window is the clean continuation)."""
FINETUNE_EVAL_PROMPT_LENGTH = 64
FINETUNE_EVAL_STRIDE = 32
FINETUNE_EVAL_COPIES = 32


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
    """Return the per-pixel MSE ([0, 1] units) of one-shot purification (docs/theory.md §3) of x + N(0, sigma^2 I).

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



def stdlib_root() -> Path:
    """Return the folder of the running interpreter's standard library (``sysconfig`` "stdlib")."""
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def is_heldout_file(relative_path: str) -> bool:
    """Return whether a stdlib file belongs to the LM's held-out evaluation files.

    The choice depends only on the path (sha256 of its POSIX form modulo `LM_HELDOUT_MODULUS`), so it
    is the same on every machine and Python patch release, whatever else the stdlib holds.

    Args:
        relative_path: Path relative to the stdlib folder, POSIX separators (``"email/parser.py"``).
    """
    digest = hashlib.sha256(relative_path.encode("utf-8")).hexdigest()
    return int(digest, 16) % LM_HELDOUT_MODULUS == 0


def lm_corpus_files(root: Path | None = None) -> tuple[list[str], list[str]]:
    """Return the LM corpus of a standard library folder, split into training and held-out files.

    The corpus is every ``*.py`` file under root outside `LM_EXCLUDED_DIRS` and ``config-*`` folders,
    sorted by relative path (so the order, hence the training stream, is deterministic).

    Args:
        root: Standard library folder (default: `stdlib_root()`, the running interpreter's).

    Returns:
        (train, heldout): relative POSIX paths, each sorted.

    Raises:
        InvalidParameterError: root holds no corpus file.
    """
    root = stdlib_root() if root is None else Path(root)
    names: list[str] = []
    for folder, subfolders, filenames in os.walk(root):
        # Prune while walking: site-packages alone can hold far more files than the stdlib.
        subfolders[:] = [f for f in subfolders if f not in LM_EXCLUDED_DIRS and not f.startswith("config-")]
        base = Path(folder).relative_to(root)
        names.extend((base / f).as_posix() for f in filenames if f.endswith(".py") and (Path(folder) / f).is_file())
    train: list[str] = []
    heldout: list[str] = []
    for name in sorted(names):
        (heldout if is_heldout_file(name) else train).append(name)
    if not train or not heldout:
        raise InvalidParameterError(f"no Python source files for the LM corpus under {root}")
    return train, heldout


def _read_corpus(files: Sequence[str], root: Path) -> list[bytes]:
    return [(root / name).read_bytes() for name in files]


def heldout_texts(max_files: int | None = None, max_chars: int | None = None, root: Path | None = None) -> list[str]:
    """Return the LM's held-out texts, read from the running interpreter's standard library.

    The weights do not ship the corpus; every machine with Python has its own stdlib, and the held-out
    choice depends only on file paths (`is_heldout_file`), so evaluations elsewhere read the same files
    (with the content of their Python release).

    Args:
        max_files: Keep the first max_files held-out files (sorted by path); None keeps all.
        max_chars: Keep, of each file, the max_chars characters around its middle (code rather than
            the license header and module docstring); None keeps whole files.
        root: Standard library folder (default: `stdlib_root()`).

    Returns:
        One string per file (UTF-8 decoded; undecodable bytes become U+FFFD).
    """
    root = stdlib_root() if root is None else Path(root)
    _, files = lm_corpus_files(root)
    if max_files is not None:
        files = files[: check_count(max_files, "max_files")]
    texts = [data.decode("utf-8", errors="replace") for data in _read_corpus(files, root)]
    if max_chars is not None:
        max_chars = check_count(max_chars, "max_chars")
        texts = [t[max(0, (len(t) - max_chars) // 2):][:max_chars] for t in texts]
    return texts


def _token_ids(texts: Sequence[str | bytes], tokenizer: Any = None) -> list[list[int]]:
    """The token ids of each text: its UTF-8 bytes, or the tokenizer's ids (bytes decoded as UTF-8 first)."""
    if tokenizer is None:
        return [list(text.encode("utf-8") if isinstance(text, str) else bytes(text)) for text in texts]
    return tokenizer.encode_batch([t if isinstance(t, str) else bytes(t).decode("utf-8", errors="replace")
                                   for t in texts])


def _lm_blocks(texts: Sequence[str | bytes], context_length: int, tokenizer: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each text into windows of context_length inputs and their next-token targets (padding: -100)."""
    inputs, targets = [], []
    for data in _token_ids(texts, tokenizer):
        ids = torch.tensor(data, dtype=torch.int64)
        for start in range(0, len(ids) - 1, context_length):
            block = ids[start : start + context_length + 1]
            x = torch.zeros(context_length, dtype=torch.int64)
            y = torch.full((context_length,), -100, dtype=torch.int64)
            x[: len(block) - 1] = block[:-1]
            y[: len(block) - 1] = block[1:]
            inputs.append(x)
            targets.append(y)
    if not inputs:
        raise InvalidParameterError("the texts hold no byte to predict (each needs at least 2 bytes)")
    return torch.stack(inputs), torch.stack(targets)


def _metrics_from(nll_nats: float, correct: int, count: int, num_bytes: int | None = None) -> dict[str, Any]:
    """Byte-level metrics; with num_bytes (the bytes the count sub-word tokens spell), per-token ones plus
    bits per byte, the measure comparable across tokenizers."""
    mean = nll_nats / count
    if num_bytes is None:
        return {"num_predicted_bytes": count, "accuracy": correct / count, "nll_nats_per_byte": mean,
                "bits_per_byte": mean / math.log(2), "perplexity": math.exp(mean)}
    return {"num_predicted_tokens": count, "num_predicted_bytes": num_bytes, "bytes_per_token": num_bytes / count,
            "accuracy": correct / count, "nll_nats_per_token": mean, "bits_per_byte": nll_nats / num_bytes / math.log(2),
            "perplexity": math.exp(mean)}


@torch.no_grad()
def lm_metrics(model: nn.Module, texts: Sequence[str | bytes], batch_size: int = 32, tokenizer: Any = None) -> dict[str, Any]:
    """Return the next-token accuracy and perplexity of a causal LM on texts (bytes, or a tokenizer's ids).

    Each text is cut into consecutive windows of the model's context length; every token except a text's
    first is predicted once, from the tokens before it in its window (so from 0 to context_length − 1
    tokens of context). Accuracy counts argmax predictions equal to the next token.

    Args:
        model: A `CodeLM` (or a model with the same call convention and a ``context_length``).
        texts: Strings (encoded as UTF-8) or bytes.
        batch_size: Windows per forward pass.
        tokenizer: None for a byte-level model; else the model's tokenizer (`smoothgen.models.bpe.CodeTokenizer`).

    Returns:
        ``num_predicted_bytes``, ``accuracy``, ``nll_nats_per_byte``, ``bits_per_byte`` and
        ``perplexity`` (per byte, exp of the mean negative log-likelihood). With a tokenizer: per token
        (``num_predicted_tokens``, ``nll_nats_per_token``, perplexity per token), and ``bits_per_byte`` over
        the ``num_predicted_bytes`` UTF-8 bytes the predicted tokens spell.
    """
    batch_size = check_count(batch_size, "batch_size")
    inputs, targets = _lm_blocks(texts, int(model.context_length), tokenizer)
    was_training = model.training
    model.eval()
    nll, correct = 0.0, 0
    try:
        for x, y in zip(inputs.split(batch_size), targets.split(batch_size)):
            logits = model(input_ids=x).logits.float()
            nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                         ignore_index=-100, reduction="sum").double())
            correct += int(((logits.argmax(-1) == y) & (y >= 0)).sum())
    finally:
        model.train(was_training)
    num_bytes = None
    if tokenizer is not None:
        lengths = torch.tensor([tokenizer.byte_length(i) for i in range(model.vocab_size)], dtype=torch.int64)
        num_bytes = int(lengths[targets[targets >= 0]].sum())
    return _metrics_from(nll, correct, int((targets >= 0).sum()), num_bytes)


def unigram_metrics(train: Sequence[str | bytes], texts: Sequence[str | bytes]) -> dict[str, Any]:
    """Return the metrics of `lm_metrics` for the unigram baseline: byte frequencies of train (add-one).

    The same bytes are predicted as in `lm_metrics` (all but each text's first), always by the most
    frequent training byte.

    Args:
        train: Texts whose byte frequencies define the baseline (pass texts itself for the in-sample,
            best possible unigram).
        texts: Evaluation texts.

    Returns:
        As `lm_metrics`.
    """
    def counts(items: Sequence[str | bytes], skip_first: bool) -> torch.Tensor:
        total = torch.zeros(VOCAB_SIZE, dtype=torch.float64)
        for item in items:
            data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            array = np.frombuffer(data[1:] if skip_first else data, dtype=np.uint8)
            total += torch.from_numpy(np.bincount(array, minlength=VOCAB_SIZE).astype(np.float64))
        return total

    log_p = torch.log((counts(train, False) + 1.0) / (counts(train, False).sum() + VOCAB_SIZE))
    target = counts(texts, True)
    count = int(target.sum())
    if count == 0:
        raise InvalidParameterError("the texts hold no byte to predict (each needs at least 2 bytes)")
    return _metrics_from(float(-(target * log_p).sum()), int(target[int(log_p.argmax())]), count)


def lm_heldout_slice(root: Path | None = None) -> list[str]:
    """Return the fixed held-out evaluation slice: `LM_SLICE_CHARS` characters from the middle of every
    held-out file (about 27 kB, evaluated in seconds), whose metrics `train_lm` records."""
    return heldout_texts(max_chars=LM_SLICE_CHARS, root=root)


def _texts_sha256(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


LM_TEXT_BYTES: tuple[int, ...] = (9, 10, *range(32, 127))
"""Tab, newline and printable ASCII: the bytes of ordinary source text."""


@torch.no_grad()
def _embedding_geometry(model: CodeLM) -> dict[str, float]:
    """Norms of the token embedding rows and distances between them, over `LM_TEXT_BYTES`: the scale
    against which an embedding-space smoothing σ and a certified radius (docs/theory.md §4(c)) are read."""
    rows = model.get_input_embeddings().weight[list(LM_TEXT_BYTES)].double()
    distances = torch.cdist(rows, rows)
    off_diagonal = distances[~torch.eye(len(rows), dtype=torch.bool)]
    return {"text_bytes": len(rows), "row_norm_median": float(rows.norm(dim=1).median()),
            "row_distance_min": float(off_diagonal.min()), "row_distance_median": float(off_diagonal.median())}


def _lm_learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    # Linear warmup, then cosine decay to 10% of the peak.
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))



def _lm_training_stream(
    root: Path, context_length: int, tokenizer: Any = None,
) -> tuple[list[str], list[str], list[bytes], torch.Tensor]:
    """(train files, held-out files, training file contents, their concatenation as one token stream:
    uint8 bytes, or the tokenizer's ids as int32)."""
    train_files, heldout_files = lm_corpus_files(root)
    train_data = _read_corpus(train_files, root)
    if tokenizer is None:
        stream = torch.frombuffer(bytearray(b"".join(train_data)), dtype=torch.uint8)
    else:
        ids = _token_ids(train_data, tokenizer)
        stream = torch.tensor([i for file_ids in ids for i in file_ids], dtype=torch.int32)
    if len(stream) <= context_length + 1:
        raise InvalidParameterError(f"the training corpus ({len(stream)} tokens) is shorter than one window")
    return train_files, heldout_files, train_data, stream


def _lm_corpus_record(
    train_files: Sequence[str], heldout_files: Sequence[str], stream: torch.Tensor, heldout_data: Sequence[bytes],
    train_data: Sequence[bytes] | None = None,
) -> dict[str, Any]:
    sizes = {"train_bytes": int(len(stream))}
    if stream.dtype != torch.uint8:  # a tokenized stream
        sizes = {"train_bytes": sum(len(d) for d in train_data or ()), "train_tokens": int(len(stream))}
    return {
        "description": (
            "*.py files of the CPython standard library of the training interpreter, sorted by path, "
            f"without the folders {sorted(LM_EXCLUDED_DIRS)} and config-*; held out: files whose "
            f"sha256(relative path) % {LM_HELDOUT_MODULUS} == 0"
        ),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "train_files": len(train_files),
        **sizes,
        "heldout_files": len(heldout_files),
        "heldout_bytes": sum(len(d) for d in heldout_data),
        "heldout_file_list": list(heldout_files),
    }


def _timing_record(seconds: float, cpu_seconds: float) -> dict[str, Any]:
    # Wall time depends on what else runs on the machine; CPU time (all threads) much less.
    return {"train_seconds": round(seconds, 1), "train_cpu_seconds": round(cpu_seconds, 1),
            "train_threads": torch.get_num_threads()}


def _check_lm_training(steps, seed, batch_size, warmup_steps, learning_rate, weight_decay) -> tuple:
    """The LM training settings of train_lm and finetune_lm, checked."""
    return (check_count(steps, "steps"), check_count(seed, "seed", minimum=0), check_count(batch_size, "batch_size"),
            check_count(warmup_steps, "warmup_steps", minimum=0), check_positive(learning_rate, "learning_rate"),
            check_positive(weight_decay, "weight_decay", allow_zero=True))


@torch.no_grad()
def _round_weights(model: nn.Module, stored_dtype: torch.dtype) -> dict[str, Any]:
    """Round the weights to the precision they are stored in, so that the recorded metrics are those of the
    shipped model (loading converts them back to float32 exactly); returns the record's entry."""
    if stored_dtype != torch.float32:
        for parameter in model.parameters():
            parameter.copy_(parameter.to(stored_dtype).float())
    return {"stored_dtype": str(stored_dtype).removeprefix("torch.")}


def _lm_run_record(model: nn.Module, seed: int, steps: int, batch_size: int, context: int, learning_rate: float,
                   warmup_steps: int, weight_decay: float, smoothed_loss: float, seconds: float,
                   cpu_seconds: float) -> dict[str, Any]:
    """The training settings and cost of one LM run, as models.json records them (train_lm and finetune_lm)."""
    return {
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "train_tokens": steps * batch_size * context,
        "learning_rate": learning_rate,
        "warmup_steps": warmup_steps,
        "weight_decay": weight_decay,
        "num_parameters": _num_parameters(model),
        "final_train_loss_ema": smoothed_loss,
        **_timing_record(seconds, cpu_seconds),
    }


def _lm_clean_metrics(model: nn.Module, heldout_data: Sequence[bytes], root: Path, tokenizer: Any = None) -> dict[str, Any]:
    """Clean next-token metrics on every held-out file and on the fixed slice of `lm_heldout_slice`."""
    slice_texts = lm_heldout_slice(root)
    return {
        "heldout": lm_metrics(model, heldout_data, tokenizer=tokenizer),
        "heldout_slice": {"chars_per_file": LM_SLICE_CHARS, "sha256": _texts_sha256(slice_texts),
                          **lm_metrics(model, slice_texts, tokenizer=tokenizer)},
    }


def _lm_optimize(
    model: nn.Module,
    stream: torch.Tensor,
    window_loss: Callable[[torch.Tensor], torch.Tensor],
    steps: int,
    batch_size: int,
    learning_rate: float,
    warmup_steps: int,
    weight_decay: float,
    generator: torch.Generator,
    desc: str,
    progress: bool,
) -> float:
    """The LM training loop shared by `train_lm` and `finetune_lm`.

    Each step draws batch_size windows of context_length + 1 bytes at uniform offsets of the stream (from
    `generator`), and `window_loss(windows)` (which may draw its own noise from `generator`, after the
    offsets) returns the loss. AdamW (β = 0.9, 0.95) over the parameters that require gradients (frozen
    ones get neither updates nor weight decay), the learning rate of `_lm_learning_rate`, gradients clipped
    at norm 1. Leaves the model in eval mode and returns the exponential moving average (0.98) of the loss.
    """
    context = int(model.context_length)
    offsets = torch.arange(context + 1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate,
                                  betas=(0.9, 0.95), weight_decay=weight_decay)
    model.train()
    smoothed_loss = float("nan")
    bar = tqdm(range(steps), desc=desc, file=sys.stderr, disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _lm_learning_rate(step, steps, learning_rate, warmup_steps)
        starts = torch.randint(len(stream) - context - 1, (batch_size, 1), generator=generator)
        loss = window_loss(stream[starts + offsets].long())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        value = loss.item()
        smoothed_loss = value if math.isnan(smoothed_loss) else 0.98 * smoothed_loss + 0.02 * value
        bar.set_postfix(loss=f"{smoothed_loss:.3f}")
    model.eval()
    return smoothed_loss


def train_lm(
    steps: int = DEFAULT_LM_STEPS,
    seed: int = DEFAULT_SEED,
    *,
    batch_size: int = LM_BATCH_SIZE,
    learning_rate: float = LM_LEARNING_RATE,
    warmup_steps: int = LM_WARMUP_STEPS,
    weight_decay: float = LM_WEIGHT_DECAY,
    root: Path | None = None,
    evaluate: bool = True,
    progress: bool = False,
    tokenizer: Any = None,
    stored_dtype: torch.dtype = torch.float32,
    **model_kwargs: Any,
) -> tuple[CodeLM, dict[str, Any]]:
    """Train the embedded byte-level code LM (`CodeLM`) on the Python standard library's source.

    The training files of `lm_corpus_files` are concatenated (sorted by path) into one byte stream;
    each step takes batch_size windows of context_length + 1 bytes at uniformly drawn offsets and
    minimizes the next-byte cross-entropy. AdamW (β = 0.9, 0.95), linear warmup then cosine decay to
    10% of the peak learning rate, gradients clipped at norm 1.

    Args:
        steps: Optimizer steps.
        seed: Seed of initialization and window offsets.
        batch_size: Windows per step.
        learning_rate: Peak learning rate.
        warmup_steps: Steps of linear warmup.
        weight_decay: AdamW weight decay.
        root: Standard library folder (default: the running interpreter's).
        evaluate: Whether to compute the held-out metrics (all held-out files, and the fixed slice of
            `lm_heldout_slice`) and the unigram baseline; a tiny test run can skip them.
        progress: Whether to show a tqdm progress bar on stderr.
        tokenizer: None for the byte-level model; else a sub-word tokenizer
            (`smoothgen.models.bpe.CodeTokenizer`): the stream, windows and metrics are its ids, the
            vocabulary its size, and the record describes it (the BPE code LM,
            `smoothgen.models.train_code_bpe`).
        stored_dtype: The precision the weights are saved in; the trained weights are rounded to it before
            evaluation (float16 halves the file of a larger model).
        **model_kwargs: Overrides of `LM_KWARGS` (d_model, n_layers, n_heads, context_length).

    Returns:
        The trained model in eval mode, and its metadata record: architecture and kwargs, corpus
        description and sizes, training settings and time, and held-out metrics of the model and of the
        unigram baseline.
    """
    steps, seed, batch_size, warmup_steps, learning_rate, weight_decay = _check_lm_training(
        steps, seed, batch_size, warmup_steps, learning_rate, weight_decay)
    unknown = set(model_kwargs) - set(LM_KWARGS)
    if unknown:
        raise InvalidParameterError(f"unknown CodeLM arguments {sorted(unknown)}; known: {sorted(LM_KWARGS)}")
    kwargs = {**LM_KWARGS, **model_kwargs}
    if tokenizer is not None:
        kwargs["vocab_size"] = int(tokenizer.vocab_size)
    root = stdlib_root() if root is None else Path(root)
    train_files, heldout_files, train_data, stream = _lm_training_stream(root, int(kwargs["context_length"]), tokenizer)
    start_time, start_cpu = time.perf_counter(), time.process_time()
    with _deterministic(seed) as generator:
        model = CodeLM(**kwargs)

        def window_loss(windows: torch.Tensor) -> torch.Tensor:
            logits = model(input_ids=windows[:, :-1]).logits
            return F.cross_entropy(logits.reshape(-1, model.vocab_size), windows[:, 1:].reshape(-1))

        smoothed_loss = _lm_optimize(model, stream, window_loss, steps, batch_size, learning_rate, warmup_steps,
                                     weight_decay, generator, "code lm" if tokenizer is None else "code bpe lm", progress)
    train_seconds, train_cpu_seconds = time.perf_counter() - start_time, time.process_time() - start_cpu
    stored = _round_weights(model, stored_dtype) if stored_dtype != torch.float32 else {}
    heldout_data = _read_corpus(heldout_files, root)
    metrics: dict[str, Any] = {
        "kind": "lm",
        "architecture": CodeLM.__name__,
        "kwargs": kwargs,
        "tokenizer": LM_TOKENIZER if tokenizer is None else tokenizer.description,
        "corpus": _lm_corpus_record(train_files, heldout_files, stream, heldout_data, train_data),
        **_lm_run_record(model, seed, steps, batch_size, int(kwargs["context_length"]), learning_rate, warmup_steps,
                         weight_decay, smoothed_loss, train_seconds, train_cpu_seconds),
        **stored,
    }
    if evaluate:
        clean = _lm_clean_metrics(model, heldout_data, root, tokenizer)
        metrics["heldout"] = clean["heldout"]
        if tokenizer is None:  # byte-level: the unigram baseline and the rows of the text bytes
            metrics["heldout_unigram_baseline"] = unigram_metrics(train_data, heldout_data)
        metrics["heldout_slice"] = clean["heldout_slice"]
        if tokenizer is None:
            metrics["embedding"] = _embedding_geometry(model)
    return model, metrics


def finetuned_lm_name(noise: str, level: float, base: str = LM_NAME) -> str:
    """Return the key in `models.json` of the code LM fine-tuned for a smoothing distribution.

    Args:
        noise: ``"ablate"`` (token ablation, level = keep fraction), ``"gauss"`` (Gaussian embedding
            noise, level = σ) or ``"delete"`` (token deletion, level = deletion probability).
        level: The keep fraction, σ or deletion probability.
        base: The name of the model fine-tuned (``"code_lm"`` or the BPE code LM ``"code_bpe"``).

    Returns:
        For example ``"code_lm_ablate0.25"``, ``"code_lm_gauss0.5"``, ``"code_lm_delete0.9"`` or
        ``"code_bpe_delete0.9"`` (also the weights file's stem).
    """
    return f"{base}_{_check_noise(noise, level)[0]}{float(level)}"


def _check_noise(noise: str, level: float) -> tuple[str, float]:
    if noise not in LM_NOISE_KINDS:
        raise InvalidParameterError(f"noise must be one of {list(LM_NOISE_KINDS)}, got {noise!r}")
    level = check_positive(level, {"ablate": "keep fraction", "gauss": "sigma", "delete": "deletion probability"}[noise])
    if noise == "ablate" and level > 1.0:
        raise InvalidParameterError(f"the keep fraction must lie in (0, 1], got {level}")
    if noise == "delete" and level >= 1.0:
        raise InvalidParameterError(f"the deletion probability must lie in (0, 1), got {level}")
    return noise, level


def _delete_prompts(
    windows: torch.Tensor, prompt_lengths: torch.Tensor, level: float, pad_token_id: int, generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows whose first prompt_lengths[b] bytes lose each byte independently with probability `level`
    (token deletion, as the smoothed LM perturbs a prompt); the rest closes up and the row is padded at the
    end with pad_token_id. A row that lost its whole prompt starts with pad_token_id alone (the token a
    smoothed LM feeds an empty copy).

    Returns:
        (ids [B, T], kept prompt lengths [B]) for windows [B, T] (T = context + 1); a causal model's
        predictions at a row's real positions never see its padding.
    """
    rows, kept_lengths = [], []
    for row, length in zip(windows, prompt_lengths.tolist()):
        keep = torch.rand(length, generator=generator) >= level
        prompt = row[:length][keep]
        if prompt.numel() == 0:
            prompt = torch.tensor([pad_token_id], dtype=row.dtype)
        kept_lengths.append(prompt.numel())
        rows.append(torch.cat([prompt, row[length:]]))
    width = windows.shape[1]
    out = torch.full_like(windows, pad_token_id)
    for b, r in enumerate(rows):
        out[b, : min(width, r.numel())] = r[:width]
    return out, torch.tensor(kept_lengths)


def ablation_keep(fraction: float, prompt_length: int) -> int:
    """Return k = max(1, round(fraction · prompt_length)) (Python's round), the positions an ablated copy
    keeps: the rule of `finetune_lm`'s training prompts and of `lm_smoothed_metrics` (16 for 0.25 · 64)."""
    return max(1, round(fraction * prompt_length))


def _perturb_prompts(
    model: CodeLM, ids: torch.Tensor, prompt_lengths: torch.Tensor, noise: str, level: float, mask_token_id: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Input embeddings of ids with the first prompt_lengths[b] positions of row b perturbed as the smoothed
    LM perturbs a prompt: token ablation (keep ablation_keep(level, P) uniformly random positions, replace
    the others by mask_token_id) or Gaussian N(0, level² I) noise added to the embedding rows.

    Shapes:
        ids: [B, L] int64; prompt_lengths: [B] (each in [1, L]); returns [B, L, d_model].
    """
    table = model.get_input_embeddings().weight
    prompt = torch.arange(ids.shape[1]) < prompt_lengths[:, None]  # [B, L]
    if noise == "ablate":
        ids = ids.clone()
        for row, length in enumerate(prompt_lengths.tolist()):
            keep = ablation_keep(level, length)
            masked = torch.randperm(length, generator=generator)[keep:]
            ids[row, masked] = mask_token_id
        return table[ids]
    eps = torch.randn((*ids.shape, table.shape[1]), generator=generator, dtype=table.dtype)
    return table[ids] + level * eps * prompt[..., None].to(table.dtype)


def finetune_lm(
    noise: str,
    level: float,
    steps: int = DEFAULT_FINETUNE_STEPS,
    seed: int = DEFAULT_SEED,
    *,
    base: str | CodeLM = LM_NAME,
    batch_size: int = LM_BATCH_SIZE,
    learning_rate: float = FINETUNE_LEARNING_RATE,
    warmup_steps: int = FINETUNE_WARMUP_STEPS,
    weight_decay: float = LM_WEIGHT_DECAY,
    prompt_lengths: tuple[int, int] = FINETUNE_PROMPT_LENGTHS,
    mask_token_id: int = ABLATION_MASK_TOKEN,
    root: Path | None = None,
    evaluate: bool = True,
    progress: bool = False,
    tokenizer: Any = None,
    stored_dtype: torch.dtype = torch.float32,
) -> tuple[CodeLM, dict[str, Any]]:
    """Fine-tune the code LM for a smoothing distribution of `smoothgen.generative.SmoothedLM`.

    The training distribution is the smoothing distribution (docs/theory.md §4c, §4g). Each step draws
    batch_size windows of context_length + 1 bytes from the training stream (as `train_lm`); each window
    gets a prompt length P uniform in [prompt_lengths[0], prompt_lengths[1]], its first P positions are the
    prompt and the rest plays the generated tokens (always clean). The prompt is perturbed:

    - ``noise="ablate"``, level = keep fraction f: k = max(1, round(f·P)) uniformly random prompt positions
      are kept and every other prompt position becomes mask_token_id (byte 0, NUL, by default);
    - ``noise="gauss"``, level = σ: N(0, σ² I) is added to the prompt positions' input embeddings (fed with
      ``inputs_embeds``), and the token embedding is frozen. The CodeLM output head is tied to that
      embedding, so the head is frozen too: the fine-tuned table equals the base's exactly, and a
      certified embedding radius means the same token substitutions for both models;
    - ``noise="delete"``, level = deletion probability p: each prompt byte is deleted independently with
      probability p and the window closes up (padded at its end with mask_token_id; a prompt that lost every
      byte is mask_token_id alone, what `smoothgen.deletion.TokenDeletion` feeds an empty copy); the loss
      is on the continuation's real bytes only.

    The loss is the next-byte cross-entropy of the predictions at positions ≥ P − 1 (the continuation, what
    smoothed decoding uses). Optimizer and schedule as `train_lm` (shared loop), with a smaller peak
    learning rate and a short warmup. All randomness (offsets, P, subsets, noise) comes from the seeded
    generator of `_deterministic`, so a run is reproducible bit for bit on the same software stack.

    Args:
        noise: ``"ablate"`` or ``"gauss"``.
        level: Keep fraction in (0, 1] for ablation, σ > 0 for Gaussian noise.
        steps: Optimizer steps.
        seed: Seed of the data and noise draws.
        base: Name of an embedded LM (`smoothgen.models.load_lm`) or a `CodeLM` to start from (copied,
            the caller's model is not changed).
        batch_size: Windows per step.
        learning_rate: Peak learning rate.
        warmup_steps: Steps of linear warmup.
        weight_decay: AdamW weight decay (not applied to frozen parameters).
        prompt_lengths: Inclusive range (min, max) of the prompt length P; max ≤ context_length.
        mask_token_id: The ablation MASK token (ignored for Gaussian noise).
        root: Standard library folder (default: the running interpreter's).
        evaluate: Whether to compute the held-out metrics: clean (all held-out files and the fixed slice)
            and smoothed (`lm_smoothed_metrics` on the slice, also for the base model at the same noise).
        progress: Whether to show a tqdm progress bar on stderr.
        tokenizer: The base model's tokenizer when it is not byte-level (default: the embedded base's own,
            `smoothgen.models.load_tokenizer`, e.g. the BPE code LM's); windows, prompts and P count its tokens.
        stored_dtype: The precision the weights are saved in (as `train_lm`).

    Returns:
        The fine-tuned model in eval mode, and its metadata record: base model, noise kind and level, mask
        token, training settings and time, and the clean and smoothed held-out metrics.
    """
    noise, level = _check_noise(noise, level)
    steps, seed, batch_size, warmup_steps, learning_rate, weight_decay = _check_lm_training(
        steps, seed, batch_size, warmup_steps, learning_rate, weight_decay)
    mask_token_id = check_count(mask_token_id, "mask_token_id", minimum=0)
    if isinstance(base, str):
        model = load_lm(base)
        base_name, base_sha256 = base, model_info()["models"][base].get("sha256")
        if tokenizer is None:
            tokenizer = load_tokenizer(base)
    elif isinstance(base, CodeLM):
        base_name, base_sha256, model = None, None, copy.deepcopy(base)
    else:
        raise InvalidParameterError(f"base must be an embedded LM name or a CodeLM, got {type(base).__name__}")
    if mask_token_id >= model.vocab_size:
        raise InvalidParameterError(f"mask_token_id must be a token id in [0, {model.vocab_size}), got {mask_token_id}")
    context = int(model.context_length)
    min_prompt, max_prompt = (check_count(n, "prompt length") for n in prompt_lengths)
    if not min_prompt <= max_prompt <= context:
        raise InvalidParameterError(
            f"prompt_lengths must satisfy 1 <= min <= max <= context_length ({context}), got {tuple(prompt_lengths)}"
        )
    base_model = copy.deepcopy(model).eval() if evaluate else None
    kwargs = {"d_model": model.d_model, "n_layers": model.n_layers, "n_heads": model.n_heads,
              "context_length": context}
    if tokenizer is not None:
        kwargs["vocab_size"] = model.vocab_size
    root = stdlib_root() if root is None else Path(root)
    train_files, heldout_files, train_data, stream = _lm_training_stream(root, context, tokenizer)
    if noise == "gauss":
        model.get_input_embeddings().weight.requires_grad_(False)  # also the tied output head
    positions = torch.arange(context)
    start_time, start_cpu = time.perf_counter(), time.process_time()
    with _deterministic(seed) as generator:

        def window_loss(windows: torch.Tensor) -> torch.Tensor:
            lengths = torch.randint(min_prompt, max_prompt + 1, (len(windows),), generator=generator)
            if noise == "delete":  # shorter rows, padded at the end: score only their real continuation
                deleted, kept = _delete_prompts(windows, lengths, level, mask_token_id, generator)
                logits = model(inputs_embeds=model.get_input_embeddings().weight[deleted[:, :-1]]).logits
                real = positions[None] < (kept + windows.shape[1] - 1 - lengths)[:, None]
                targets = deleted[:, 1:].masked_fill((positions[None] < kept[:, None] - 1) | ~real, -100)
                return F.cross_entropy(logits.reshape(-1, model.vocab_size), targets.reshape(-1), ignore_index=-100)
            embeds = _perturb_prompts(model, windows[:, :-1], lengths, noise, level, mask_token_id, generator)
            logits = model(inputs_embeds=embeds).logits
            # The prediction at position i is of byte i + 1: score those from the last prompt byte on.
            targets = windows[:, 1:].masked_fill(positions[None] < lengths[:, None] - 1, -100)
            return F.cross_entropy(logits.reshape(-1, model.vocab_size), targets.reshape(-1), ignore_index=-100)

        smoothed_loss = _lm_optimize(model, stream, window_loss, steps, batch_size, learning_rate, warmup_steps,
                                     weight_decay, generator, f"{base_name or 'code lm'} {noise} {level}", progress)
    train_seconds, train_cpu_seconds = time.perf_counter() - start_time, time.process_time() - start_cpu
    stored = _round_weights(model, stored_dtype) if stored_dtype != torch.float32 else {}
    model.get_input_embeddings().weight.requires_grad_(True)
    heldout_data = _read_corpus(heldout_files, root)
    metrics: dict[str, Any] = {
        "kind": "lm",
        "architecture": CodeLM.__name__,
        "kwargs": kwargs,
        "tokenizer": LM_TOKENIZER if tokenizer is None else tokenizer.description,
        "base_model": base_name,
        "base_sha256": base_sha256,
        "noise": noise,
        "noise_level": level,
        "smoothing": {
            "ablate": f"TokenAblation(keep=max(1, round({level}·P)), mask_token_id={mask_token_id})",
            "gauss": f"EmbeddingGaussian(sigma={level})",
            "delete": f"TokenDeletion(delete_prob={level}, empty_token_id={mask_token_id})",
        }[noise],
        "mask_token_id": mask_token_id if noise in ("ablate", "delete") else None,
        "frozen": ["token_embedding (tied output head)"] if noise == "gauss" else [],
        "prompt_lengths": [min_prompt, max_prompt],
        "loss": f"next-{'byte' if tokenizer is None else 'token'} cross-entropy of the predictions at positions >= P - 1 (clean continuation)",
        "corpus": _lm_corpus_record(train_files, heldout_files, stream, heldout_data, train_data),
        **_lm_run_record(model, seed, steps, batch_size, context, learning_rate, warmup_steps, weight_decay,
                         smoothed_loss, train_seconds, train_cpu_seconds),
        **stored,
    }
    if evaluate:
        assert base_model is not None
        start_eval = time.perf_counter()
        metrics.update(_lm_clean_metrics(model, heldout_data, root, tokenizer))
        slice_texts = lm_heldout_slice(root)
        settings = {"prompt_length": FINETUNE_EVAL_PROMPT_LENGTH, "stride": FINETUNE_EVAL_STRIDE}
        smoothed = {"noise": noise, "noise_level": level, "copies": FINETUNE_EVAL_COPIES, "seed": EVAL_NOISE_SEED,
                    "mask_token_id": mask_token_id if noise in ("ablate", "delete") else None, **settings}
        if noise == "ablate":
            smoothed["keep"] = ablation_keep(level, FINETUNE_EVAL_PROMPT_LENGTH)
        for key, evaluated in (("model", model), ("base", base_model)):
            smoothed[key] = lm_smoothed_metrics(evaluated, slice_texts, noise, level, copies=FINETUNE_EVAL_COPIES,
                                                mask_token_id=mask_token_id, tokenizer=tokenizer, **settings)
            smoothed[f"{key}_unsmoothed"] = lm_smoothed_metrics(evaluated, slice_texts, None, tokenizer=tokenizer, **settings)
        smoothed["num_prompts"] = smoothed["model"].get("num_predicted_tokens", smoothed["model"]["num_predicted_bytes"])
        metrics["smoothed_heldout_slice"] = smoothed
        metrics["eval_seconds"] = round(time.perf_counter() - start_eval, 1)
    return model, metrics


@torch.no_grad()
def lm_smoothed_metrics(
    model: CodeLM,
    texts: Sequence[str | bytes],
    noise: str | None,
    level: float = 0.0,
    *,
    prompt_length: int = FINETUNE_EVAL_PROMPT_LENGTH,
    stride: int = FINETUNE_EVAL_STRIDE,
    copies: int = FINETUNE_EVAL_COPIES,
    mask_token_id: int = ABLATION_MASK_TOKEN,
    seed: int = EVAL_NOISE_SEED,
    batch_prompts: int = 8,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Return the next-byte metrics of the smoothed predictor on fixed-length prompts of texts.

    The prompts are the bytes [s, s + prompt_length) of each text for s = 0, stride, 2·stride, ... (while
    the next byte exists), each followed by its next byte. The smoothed next-byte distribution is the mean
    softmax over `copies` perturbed copies of the prompt (token ablation with k = `ablation_keep(level,
    prompt_length)`, or Gaussian noise of σ = level on the prompt embeddings; the distribution of
    `smoothgen.generative.SmoothedLM`'s first step, with the copies drawn here from a seeded torch
    generator, the same draws for every model of the same width). noise=None scores the model itself on
    the same prompts (one clean copy).

    Args:
        model: A `CodeLM` (or a model with its call convention and ``context_length``).
        texts: Strings (encoded as UTF-8) or bytes.
        noise: ``"ablate"``, ``"gauss"``, ``"delete"`` or None.
        level: Keep fraction, σ or deletion probability (ignored for None).
        prompt_length: Bytes per prompt.
        stride: Bytes between consecutive prompt starts in a text (a deterministic subsample).
        copies: Perturbed copies per prompt.
        mask_token_id: The ablation MASK token.
        seed: Seed of the perturbations.
        batch_prompts: Prompts per forward pass.
        tokenizer: None for a byte-level model; else its tokenizer (prompts and targets are then its tokens).

    Returns:
        ``num_predicted_bytes`` (the number of prompts), ``accuracy`` (argmax of the mean distribution),
        ``nll_nats_per_byte``, ``bits_per_byte`` and ``perplexity`` of the mean distribution, and
        ``mean_top_probability``, the mean over prompts of the largest mean probability. With noise,
        also ``plugin_threshold`` (1/2 + Δ_1 = 1/2 + k/P for ablation, 1/2 for Gaussian noise) and
        ``plugin_fraction_above_threshold``: the fraction of prompts whose top mean probability exceeds it,
        a plug-in estimate (no confidence bound) of how often the first step could be certified (against 1
        substituted token; against some embedding radius > 0).
    """
    prompt_length = check_count(prompt_length, "prompt_length")
    stride, copies = check_count(stride, "stride"), check_count(copies, "copies")
    batch_prompts = check_count(batch_prompts, "batch_prompts")
    if prompt_length > int(model.context_length):
        raise InvalidParameterError(f"prompt_length {prompt_length} exceeds the context length {model.context_length}")
    if noise is None:
        copies = 1
    else:
        noise, level = _check_noise(noise, level)
    prompts, targets = [], []
    for data in _token_ids(texts, tokenizer):
        for start in range(0, len(data) - prompt_length, stride):
            prompts.append(list(data[start : start + prompt_length]))
            targets.append(data[start + prompt_length])
    if not prompts:
        raise InvalidParameterError(f"no text is longer than the prompt length {prompt_length}")
    ids_all, target_all = torch.tensor(prompts, dtype=torch.int64), torch.tensor(targets, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    table = model.get_input_embeddings().weight
    lengths = torch.full((copies,), prompt_length, dtype=torch.int64)
    was_training = model.training
    model.eval()
    nll, correct, top = 0.0, 0, []
    try:
        for ids, target in zip(ids_all.split(batch_prompts), target_all.split(batch_prompts)):
            if noise is None:
                logits = model(inputs_embeds=table[ids]).logits[:, -1].double()
            elif noise == "delete":  # copies of different lengths, padded at the end: read each at its last byte
                deleted, kept = zip(*[_delete_prompts(row.expand(copies, -1), lengths, level, mask_token_id, generator)
                                      for row in ids])
                deleted, kept = torch.cat(deleted), torch.cat(kept)
                out = model(inputs_embeds=table[deleted]).logits
                logits = out[torch.arange(out.shape[0]), kept - 1].double()
            else:  # prompt by prompt, so the draws of a prompt do not depend on batch_prompts
                embeds = torch.cat([_perturb_prompts(model, row.expand(copies, -1), lengths, noise, level,
                                                     mask_token_id, generator) for row in ids])
                logits = model(inputs_embeds=embeds).logits[:, -1].double()
            log_mean = torch.logsumexp(logits.log_softmax(-1).view(len(ids), copies, -1), dim=1) - math.log(copies)
            nll -= float(log_mean.gather(1, target[:, None]).sum())
            correct += int((log_mean.argmax(-1) == target).sum())
            top.append(log_mean.max(-1).values.exp())
    finally:
        model.train(was_training)
    num_bytes = None if tokenizer is None else sum(tokenizer.byte_length(int(t)) for t in target_all.tolist())
    metrics = _metrics_from(nll, correct, len(prompts), num_bytes)
    top_probability = torch.cat(top)
    metrics["mean_top_probability"] = float(top_probability.mean())
    if noise is not None:
        # Δ_1 = 1 − C(P − 1, k)/C(P, k) = k/P (docs/theory.md §4g); deletion: Δ_1 = 1 − p (§4j).
        threshold = {"ablate": 0.5 + ablation_keep(level, prompt_length) / prompt_length, "gauss": 0.5,
                     "delete": 0.5 + (1 - level)}[noise]
        metrics["plugin_threshold"] = threshold
        metrics["plugin_fraction_above_threshold"] = float((top_probability > threshold).double().mean())
    return metrics


# --------------------------------------------------------------------------------------------------
# The text-to-digit diffusion model (a diffusers UNet conditioned on a real sentence encoder)
# --------------------------------------------------------------------------------------------------

TEXT_DDPM_NAME = "text_digits_ddpm"
TEXT_DDPM_FILENAME = f"{TEXT_DDPM_NAME}.safetensors"
DEFAULT_TEXT_DDPM_EPOCHS = 300
"""3 300 steps of 128 images: about 15 minutes on one CPU thread (0.26 s a step measured on the 2-core
machine while other jobs ran), plus a few minutes of evaluation."""
TEXT_DDPM_COND_SIGMAS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2)
"""Gaussian noise on the 384-d unit-norm prompt embedding during training, one level drawn per image, so
that the model keeps its quality when smoothed at these σ (a noise vector of norm ≈ 19.6σ)."""
TEXT_DDPM_P_UNCOND = 0.1
"""Classifier-free-guidance dropout: the probability that a training image gets the null (zero) conditioning."""
TEXT_DDPM_EVAL_SIGMAS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2)
"""Smoothing σ at which the generated samples' accuracy is recorded (0: the unsmoothed model)."""
TEXT_DDPM_EVAL_PER_PROMPT = 10
TEXT_DDPM_EVAL_SEED = 2024


def _text_prompt_embeddings(encoder: Any = None) -> dict[str, Any]:
    """The training and held-out prompts and their embeddings by the real encoder, computed once."""
    from smoothgen.models import text_digits

    encoder = text_digits.load_text_encoder() if encoder is None else encoder
    train_prompts, train_digits = text_digits.prompt_table(text_digits.TRAIN_TEMPLATES)
    heldout_prompts, heldout_digits = text_digits.prompt_table(text_digits.HELDOUT_TEMPLATES)
    embeddings = text_digits.encode_prompts(train_prompts + heldout_prompts, encoder)
    return {
        "train_prompts": train_prompts,
        "train_digits": torch.tensor(train_digits),
        "train": embeddings[: len(train_prompts)],
        "heldout_prompts": heldout_prompts,
        "heldout_digits": torch.tensor(heldout_digits),
        "heldout": embeddings[len(train_prompts):],
    }


def _prompt_geometry(prompts: dict[str, Any]) -> dict[str, float]:
    """How far held-out prompts lie from the training prompts of their digit and of other digits (ℓ2)."""
    distances = torch.cdist(prompts["heldout"].double(), prompts["train"].double())
    same = prompts["heldout_digits"][:, None] == prompts["train_digits"][None, :]
    nearest_same = distances.masked_fill(~same, math.inf).min(dim=1).values
    nearest_other = distances.masked_fill(same, math.inf).min(dim=1).values
    return {
        "heldout_to_nearest_train_same_digit_median": float(nearest_same.median()),
        "heldout_to_nearest_train_other_digit_median": float(nearest_other.median()),
        "heldout_nearer_to_same_digit_share": float((nearest_same < nearest_other).double().mean()),
    }


def _mean_pairwise_l2(images: torch.Tensor) -> float:
    flat = images.reshape(images.shape[0], -1).double()
    m = flat.shape[0]
    return float(torch.pdist(flat).sum() * 2 / (m * (m - 1))) if m > 1 else 0.0


@torch.no_grad()
def text_ddpm_metrics(
    unet: nn.Module,
    prompts: dict[str, Any],
    *,
    sigmas: Sequence[float] = TEXT_DDPM_EVAL_SIGMAS,
    per_prompt: int = TEXT_DDPM_EVAL_PER_PROMPT,
    num_steps: int | None = None,
    guidance: float = 0.0,
    seed: int = TEXT_DDPM_EVAL_SEED,
    batch_size: int = 256,
) -> dict[str, Any]:
    """The clean digits classifier's accuracy on samples generated from each prompt, smoothed or not.

    For every σ (0: the unsmoothed generator), `per_prompt` samples of every held-out prompt (and
    max(2, per_prompt // 2) of every training prompt) are generated from e + σ·ε, ε drawn by the engine's
    keyed noise exactly as `SmoothedConditionalDiffusion` draws it (prompt k: `RandomStream(seed, k)`),
    in batches that mix prompts, and classified by the embedded clean classifier (`load_classifier(0.0)`).
    Diversity: the mean pairwise ℓ2 distance between the samples of one prompt, beside the same figure
    for test images of one digit.

    Returns:
        A record: accuracy per held-out template and per digit, overall held-out and training-template
        accuracy, retention (accuracy at σ over accuracy at 0), diversity, and the sampler settings.
    """
    from smoothgen.conditional import DiffusersGenerator
    from smoothgen.engine import NoiseSource, Purpose, RandomStream
    from smoothgen.models import load_classifier
    from smoothgen.models import text_digits

    num_steps = text_digits.DEFAULT_NUM_STEPS if num_steps is None else num_steps
    classifier = load_classifier(0.0)
    generator = DiffusersGenerator(
        unet, text_digits.make_scheduler("ddim"), (text_digits.EMBED_DIM,), num_steps=num_steps, guidance=guidance,
        null_conditioning=text_digits.null_conditioning(), condition_on=text_digits.conditioning_kwargs,
    ).eval()
    templates = {"heldout": text_digits.HELDOUT_TEMPLATES, "train": text_digits.TRAIN_TEMPLATES}
    counts = {"heldout": per_prompt, "train": max(2, per_prompt // 2)}
    by_sigma: dict[str, Any] = {}
    for level, sigma in enumerate(sigmas):
        entry: dict[str, Any] = {}
        for part, split in enumerate(("heldout", "train")):
            embeds, digits, m = prompts[split], prompts[f"{split}_digits"], counts[split]
            noisy = torch.empty(len(embeds), m, embeds.shape[1])
            for k in range(len(embeds)):
                if sigma == 0:
                    noisy[k] = embeds[k]
                else:
                    key = RandomStream(seed, k + 10_000 * part).key(Purpose.ESTIMATION)
                    NoiseSource(embeds[k], float(sigma), m, key).fill(noisy[k], 0)
            generator.reseed(seed, 100 * level + part)
            flat = noisy.reshape(-1, embeds.shape[1])
            images = torch.cat([generator(flat[i:i + batch_size]) for i in range(0, len(flat), batch_size)])
            images = images.reshape(len(embeds), m, *images.shape[1:])
            predicted = torch.cat([classifier(images[i:i + 64].flatten(0, 1)) for i in range(0, len(images), 64)])
            hits = (predicted.argmax(dim=1).reshape(len(embeds), m) == digits[:, None]).double().mean(dim=1)
            spread = [_mean_pairwise_l2(images[k]) for k in range(len(embeds))]
            per_template = hits.reshape(10, len(templates[split]))  # digit-major
            entry[f"{split}_accuracy"] = float(hits.mean())
            entry[f"{split}_diversity"] = float(np.mean(spread))
            if split == "heldout":
                entry["heldout_accuracy_by_template"] = {
                    t: round(float(a), 4) for t, a in zip(templates[split], per_template.mean(dim=0).tolist())
                }
                entry["heldout_accuracy_by_digit"] = [round(float(a), 4) for a in per_template.mean(dim=1).tolist()]
        by_sigma[str(float(sigma))] = entry
    base = by_sigma.get("0.0")
    if base is not None:
        for entry in by_sigma.values():
            entry["heldout_retention"] = entry["heldout_accuracy"] / base["heldout_accuracy"] if base["heldout_accuracy"] else None
    split = load_digits_split()
    reference = [
        _mean_pairwise_l2(torch.from_numpy(split.x_test[split.y_test == k][:per_prompt])) for k in range(NUM_CLASSES)
    ]
    return {
        "sampler": f"DDIMScheduler, eta=0, {num_steps} steps, guidance w={guidance}",
        "classifier": "digits_cnn_sigma0.0",
        "samples_per_heldout_prompt": counts["heldout"],
        "samples_per_train_prompt": counts["train"],
        "eval_seed": seed,
        "by_sigma": by_sigma,
        "test_images_diversity": float(np.mean(reference)),
    }


def train_text_ddpm(
    epochs: int = DEFAULT_TEXT_DDPM_EPOCHS,
    seed: int = DEFAULT_SEED,
    *,
    cond_sigmas: Sequence[float] = TEXT_DDPM_COND_SIGMAS,
    p_uncond: float = TEXT_DDPM_P_UNCOND,
    batch_size: int = DDPM_BATCH_SIZE,
    learning_rate: float = LEARNING_RATE,
    progress: bool = False,
    evaluate: bool = True,
    eval_per_prompt: int = TEXT_DDPM_EVAL_PER_PROMPT,
    encoder: Any = None,
    **unet_kwargs: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train the text-to-digit diffusers UNet (`smoothgen.models.text_digits`) on the digits training split.

    Every training image of digit k is paired with a random training-template prompt of k, embedded by
    the real all-MiniLM-L6-v2 (all prompt embeddings are computed once, up front), plus N(0, s²I) noise
    on the embedding with s drawn per image from `cond_sigmas` (the noise smoothing adds); with
    probability p_uncond the conditioning is the zero vector instead (classifier-free guidance dropout).
    The ε-prediction loss of Ho et al. (2020) with the diffusers DDPMScheduler's forward process
    (`text_digits.SCHEDULER_KWARGS`), Adam with a cosine learning-rate decay. Held-out templates are
    never seen.

    Args:
        epochs: Passes over the training split.
        seed: Seed of initialization, shuffling, timesteps, noise, prompt choice and dropout.
        cond_sigmas: Embedding noise levels (≥ 0), one drawn per image.
        p_uncond: Probability of the null conditioning, in [0, 1].
        batch_size: Images per optimizer step.
        learning_rate: Initial Adam learning rate.
        progress: Whether to show a tqdm progress bar on stderr.
        evaluate: Whether to add `text_ddpm_metrics` (generation accuracy per held-out template).
        eval_per_prompt: Samples per held-out prompt in that evaluation.
        encoder: A loaded sentence encoder (default: the packaged all-MiniLM-L6-v2).
        **unet_kwargs: Overrides of `text_digits.UNET_KWARGS`.

    Returns:
        The trained UNet in eval mode, and its metadata record.
    """
    from smoothgen.models import text_digits

    epochs = check_count(epochs, "epochs")
    seed = check_count(seed, "seed", minimum=0)
    batch_size = check_count(batch_size, "batch_size")
    learning_rate = check_positive(learning_rate, "learning_rate")
    p_uncond = check_positive(p_uncond, "p_uncond", allow_zero=True)
    if p_uncond > 1.0:
        raise InvalidParameterError(f"p_uncond must lie in [0, 1], got {p_uncond}")
    if isinstance(cond_sigmas, (str, bytes)) or not len(cond_sigmas):
        raise InvalidParameterError(f"cond_sigmas must be a non-empty sequence of numbers >= 0, got {cond_sigmas!r}")
    cond_sigmas = tuple(check_positive(s, "cond_sigmas", allow_zero=True) for s in cond_sigmas)
    kwargs = {**text_digits.UNET_KWARGS, **unet_kwargs}
    prompts = _text_prompt_embeddings(encoder)
    per_digit = len(text_digits.TRAIN_TEMPLATES)
    train_embeds = prompts["train"]
    split = load_digits_split()
    x_train = torch.from_numpy(split.x_train)
    y_train = torch.from_numpy(split.y_train).long()
    scheduler = text_digits.make_scheduler("ddpm")
    levels = torch.tensor(cond_sigmas, dtype=torch.float32)
    start_time, start_cpu = time.perf_counter(), time.process_time()
    with _deterministic(seed) as generator:
        model = text_digits.build_unet(**unet_kwargs)

        def batch_loss(idx: torch.Tensor) -> torch.Tensor:
            b = len(idx)
            x0 = 2.0 * x_train[idx] - 1.0
            t = torch.randint(scheduler.config.num_train_timesteps, (b,), generator=generator)
            eps = torch.randn(x0.shape, generator=generator)
            x_t = scheduler.add_noise(x0, eps, t)
            choice = torch.randint(per_digit, (b,), generator=generator)
            e = train_embeds[y_train[idx] * per_digit + choice]
            s = levels[torch.randint(len(levels), (b,), generator=generator)]
            e = e + s[:, None] * torch.randn(e.shape, generator=generator)
            drop = torch.rand(b, generator=generator) < p_uncond
            e = torch.where(drop[:, None], torch.zeros_like(e), e)
            prediction = model(x_t, t, **text_digits.conditioning_kwargs(e)).sample
            return torch.mean((prediction - eps) ** 2)

        epoch_loss = _fit(model, len(x_train), batch_loss, epochs, batch_size, learning_rate, generator,
                          "text-ddpm", progress)
    train_seconds, train_cpu_seconds = time.perf_counter() - start_time, time.process_time() - start_cpu
    import diffusers

    record: dict[str, Any] = {
        "kind": "text_ddpm",
        "architecture": type(model).__name__,
        "library": f"diffusers {diffusers.__version__}",
        "kwargs": kwargs,
        "scheduler": {"class": "DDPMScheduler (training), DDIMScheduler (sampling)", **text_digits.SCHEDULER_KWARGS},
        "conditioning": "sentence embedding e [384] as encoder_hidden_states [b, 1, 384] and class_labels [b, 384]",
        "null_conditioning": "zeros(384)",
        "encoder": text_digits.encoder_record(),
        "train_templates": list(text_digits.TRAIN_TEMPLATES),
        "heldout_templates": list(text_digits.HELDOUT_TEMPLATES),
        "cond_noise_sigmas": list(cond_sigmas),
        "p_uncond": p_uncond,
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "num_parameters": _num_parameters(model),
        "final_train_loss": epoch_loss,
        **_timing_record(train_seconds, train_cpu_seconds),
        "prompt_geometry": _prompt_geometry(prompts),
    }
    if evaluate:
        start_eval = time.perf_counter()
        record["generation"] = text_ddpm_metrics(model, prompts, per_prompt=eval_per_prompt)
        record["eval_seconds"] = round(time.perf_counter() - start_eval, 1)
    return model, record


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_tensors(tensors: dict[str, torch.Tensor], out_dir: Path, filename: str, record: dict[str, Any],
                 description: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save named tensors (a model's or an adapter's state dict) as safetensors, whole or not at all, and return
    the metadata record completed with ``file`` and ``sha256``.

    Args:
        tensors: The tensors by name.
        out_dir: Destination folder (created if missing).
        filename: Weights file name inside out_dir.
        record: Metadata record of the training function.
        description: What the file header says (default: the record's architecture).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    # One metadata key only: safetensors writes the header metadata in hash-map order, so several
    # keys would make the file bytes (and its sha256 in models.json) differ between identical runs.
    description = {"architecture": record["architecture"]} if description is None else description
    header = {"smoothgen": json.dumps(description, sort_keys=True)}
    write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    return {**record, "file": filename, "sha256": _sha256(path)}


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
    return save_tensors(model.state_dict(), out_dir, filename, record,
                        {"architecture": record["architecture"], "kwargs": record["kwargs"]})


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
    write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return metadata


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m smoothgen.models.train",
        description=(
            "Train the embedded models deterministically and save them as safetensors, with "
            "their test metrics merged into models.json. Classifiers (DigitsCNN) are trained with "
            "Gaussian noise augmentation x + sigma*N(0, I), the noise randomized smoothing certifies; "
            "the autoencoder (DigitsAutoencoder) learns to reconstruct clean images from inputs with "
            f"noise sigma drawn per batch from {list(AUTOENCODER_NOISE_SIGMAS)}. --sigma 0 trains a clean "
            "classifier (no noise), the one behind the DDPM purifier. The DDPM (DigitsDDPM) is a "
            "class-conditional noise-prediction network with classifier-free-guidance dropout. The code LM "
            "(CodeLM) is a byte-level causal transformer trained on the running interpreter's standard "
            "library sources, with about 5% of the files held out for evaluation. lm-ablate and lm-gauss fine-tune the "
            "code LM on the smoothing distribution of smoothgen.generative.SmoothedLM: prompts (the first P bytes "
            f"of each window, P uniform in {list(FINETUNE_PROMPT_LENGTHS)}) with all but round(f*P) positions "
            f"replaced by byte {ABLATION_MASK_TOKEN} (token ablation, keep fraction f), or with N(0, sigma^2 I) "
            "added to their embeddings (embedding table, tied to the output head, frozen); lm-delete with each "
            "prompt byte deleted with probability p (token deletion, the rest closes up). The continuation "
            "stays clean and carries the loss. Their records add clean and smoothed held-out metrics, and the "
            "code LM's smoothed metrics at the same noise."
        ),
    )
    parser.add_argument(
        "what",
        choices=["classifier", "autoencoder", "ddpm", "lm", "lm-ablate", "lm-gauss", "lm-delete", "all", "text-ddpm",
                 "encoder-ablate"],
        help=(
            "which models to train: the classifiers, the autoencoder, the DDPM, the code LM, the code LM "
            "fine-tuned for token ablation, Gaussian embedding noise or token deletion, or all of them (all "
            f"fine-tunes the code LM it has just trained, at the keep fractions {list(DEFAULT_LM_KEEP_FRACTIONS)}, "
            f"sigmas {list(DEFAULT_LM_GAUSS_SIGMAS)} and deletion probabilities {list(DEFAULT_LM_DELETE_PROBS)})"
        ),
    )
    parser.add_argument(
        "--sigma",
        type=float,
        nargs="+",
        default=None,
        metavar="S",
        help=(
            f"training noise level(s) of the classifiers, 0 = clean (default: {' '.join(map(str, DEFAULT_SIGMAS))}), "
            f"or, for lm-gauss, of the embedding noise, > 0 (default: {' '.join(map(str, DEFAULT_LM_GAUSS_SIGMAS))})"
        ),
    )
    parser.add_argument(
        "--keep-fraction",
        type=float,
        nargs="+",
        default=None,
        metavar="F",
        help=(
            "lm-ablate only: fraction(s) of the prompt positions each ablated copy keeps, in (0, 1] "
            f"(default: {' '.join(map(str, DEFAULT_LM_KEEP_FRACTIONS))})"
        ),
    )
    parser.add_argument(
        "--delete-prob",
        type=float,
        nargs="+",
        default=None,
        metavar="P",
        help=(
            "lm-delete only: probability with which each prompt byte is deleted, in (0, 1) "
            f"(default: {' '.join(map(str, DEFAULT_LM_DELETE_PROBS))})"
        ),
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
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="S",
        help=(
            f"optimizer steps of every LM the command trains (default: {DEFAULT_LM_STEPS} for the code LM, "
            f"{DEFAULT_FINETUNE_STEPS} for lm-ablate and lm-gauss)"
        ),
    )
    parser.add_argument(
        "--cond-sigma",
        type=float,
        nargs="+",
        default=None,
        metavar="S",
        help=(
            "text-ddpm only (the text-to-digit diffusers UNet conditioned on all-MiniLM-L6-v2 prompt embeddings, "
            "not part of all): Gaussian noise levels on the prompt embedding during training, one drawn per image "
            f"(default: {' '.join(map(str, TEXT_DDPM_COND_SIGMAS))})"
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
    lm_kinds = ("lm", "lm-ablate", "lm-gauss", "lm-delete")
    if args.sigma is not None and args.what in ("autoencoder", "ddpm", "lm", "lm-ablate", "lm-delete"):
        parser.error("--sigma applies to classifiers and lm-gauss only")
    if args.keep_fraction is not None and args.what != "lm-ablate":
        parser.error("--keep-fraction applies to lm-ablate only")
    if args.delete_prob is not None and args.what != "lm-delete":
        parser.error("--delete-prob applies to lm-delete only")
    delete_probs = DEFAULT_LM_DELETE_PROBS if args.delete_prob is None else tuple(args.delete_prob)
    if not all(0 < p < 1 for p in delete_probs):
        parser.error(f"--delete-prob must lie in (0, 1), got {list(delete_probs)}")
    if args.epochs is not None and args.what in lm_kinds:
        parser.error("--epochs does not apply to the code LMs; use --steps")
    if args.steps is not None and args.what not in (*lm_kinds, "all", "encoder-ablate"):
        parser.error("--steps applies to the code LMs and encoder-ablate only")
    if args.what == "text-ddpm" and args.sigma is not None:
        parser.error("text-ddpm takes --cond-sigma, not --sigma")
    if args.cond_sigma is not None and args.what != "text-ddpm":
        parser.error("--cond-sigma applies to text-ddpm only")
    if args.cond_sigma is not None and not all(math.isfinite(s) and s >= 0 for s in args.cond_sigma):
        parser.error(f"--cond-sigma must be finite and >= 0, got {args.cond_sigma}")
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    sigmas = DEFAULT_SIGMAS if args.sigma is None else tuple(args.sigma)
    for sigma in sigmas:
        if not (math.isfinite(sigma) and sigma >= 0):
            parser.error(f"--sigma must be finite and >= 0, got {sigma}")
    gauss_sigmas = DEFAULT_LM_GAUSS_SIGMAS if args.sigma is None or args.what != "lm-gauss" else tuple(args.sigma)
    if not all(math.isfinite(s) and s > 0 for s in gauss_sigmas):
        parser.error(f"--sigma must be finite and > 0 for lm-gauss, got {list(gauss_sigmas)}")
    keep_fractions = DEFAULT_LM_KEEP_FRACTIONS if args.keep_fraction is None else tuple(args.keep_fraction)
    if not all(0 < f <= 1 for f in keep_fractions):
        parser.error(f"--keep-fraction must lie in (0, 1], got {list(keep_fractions)}")
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
    base: str | CodeLM = LM_NAME
    if args.what in ("lm", "all"):
        steps = DEFAULT_LM_STEPS if args.steps is None else args.steps
        model, record = train_lm(steps, args.seed, progress=True)
        record = save_model(model, out_dir, LM_FILENAME, record)
        records[LM_NAME] = record
        base = model  # `all` fine-tunes the code LM it has just trained
        heldout, unigram = record["heldout"], record["heldout_unigram_baseline"]
        print(
            f"{record['file']}: held-out next-byte accuracy {heldout['accuracy']:.4f}, "
            f"{heldout['bits_per_byte']:.3f} bits/byte (unigram baseline {unigram['accuracy']:.4f}, "
            f"{unigram['bits_per_byte']:.3f} bits/byte), trained in {record['train_seconds']:.0f} s",
            file=sys.stderr,
        )
    finetunes = [("ablate", f) for f in keep_fractions if args.what in ("lm-ablate", "all")]
    finetunes += [("gauss", s) for s in gauss_sigmas if args.what in ("lm-gauss", "all")]
    finetunes += [("delete", p) for p in delete_probs if args.what in ("lm-delete", "all")]
    for noise, level in finetunes:
        steps = DEFAULT_FINETUNE_STEPS if args.steps is None else args.steps
        model, record = finetune_lm(noise, level, steps, args.seed, base=base, progress=True)
        if isinstance(base, CodeLM):
            record.update(base_model=LM_NAME, base_sha256=records[LM_NAME]["sha256"])
        name = finetuned_lm_name(noise, level)
        record = save_model(model, out_dir, f"{name}.safetensors", record)
        records[name] = record
        clean, smoothed = record["heldout_slice"], record["smoothed_heldout_slice"]
        print(
            f"{record['file']}: held-out slice accuracy {clean['accuracy']:.4f} ({clean['bits_per_byte']:.3f} "
            f"bits/byte) clean; smoothed ({noise} {level}) {smoothed['model']['accuracy']:.4f} "
            f"({smoothed['model']['bits_per_byte']:.3f} bits/byte), code LM smoothed "
            f"{smoothed['base']['accuracy']:.4f} ({smoothed['base']['bits_per_byte']:.3f} bits/byte); trained in "
            f"{record['train_seconds']:.0f} s",
            file=sys.stderr,
        )
    if args.what == "text-ddpm":
        epochs = DEFAULT_TEXT_DDPM_EPOCHS if args.epochs is None else args.epochs
        cond_sigmas = TEXT_DDPM_COND_SIGMAS if args.cond_sigma is None else tuple(args.cond_sigma)
        model, record = train_text_ddpm(epochs, args.seed, cond_sigmas=cond_sigmas, progress=True)
        record = save_model(model, out_dir, TEXT_DDPM_FILENAME, record)
        records[TEXT_DDPM_NAME] = record
        accuracy = ", ".join(
            f"sigma={s}: {v['heldout_accuracy']:.3f}" for s, v in record["generation"]["by_sigma"].items()
        )
        print(f"{record['file']}: held-out-template generation accuracy {accuracy}; trained in "
              f"{record['train_seconds']:.0f} s", file=sys.stderr)
    if args.what == "encoder-ablate":
        from smoothgen.models.ablation_encoder import ABLATION_ENCODER_FILENAME, ABLATION_ENCODER_NAME, train_ablation_encoder

        kwargs = {} if args.steps is None else {"steps": args.steps}
        tensors, record = train_ablation_encoder(seed=args.seed, progress=True, **kwargs)
        record = save_tensors(tensors, out_dir, ABLATION_ENCODER_FILENAME, record)
        records[ABLATION_ENCODER_NAME] = record
        held = record["heldout"]
        print(f"{record['file']}: held-out cosine distance of ablated copies (keep 0.3) to the whole sentence "
              f"{held['0.3']['cosine_distance_to_whole']:.3f} (original model "
              f"{record['heldout_original']['0.3']['cosine_distance_to_whole']:.3f}); trained in "
              f"{record['train_seconds']:.0f} s", file=sys.stderr)
    update_metadata(out_dir, records)
    print(f"wrote {out_dir / METADATA_FILENAME} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
