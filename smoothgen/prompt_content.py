"""Content certificates in prompt edits: token ablation before the text encoder of a text-to-image model
(docs/theory.md §1, §4f, §4g).

`PromptContentSmoother` smooths a text-conditioned generator over the TOKENS of its prompt:

    prompt ids x ──ablate (keep k of the P perturbed positions, mask the others)──> x̃
                 ──text encoder E──> conditioning (pooled sentence embedding [H], or last_hidden_state [L, H])
                 ──generator G (its own randomness ω)──> image ──content classifier c──> class

and certifies the class of what is generated with Cohen's CERTIFY under ablation (docs/theory.md §1 with
§4g's edit bound): ĉ from n0 selection copies, n_A among n FRESH estimation copies (the engine's
Purpose.SELECTION and Purpose.ESTIMATION streams pick the kept subsets; consecutive, hence disjoint,
stretches of the generator's own keyed stream give ω), p_lower = Clopper–Pearson(n_A, n, α) minus the
subset-tie charge τ, and the class holds against r substituted tokens iff p_lower > 1/2 + Δ_r with
Δ_r = 1 − C(P − r, k)/C(P, k) (`smoothgen.generation.noise.ablation_delta`, compared in exact rationals by
`ablation_radius`).

Why it is sound: h(x̃, ω) = c(G(E(x̃), ω)) is a randomized base classifier of the ablated prompt whose
randomness ω is independent of the kept subset. If x' differs from x in r perturbed positions, the ablated
copies of x and x' coincide unless the kept subset meets an edited position (probability Δ_r), and given
equal ablated prompts the law of ω is the same, so |P_x(h = A) − P_x'(h = A)| ≤ Δ_r for every class A.
On the 1 − α event p_lower ≤ P_x(h = A), p_lower > 1/2 + Δ_r gives P_x'(h = A) > 1/2: A is the smoothed
class at x'. Nothing about the encoder, the generator or the classifier is assumed beyond determinism of
the encoder given its input and independence of ω from the subset.

The perturbed positions M are positional (docs/theory.md §4g): the wrapper's `mask` (L booleans or a
callable of the length), minus the `protect`ed positions, minus the special tokens the tokenizer added,
all derived ONCE from the clean prompt x and then held fixed. The certificate is about the smoothed model
g_M over that fixed M, at every x' of x's length that differs from x only inside M in at most r positions.
Protected positions are always kept (never ablated), so an edit there is not covered. Insertions and
deletions change the token count and are not covered either.

Short prompts. A copy sees a token only when its kept subset contains that position. If the content (say
the digit word) occupies c of the P perturbed positions and copies that miss it generate something else,
then P_x(h = A) ≤ Δ_c, and one edit needs P_x(h = A) > 1/2 + Δ_1 = 1/2 + k/P. For c = 1 that is
k/P > 1/2 + k/P, and for c = 2 it needs Δ_2 − Δ_1 = k(P − k)/(P(P − 1)) > 1/2, which no k reaches: such a
prompt is never certified at r = 1, whatever the sample size. `protect` the content (it is then always
kept, and the certificate covers edits of the rest of the prompt), or state it redundantly.

Encoders: any Hugging Face text encoder with ``get_input_embeddings()``. One whose ``forward`` takes
``inputs_embeds`` (BERT, MiniLM, RoBERTa) is called as `smoothgen.encoders.SmoothedEncoder` calls it; one
that does not (``CLIPTextModel``, Stable Diffusion's text encoder) gets the ablated ``input_ids``, the
same prompt (an ablated copy is a token sequence). A ``sentence_transformers.SentenceTransformer`` is
unwrapped as in `SmoothedEncoder` (its pooling mode; its Normalize module turns on ``normalize``).
"""
from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from smoothgen import stats
from smoothgen.generation import noise as noise_spaces
from smoothgen.certificates import ABSTAIN
from smoothgen.conditional import ConditionalGenerator, _content_num_classes, _ContentVotes
from smoothgen.encoders import _hidden_states, _pooling, _sentence_transformer_parts
from smoothgen.engine import Purpose, RandomStream
from smoothgen.engine.noise import NoiseKey
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError
from smoothgen.generative import PromptSmoother, TokenAblation
from smoothgen.validate import check_alpha, check_count

__all__ = [
    "CONDITIONINGS",
    "PromptContentCertificate",
    "PromptContentSmoother",
    "PROTECTED_ADVICE",
    "SHORT_PROMPT_ADVICE",
    "ResolvedPrompt",
    "perturbed_positions",
    "token_edit_distance",
    "tokenize",
]

#: What the generator is conditioned on: the pooled sentence embedding [H] (the embedded text-to-digit
#: model), or the encoder's whole last hidden state [L, H] (Stable Diffusion's encoder_hidden_states).
CONDITIONINGS = ("pooled", "hidden")

#: Copies per encoder + generator call.
DEFAULT_BATCH_SIZE = 64

#: Estimation copies between two checks of the early abstention.
ABSTAIN_CHECK_EVERY = 100

#: Progress phases: `certify(progress=...)` is called as progress(phase, done, total).
SELECTION_PHASE, ESTIMATION_PHASE = "select", "certify"

#: Why a prompt whose content is protected may still abstain, in words.
PROTECTED_ADVICE = (
    "the protected positions are kept in every copy, so the copies disagree because the encoder and generator do not "
    "give the same content when the other positions are masked: use an encoder trained under this ablation, a "
    "larger keep (which costs certified edits: Delta_1 = k/P), or a longer prompt"
)

#: Why a short prompt abstains under ablation, in words (the abstention text and the CLI print it).
SHORT_PROMPT_ADVICE = (
    "under token ablation a copy sees a token only when its kept subset contains that position: if the content "
    "sits in c of the P perturbed positions and copies that miss it generate something else, its probability is "
    "at most Delta_c = 1 - C(P-c,k)/C(P,k), while one edit needs more than 1/2 + Delta_1 = 1/2 + k/P; for content "
    "in one or two tokens this is impossible for every k (c = 1: k/P against 1/2 + k/P), so protect the content "
    "(protect=, --protect: it is then always kept and the certificate covers edits of the rest) or state it "
    "redundantly"
)


# --------------------------------------------------------------------------------------------------
# Tokenization with spans
# --------------------------------------------------------------------------------------------------


def tokenize(tokenizer: Any, text: str, **kwargs: Any) -> tuple[list[int], list[tuple[int, int]] | None, list[bool] | None]:
    """(token ids, character span of each token or None, special-token flags or None) of a string.

    A Hugging Face tokenizer is called with ``return_offsets_mapping`` (fast tokenizers) and
    ``return_special_tokens_mask``; an object with only ``encode(str)`` gives ids alone. `kwargs` go to
    the tokenizer (e.g. ``padding="max_length", max_length=77`` for Stable Diffusion's CLIP prompts).

    Raises:
        InvalidInputError: no tokenizer, or one that returns no ids.
    """
    if tokenizer is None:
        raise InvalidInputError("a string prompt needs a tokenizer (pass tokenizer=...) or token ids")
    if callable(tokenizer) and not isinstance(tokenizer, type):
        out = None
        for extra in ({"return_offsets_mapping": True, "return_special_tokens_mask": True},
                      {"return_special_tokens_mask": True}, {}):
            try:
                out = tokenizer(text, **extra, **kwargs)
                break
            except (NotImplementedError, TypeError, ValueError):
                continue
        if isinstance(out, Mapping) or hasattr(out, "keys"):
            ids = out["input_ids"]
            offsets = out.get("offset_mapping") if hasattr(out, "get") else None
            special = out.get("special_tokens_mask") if hasattr(out, "get") else None
            ids = [int(v) for v in (ids.tolist() if hasattr(ids, "tolist") else ids)]
            offsets = None if offsets is None else [(int(a), int(b)) for a, b in offsets]
            special = None if special is None else [bool(v) for v in special]
            return ids, offsets, special
        if out is not None and not hasattr(tokenizer, "encode"):
            return [int(v) for v in out], None, None
    if hasattr(tokenizer, "encode"):
        return [int(v) for v in tokenizer.encode(text, **kwargs)], None, None
    raise InvalidInputError("tokenizer must be callable (a Hugging Face tokenizer) or have encode(str)")


def token_edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """The Levenshtein distance between two token sequences (insertions, deletions, substitutions)."""
    a, b = list(a), list(b)
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


# --------------------------------------------------------------------------------------------------
# The certificate
# --------------------------------------------------------------------------------------------------


def _positions_text(positions: Sequence[int], tokens: Sequence[str] | None) -> str:
    if not positions:
        return "none"
    if tokens is None:
        return ", ".join(str(p) for p in positions)
    return ", ".join(f"{p} ({tokens[p]!r})" for p in positions)


@dataclass(frozen=True)
class PromptContentCertificate:
    """The certified content of what a text-conditioned generator makes, against edited prompt tokens.

    With probability ≥ 1 − alpha over smoothgen's sampling: for every prompt x' of this prompt's length
    that differs from it in at most `certified_edits` of the perturbed positions `mask` (substitutions,
    any tokens), the smoothed content at x' is `prediction`: one generation from a randomly ablated copy
    of x' (kept subset and generator randomness drawn afresh) is classified `prediction` with probability
    > 1/2. Protected and special positions are never ablated, and an edit there is not covered; insertions
    and deletions are not covered (they change the token count). `statement` says it in words.

    Attributes:
        prediction: the certified class (the selected class when p_lower > 1/2), or ABSTAIN (−1).
        certified_edits: the largest r with p_lower > 1/2 + Δ_r (exact rationals); −1 when p_lower ≤ 1/2.
        edits: the r that was asked for; `certified` says whether certified_edits ≥ edits.
        p_lower: the one-sided (1 − alpha) Clopper–Pearson bound on P(class = selected) from the n
            estimation copies, minus noise_tv (0 on an early abstention).
        count: estimation copies classified `selected` (n_A); samples: estimation copies drawn (< n only on
            an early abstention the full run shares).
        selected: the class chosen from the n0 selection copies; p_selection: its share there.
        delta: Δ_edits = 1 − C(P − edits, k)/C(P, k) as a float; delta_exact: the same as "num/den".
        keep, mask_token_id: the ablation (k of the P perturbed positions kept).
        prompt_ids, tokens, prompt: the certified prompt (ids, token strings when a tokenizer gave them,
            and the text when it was a string).
        mask: the perturbed positions M (fixed, derived once from the clean prompt).
        protected: positions held fixed by `protect`; special: the tokenizer's special tokens (also fixed).
        noise_tv: τ, the chance of a tie among the Philox words that pick a copy's subset (charged).
        content: what the class is of, in words ("digit", "class").
        class_names: names of the classes, when given.
    """

    prediction: int
    certified_edits: int
    edits: int
    p_lower: float
    count: int
    selected: int
    p_selection: float
    n0: int
    n: int
    samples: int
    alpha: float
    seed: int | None
    request_id: int
    keep: int
    mask_token_id: int
    delta: float
    delta_exact: str
    prompt_ids: tuple[int, ...]
    mask: tuple[bool, ...]
    protected: tuple[int, ...]
    special: tuple[int, ...]
    num_classes: int
    noise_tv: float = 0.0
    tokens: tuple[str, ...] | None = None
    prompt: str | None = None
    content: str = "class"
    class_names: tuple[str, ...] | None = None
    noise: str = "ablation"

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN

    @property
    def certified(self) -> bool:
        """Certified at the `edits` asked for."""
        return not self.abstained and self.certified_edits >= self.edits

    @property
    def perturbed(self) -> int:
        """P, the number of perturbed positions."""
        return sum(self.mask)

    @property
    def perturbed_positions(self) -> tuple[int, ...]:
        return tuple(i for i, on in enumerate(self.mask) if on)

    def class_name(self, label: int) -> str:
        if self.class_names is not None and 0 <= label < len(self.class_names):
            return self.class_names[label]
        return str(label)

    def covers(self, edited: Sequence[int]) -> tuple[bool, str]:
        """Whether the certificate covers the prompt `edited` (token ids), and why (in words)."""
        edited = [int(v) for v in edited]
        if len(edited) != len(self.prompt_ids):
            return False, (f"changes the token count ({len(self.prompt_ids)} -> {len(edited)}): insertions and deletions "
                           "shift positions, and ablation certifies substitutions at fixed positions only")
        changed = [i for i, (a, b) in enumerate(zip(self.prompt_ids, edited)) if a != b]
        fixed = [i for i in changed if not self.mask[i]]
        if fixed:
            kind = "protected or special" if any(i in self.protected for i in fixed) else "unperturbed"
            return False, f"edits {kind} position(s) {fixed}, which the certificate holds fixed"
        if self.abstained:
            return False, "the certificate abstained"
        if len(changed) > self.certified_edits:
            return False, f"{len(changed)} substituted token(s), more than the {max(self.certified_edits, 0)} certified"
        return True, f"{len(changed)} substituted token(s) at perturbed positions {changed}"

    @property
    def advice(self) -> str:
        """Why a certificate at one edit may be out of reach, in words (shown when it is not certified)."""
        return PROTECTED_ADVICE if self.protected else SHORT_PROMPT_ADVICE

    @property
    def statement(self) -> str:
        """What the certificate says, in words a user reads."""
        where = _positions_text(self.perturbed_positions, self.tokens)
        fixed = []
        if self.protected:
            fixed.append(f"protected positions {_positions_text(self.protected, self.tokens)} are never ablated and "
                         "an edit there is not covered")
        if self.special:
            fixed.append(f"special tokens at {_positions_text(self.special, self.tokens)} are held fixed")
        tail = "; ".join(fixed + ["insertions and deletions are not covered (they change the token count)"])
        level = f"with probability >= {1 - self.alpha:g} over smoothgen's sampling"
        ablation = f"token ablation keeping {self.keep} of {self.perturbed} positions"
        if self.abstained:
            return (f"ABSTAIN: the generated {self.content} is not certified ({ablation}): the selected "
                    f"{self.content} {self.class_name(self.selected)} has p_lower = {self.p_lower:.4f}, not above 1/2; "
                    + self.advice)
        name = self.class_name(self.prediction)
        if self.certified_edits == 0:
            return (f"the generated {self.content} of this prompt itself is {name} ({level}; {ablation}), but no edit "
                    f"is covered: one edited token needs p_lower > 1/2 + Delta_1 = "
                    f"{0.5 + float(noise_spaces.ablation_delta(self.perturbed, self.keep, 1)):.4f}, and p_lower = "
                    f"{self.p_lower:.4f}; " + self.advice)
        r = self.certified_edits
        noun = "token" if r == 1 else "tokens"
        return (f"the generated {self.content} is {name} (a generation from a randomly ablated copy is classified "
                f"{name} with probability > 1/2) for every prompt that differs from this one in at most {r} {noun} "
                f"among positions {where}, {level} ({ablation}); {tail}")

    def to_record(self) -> dict[str, Any]:
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in record.items():
            if isinstance(value, tuple):
                record[name] = list(value)
        record.update(certified=self.certified, perturbed=self.perturbed, statement=self.statement)
        return record

    to_dict = to_record


# --------------------------------------------------------------------------------------------------
# The smoother
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedPrompt:
    """A prompt with its perturbed positions fixed (derived once from the clean prompt).

    Attributes:
        ids: token ids [L] (on the model's device).
        mask: bool [L], the perturbed positions M.
        protected, special: positions held fixed by `protect` and the tokenizer's special tokens.
        tokens: token strings (when the tokenizer can give them), text: the prompt as a string (or None).
    """

    ids: torch.Tensor
    mask: torch.Tensor
    protected: tuple[int, ...]
    special: tuple[int, ...]
    tokens: tuple[str, ...] | None
    text: str | None

    @property
    def perturbed(self) -> int:
        return int(self.mask.sum())


def _normalizes(model: Any) -> bool:
    """Whether a sentence-transformers model ends in a Normalize module (its embeddings have unit norm)."""
    try:
        return any(type(module).__name__ == "Normalize" for module in list(model)[1:])
    except TypeError:
        return False


def _takes_inputs_embeds(model: Any) -> bool:
    try:
        return "inputs_embeds" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return True


class PromptContentSmoother(PromptSmoother):
    """A text-to-image generator smoothed by token ablation of its prompt; its content certified in edits.

    Args:
        encoder: a Hugging Face text encoder with ``get_input_embeddings()`` returning ``last_hidden_state``
            (called with ``inputs_embeds`` when its forward takes them, else with ``input_ids``), or a
            ``sentence_transformers.SentenceTransformer``. Put in eval mode.
        generator: a `smoothgen.conditional.ConditionalGenerator` (`DiffusersGenerator` for any diffusers
            UNet + scheduler) conditioned on what the encoder gives (see `conditioning`); its own randomness
            is its keyed stream, independent of the ablation.
        classifier: the content classifier of generated outputs: [b, *output_shape] -> logits [b, classes].
        noise: a `TokenAblation(keep, mask_token_id)` (keep k of the P perturbed positions).
        num_classes: classes of the classifier (default: its ``num_classes`` attribute).
        conditioning: "pooled" (the pooled sentence embedding [H]: the embedded text-to-digit model),
            "hidden" (the last hidden state [L, H]: encoder_hidden_states of a Stable Diffusion UNet), or a
            callable(last_hidden_state [B, L, H], attention_mask [B, L]) -> [B, *cond_shape].
        pooling: for "pooled": "mean", "cls", "max" or a callable (default: the sentence-transformers
            model's mode, else "mean").
        normalize: for "pooled": scale each pooled embedding to unit norm (default: True for a
            sentence-transformers model with a Normalize module, else False).
        tokenizer: for string prompts (a Hugging Face tokenizer, or anything with ``encode``); default the
            sentence-transformers model's.
        tokenizer_kwargs: keyword arguments for the tokenizer (e.g. padding to the UNet's prompt length).
        mask: the positions that may be perturbed (None: all; L booleans; or a callable of the length L).
        protect: positions never ablated nor edited: an int, ints, a substring of the prompt (every
            occurrence; every token overlapping it), or several. Per-call ``protect=`` overrides it.
        content: what the class is of, in the certificate's words (e.g. "digit").
        class_names: a name per class, for the certificate's words.
        batch_size: copies per encoder + generator call.
        device: move the encoder there (the generator and classifier stay where they are).

    Raises:
        InvalidParameterError: noise that is not a TokenAblation, a bad conditioning, pooling, batch size,
            classifier or generator, a mask token outside the vocabulary.
        InvalidInputError: an encoder without get_input_embeddings().
    """

    model_kind = "a Hugging Face text encoder (inputs_embeds or input_ids -> last_hidden_state)"

    def __init__(
        self,
        encoder: Any,
        generator: ConditionalGenerator,
        classifier: Callable,
        noise: TokenAblation,
        *,
        num_classes: int | None = None,
        conditioning: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "pooled",
        pooling: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        normalize: bool | None = None,
        tokenizer: Any = None,
        tokenizer_kwargs: Mapping[str, Any] | None = None,
        mask: Sequence[bool] | Callable[[int], Any] | None = None,
        protect: Any = None,
        content: str = "class",
        class_names: Sequence[str] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: str | torch.device | None = None,
    ):
        if not isinstance(noise, TokenAblation):
            raise InvalidParameterError(
                f"prompt-token content certificates use TokenAblation(keep, mask_token_id), got {noise!r}; Gaussian noise "
                "on the sentence embedding is SmoothedConditionalDiffusion.certify_content"
            )
        st_normalize = False
        parts = _sentence_transformer_parts(encoder)
        if parts is not None:
            st_normalize = _normalizes(encoder)
            encoder, st_pooling, st_tokenizer = parts
            pooling = st_pooling if pooling is None else pooling
            tokenizer = st_tokenizer if tokenizer is None else tokenizer
        super().__init__(encoder, noise, mask=mask, batch_size=batch_size, device=device, tokenizer=tokenizer)
        if not isinstance(generator, ConditionalGenerator):
            raise InvalidParameterError(
                f"generator must be a smoothgen.conditional.ConditionalGenerator (e.g. DiffusersGenerator), got "
                f"{type(generator).__name__}"
            )
        self.generator = generator
        self.num_classes = _content_num_classes(classifier, num_classes)
        self.votes = _ContentVotes(generator, classifier, self.num_classes)
        if isinstance(conditioning, str):
            if conditioning not in CONDITIONINGS:
                raise InvalidParameterError(f"conditioning must be one of {CONDITIONINGS} or a callable, got {conditioning!r}")
        elif not callable(conditioning):
            raise InvalidParameterError(f"conditioning must be one of {CONDITIONINGS} or a callable, got {conditioning!r}")
        self.conditioning = conditioning
        self.pool = _pooling("mean" if pooling is None else pooling)
        self.normalize = st_normalize if normalize is None else bool(normalize)
        if tokenizer_kwargs is not None and not isinstance(tokenizer_kwargs, Mapping):
            raise InvalidParameterError(f"tokenizer_kwargs must be a mapping, got {type(tokenizer_kwargs).__name__}")
        self.tokenizer_kwargs = dict(tokenizer_kwargs or {})
        self.protect = protect
        if not isinstance(content, str) or not content:
            raise InvalidParameterError(f"content must be a non-empty string, got {content!r}")
        self.content = content
        if class_names is not None:
            class_names = tuple(str(c) for c in class_names)
            if len(class_names) != self.num_classes:
                raise InvalidParameterError(f"class_names has {len(class_names)} names for {self.num_classes} classes")
        self.class_names = class_names
        self._feeds_embeds = _takes_inputs_embeds(self.model)

    # ---------------------------------------------------------------------------------- the prompt

    def _token_strings(self, ids: list[int]) -> tuple[str, ...] | None:
        convert = getattr(self.tokenizer, "convert_ids_to_tokens", None)
        if callable(convert):
            try:
                return tuple(str(t) for t in convert(ids))
            except (TypeError, ValueError, IndexError, KeyError):
                return None
        return None

    def token_ids(self, text: str) -> list[int]:
        """The token ids of a string under this smoother's tokenizer and tokenizer_kwargs."""
        return tokenize(self.tokenizer, text, **self.tokenizer_kwargs)[0]

    def resolve(self, prompt: Any, *, protect: Any = None, mask: Any = None) -> ResolvedPrompt:
        """The prompt's ids and its perturbed positions M = mask(L) minus protected minus special tokens,
        derived once from this clean prompt (docs/theory.md §4g: M is then a fixed positional mask).

        Raises:
            InvalidInputError: an empty prompt, ids outside the vocabulary, a string without a tokenizer,
                a prompt longer than the encoder takes.
            InvalidParameterError: a protected position out of range, a substring not in the prompt (or
                without a tokenizer that gives character offsets), protect and special tokens covering
                every perturbed position, keep ≥ P.
        """
        text, offsets, special_flags = None, None, None
        if isinstance(prompt, str):
            text = prompt
            if not text.strip():
                raise InvalidInputError("the prompt is empty")
            raw, offsets, special_flags = tokenize(self.tokenizer, text, **self.tokenizer_kwargs)
            ids = super().prompt_ids(raw)
        else:
            ids = super().prompt_ids(prompt)
        length = ids.numel()
        if self.context_length is not None and length > self.context_length:
            raise InvalidInputError(f"the prompt has {length} tokens, more than the encoder's {self.context_length} positions")
        base = self.prompt_mask(ids, mask).cpu()
        protect = self.protect if protect is None else protect
        m, protected, special = perturbed_positions(base.tolist(), protect, self.noise.keep, text, offsets, special_flags)
        tokens = self._token_strings(ids.tolist())
        return ResolvedPrompt(ids, torch.tensor(m, device=self.device), protected, special, tokens, text)

    # ---------------------------------------------------------------------------------- the base classifier

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """The conditioning of a batch of (ablated) prompts: [B, L] ids -> [B, *cond_shape]."""
        attention = torch.ones(ids.shape, dtype=torch.long, device=ids.device)
        if self._feeds_embeds:
            embeds = self.table[ids]
            hidden = _hidden_states(self.model(inputs_embeds=embeds, attention_mask=attention), embeds)
        else:
            out = self.model(input_ids=ids, attention_mask=attention)
            hidden = _hidden_states(out, ids[..., None])  # checks hidden's [B, L] against the ids
        if self.conditioning == "hidden":
            cond = hidden
        elif self.conditioning == "pooled":
            cond = self.pool(hidden, attention)
            if self.normalize:
                cond = torch.nn.functional.normalize(cond, dim=-1)
        else:
            cond = self.conditioning(hidden, attention)
        if not isinstance(cond, torch.Tensor) or cond.shape[0] != ids.shape[0]:
            shape = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
            raise ModelOutputError(f"the conditioning is {shape} for a batch of {ids.shape[0]} prompts")
        return cond.float()

    def classify(self, ids: torch.Tensor) -> torch.Tensor:
        """The base classifier on a batch of (ablated) prompts: [B, L] ids -> classes [B] (one generation each,
        with the generator's next copies of randomness)."""
        logits = self.votes(self.encode(ids))
        return logits.argmax(dim=-1).cpu()

    def _counts(self, resolved: ResolvedPrompt, key: NoiseKey, start: int, count: int) -> np.ndarray:
        counts = np.zeros(self.num_classes, dtype=np.int64)
        for s in range(start, start + count, self.batch_size):
            c = min(self.batch_size, start + count - s)
            ids = self.noise.ablated_ids(resolved.ids, resolved.mask, key, s, c)
            counts += np.bincount(self.classify(ids).numpy(), minlength=self.num_classes)
        return counts

    # ---------------------------------------------------------------------------------- CERTIFY

    @torch.no_grad()
    def certify(
        self,
        prompt: Any,
        *,
        edits: int = 1,
        n0: int = 100,
        n: int = 1000,
        alpha: float = 0.001,
        seed: int | None = None,
        request_id: int = 0,
        protect: Any = None,
        mask: Any = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> PromptContentCertificate:
        """Cohen's CERTIFY under token ablation: the class of what is generated, against `edits` tokens.

        Args:
            prompt: a string (with a tokenizer) or token ids [L].
            edits: r ≥ 0, the substituted tokens the certificate is asked to cover (the largest covered
                number is reported as `certified_edits` either way).
            n0: selection copies (choose the class); n: estimation copies (fresh subsets, fresh ω).
            alpha: failure probability of the certificate.
            seed, request_id: the request's random streams (None seed: not reproducible).
            protect, mask: per-call protected / perturbable positions (override the wrapper's).
            progress: called as progress(phase, done, total) after each batch.

        Returns:
            A `PromptContentCertificate`.

        Raises:
            InvalidParameterError: edits < 0, n0 or n < 1, alpha outside (0, 1), a bad protect or keep.
            InvalidInputError: a bad prompt.
        """
        edits = check_count(edits, "edits", minimum=0)
        n0, n = check_count(n0, "n0"), check_count(n, "n")
        alpha = check_alpha(alpha)
        resolved = self.resolve(prompt, protect=protect, mask=mask)
        perturbed, keep = resolved.perturbed, self.noise.keep
        stream = RandomStream(seed, request_id)
        # One generator stream for the request: selection copies take ω_0..ω_{n0−1}, estimation the next ones.
        self.generator.reseed(seed, request_id)
        selection = np.zeros(self.num_classes, dtype=np.int64)
        key = stream.key(Purpose.SELECTION)
        for s in range(0, n0, self.batch_size):
            c = min(self.batch_size, n0 - s)
            selection += self._counts(resolved, key, s, c)
            if progress is not None:
                progress(SELECTION_PHASE, s + c, n0)
        c_hat = int(np.argmax(selection))
        key = stream.key(Purpose.ESTIMATION)
        n_a = drawn = 0
        while drawn < n:
            # Batches end at multiples of ABSTAIN_CHECK_EVERY, so the checks (and the result) do not depend on batch_size.
            c = min(self.batch_size, n - drawn, ABSTAIN_CHECK_EVERY - drawn % ABSTAIN_CHECK_EVERY)
            n_a, drawn = n_a + int(self._counts(resolved, key, drawn, c)[c_hat]), drawn + c
            if progress is not None:
                progress(ESTIMATION_PHASE, drawn, n)
            # Early abstention only when the full run must abstain too (even n − drawn more votes keep p ≤ 1/2).
            if drawn < n and drawn % ABSTAIN_CHECK_EVERY == 0 and stats.clopper_pearson_lower(n_a + (n - drawn), n, alpha) <= 0.5:
                break
        tau = self.noise.noise_tv(resolved.ids.numel(), self.dim, perturbed)
        p_lower = stats.lower_under_gaussian(stats.clopper_pearson_lower(n_a, n, alpha), tau) if drawn == n else 0.0
        certified_edits = noise_spaces.ablation_radius(p_lower, perturbed, keep)
        delta = noise_spaces.ablation_delta(perturbed, keep, edits)
        return PromptContentCertificate(
            prediction=c_hat if certified_edits >= 0 else ABSTAIN,
            certified_edits=int(certified_edits),
            edits=edits,
            p_lower=float(p_lower),
            count=n_a,
            selected=c_hat,
            p_selection=float(selection[c_hat]) / n0,
            n0=n0,
            n=n,
            samples=drawn,
            alpha=alpha,
            seed=seed,
            request_id=int(request_id),
            keep=keep,
            mask_token_id=self.noise.mask_token_id,
            delta=float(delta),
            delta_exact=f"{Fraction(delta).numerator}/{Fraction(delta).denominator}",
            prompt_ids=tuple(int(v) for v in resolved.ids.tolist()),
            mask=tuple(bool(v) for v in resolved.mask.tolist()),
            protected=resolved.protected,
            special=resolved.special,
            num_classes=self.num_classes,
            noise_tv=tau,
            tokens=resolved.tokens,
            prompt=resolved.text,
            content=self.content,
            class_names=self.class_names,
        )

    # ---------------------------------------------------------------------------------- samples and exact checks

    @torch.no_grad()
    def samples(
        self, prompt: Any, n: int = 8, *, seed: int | None = None, request_id: int = 0, protect: Any = None,
        mask: Any = None,
    ) -> torch.Tensor:
        """Generations from n ablated copies (Purpose.PREDICT subsets, the generator reseeded): [n, *output_shape]."""
        n = check_count(n, "n")
        resolved = self.resolve(prompt, protect=protect, mask=mask)
        self.generator.reseed(seed, request_id)
        key = RandomStream(seed, request_id).key(Purpose.PREDICT)
        out = []
        for s in range(0, n, self.batch_size):
            ids = self.noise.ablated_ids(resolved.ids, resolved.mask, key, s, min(self.batch_size, n - s))
            out.append(self.generator(self.encode(ids)).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def subset_classes(
        self, prompt: Any, *, protect: Any = None, mask: Any = None, seed: int | None = 0, max_subsets: int = 20_000
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every kept subset of the ablation (C(P, k), equally likely) and the class of one generation from it.

        With a deterministic generator and classifier the class shares are the EXACT smoothed probabilities
        (`exact_probabilities`): no sampling. With a random generator each subset gets one draw of ω
        (the generator reseeded with `seed`).

        Returns:
            (subsets [S, k] as indices into the perturbed positions, classes [S]).

        Raises:
            InvalidParameterError: more than max_subsets subsets.
        """
        resolved = self.resolve(prompt, protect=protect, mask=mask)
        perturbed, keep = resolved.perturbed, self.noise.keep
        total = math.comb(perturbed, keep)
        if total > check_count(max_subsets, "max_subsets"):
            raise InvalidParameterError(f"C({perturbed}, {keep}) = {total} subsets exceed max_subsets = {max_subsets}")
        subsets = torch.tensor(list(itertools.combinations(range(perturbed), keep)), dtype=torch.long).reshape(-1, keep)
        self.generator.reseed(seed, 0)
        ids = self.noise.subset_ids(resolved.ids, resolved.mask, subsets)
        classes = torch.cat([self.classify(ids[s:s + self.batch_size]) for s in range(0, ids.shape[0], self.batch_size)])
        return subsets, classes

    def exact_probabilities(self, prompt: Any, **kwargs: Any) -> list[Fraction]:
        """P(class = j) over the kept subsets, as exact fractions (exact for a deterministic generator and
        classifier; see `subset_classes`, which takes the same keyword arguments)."""
        _, classes = self.subset_classes(prompt, **kwargs)
        counts = np.bincount(classes.numpy(), minlength=self.num_classes)
        return [Fraction(int(c), int(classes.numel())) for c in counts]

    def __repr__(self) -> str:
        return (f"PromptContentSmoother({type(self.model).__name__}, {type(self.generator).__name__}, {self.noise!r}, "
                f"conditioning={self.conditioning if isinstance(self.conditioning, str) else 'callable'!r})")


def perturbed_positions(
    base: Sequence[bool], protect: Any, keep: int, text: str | None = None,
    offsets: Sequence[tuple[int, int]] | None = None, special_flags: Sequence[bool] | None = None,
) -> tuple[list[bool], tuple[int, ...], tuple[int, ...]]:
    """The perturbed positions M = base minus `protect` minus the special tokens, from the clean prompt's
    tokenization alone (its length, character offsets and special-token flags): (M, protected, special).

    Raises:
        InvalidParameterError: a bad `protect`, nothing left to perturb, or keep ≥ |M|.
    """
    length = len(base)
    protected = tuple(_protected_positions(protect, length, text, offsets, special_flags))
    special = tuple(i for i, flag in enumerate(special_flags or ()) if flag)
    m = [bool(v) for v in base]
    for i in (*protected, *special):
        m[i] = False
    if not any(m):
        raise InvalidParameterError(
            f"protect={protect!r} and the special tokens {list(special)} cover every perturbed position of this "
            f"{length}-token prompt: nothing is left to ablate or edit"
        )
    if keep >= sum(m):
        raise InvalidParameterError(
            f"keep = {keep} must be below the {sum(m)} perturbed positions: a copy that keeps every position sees every "
            "edit (Delta_1 = 1), so no edit could be certified"
        )
    return m, protected, special


def _protected_positions(
    protect: Any, length: int, text: str | None, offsets: list[tuple[int, int]] | None, special: list[bool] | None
) -> list[int]:
    """The positions `protect` names: ints (positions), strings (every token overlapping any occurrence of
    the substring in the prompt's text), or a sequence of them."""
    if protect is None:
        return []
    items = [protect] if isinstance(protect, (str, int, np.integer)) else protect
    try:
        items = list(items)
    except TypeError as exc:
        raise InvalidParameterError(f"protect must be positions, a substring of the prompt, or a list of them, got {protect!r}") from exc
    out: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            raise InvalidParameterError(f"protect must be positions or substrings, got {item!r}")
        if isinstance(item, (int, np.integer)):
            if not 0 <= int(item) < length:
                raise InvalidParameterError(f"protected position {int(item)} is outside the prompt's 0..{length - 1}")
            out.add(int(item))
        elif isinstance(item, str):
            if not item:
                raise InvalidParameterError("protect: an empty substring protects nothing")
            if text is None:
                raise InvalidParameterError(f"protect={item!r} is a substring: give the prompt as a string, or protect positions")
            if offsets is None:
                raise InvalidParameterError(
                    f"protect={item!r} is a substring, and this tokenizer gives no character offsets (a fast Hugging Face "
                    "tokenizer does): protect positions instead"
                )
            starts = [i for i in range(len(text)) if text.startswith(item, i)]
            if not starts:
                raise InvalidParameterError(f"protect={item!r} does not occur in the prompt {text!r}")
            for a in starts:
                b = a + len(item)
                for i, (s, e) in enumerate(offsets):
                    if e > s and s < b and e > a and not (special and special[i]):
                        out.add(i)
        else:
            raise InvalidParameterError(f"protect must be positions or substrings, got {item!r}")
    return sorted(out)
