"""SmoothGen for language models: noise on the prompt's token embeddings, and the SOUND text certificates.

`SmoothedLM` wraps a causal LM that takes ``inputs_embeds`` (smoothgen's `CodeLM`, or a Hugging Face
``transformers`` causal LM) and smooths it in one of two noise spaces: in embedding space
(`EmbeddingGaussian`: x = the prompt's embedding rows at the perturbed positions (``mask``),
z = x + ε with ε ~ N(0, σ²I)), or over the prompt's tokens (`TokenAblation`, docs/theory.md §4g: keep k random
perturbed positions, mask the others; the certified prefix is then stated in substituted tokens: step t
holds against r substitutions when L_t > 1/2 + Δ_r, by the same induction as below with the Lipschitz
step replaced by |p̄(x) − p̄(x')| ≤ Δ_r). Three certificates (docs/theory.md §4):

- (c) certified prefix of smoothed greedy decoding (`SmoothedLM.generate`): the first k generated tokens
  are the same for every embedding perturbation ‖Δ‖_F < R (`GenerationCertificate`);
- (a) the sample-free TV / Wasserstein bound on the output distribution of ONE noisy generation
  (`SmoothedLM.sample`, `SmoothedLM.distribution_bound`);
- (d) center smoothing of the generated token sequences under the Levenshtein metric
  (`SmoothedLM.center_certify`, through `smoothgen.center.CenterSmoother`).

The smoothed greedy decoder (§4c)::

    p̄_t(x) = E_ε softmax(LM(emb(x) + ε, y_<t))          (mean of the per-copy softmax, a [0,1] score)
    y_t    = argmax_v p̄_t,v(x)                          (decoded greedily from p̄)

or, with ``score="vote"`` (the default under token ablation), p̄_t,v(x) = P_ε[argmax LM(emb(x) + ε, y_<t) = v],
the share of noisy copies whose own greedy choice is v: a 0/1 score, so step t is Cohen et al.'s smoothed
classifier, and L_t is the Clopper–Pearson bound of the vote count. Everything below holds for either
score, since it uses only that each copy's score of each token lies in [0, 1].

CERTIFY(prompt, T, n0, n, α):
1. Selection: n0 noisy copies of the prompt, each with its own KV cache. Prefill once; at step t the
   decoder picks a_t = argmax of the mean softmax of the n0 copies and feeds the clean embedding of a_t
   to every copy (the prompt is never recomputed). With n0 = 0 the clean prompt is the one row: the base
   model's own greedy decoding picks a_t (plain generation; a guess that depends on x alone). Under token
   deletion each selection copy keeps exactly the mean number of perturbed tokens: one length, one batch
   (docs/theory.md §4j; the guess need only be independent of step 2's copies).
2. Estimation: n FRESH noisy copies (an independent random stream), run on the decoded sequence
   y = (a_0, ..., a_{T−1}) (teacher forcing: prefill + y, in one pass when it fits the logits budget,
   else in windows through the KV cache). Per step t the per-copy scores s_i,t = softmax_i,t(a_t) ∈ [0, 1].
3. L_t = a one-sided (1 − α/T) lower confidence bound on p̄_t,a_t from the s_i,t (Bonferroni over the T
   steps; empirical Bernstein and Hoeffding at α/(2T) each, the larger one: `stats.bounded_mean_lower`).
   U_t = 1 − L_t. R_t = (σ/2)(Φ⁻¹(L_t) − Φ⁻¹(U_t)) = σ·Φ⁻¹(L_t) if L_t > 1/2, else 0.
4. The prefix certified at radius R: the largest k with R_t > R for every t < k.

Why the prefix certificate is sound. Let E be the event that all T lower bounds hold: L_t ≤ p̄_t,a_t(x; y_<t)
for t < T. The decoded y depends only on the selection noise (n0 = 0: on nothing random); given y, the
estimation noise is independent of it, so each bound fails with probability ≤ α/T conditionally on y, and E has
probability ≥ 1 − α (union bound; this needs T fixed in advance: it is max_new_tokens, whether or not
decoding stops early at EOS). On E, fix x' = x + Δ with ‖Δ‖_F < min_{t<k} R_t (Δ on the perturbed rows).
Induction on t < k: assume the smoothed decoder at x' produced y'_<t = y_<t (true for t = 0). Then its
step-t distribution is p̄_t(x'; y_<t) — the same conditioning sequence the estimation copies used, so the
same function of the embeddings. For every token b, x ↦ σ·Φ⁻¹(p̄_t,b(x; y_<t)) is 1-Lipschitz (Salman
et al. 2019, App. A, Lemma 2; the generated tokens' embeddings are clean and fixed), hence
p̄_t,a_t(x') ≥ Φ(Φ⁻¹(L_t) − ‖Δ‖/σ) > Φ(Φ⁻¹(L_t) − R_t/σ) = 1/2, so a_t is the unique argmax at x': y'_t = a_t.
With Δ = 0 the same argument shows the smoothed decoder at x itself produces y_<k (the selection sample
may have chosen badly only where L_t ≤ 1/2, which ends the prefix). The radius is in embedding space
(Frobenius norm over the perturbed rows); `substitution_radius` translates token substitutions into it.

Assumptions: the model is deterministic given its inputs (eval mode; the wrapper calls ``eval()``), σ is
fixed (not input-dependent, docs/theory.md §5), and the noise is the Philox Gaussian of `smoothgen.kernels`
computed in float32 — exact-Gaussian soundness in floating point is not proved (docs/theory.md §6, Voráček &
Hein 2023), as everywhere in smoothgen.

Noise: `smoothgen.kernels.noisy_embedding` (the fused Triton kernel on CUDA, the counter-based reference
on CPU: the same noise on both), keyed per request and purpose by `smoothgen.engine.RandomStream`
(selection = Purpose.SELECTION, estimation = Purpose.ESTIMATION, next-token distributions and samples =
Purpose.PREDICT). Copy i of a purpose always gets the noise (key, offset = i), whatever the batch size.

KV caches are opaque here: the wrapper passes back whatever ``past_key_values`` the model returned and
never indexes, gathers or expands it, so a tuple cache (CodeLM) and a Hugging Face ``Cache`` object work
alike. Each chunk of ``batch_size`` copies keeps its own cache.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

from smoothgen import stats
from smoothgen.certificates import CenterCertificate
from smoothgen.deletion import TokenDeletion
from smoothgen.engine import Purpose, RandomStream
from smoothgen.engine.noise import NoiseKey
from smoothgen.errors import InvalidInputError, InvalidParameterError
from smoothgen.kernels.reference import check_counter_range
from smoothgen.validate import check_alpha, check_count, check_positive
from smoothgen.generation.certificates import (  # noqa: F401 - the public names of smoothgen.generative
    DistributionBound,
    GenerationCertificate,
    _check_radius,
)
from smoothgen.generation.interface import (  # noqa: F401 - the public names of smoothgen.generative
    forward_lm,
    model_context_length,
    positional_mask,
)
from smoothgen.generation.noise import (  # noqa: F401 - the public names of smoothgen.generative
    EmbeddingGaussian,
    NoiseSpace,
    PromptNoise,
    SCORES,
    SUBSET_TIE_PROBABILITY,
    TOKEN_NOISE,
    TokenAblation,
    ablation_delta,
    ablation_radius,
)
from smoothgen.generation.prompt import (  # noqa: F401 - the public names of smoothgen.generative
    PromptSmoother,
    as_noise_space,
)
from smoothgen.generation.substitutions import (  # noqa: F401 - the public names of smoothgen.generative
    _as_ids,
    nearest_neighbor_distances,
    substitution_radius,
    substitutions_covered,
)


#: Estimation copies between two checks of a sequential estimation (`SmoothedLM.generate(sequential=True)`).
SEQUENTIAL_CHECK_EVERY = 50
#: When a sequential estimation looks first (`SmoothedLM.generate`'s first_check).
FIRST_CHECKS = ("earliest", "check_every")
#: How a certified generation's n0 selection copies are drawn under token deletion (`generate`'s selection):
#: "equal-length", each keeps exactly the mean number of perturbed tokens (one batch per chunk); "noise", like
#: the estimation copies (independent deletions, one batch per length: the tokens are the Monte Carlo
#: smoothed decoder's, as `decode` gives them). Other noise spaces draw selection copies like "noise" always.
SELECTIONS = ("equal-length", "noise")


def sequential_looks(check_every: int, max_samples: int, certify_above: float, alpha_step: float,
                     first_check: str = "earliest") -> list[int]:
    """The copy counts at which a sequential estimation looks: every check_every copies up to max_samples
    (and at max_samples), and with "earliest" one look before them at the fewest copies that could prove a
    step above `certify_above` at alpha_step (all of them agreeing), when that is fewer than check_every."""
    looks = [*range(check_every, max_samples, check_every), max_samples]
    if first_check == "earliest" and certify_above < 1.0:
        earliest = stats.betting_first_decision(certify_above, alpha_step, min(check_every, max_samples))
        if earliest is not None and earliest < looks[0]:
            looks.insert(0, earliest)
    return looks


#: Noisy copies per model call (and per KV cache). On the 2-core CPU with the embedded CodeLM, 100 copies
#: per call keep the matrix multiplies large enough that Python overhead stays small.
DEFAULT_BATCH_SIZE = 100


#: Largest logits tensor one call may produce in the estimation pass, in elements (64 MiB of float32):
#: teacher forcing runs the whole decoded sequence in one call when [copies, positions, vocab] fits.
LOGITS_BUDGET = 1 << 24


#: `SmoothedLM.generate(progress=...)` is called as progress(phase, done, total) with one of these phases:
#: tokens chosen from the selection copies, then estimation copies run.
SELECTION_PHASE, ESTIMATION_PHASE = "choose tokens", "certify"


Progress = Callable[[str, int, int], None]


class SmoothedLM(PromptSmoother):
    """A causal LM smoothed with Gaussian noise on its prompt's token embeddings, or with randomized
    ablation of its prompt's tokens (`TokenAblation`: certificates in substituted tokens).

    Args:
        model: a causal LM called as ``model(inputs_embeds=[B, T, D], past_key_values=..., use_cache=True)``
            returning ``.logits`` [B, T, V] and ``.past_key_values``, with ``get_input_embeddings()``
            (smoothgen's CodeLM, Hugging Face causal LMs). It is put in eval mode.
        sigma: the noise space: a number σ > 0 (Gaussian noise of that standard deviation in embedding
            space, `EmbeddingGaussian`), or `TokenAblation(keep, mask_token_id)`.
        mask: which prompt positions are perturbed: None (all), a sequence of L booleans (prompts must
            then have length L), or a callable L -> L booleans, called with the prompt's length only
            (positions, never tokens: the certificates hold for a perturbed set that is the same at x and
            at every x' they cover, docs/theory.md §4g). Per-call ``mask=`` overrides it. Unperturbed
            positions keep their exact clean embedding.
        batch_size: noisy copies per model call; each chunk keeps its own KV cache.
        device: move the model there (default: where its embedding table is).
        bound: confidence bound on p̄ ("best", "bernstein" or "hoeffding"; see `stats.bounded_mean_lower`).
        eos_token_id: decoding stops after this token (None: never early).
        tokenizer: object with ``encode(str) -> ids`` for string prompts (CodeLM's byte encoding is used
            by default for a CodeLM).
        score: what each noisy copy contributes to p̄_t: ``"probability"`` (its softmax: p̄_t is the mean
            next-token distribution; lower bounds by `bound`), ``"vote"`` (1 for its argmax token: p̄_t is
            the share of copies whose greedy choice is each token, the smoothed classifier of Cohen et al.
            at every step; lower bounds are Clopper–Pearson, exact for these 0/1 scores), or ``"auto"``
            (vote for token ablation, probability for Gaussian noise). Both are bounded scores in [0, 1],
            so every certificate holds for both (docs/theory.md §4c, §4g); votes certify far more under
            ablation, where a copy's softmax is spread but its argmax is stable.

    Raises:
        InvalidParameterError: bad σ, batch_size, bound or score.
        InvalidInputError: a model without get_input_embeddings().
    """

    model_kind = "a causal LM that accepts inputs_embeds"

    def __init__(
        self,
        model: Any,
        sigma: float | EmbeddingGaussian | TokenAblation,
        *,
        mask: Sequence[bool] | Callable[[int], Any] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: str | torch.device | None = None,
        bound: str = "best",
        eos_token_id: int | None = None,
        tokenizer: Any = None,
        score: str = "auto",
    ):
        super().__init__(model, sigma, mask=mask, batch_size=batch_size, device=device, tokenizer=tokenizer)
        if bound not in stats.BOUNDED_MEAN_METHODS:
            raise InvalidParameterError(f"bound must be one of {stats.BOUNDED_MEAN_METHODS}, got {bound!r}")
        self.bound = bound
        if score not in SCORES:
            raise InvalidParameterError(f"score must be one of {SCORES}, got {score!r}")
        self.score = ("vote" if isinstance(self.noise, TOKEN_NOISE) else "probability") if score == "auto" else score
        if eos_token_id is not None:
            eos_token_id = int(_as_ids([eos_token_id], self.vocab_size)[0])
        self.eos_token_id = eos_token_id

    def _check_length(self, length: int, new_tokens: int) -> None:
        if self.context_length is not None and length + new_tokens > self.context_length:
            raise InvalidInputError(
                f"prompt of {length} tokens + {new_tokens} new tokens exceeds the model's context length "
                f"{self.context_length}"
            )

    def _check_delta(self, delta: torch.Tensor | None, length: int) -> torch.Tensor | None:
        if delta is None:
            return None
        if isinstance(self.noise, TOKEN_NOISE):  # refused before any work, whoever builds the prompts
            raise InvalidParameterError("delta is an embedding perturbation: it applies to Gaussian noise, not to "
                                        f"token {self.noise.kind}")
        if not isinstance(delta, torch.Tensor) or tuple(delta.shape) != (length, self.dim):
            raise InvalidInputError(f"delta must be a tensor [{length}, {self.dim}] (one row per prompt position)")
        if not bool(torch.isfinite(delta).all()):
            raise InvalidInputError("delta contains NaN or Inf")
        return delta.detach().to(self.device, self.table.dtype)

    # ---------------------------------------------------------------------------------- noise

    def noisy_prompts(
        self, ids: torch.Tensor, mask: torch.Tensor, key: NoiseKey, start: int, count: int, delta: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Copies start .. start + count − 1 of the noisy prompt (emb(ids) + Δ) + σ·ε, noise at masked rows only.

        Copy i's noise is a pure function of (key, i) (the Philox stream of `kernels.noisy_embedding`),
        so it does not depend on how copies are cut into chunks. Unmasked rows are the clean table rows
        exactly; `delta` (an embedding perturbation, for attacks) is added to the masked rows only.

        Shapes:
            ids: [L], mask: [L], delta: [L, D] -> [count, L, D]
        """
        return self.noise.prompts(self.table, ids, mask, key, start, count, delta)

    def noisy_groups(
        self, ids: torch.Tensor, mask: torch.Tensor, key: NoiseKey, start: int, count: int, delta: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Copies start .. start + count − 1 as batches of equal length: [c_g, L_g, D] each. One batch
        (`noisy_prompts`) for Gaussian noise and ablation; one per length for token deletion, whose copies
        are the kept tokens only. Sums over copies do not depend on how they are grouped."""
        if isinstance(self.noise, TokenDeletion):
            return self.noise.prompt_groups(self.table, ids, mask, key, start, count, delta)
        return [self.noisy_prompts(ids, mask, key, start, count, delta)]

    def _gaussian_only(self, what: str) -> None:
        if not isinstance(self.noise, EmbeddingGaussian):
            raise InvalidParameterError(f"{what} is a certificate of Gaussian embedding noise; this SmoothedLM uses {self.noise!r}")

    def _chunks(self, count: int, length: int, first: int = 0) -> list[tuple[int, int]]:
        """(start, size) of each batch of copies first .. first + count − 1 of a prompt of `length` tokens. A
        count whose noise counters would wrap (two copies sharing noise) is refused before anything is built."""
        check_counter_range(0, (first + count) * length, max(self.dim, 2))
        return [(first + s, min(self.batch_size, count - s)) for s in range(0, count, self.batch_size)]

    def _forward(self, embeds: torch.Tensor, past: Any = None) -> tuple[torch.Tensor, Any]:
        return forward_lm(self.model, embeds, past)

    def _step_scores(self, logits: torch.Tensor, per_copy: bool = False) -> torch.Tensor:
        """The sum over copies of each token's score at one position: softmax probabilities, or votes
        (1 for the copy's argmax token, ties to the lowest id as torch.argmax); `per_copy`: each copy's.

        Shapes:
            logits: [c, V] -> [V] float64 ([c, V] per copy)
        """
        if self.score == "vote":
            if per_copy:
                return torch.nn.functional.one_hot(logits.argmax(dim=-1), self.vocab_size).double()
            return torch.bincount(logits.argmax(dim=-1), minlength=self.vocab_size).double()
        probs = torch.softmax(logits.float(), dim=-1).double()
        return probs if per_copy else probs.sum(0)

    def _token_scores(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Each copy's score of the target token at each position (probability, or 1/0 vote).

        Shapes:
            logits: [c, T, V], target: [T] -> [c, T] float64
        """
        if self.score == "vote":
            return (logits.argmax(dim=-1) == target[None]).double()
        probs = torch.softmax(logits.float(), dim=-1)
        return probs.gather(2, target[None, :, None].expand(logits.shape[0], -1, 1))[..., 0].double()

    # ---------------------------------------------------------------------------------- p̄

    @torch.no_grad()
    def next_token_distribution(
        self,
        prompt: Any,
        n: int,
        seed: int | None = None,
        *,
        request_id: int = 0,
        mask: Any = None,
        delta: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """p̄(x) = mean over n noisy copies of the score at the last position: softmax(LM(noisy prompt)), or
        the one-hot vote of its argmax (``score="vote"``).

        A point estimate (no confidence); noise from the Purpose.PREDICT stream.

        Returns:
            float64 tensor [V] on the CPU, summing to 1.
        """
        ids = self.prompt_ids(prompt)
        n = check_count(n, "n")
        m = self.prompt_mask(ids, mask)
        delta = self._check_delta(delta, ids.numel())
        self._check_length(ids.numel(), 0)
        key = RandomStream(seed, request_id).key(Purpose.PREDICT)
        total = None
        for start, count in self._chunks(n, ids.numel()):
            for noisy in self.noisy_groups(ids, m, key, start, count, delta):
                logits, _ = self._forward(noisy)
                part = self._step_scores(logits[:, -1])
                total = part if total is None else total + part
        return (total / n).cpu()

    # ---------------------------------------------------------------------------------- decoding

    def _select(
        self, batches: list[torch.Tensor], steps: int, use_cache: bool, progress: Progress | None = None,
    ) -> tuple[list[int], list[float]]:
        """Greedy decoding on the summed scores of the prompt copies in `batches` (each [c_g, L_g, D], with
        its own KV cache): (tokens, mean score of each chosen token over the copies)."""
        count = sum(noisy.shape[0] for noisy in batches)
        tokens: list[int] = []
        top: list[float] = []
        if use_cache:
            caches: list[Any] = []
            total = None
            for noisy in batches:  # prefill once per batch
                logits, past = self._forward(noisy)
                caches.append((noisy.shape[0], past))
                part = self._step_scores(logits[:, -1])
                total = part if total is None else total + part
            for t in range(steps):
                a = int(torch.argmax(total))
                tokens.append(a)
                top.append(float(total[a]) / count)
                if progress is not None:
                    progress(SELECTION_PHASE, len(tokens), steps)
                if t == steps - 1 or a == self.eos_token_id:
                    break
                row = self.table[a]
                total = None
                for i, (c, past) in enumerate(caches):  # feed the same clean token to every copy
                    logits, past = self._forward(row.expand(c, 1, self.dim), past)
                    caches[i] = (c, past)
                    part = self._step_scores(logits[:, -1])
                    total = part if total is None else total + part
            return tokens, top
        for t in range(steps):  # recompute every copy's whole sequence at every step
            total = None
            suffix = self.table[torch.tensor(tokens, dtype=torch.long, device=self.device)]
            for noisy in batches:
                seq = torch.cat([noisy, suffix[None].expand(noisy.shape[0], -1, -1)], dim=1)
                logits, _ = self._forward(seq)
                part = self._step_scores(logits[:, -1])
                total = part if total is None else total + part
            a = int(torch.argmax(total))
            tokens.append(a)
            top.append(float(total[a]) / count)
            if progress is not None:
                progress(SELECTION_PHASE, len(tokens), steps)
            if a == self.eos_token_id:
                break
        return tokens, top

    def _copy_batches(
        self, ids: torch.Tensor, mask: torch.Tensor, key: NoiseKey, count: int, delta: torch.Tensor | None,
        groups: Callable[..., list[torch.Tensor]] | None = None,
    ) -> list[torch.Tensor]:
        """Copies 0 .. count − 1 of the noisy prompt in batches of equal length, chunk by chunk: `groups`(ids,
        mask, key, start, count, delta) of each chunk, by default `noisy_groups` (the smoothed decoder's own
        distribution, as `decode` draws it)."""
        groups = self.noisy_groups if groups is None else groups
        return [noisy for start, c in self._chunks(count, ids.numel())
                for noisy in groups(ids, mask, key, start, c, delta)]

    def _selection_batches(
        self, ids: torch.Tensor, mask: torch.Tensor, key: NoiseKey, count: int, delta: torch.Tensor | None,
        selection: str = "equal-length",
    ) -> list[torch.Tensor]:
        """The prompts that choose a certified generation's tokens. The certificate asks of them only that
        they not depend on the estimation copies (docs/theory.md §4c), so:

        * count = 0: the clean prompt itself ([1, L, D]; `delta` on its perturbed rows), a function of the
          input alone: the base model's own greedy decoding chooses;
        * token deletion with selection "equal-length": `count` copies that each keep exactly the mean number
          of perturbed tokens (`TokenDeletion.selection_groups`), so that they decode as one batch instead of
          one per length;
        * otherwise `count` noisy copies, as `decode` draws them."""
        if count == 0:
            clean = self.table[ids.to(self.table.device)]
            if delta is not None:
                clean = clean + delta * mask[:, None].to(delta.dtype)
            return [clean[None]]
        if selection == "equal-length" and isinstance(self.noise, TokenDeletion):
            equal_length = functools.partial(self.noise.selection_groups, self.table)
            return self._copy_batches(ids, mask, key, count, delta, equal_length)
        return self._copy_batches(ids, mask, key, count, delta)

    def _estimate(
        self, ids: torch.Tensor, mask: torch.Tensor, key: NoiseKey, count: int, tokens: list[int],
        delta: torch.Tensor | None, use_cache: bool, progress: Progress | None = None, first: int = 0,
        total: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per step t, the sum and the sum of squares over `count` fresh copies (first .. first + count − 1
        of the stream; progress counts them out of `total`) of softmax_t(tokens[t]).

        Cached: teacher forcing on the decoded tokens (prefill + tokens[:-1] in as few calls as the
        logits budget allows, continuing through each batch's KV cache). Uncached: every step recomputes
        every copy's whole sequence (the reference for tests and benchmarks).

        Shapes:
            -> ([T] float64, [T] float64)
        """
        steps = len(tokens)
        target = torch.tensor(tokens, dtype=torch.long, device=self.device)
        feed = self.table[target[:-1]]  # [T − 1, D]: clean embeddings of the fed tokens
        sums = torch.zeros(steps, dtype=torch.float64, device=self.device)
        squares = torch.zeros(steps, dtype=torch.float64, device=self.device)
        for start, c in self._chunks(count, ids.numel(), first):
            for noisy in self.noisy_groups(ids, mask, key, start, c, delta):
                scores = self._teacher_forced_scores(noisy, feed, target, use_cache)
                scores.clamp_(0.0, 1.0)
                sums += scores.sum(0)
                squares += scores.pow(2).sum(0)
            if progress is not None:
                progress(ESTIMATION_PHASE, start + c, first + count if total is None else total)
        return sums.cpu(), squares.cpu()

    def _teacher_forced_scores(
        self, noisy: torch.Tensor, feed: torch.Tensor, target: torch.Tensor, use_cache: bool
    ) -> torch.Tensor:
        """Each copy's score of target[t] at step t, fed the prompt copy then target[:-1].

        Shapes:
            noisy: [c, L, D], feed: [T − 1, D], target: [T] -> [c, T] float64
        """
        c, length = noisy.shape[0], noisy.shape[1]
        steps = target.numel()
        scores = torch.empty(c, steps, dtype=torch.float64, device=self.device)
        if not use_cache:
            for t in range(steps):
                seq = torch.cat([noisy, feed[:t][None].expand(c, -1, -1)], dim=1)
                logits, _ = self._forward(seq)
                scores[:, t] = self._token_scores(logits[:, -1:], target[t:t + 1])[:, 0]
            return scores
        per_call = max(1, LOGITS_BUDGET // max(1, c * self.vocab_size))
        past, done, pos = None, 0, 0  # done: steps scored; pos: positions fed so far
        total_pos = length + steps - 1
        while pos < total_pos:
            width = max(per_call, length) if pos == 0 else per_call
            end = min(total_pos, pos + width)
            pieces = []
            if pos < length:
                pieces.append(noisy[:, pos:min(end, length)])
            if end > length:
                pieces.append(feed[max(pos, length) - length:end - length][None].expand(c, -1, -1))
            logits, past = self._forward(torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0], past)
            first = max(pos, length - 1)  # positions ≥ L − 1 predict a generated token
            if end > first:
                t0, t1 = first - (length - 1), end - (length - 1)
                scores[:, t0:t1] = self._token_scores(logits[:, first - pos:], target[t0:t1])
                done = t1
            pos = end
        assert done == steps
        return scores

    def _decode_args(self, prompt, max_new_tokens, mask, delta):
        ids = self.prompt_ids(prompt)
        max_new_tokens = check_count(max_new_tokens, "max_new_tokens")
        self._check_length(ids.numel(), max_new_tokens)
        return ids, max_new_tokens, self.prompt_mask(ids, mask), self._check_delta(delta, ids.numel())

    @torch.no_grad()
    def decode(
        self,
        prompt: Any,
        max_new_tokens: int,
        n: int,
        seed: int | None = None,
        *,
        request_id: int = 0,
        mask: Any = None,
        delta: torch.Tensor | None = None,
        use_cache: bool = True,
    ) -> tuple[int, ...]:
        """Smoothed greedy decoding with n copies, no certificate (e.g. to evaluate an attack).

        Uses the Purpose.PREDICT stream. `delta` perturbs the prompt's embedding rows (masked rows only).
        """
        ids, max_new_tokens, m, delta = self._decode_args(prompt, max_new_tokens, mask, delta)
        n = check_count(n, "n")
        key = RandomStream(seed, request_id).key(Purpose.PREDICT)
        return tuple(self._select(self._copy_batches(ids, m, key, n, delta), max_new_tokens, use_cache)[0])

    @torch.no_grad()
    def generate(
        self,
        prompt: Any,
        max_new_tokens: int,
        n0: int = 100,
        n: int = 1000,
        alpha: float = 0.001,
        seed: int | None = None,
        radius: float | None = None,
        *,
        request_id: int = 0,
        mask: Any = None,
        use_cache: bool = True,
        delta: torch.Tensor | None = None,
        progress: Progress | None = None,
        sequential: bool = False,
        check_every: int = SEQUENTIAL_CHECK_EVERY,
        first_check: str = "earliest",
        selection: str = "equal-length",
    ) -> GenerationCertificate:
        """Certified smoothed greedy decoding (docs/theory.md §4c; the algorithm is in the module docstring).

        Args:
            prompt: token ids [L] (or a string, with a tokenizer).
            max_new_tokens: T, tokens to generate (fixed in advance: α is split across T steps).
            n0: selection copies (choose the tokens; under token deletion each keeps exactly the mean number of
                perturbed tokens, so that they decode as one batch). 0: the base model's greedy decoding of the
                clean prompt chooses them (no noise: the plain generation's cost); a step certifies only where
                that token is also the smoothed decoder's, proved by the estimation copies as always, and the
                tokens after the certified prefix are the base model's, not the smoothed decoder's.
            n: estimation copies (fresh noise; bound p̄ of the chosen tokens).
            alpha: total error probability of the certificate.
            seed, request_id: the request's random stream (None: fresh entropy, not reproducible).
            radius: the radius at which `certified_prefix` is reported (None: 0).
            mask: per-call perturbed positions (overrides the wrapper's).
            use_cache: False recomputes every copy's whole sequence at each step (same result, for tests
                and benchmarks).
            delta: an embedding perturbation of the prompt rows (for evaluating attacks).
            progress: called as progress(phase, done, total) while it works: `SELECTION_PHASE` after each
                chosen token (of max_new_tokens), `ESTIMATION_PHASE` after each chunk of estimation copies
                (of n). For progress bars; it does not change the result.
            sequential: votes only (docs/theory.md §6 applied per step): draw the estimation copies
                `check_every` at a time, up to n, and stop as soon as the prefix at `radius` is decided —
                every step's vote share proved above the level `radius` needs, or the first step that is not
                proved above it proved below — by each step's betting confidence sequence at α/T (anytime
                valid: Ville's inequality holds at any stopping time). L_t is then that sequence's lower end,
                so the certificate is as sound as with a fixed n; `n` in it is the number of copies drawn.
            check_every: copies between two checks of the sequential estimation.
            first_check: "earliest" adds a first look at the fewest copies that could certify the prefix at
                `radius` (all of them agreeing; `stats.betting_first_decision`) when that is fewer than
                check_every, before the looks every check_every copies; "check_every" makes only those
                (`sequential_looks`). Both are as sound: the confidence sequence holds at every look.
            selection: token deletion's selection copies (`SELECTIONS`): "equal-length" (each keeps the mean
                number of perturbed tokens: one batch, docs/theory.md §4j) or "noise" (independent deletions,
                like the estimation copies). As sound either way; the record says which (None for other noise
                and for n0 = 0, where it changes nothing).

        Returns:
            A `GenerationCertificate`.

        Raises:
            InvalidInputError: empty prompt, ids out of range, prompt + max_new_tokens over the context length.
            InvalidParameterError: n0 < 0, n or max_new_tokens < 1, alpha outside (0, 1), negative radius.
            ModelOutputError: NaN/Inf logits or malformed model outputs.
        """
        ids, max_new_tokens, m, delta = self._decode_args(prompt, max_new_tokens, mask, delta)
        n0, n = check_count(n0, "n0", minimum=0), check_count(n, "n")
        alpha = check_alpha(alpha)
        radius = _check_radius(radius)
        if self.score == "probability" and self.bound == "bernstein" and n < 2:
            raise InvalidParameterError("the empirical Bernstein bound needs n >= 2")
        if sequential:
            if self.score != "vote":
                raise InvalidParameterError("sequential estimation bounds vote shares (score='vote'); this SmoothedLM "
                                            f"averages {self.score}s")
            check_every = check_count(check_every, "check_every")
            if first_check not in FIRST_CHECKS:
                raise InvalidParameterError(f"first_check must be one of {FIRST_CHECKS}, got {first_check!r}")
        if not isinstance(selection, str) or selection not in SELECTIONS:
            raise InvalidParameterError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        stream = RandomStream(seed, request_id)
        selection_key, estimation_key = stream.key(Purpose.SELECTION), stream.key(Purpose.ESTIMATION)
        tokens, p_selection = self._select(self._selection_batches(ids, m, selection_key, n0, delta, selection),
                                           max_new_tokens, use_cache, progress)
        alpha_step = alpha / max_new_tokens  # Bonferroni over the T steps fixed in advance
        perturbed = int(m.sum())
        tau = self.noise.noise_tv(len(ids), self.dim, perturbed)
        max_samples = n
        if sequential:
            sums, squares, n = self._estimate_sequentially(ids, m, estimation_key, n, tokens, delta, use_cache, progress,
                                                           check_every, alpha_step, tau, radius, perturbed, first_check)
        else:
            sums, squares = self._estimate(ids, m, estimation_key, n, tokens, delta, use_cache, progress)
        means, variances, lowers, radii = [], [], [], []
        for t in range(len(tokens)):
            mean = min(1.0, max(0.0, float(sums[t]) / n))
            var = max(0.0, (float(squares[t]) - n * mean * mean) / (n - 1)) if n > 1 else 0.0
            if sequential:  # the lower end of the step's confidence sequence, valid at the stopping time
                raw = stats.betting_lower(int(round(float(sums[t]))), n, alpha_step)
            elif self.score == "vote":  # 0/1 scores: the exact binomial bound on the vote share
                raw = stats.clopper_pearson_lower(int(round(float(sums[t]))), n, alpha_step)
            else:
                raw = stats.bounded_mean_lower(mean, var, n, alpha_step, self.bound)
            lower = stats.lower_under_gaussian(raw, tau)
            means.append(mean)
            variances.append(var)
            lowers.append(lower)
            radii.append(self.noise.step_radius(lower, perturbed))
        cert = GenerationCertificate(
            prompt=tuple(int(v) for v in ids.tolist()),
            tokens=tuple(tokens),
            certified_prefix=0,
            radius=radius,
            step_radius=tuple(radii),
            p_lower=tuple(lowers),
            p_mean=tuple(means),
            p_variance=tuple(variances),
            p_selection=tuple(p_selection),
            sigma=self.sigma,
            n0=n0,
            n=n,
            alpha=alpha,
            alpha_step=alpha_step,
            bound="betting" if sequential else "clopper-pearson" if self.score == "vote" else self.bound,
            max_new_tokens=max_new_tokens,
            mask=tuple(bool(v) for v in m.tolist()),
            seed=seed,
            request_id=int(request_id),
            stopped="eos" if tokens[-1] == self.eos_token_id else "max_new_tokens",
            noise_tv=tau,
            noise=self.noise.kind,
            keep=getattr(self.noise, "keep", None),
            score=self.score,
            delete_prob=getattr(self.noise, "delete_prob", None),
            sequential=sequential,
            max_samples=max_samples,
            check_every=check_every if sequential else None,
            first_check=first_check if sequential else None,
            selection=selection if n0 and isinstance(self.noise, TokenDeletion) else None,
        )
        return dataclasses.replace(cert, certified_prefix=cert.prefix_at(radius))

    def _estimate_sequentially(
        self, ids: torch.Tensor, mask: torch.Tensor, key: NoiseKey, max_samples: int, tokens: list[int],
        delta: torch.Tensor | None, use_cache: bool, progress: Progress | None, check_every: int, alpha_step: float,
        tau: float, radius: float, perturbed: int, first_check: str = "earliest",
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Estimation copies `check_every` at a time until the prefix at `radius` is decided (see `generate`):
        (vote sums, sums of squares, copies drawn). The stopping rule only decides when to stop; the bounds
        are computed afterwards from the counts (`stats.betting_lower`), valid at any stopping time. The looks
        are `sequential_looks` (with first_check "earliest", one more as soon as the copies could certify)."""
        level = self.noise.certify_threshold(radius, perturbed)
        certify_above = stats.upper_under_gaussian(level, tau)  # L − τ > level needs a share above level + τ
        below = stats.lower_under_gaussian(level, tau)
        zeros_above = math.nextafter(1.0 - below, math.inf) if below > 0.0 else None
        steps = len(tokens)
        sums = torch.zeros(steps, dtype=torch.float64)
        squares = torch.zeros(steps, dtype=torch.float64)
        drawn = 0
        for look in sequential_looks(check_every, max_samples, certify_above, alpha_step, first_check):
            count = look - drawn
            s, q = self._estimate(ids, mask, key, count, tokens, delta, use_cache, progress, first=drawn, total=max_samples)
            sums, squares, drawn = sums + s, squares + q, drawn + count
            votes = [int(round(float(v))) for v in sums]
            t = 0
            while t < steps and certify_above < 1.0 and stats.betting_proves_above(votes[t], drawn, certify_above, alpha_step):
                t += 1
            if t == steps:
                break  # every step certified at the radius
            if certify_above >= 1.0 or (zeros_above is not None and zeros_above < 1.0
                                        and stats.betting_proves_above(drawn - votes[t], drawn, zeros_above, alpha_step)):
                break  # step t can never cover the radius: the prefix ends there, whatever more copies say
        return sums, squares, drawn

    # ---------------------------------------------------------------------------------- one noisy run

    def _greedy(self, embeds: torch.Tensor, steps: int) -> list[tuple[int, ...]]:
        """Base greedy decoding of each row of a batch of prompt embeddings, with its own KV cache.

        Shapes:
            embeds: [b, L, D] -> b sequences of ≤ steps tokens (cut after EOS)
        """
        out = []
        for start in range(0, embeds.shape[0], self.batch_size):
            chunk = embeds[start:start + self.batch_size]
            logits, past = self._forward(chunk)
            seqs = []
            for t in range(steps):
                nxt = torch.argmax(logits[:, -1], dim=-1)  # [c]
                seqs.append(nxt)
                if t < steps - 1:
                    logits, past = self._forward(self.table[nxt][:, None], past)
            rows = torch.stack(seqs, dim=1).tolist()
            for row in rows:
                if self.eos_token_id is not None and self.eos_token_id in row:
                    row = row[: row.index(self.eos_token_id) + 1]
                out.append(tuple(row))
        return out

    @torch.no_grad()
    def exact_decode(
        self, prompt: Any, max_new_tokens: int, *, mask: Any = None, max_subsets: int = 20_000
    ) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """Token ablation or deletion: the smoothed greedy decoder computed exactly, with no sampling, by
        enumerating every kept subset (ablation: the C(P, k) subsets, equally likely; deletion: the 2^P
        deletion patterns, each with its probability p^deleted (1 − p)^kept).

        The discrete threat model makes small cases checkable: the decoder's output at each edited prompt
        is then known exactly, so a certified prefix that changes under a covered edit is a failure of
        the certificate (probability ≤ α) or a bug, never Monte Carlo noise.

        Returns:
            (tokens, the exact smoothed score p̄_t of each chosen token: probability or vote share).

        Raises:
            InvalidParameterError: Gaussian noise, or more than `max_subsets` subsets.
        """
        if not isinstance(self.noise, TOKEN_NOISE):
            raise InvalidParameterError("exact_decode enumerates the subsets of token ablation or deletion; Gaussian noise has none")
        ids, max_new_tokens, m, _ = self._decode_args(prompt, max_new_tokens, mask, None)
        max_subsets = check_count(max_subsets, "max_subsets")
        perturbed = int(m.sum())
        groups: list[tuple[torch.Tensor, torch.Tensor]] = []  # (prompts [S_g, L_g, D], weights [S_g] float64)
        if isinstance(self.noise, TokenDeletion):
            patterns, weights = self.noise.all_patterns(perturbed, max_subsets)
            kept = np.ones((patterns.shape[0], ids.numel()), dtype=bool)
            kept[:, m.cpu().numpy()] = patterns
            for rows, group in self.noise.by_length(ids, kept):
                groups.append((self.table[group], torch.from_numpy(weights[rows]).to(self.device)))
        else:
            keep = min(self.noise.keep, perturbed)
            if math.comb(perturbed, keep) > max_subsets:
                raise InvalidParameterError(f"C({perturbed}, {keep}) = {math.comb(perturbed, keep)} subsets exceed max_subsets = {max_subsets}")
            subsets = torch.tensor(list(itertools.combinations(range(perturbed), keep)), dtype=torch.long).reshape(-1, keep)
            prompts = self.noise.subset_prompts(self.table, ids, m, subsets)
            groups.append((prompts, torch.ones(prompts.shape[0], dtype=torch.float64, device=self.device)))
        norm = float(sum(float(w.sum()) for _, w in groups)) if not isinstance(self.noise, TokenDeletion) else 1.0
        tokens: list[int] = []
        probs: list[float] = []
        for _ in range(max_new_tokens):
            suffix = self.table[torch.tensor(tokens, dtype=torch.long, device=self.device)]
            total = torch.zeros(self.vocab_size, dtype=torch.float64, device=self.device)
            for prompts, weights in groups:
                for start in range(0, prompts.shape[0], self.batch_size):
                    chunk = prompts[start : start + self.batch_size]
                    logits, _ = self._forward(torch.cat([chunk, suffix[None].expand(chunk.shape[0], -1, -1)], dim=1))
                    if isinstance(self.noise, TokenDeletion):  # each pattern with its probability
                        total += weights[start : start + self.batch_size] @ self._step_scores(logits[:, -1], per_copy=True)
                    else:  # equally likely subsets: the sum, divided once (exact counts of votes)
                        total += self._step_scores(logits[:, -1])
            p_bar = total / norm
            a = int(torch.argmax(p_bar))
            tokens.append(a)
            probs.append(float(p_bar[a]))
            if a == self.eos_token_id:
                break
        return tuple(tokens), tuple(probs)

    def sample(
        self,
        prompt: Any,
        max_new_tokens: int,
        num_samples: int,
        seed: int | None = None,
        *,
        request_id: int = 0,
        mask: Any = None,
        delta: torch.Tensor | None = None,
    ) -> list[tuple[int, ...]]:
        """Generations of ONE noisy copy each: greedy decoding of the base LM from emb(prompt) + ε.

        The distribution of these outputs is what `distribution_bound` (§4a) bounds. Noise from the
        Purpose.PREDICT stream.
        """
        ids, max_new_tokens, m, delta = self._decode_args(prompt, max_new_tokens, mask, delta)
        num_samples = check_count(num_samples, "num_samples")
        key = RandomStream(seed, request_id).key(Purpose.PREDICT)
        out: list[tuple[int, ...]] = []
        for start, c in self._chunks(num_samples, ids.numel()):
            for noisy in self.noisy_groups(ids, m, key, start, c, delta):  # token deletion: grouped by length
                out += self._greedy(noisy, max_new_tokens)
        return out

    def noise_tv(self, prompt_length: int | None = None) -> float:
        """τ for noisy prompts of `prompt_length` tokens (L·D noisy coordinates at most): the per-copy total
        variation between the sampled noise and N(0, σ²I). None: the longest prompt the model takes
        (its context length), or 2⁴⁰ coordinates (more than any device holds) when that is unknown."""
        if prompt_length is None:
            length = (1 << 40) // self.dim if self.context_length is None else self.context_length
        else:
            length = check_count(prompt_length, "prompt_length")
        return self.noise.noise_tv(length, self.dim)

    def distribution_bound(
        self, radius: float, max_new_tokens: int | None = None, prompt_length: int | None = None
    ) -> DistributionBound:
        """§4(a): TV and W1/W2 bounds (Levenshtein, diameter max_new_tokens) on the law of `sample`'s outputs,
        including 2τ for the sampler's distance from the Gaussian (τ = `noise_tv(prompt_length)`)."""
        self._gaussian_only("distribution_bound")
        radius = check_positive(radius, "radius", allow_zero=True)
        tau = self.noise_tv(prompt_length)
        tv = stats.tv_bound(radius, self.sigma, tau)
        diameter = None if max_new_tokens is None else float(check_count(max_new_tokens, "max_new_tokens"))
        w1 = None if diameter is None else stats.wasserstein_bound(radius, self.sigma, diameter, 1, tau)
        w2 = None if diameter is None else stats.wasserstein_bound(radius, self.sigma, diameter, 2, tau)
        return DistributionBound(radius=radius, sigma=self.sigma, tv=tv, diameter=diameter, w1=w1, w2=w2, noise_tv=tau)

    # ---------------------------------------------------------------------------------- §4(d)

    def center_certify(
        self,
        prompt: Any,
        max_new_tokens: int,
        eps_in: float,
        n: int = 2000,
        m: int = 2000,
        delta: float = 0.05,
        alpha1: float = 0.005,
        alpha2: float = 0.005,
        seed: int | None = None,
        *,
        request_id: int = 0,
        mask: Any = None,
        n_candidates: int | None = None,
    ) -> CenterCertificate:
        """Center smoothing of the generated token sequences under the Levenshtein metric (docs/theory.md §2, §4d).

        The smoothed output is the min-median center of greedy generations from noisy prompts; with
        probability ≥ 1 − `failure_probability` (α1 + α2, plus the candidate miss when n_candidates is
        given) its edit distance to the smoothed output at any prompt embedding within
        ‖Δ‖_F ≤ eps_in (perturbed rows) is ≤ eps_out = 3·R̂. The input of `CenterSmoother` is the
        matrix of the perturbed rows [P, D]; its base model puts them back into the prompt and decodes.

        Args:
            prompt: token ids [L] (or a string, with a tokenizer).
            max_new_tokens: tokens each noisy generation decodes (greedy, base LM).
            eps_in: certified input radius ε1 (Frobenius norm on the perturbed rows); under token ablation,
                the number r of substituted tokens, under token deletion the number r of inserted, deleted
                or substituted tokens of the perturbed run (p = 1/2 + Δ + Δ_r, `stats.center_ablation_level`).
            n, m, delta, alpha1, alpha2, n_candidates: as in `CenterSmoother.certify` (delta is the
                tolerance Δ ∈ (0, 1/2) of center smoothing, not an embedding perturbation).
            seed, request_id: the request's random streams (CenterSmoother's purposes).
            mask: per-call perturbed positions.

        Returns:
            `smoothgen.certificates.CenterCertificate` (center: a tuple of token ids).
        """
        from smoothgen.center import CenterSmoother
        from smoothgen.engine.runtime.torch_eager import TorchRuntime

        ids, max_new_tokens, mk, _ = self._decode_args(prompt, max_new_tokens, mask, None)
        if isinstance(self.noise, TOKEN_NOISE):  # copies are whole noisy prompts; eps_in counts edited tokens
            noise = PromptNoise(self.noise, self.table, mk)
            smoother = CenterSmoother(
                TorchRuntime(noise.base(lambda embeds: self._greedy(embeds, max_new_tokens)), device=str(self.device)),
                metric="levenshtein", batch_size=self.batch_size, n_candidates=n_candidates, noise=noise,
            )
            cert = smoother.certify(ids, eps_in, n=n, m=m, delta=delta, alpha1=alpha1, alpha2=alpha2, seed=seed,
                                    request_id=request_id)
            return dataclasses.replace(cert, center=tuple(int(v) for v in cert.center))
        clean = self.table[ids]  # [L, D]
        positions = torch.nonzero(mk)[:, 0]

        def base(batch: torch.Tensor) -> list[tuple[int, ...]]:
            embeds = clean[None].repeat(batch.shape[0], 1, 1)
            embeds[:, positions] = batch.to(embeds.dtype)
            return self._greedy(embeds, max_new_tokens)

        smoother = CenterSmoother(
            TorchRuntime(base, device=str(self.device)), self.sigma, metric="levenshtein",
            batch_size=self.batch_size, n_candidates=n_candidates,
        )
        x = clean[positions].float() if clean.dtype not in (torch.float32, torch.float64) else clean[positions]
        cert = smoother.certify(x, eps_in, n=n, m=m, delta=delta, alpha1=alpha1, alpha2=alpha2, seed=seed, request_id=request_id)
        return dataclasses.replace(cert, center=tuple(int(v) for v in cert.center))


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DistributionBound",
    "GenerationCertificate",
    "SELECTIONS",
    "SmoothedLM",
    "forward_lm",
    "model_context_length",
    "nearest_neighbor_distances",
    "substitution_radius",
    "substitutions_covered",
]
