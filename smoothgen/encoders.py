"""Center smoothing of a sentence encoder's pooled embedding (docs/theory.md §2, §4d, §4g): cosine distance, γ = 2.

`SmoothedEncoder` wraps any Hugging Face encoder that takes ``inputs_embeds`` (``AutoModel`` BERT, MiniLM,
RoBERTa, ...; or a sentence-transformers model) with a pooling of its last hidden state, and smooths
the pooled sentence embedding in one of the token noise spaces of `smoothgen.generative`:

- `EmbeddingGaussian` (a float σ): Gaussian noise on the prompt's token-embedding rows at the perturbed
  positions. The certificate holds for every perturbation of those rows with ‖Δ‖_F ≤ eps_in (a token
  substitution moves its row by ‖e_i − e_j‖: `smoothgen.generative.substitution_radius`).
- `TokenAblation(keep, mask_token_id)`: each copy keeps k random perturbed positions and replaces the
  others by the mask token. The certificate holds for every prompt that differs from the given one in
  at most r perturbed positions (``edits=r`` substitutions, any tokens).
- `TokenDeletion(p)` (`smoothgen.deletion`): each copy deletes every perturbed token with probability p
  and closes up (copies grouped by length). The certificate holds for every prompt whose perturbed run is
  within ``edits=r`` inserted, deleted or substituted tokens (docs/theory.md §4j: Δ_r = 1 − p^r bounds the
  total variation between the copies' distributions, which is the one fact the argument below uses).

The smoothed embedding is the min-median center ẑ of the pooled embeddings of noisy copies; the
certificate says d_cos(ẑ(x), ẑ(x')) ≤ eps_out for every x' in the threat model, with probability
≥ 1 − α1 − α2 − candidate_miss. The algorithm is `smoothgen.center.CenterSmoother`, unchanged; this
module only supplies the noise (`PromptNoise`: copies from the noise space's keyed Philox streams, copy i
a pure function of (key, i)) and the base model (noisy embeddings -> encoder -> pooling).

Why center smoothing is sound under ablation (`stats.center_ablation_level`). Kumar & Goldstein's proof
uses the noise once: the ball B = B(ẑ, R̂) that holds probability ≥ p at x must hold ≥ 1/2 + Δ at every
x' of the threat model. If x' differs from x in r of the L perturbed positions, the ablated copies of x
and x' coincide whenever the kept k-subset misses those r positions, which has probability
C(L − r, k)/C(L, k); so |P_x(S) − P_x'(S)| ≤ Δ_r = 1 − C(L − r, k)/C(L, k) for every set S of outputs
(docs/theory.md §4g), and p = 1/2 + Δ + Δ_r suffices. The rest of the proof is the Gaussian one: R̂ is the
⌈q·m⌉-th order statistic at q = p + τ + sqrt(ln(1/α2)/(2m)) (DKW), so P_x(B) ≥ p; at x', B holds
≥ 1/2 + Δ, so the smallest ball holding 1/2 + Δ has radius ≤ R̂ and the min-median center at x' has
median radius ≤ β·R̂ (β = 2γ); its ball holds > 1/2 and meets B, so d(ẑ(x), ẑ(x')) ≤ γ·(1 + β)·R̂ (= 10·R̂
for cosine). τ (the chance of a tie among the Philox words that pick the subset) is charged to Δ1, q and
the candidate miss exactly as the Gaussian sampler's τ. When q = p + τ + sqrt(ln(1/α2)/(2m)) exceeds 1 (always
when Δ_r ≥ 1/2 − Δ) the certificate abstains ("q > 1").

Sentence-transformers: pass the ``SentenceTransformer`` itself (its first module's ``auto_model``, its
Pooling module's mode and its tokenizer are taken; the package is not imported), or equivalently
``SmoothedEncoder(st[0].auto_model, noise, pooling="mean", tokenizer=st.tokenizer)``. A final Normalize
module changes nothing for the cosine distance.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from smoothgen.center import CenterSmoother
from smoothgen.certificates import CenterCertificate, CenterSmoothingResult
from smoothgen.engine import Purpose, RandomStream
from smoothgen.deletion import TokenDeletion, deletion_delta
from smoothgen.engine.runtime.torch_eager import TorchRuntime
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError
from smoothgen.generative import (
    DEFAULT_BATCH_SIZE,
    EmbeddingGaussian,
    PromptNoise,
    PromptSmoother,
    TokenAblation,
    ablation_delta,
)
from smoothgen.metrics import Metric, get_metric
from smoothgen.stats import vector_mean_deviation
from smoothgen.validate import check_alpha, check_count

#: Kept subsets `SmoothedEncoder.mean_certify` enumerates at most; beyond, it samples (default).
DEFAULT_MAX_SUBSETS = 20_000


def _round_up(value: float) -> float:
    return math.nextafter(float(value), math.inf)


def cosine_bound(l2_bound: float, norm_lower: float) -> float:
    """The largest cosine distance between u and any v with ‖u − v‖₂ ≤ l2_bound, given ‖u‖₂ ≥ norm_lower:
    1 − sqrt(1 − (l2_bound/norm_lower)²) (v on the tangent cone of the ball around u), or 2 (anything) when
    the ball reaches the origin (l2_bound ≥ norm_lower). Rounded up."""
    if not (norm_lower > 0) or l2_bound >= norm_lower:
        return 2.0
    ratio = l2_bound / norm_lower
    return min(2.0, _round_up(1.0 - math.sqrt(max(0.0, 1.0 - ratio * ratio)) + 4 * 2.0**-52))


@dataclass(frozen=True)
class MeanEmbeddingCertificate:
    """Mean smoothing of a sentence embedding under token ablation (docs/theory.md §4i) or deletion (§4j:
    subsets become deletion patterns with their probabilities, substitutions become edits of the perturbed
    run — insertions, deletions, substitutions — and Δ_r = 1 − p^r; `keep` is None, `delete_prob` p).

    F(x) = E_S f(ablate_S(x)) is the mean of the unit-norm pooled embeddings f over the kept k-subsets S
    of the P perturbed positions. For every x' that substitutes at most `edits` perturbed tokens,
    ‖F(x) − F(x')‖₂ ≤ `l2_bound` = 2·Δ_r and d_cos(F(x), F(x')) ≤ `cosine_bound`. Exact (``exact``: every
    subset enumerated, `mean` is F(x) itself, nothing is random) or sampled (`copies` random subsets;
    `mean` is an empirical F̂ with ‖F̂ − F(x)‖₂ ≤ `sampling_error` and the cosine bound holding with
    probability ≥ 1 − `alpha`).

    Attributes:
        mean: F(x) (exact) or F̂(x) (sampled), float64 [H]; not normalised (its norm is `norm`).
        edits: r, the substituted perturbed tokens covered.
        keep, perturbed: k and P.
        delta_r: Δ_r = 1 − C(P − r, k)/C(P, k), rounded up.
        l2_bound: 2·Δ_r (outputs lie in the unit ball, diameter 2), for the exact means.
        norm: ‖mean‖₂.
        norm_lower: a lower bound on ‖F(x)‖₂: `norm` (exact) or `norm` − `sampling_error`.
        cosine_bound: `cosine_bound`(l2_bound, norm_lower) between the exact means F(x) and F(x').
        exact: whether every subset was enumerated.
        copies: subsets averaged (C(P, k) when exact).
        sampling_error: 0 (exact) or `stats.vector_mean_deviation`(1, copies, alpha) + 2τ (the subset sampler's
            total variation τ per copy, §4g).
        alpha: the failure probability (0 when exact).
        smoothing_error: d_cos(mean, f(x)), how far the smoothed embedding is from the model's clean one.
    """

    mean: torch.Tensor
    edits: int
    keep: int
    perturbed: int
    delta_r: float
    l2_bound: float
    norm: float
    norm_lower: float
    cosine_bound: float
    exact: bool
    copies: int
    sampling_error: float
    alpha: float
    smoothing_error: float
    delete_prob: float | None = None

    @property
    def failure_probability(self) -> float:
        return self.alpha

    def to_record(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "mean"}
        return {**out, "failure_probability": self.failure_probability}

#: Built-in poolings of the last hidden state h [B, L, H] under an attention mask a [B, L].
POOLINGS = ("mean", "cls", "max")


def mean_pooling(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Σ_l a_l·h_l / max(Σ_l a_l, 1e-9): sentence-transformers' mean pooling (all-MiniLM-L6-v2's).

    Shapes:
        hidden: [B, L, H], attention_mask: [B, L] -> [B, H]
    """
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def cls_pooling(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The first position's hidden state (BERT's [CLS]). Shapes: [B, L, H] -> [B, H]"""
    return hidden[:, 0]


def max_pooling(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise maximum over the attended positions. Shapes: [B, L, H] -> [B, H]"""
    masked = hidden.masked_fill(~attention_mask.bool().unsqueeze(-1), torch.finfo(hidden.dtype).min)
    return masked.max(dim=1).values


_POOLING_FUNCTIONS = {"mean": mean_pooling, "cls": cls_pooling, "max": max_pooling}


def _pooling(pooling: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if isinstance(pooling, str):
        if pooling not in _POOLING_FUNCTIONS:
            raise InvalidParameterError(f"pooling must be one of {POOLINGS} or a callable(hidden, attention_mask), got {pooling!r}")
        return _POOLING_FUNCTIONS[pooling]
    if callable(pooling):
        return pooling
    raise InvalidParameterError(f"pooling must be one of {POOLINGS} or a callable(hidden, attention_mask), got {pooling!r}")


def _sentence_transformer_parts(model: Any) -> tuple[Any, str | None, Any] | None:
    """(auto_model, pooling mode, tokenizer) of a sentence-transformers model, or None when `model` is not
    one (duck-typed: an indexable module whose first module has ``auto_model``)."""
    if callable(getattr(model, "get_input_embeddings", None)) or not isinstance(model, torch.nn.Module):
        return None
    try:
        first = model[0]
    except (TypeError, IndexError, KeyError):
        return None
    auto_model = getattr(first, "auto_model", None)
    if auto_model is None:
        return None
    mode = None
    for module in list(model)[1:]:
        flags = {name: bool(getattr(module, f"pooling_mode_{flag}", False))
                 for name, flag in (("cls", "cls_token"), ("mean", "mean_tokens"), ("max", "max_tokens"),
                                    ("mean_sqrt_len", "mean_sqrt_len_tokens"), ("weightedmean", "weightedmean_tokens"),
                                    ("lasttoken", "lasttoken"))}
        if any(flags.values()):
            chosen = [name for name, on in flags.items() if on]
            if len(chosen) != 1 or chosen[0] not in _POOLING_FUNCTIONS:
                raise InvalidParameterError(
                    f"the sentence-transformers Pooling module uses {chosen}; pass pooling=callable(hidden, "
                    f"attention_mask) with st[0].auto_model instead"
                )
            mode = chosen[0]
            break
    return auto_model, mode, getattr(model, "tokenizer", None)


def _hidden_states(out: Any, embeds: torch.Tensor) -> torch.Tensor:
    """The last hidden state [B, L, H] of an encoder's output (``.last_hidden_state``, or ``[0]``)."""
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None:
        if isinstance(out, torch.Tensor):
            hidden = out
        elif isinstance(out, (tuple, list)) and out:
            hidden = out[0]
        else:
            try:
                hidden = out[0]
            except (TypeError, IndexError, KeyError):
                hidden = None
    if not isinstance(hidden, torch.Tensor) or hidden.ndim != 3 or tuple(hidden.shape[:2]) != tuple(embeds.shape[:2]):
        shape = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise ModelOutputError(f"the encoder returned last_hidden_state {shape} for inputs_embeds {tuple(embeds.shape)}")
    return hidden


class SmoothedEncoder(PromptSmoother):
    """A sentence encoder whose pooled embedding is center-smoothed under token-embedding noise or ablation.

    Args:
        model: a Hugging Face encoder called as ``model(inputs_embeds=[B, L, D], attention_mask=[B, L])``
            returning ``.last_hidden_state`` (or a tuple whose [0] is it), with ``get_input_embeddings()``
            (``AutoModel``: BERT, MiniLM, RoBERTa, ...); or a ``sentence_transformers.SentenceTransformer``
            (its ``[0].auto_model``, pooling mode and tokenizer are used). Put in eval mode.
        noise: a number σ > 0 (Gaussian noise on the perturbed token-embedding rows, `EmbeddingGaussian`),
            an `EmbeddingGaussian`, or a `TokenAblation(keep, mask_token_id)`.
        pooling: "mean" (attention-masked mean, sentence-transformers' default), "cls", "max", or a
            callable(last_hidden_state [B, L, H], attention_mask [B, L]) -> [B, H]. Default: the
            sentence-transformers model's own mode, else "mean".
        tokenizer: for string prompts: a callable returning a mapping with ``"input_ids"`` (Hugging Face
            tokenizers), or an object with ``encode(str) -> ids``.
        mask: the perturbed positions: None (all), L booleans, or a callable L -> L booleans, called
            with the prompt's length only, never its tokens (the perturbed set must be the same at x and
            x', docs/theory.md §4g). Unperturbed positions keep their clean embedding and are never
            ablated; edits there are not covered. Per-call ``mask=`` overrides it.
        batch_size: noisy copies per encoder call.
        device: move the model there (default: where its embedding table is).
        n_candidates: None (exact min-median center) or k (the high-dimensional variant; its miss
            probability is charged to the certificate).
        metric: the output metric (default "cosine": 1 − cos, γ = 2, β = 4, ε_out = 10·R̂).

    Raises:
        InvalidParameterError: a bad noise, pooling, batch size, n_candidates or metric, or a mask token
            outside the vocabulary.
        InvalidInputError: a model without get_input_embeddings().
    """

    def __init__(
        self,
        model: Any,
        noise: float | EmbeddingGaussian | TokenAblation,
        *,
        pooling: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        tokenizer: Any = None,
        mask: Sequence[bool] | Callable[[int], Any] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: str | torch.device | None = None,
        n_candidates: int | None = None,
        metric: str | Metric = "cosine",
    ):
        parts = _sentence_transformer_parts(model)
        if parts is not None:
            model, st_pooling, st_tokenizer = parts
            pooling = st_pooling if pooling is None else pooling
            tokenizer = st_tokenizer if tokenizer is None else tokenizer
        super().__init__(model, noise, mask=mask, batch_size=batch_size, device=device, tokenizer=tokenizer)
        pooling = "mean" if pooling is None else pooling
        self.pool = _pooling(pooling)
        self.pooling = pooling if isinstance(pooling, str) else getattr(pooling, "__name__", "callable")
        self.n_candidates = None if n_candidates is None else check_count(n_candidates, "n_candidates")
        self.metric = get_metric(metric)
        self.runtime = TorchRuntime(self._encode, device=str(self.device))

    # ---------------------------------------------------------------------------------- inputs

    def prompt_ids(self, prompt: Any) -> torch.Tensor:
        """The prompt as int64 token ids [L] on the model's device (a string goes through the tokenizer).

        Raises:
            InvalidInputError: an empty prompt, ids out of range, a prompt longer than the model takes,
                a string without a tokenizer.
        """
        ids = super().prompt_ids(prompt)
        if self.context_length is not None and ids.numel() > self.context_length:
            raise InvalidInputError(f"the prompt has {ids.numel()} tokens, more than the model's {self.context_length} positions")
        return ids

    # ---------------------------------------------------------------------------------- the base model

    def _encode(self, embeds: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings of a batch of prompt embedding matrices (no padding: all positions attended).

        Shapes:
            embeds: [B, L, D] -> [B, H]
        """
        attention = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        hidden = _hidden_states(self.model(inputs_embeds=embeds, attention_mask=attention), embeds)
        pooled = self.pool(hidden, attention)
        if not isinstance(pooled, torch.Tensor) or pooled.ndim != 2 or pooled.shape[0] != embeds.shape[0]:
            shape = tuple(pooled.shape) if isinstance(pooled, torch.Tensor) else type(pooled).__name__
            raise ModelOutputError(f"pooling returned {shape} for a batch of {embeds.shape[0]}; expected [B, H]")
        return pooled

    @torch.no_grad()
    def embed(self, prompt: Any) -> torch.Tensor:
        """The clean pooled embedding f(x) [H] of a string or token ids (no noise)."""
        ids = self.prompt_ids(prompt)
        return self.runtime.run(self.table[ids][None])[0]

    def noise_for(self, prompt: Any, mask: Any = None) -> tuple[PromptNoise, torch.Tensor]:
        """(the `PromptNoise` of this prompt and mask, the prompt's ids)."""
        ids = self.prompt_ids(prompt)
        return PromptNoise(self.noise, self.table, self.prompt_mask(ids, mask)), ids

    def _base(self, noise: PromptNoise):
        """The base model on `noise`'s copies: this encoder's runtime, or under token deletion (copies of
        different lengths) the encoder on each length group (`PromptNoise.base`)."""
        return TorchRuntime(noise.base(self._encode), device=str(self.device)) if noise.deletion else self.runtime

    def smoother(self, noise: PromptNoise) -> CenterSmoother:
        """The `CenterSmoother` that runs the algorithm: this encoder as its base model, `noise` as its noise."""
        return CenterSmoother(self._base(noise), metric=self.metric, batch_size=self.batch_size,
                              n_candidates=self.n_candidates, noise=noise)

    @torch.no_grad()
    def samples(
        self, prompt: Any, n: int, *, seed: int | None = None, request_id: int = 0, mask: Any = None,
        purpose: Purpose = Purpose.PREDICT,
    ) -> torch.Tensor:
        """Pooled embeddings of n noisy copies [n, H] (the copies of `purpose`'s stream: CENTER, CENTER_CHECK
        and CENTER_RADIUS are the streams `smooth` and `center_certify` draw)."""
        noise, ids = self.noise_for(prompt, mask)
        n = check_count(n, "n")
        key = RandomStream(seed, request_id).key(Purpose(purpose))
        base = self._base(noise)
        out = [base.run(noise.copies(ids, key, s, min(self.batch_size, n - s))) for s in range(0, n, self.batch_size)]
        return torch.cat(out)

    # ---------------------------------------------------------------------------------- center smoothing

    @torch.no_grad()
    def smooth(
        self,
        prompt: Any,
        *,
        n: int = 10_000,
        delta: float = 0.05,
        alpha1: float = 0.005,
        seed: int | None = None,
        request_id: int = 0,
        mask: Any = None,
    ) -> CenterSmoothingResult:
        """SMOOTH (docs/theory.md §2): the smoothed embedding ẑ [H], or abstain (`CenterSmoother.smooth`)."""
        noise, ids = self.noise_for(prompt, mask)
        return self.smoother(noise).smooth(ids, n=n, delta=delta, alpha1=alpha1, seed=seed, request_id=request_id)

    @torch.no_grad()
    def center_certify(
        self,
        prompt: Any,
        *,
        eps_in: float | None = None,
        edits: int | None = None,
        n: int = 10_000,
        m: int = 10_000,
        delta: float = 0.05,
        alpha1: float = 0.005,
        alpha2: float = 0.005,
        seed: int | None = None,
        request_id: int = 0,
        mask: Any = None,
    ) -> CenterCertificate:
        """Certify the smoothed embedding: with probability ≥ 1 − `failure_probability`,
        d(ẑ(x), ẑ(x')) ≤ eps_out for every x' in the threat model.

        Args:
            prompt: a string (with a tokenizer) or token ids [L].
            eps_in: Gaussian noise only: the Frobenius radius on the perturbed embedding rows.
            edits: token ablation or deletion only: r, the number of perturbed positions x' may substitute
                (ablation, any tokens), or of tokens inserted, deleted or substituted in the perturbed run
                (deletion, §4j). The certificate's ``eps_in`` is then float(r) and its ``sigma`` None.
            n, m, delta, alpha1, alpha2: as in `CenterSmoother.certify`.
            seed, request_id: the request's random streams (Purpose.CENTER, CENTER_CHECK, CENTER_RADIUS).
            mask: per-call perturbed positions (one contiguous run under deletion).

        Returns:
            `CenterCertificate` with metric "cosine" (γ = 2, β = 4: eps_out = 10·R̂); p = 1/2 + Δ + Δ_r
            under ablation (Δ_r of §4g) or deletion (Δ_r = 1 − p_del^r).

        Raises:
            InvalidParameterError: eps_in with token noise, edits with Gaussian noise, neither, bad counts.
            InvalidInputError: an empty prompt, ids out of range, a string without a tokenizer.
        """
        ablation = isinstance(self.noise, (TokenAblation, TokenDeletion))  # the threat counts edited tokens
        if ablation and eps_in is not None:
            raise InvalidParameterError(f"eps_in is an embedding radius for Gaussian noise; under token {self.noise.kind} "
                                        "give edits=r")
        if not ablation and edits is not None:
            raise InvalidParameterError(
                "edits counts edited tokens under token ablation or deletion; under Gaussian noise give eps_in (an embedding radius)"
            )
        threat = edits if ablation else eps_in
        if threat is None:
            raise InvalidParameterError(f"give edits=r (token {self.noise.kind})" if ablation else "give eps_in (Gaussian noise)")
        noise, ids = self.noise_for(prompt, mask)
        return self.smoother(noise).certify(ids, noise.check_radius(threat), n=n, m=m, delta=delta, alpha1=alpha1,
                                            alpha2=alpha2, seed=seed, request_id=request_id)

    @torch.no_grad()
    def mean_certify(
        self,
        prompt: Any,
        *,
        edits: int,
        max_subsets: int = DEFAULT_MAX_SUBSETS,
        n: int = 10_000,
        alpha: float = 0.001,
        seed: int | None = None,
        request_id: int = 0,
        mask: Any = None,
    ) -> MeanEmbeddingCertificate:
        """Mean smoothing under token ablation (docs/theory.md §4i): the mean F(x) of the unit-norm pooled
        embeddings of the ablated copies, and how far any prompt with at most `edits` substituted perturbed
        tokens can move it: ‖F(x) − F(x')‖₂ ≤ 2·Δ_r, in cosine distance `cosine_bound`.

        With C(P, k) ≤ `max_subsets` every kept subset is enumerated: F(x) is exact and the certificate is
        deterministic. Otherwise n subsets are sampled (Purpose.ESTIMATION stream of (seed, request_id)),
        and the cosine bound, which needs ‖F(x)‖ from below, holds with probability ≥ 1 − alpha.

        Raises:
            InvalidParameterError: Gaussian noise (use `center_certify`), a bad edits, max_subsets, n or alpha.
            InvalidInputError: an empty prompt, ids out of range, a string without a tokenizer.
        """
        if isinstance(self.noise, TokenDeletion):
            return self._mean_certify_deletion(prompt, edits=edits, max_subsets=max_subsets, n=n, alpha=alpha,
                                               seed=seed, request_id=request_id, mask=mask)
        if not isinstance(self.noise, TokenAblation):
            raise InvalidParameterError("mean_certify needs token ablation or deletion (edits are edited tokens); under "
                                        "Gaussian noise use center_certify(eps_in=...)")
        edits = check_count(edits, "edits", minimum=0)
        max_subsets = check_count(max_subsets, "max_subsets")
        noise, ids = self.noise_for(prompt, mask)
        perturbed, keep = noise.perturbed, min(self.noise.keep, noise.perturbed)
        total = math.comb(perturbed, keep)
        exact = total <= max_subsets
        if exact:
            subsets = torch.tensor(list(itertools.combinations(range(perturbed), keep)), dtype=torch.long).reshape(total, keep)
            chunks = (self.noise.subset_prompts(self.table, ids, noise.mask, subsets[s:s + self.batch_size])
                      for s in range(0, total, self.batch_size))
            copies, alpha, error = total, 0.0, 0.0
        else:
            copies, alpha = check_count(n, "n"), check_alpha(alpha)
            key = RandomStream(seed, request_id).key(Purpose.ESTIMATION)
            chunks = (noise.copies(ids, key, s, min(self.batch_size, copies - s)) for s in range(0, copies, self.batch_size))
            # The sampler is within total variation τ per copy of exact uniform subsets: the mean moves by <= 2τ.
            error = _round_up(vector_mean_deviation(1.0, copies, alpha) + 2 * noise.noise_tv(ids))
        total_sum = None
        for chunk in chunks:
            z = torch.nn.functional.normalize(self.runtime.run(chunk).double(), dim=-1).sum(0)
            total_sum = z if total_sum is None else total_sum + z
        mean = total_sum / copies
        return self._mean_certificate(mean, ids, edits, float(ablation_delta(perturbed, keep, edits)), error,
                                      keep=keep, perturbed=perturbed, exact=exact, copies=copies, alpha=alpha)

    def _mean_certificate(self, mean: torch.Tensor, ids: torch.Tensor, edits: int, delta_r: float, error: float,
                          **fields: Any) -> MeanEmbeddingCertificate:
        """The certificate of a mean F (exact, or within `error` of it): ‖F(x) − F(x')‖ ≤ 2·Δ_r for `edits`
        edits, its cosine form, and how far F lies from the clean embedding (docs/theory.md §4i)."""
        delta_r = _round_up(delta_r)
        l2 = _round_up(2.0 * delta_r) if edits else 0.0
        norm = float(mean.norm())
        norm_lower = norm - error
        clean = self.embed(ids).double().to(mean.device)
        smoothing_error = float(1 - torch.nn.functional.cosine_similarity(mean, clean, dim=0)) if norm > 0 else 2.0
        return MeanEmbeddingCertificate(
            mean=mean, edits=edits, delta_r=delta_r, l2_bound=l2, norm=norm, norm_lower=norm_lower,
            cosine_bound=0.0 if l2 == 0 else cosine_bound(l2, norm_lower), sampling_error=error,
            smoothing_error=smoothing_error, **fields,
        )

    def _mean_certify_deletion(
        self, prompt: Any, *, edits: int, max_subsets: int, n: int, alpha: float, seed: int | None, request_id: int,
        mask: Any,
    ) -> MeanEmbeddingCertificate:
        """`mean_certify` under token deletion (docs/theory.md §4i with §4j's Δ_r = 1 − p^r): every one of the
        2^P deletion patterns with its probability when 2^P ≤ max_subsets, else n sampled copies; the bound
        covers every prompt whose perturbed run is within `edits` insertions, deletions and substitutions."""
        edits = check_count(edits, "edits", minimum=0)
        max_subsets = check_count(max_subsets, "max_subsets")
        ids = self.prompt_ids(prompt)
        m = self.prompt_mask(ids, mask)  # one contiguous run (TokenDeletion.check)
        perturbed = int(m.sum())
        exact = 2**perturbed <= max_subsets

        def encode(kept: np.ndarray) -> torch.Tensor:  # [c, H] unit-norm embeddings of the copies, in order
            out = torch.empty(kept.shape[0], 0, dtype=torch.float64)
            for rows, group in self.noise.by_length(ids, kept):
                z = torch.nn.functional.normalize(self._encode(self.table[group]).double(), dim=-1).cpu()
                if out.shape[1] == 0:
                    out = torch.zeros(kept.shape[0], z.shape[1], dtype=torch.float64)
                out[torch.from_numpy(rows)] = z
            return out

        total_sum = None
        if exact:
            patterns, weights = self.noise.all_patterns(perturbed, max_subsets)
            full = np.ones((patterns.shape[0], ids.numel()), dtype=bool)
            full[:, m.cpu().numpy()] = patterns
            for s in range(0, full.shape[0], self.batch_size):
                part = torch.from_numpy(weights[s:s + self.batch_size]) @ encode(full[s:s + self.batch_size])
                total_sum = part if total_sum is None else total_sum + part
            copies, alpha, error, mean = full.shape[0], 0.0, 0.0, total_sum
        else:
            copies, alpha = check_count(n, "n"), check_alpha(alpha)
            key = RandomStream(seed, request_id).key(Purpose.ESTIMATION)
            for s in range(0, copies, self.batch_size):
                part = encode(self.noise.kept(m, key, s, min(self.batch_size, copies - s))).sum(0)
                total_sum = part if total_sum is None else total_sum + part
            mean = total_sum / copies
            error = _round_up(vector_mean_deviation(1.0, copies, alpha) + 2 * self.noise.noise_tv(ids.numel(), self.dim, perturbed))
        return self._mean_certificate(mean, ids, edits, float(deletion_delta(self.noise.delete_prob, edits)), error,
                                      keep=None, perturbed=perturbed, exact=exact, copies=copies, alpha=alpha,
                                      delete_prob=self.noise.delete_prob)

    def __repr__(self) -> str:
        return f"SmoothedEncoder({type(self.model).__name__}, {self.noise!r}, pooling={self.pooling!r}, metric={self.metric.name!r})"


__all__ = ["POOLINGS", "MeanEmbeddingCertificate", "PromptNoise", "SmoothedEncoder", "cls_pooling", "cosine_bound",
           "max_pooling", "mean_pooling"]

