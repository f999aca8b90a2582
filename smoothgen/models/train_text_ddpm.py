"""Train the text-to-digit model: a diffusers UNet conditioned on a real sentence encoder.

``python -m smoothgen.models.train text-ddpm`` (`smoothgen.models.train`)."""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from smoothgen.errors import InvalidParameterError
from smoothgen.models.data import NUM_CLASSES, load_digits_split
from smoothgen.validate import check_count, check_positive
from smoothgen.models.train_common import DEFAULT_SEED, _deterministic, _num_parameters, _timing_record
from smoothgen.models.train_digits import LEARNING_RATE, _fit
from smoothgen.models.train_ddpm import DDPM_BATCH_SIZE


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
