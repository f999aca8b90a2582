"""Center smoothing of a sentence encoder's pooled embedding (docs/theory.md §2, §4d, §4g): cosine distance, γ = 2.

`SmoothedEncoder` wraps any Hugging Face encoder that takes ``inputs_embeds`` (``AutoModel`` BERT, MiniLM,
RoBERTa, ...; or a sentence-transformers model) with a pooling of its last hidden state, and smooths
the pooled sentence embedding in one of the two token noise spaces of `smoothgen.generative`:

- `EmbeddingGaussian` (a float σ): Gaussian noise on the prompt's token-embedding rows at the perturbed
  positions. The certificate holds for every perturbation of those rows with ‖Δ‖_F ≤ eps_in (a token
  substitution moves its row by ‖e_i − e_j‖: `smoothgen.generative.substitution_radius`).
- `TokenAblation(keep, mask_token_id)`: each copy keeps k random perturbed positions and replaces the
  others by the mask token. The certificate holds for every prompt that differs from the given one in
  at most r perturbed positions (``edits=r`` substitutions, any tokens).

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

from typing import Any, Callable, Sequence

import torch

from smoothgen.center import CenterSmoother
from smoothgen.certificates import CenterCertificate, CenterSmoothingResult
from smoothgen.engine import Purpose, RandomStream
from smoothgen.engine.runtime.torch_eager import TorchRuntime
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError
from smoothgen.generative import (
    DEFAULT_BATCH_SIZE,
    EmbeddingGaussian,
    PromptNoise,
    PromptSmoother,
    TokenAblation,
)
from smoothgen.metrics import Metric, get_metric
from smoothgen.validate import check_count

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

    def smoother(self, noise: PromptNoise) -> CenterSmoother:
        """The `CenterSmoother` that runs the algorithm: this encoder as its base model, `noise` as its noise."""
        return CenterSmoother(self.runtime, metric=self.metric, batch_size=self.batch_size,
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
        out = [self.runtime.run(noise.copies(ids, key, s, min(self.batch_size, n - s))) for s in range(0, n, self.batch_size)]
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
            edits: token ablation only: r, the number of perturbed positions x' may substitute (any
                tokens). The certificate's ``eps_in`` is then float(r) and its ``sigma`` None.
            n, m, delta, alpha1, alpha2: as in `CenterSmoother.certify`.
            seed, request_id: the request's random streams (Purpose.CENTER, CENTER_CHECK, CENTER_RADIUS).
            mask: per-call perturbed positions.

        Returns:
            `CenterCertificate` with metric "cosine" (γ = 2, β = 4: eps_out = 10·R̂); p = 1/2 + Δ + Δ_r
            under ablation.

        Raises:
            InvalidParameterError: eps_in with ablation, edits with Gaussian noise, neither, bad counts.
            InvalidInputError: an empty prompt, ids out of range, a string without a tokenizer.
        """
        ablation = isinstance(self.noise, TokenAblation)
        if ablation and eps_in is not None:
            raise InvalidParameterError("eps_in is an embedding radius for Gaussian noise; under token ablation give edits=r")
        if not ablation and edits is not None:
            raise InvalidParameterError(
                "edits counts substituted tokens under token ablation; under Gaussian noise give eps_in (an embedding radius)"
            )
        threat = edits if ablation else eps_in
        if threat is None:
            raise InvalidParameterError("give edits=r (token ablation)" if ablation else "give eps_in (Gaussian noise)")
        noise, ids = self.noise_for(prompt, mask)
        return self.smoother(noise).certify(ids, noise.check_radius(threat), n=n, m=m, delta=delta, alpha1=alpha1,
                                            alpha2=alpha2, seed=seed, request_id=request_id)

    def __repr__(self) -> str:
        return f"SmoothedEncoder({type(self.model).__name__}, {self.noise!r}, pooling={self.pooling!r}, metric={self.metric.name!r})"


__all__ = ["POOLINGS", "PromptNoise", "SmoothedEncoder", "cls_pooling", "max_pooling", "mean_pooling"]
