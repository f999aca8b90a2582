"""Train the class-conditional digits DDPM, the purifier of DDS / DiffSmooth.

``python -m smoothgen.models.train ddpm`` (`smoothgen.models.train`)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from smoothgen.errors import InvalidParameterError
from smoothgen.models.data import NUM_CLASSES, load_digits_split
from smoothgen.models.ddpm import DigitsDDPM
from smoothgen.validate import check_count, check_positive
from smoothgen.models.train_common import DEFAULT_SEED, EVAL_NOISE_SEED, _deterministic, _num_parameters
from smoothgen.models.train_digits import LEARNING_RATE, _fit, _noisy


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
