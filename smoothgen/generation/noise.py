"""Noise spaces of a smoothed prompt: where the randomness goes, and the unit of the certificate —
`EmbeddingGaussian` (embedding radius), `TokenAblation` (substituted tokens, §4g) and, from
`smoothgen.deletion`, `TokenDeletion` (edit distance, §4j)."""
from __future__ import annotations

import math
from fractions import Fraction
from numbers import Integral
from typing import Any, Callable

import torch

from smoothgen import kernels, stats
from smoothgen.deletion import TokenDeletion, deletion_delta
from smoothgen.engine import noise_tv
from smoothgen.engine.noise import NoiseKey
from smoothgen.errors import InvalidInputError, InvalidParameterError
from smoothgen.generation.substitutions import _as_ids
from smoothgen.validate import check_count, check_positive, check_sigma


class EmbeddingGaussian:
    """Gaussian noise on the perturbed prompt rows' embeddings: z = emb(x) + ε, ε ~ N(0, σ²I) (§4c).

    A step with lower bound L certifies R = σ·Φ⁻¹(L) (0 when L ≤ 1/2) in embedding distance (the
    Frobenius norm over the perturbed rows); a set of substitutions is covered when its embedding
    distance (`substitution_radius`) is below R.
    """

    kind = "gaussian"
    unit = "embedding distance (Frobenius norm over the perturbed rows)"

    def __init__(self, sigma: float):
        self.sigma = check_sigma(sigma)

    def prompts(self, table, ids, mask, key: NoiseKey, start: int, count: int, delta=None) -> torch.Tensor:
        out = kernels.noisy_embedding(ids[None], table, self.sigma, count, mask, seed=key.key, offset=start)
        if delta is not None:
            out = out + (delta * mask[:, None].to(delta.dtype))[None]
        return out

    def noise_tv(self, length: int, dim: int, perturbed: int | None = None) -> float:
        return noise_tv(length * dim)

    def step_radius(self, lower: float, perturbed: int) -> float:
        return stats.generation_step_radius(self.sigma, lower, 1.0 - lower)

    def certify_threshold(self, radius: float, perturbed: int) -> float:
        """The value a step's lower bound must exceed for the step to cover `radius`: Φ(R/σ)."""
        return stats.normal_cdf(radius / self.sigma)

    @staticmethod
    def covers(step_radius: float, radius: float) -> bool:
        return step_radius > radius

    def __repr__(self) -> str:
        return f"EmbeddingGaussian(sigma={self.sigma})"


def ablation_delta(length: int, keep: int, edits: int) -> Fraction:
    """Δ_r = 1 − C(L − r, k)/C(L, k), exactly: the probability that a uniformly random k-subset of L
    positions meets a fixed set of r positions (docs/theory.md §4g; Levine & Feizi 2020). k ≥ L keeps every
    position: then any edit is seen (Δ_r = 1 for r ≥ 1)."""
    keep = min(keep, length)
    if edits <= 0:
        return Fraction(0)
    return 1 - Fraction(math.comb(length - edits, keep), math.comb(length, keep)) if edits <= length else Fraction(1)


def ablation_radius(lower: float, length: int, keep: int) -> int:
    """The largest r with L > 1/2 + Δ_r (exact rational comparison), or −1 when even r = 0 fails (L ≤ 1/2)."""
    margin = Fraction(lower) - Fraction(1, 2)
    r = -1
    while r < length and margin > ablation_delta(length, keep, r + 1 if r >= 0 else 0):
        r += 1
    return r


#: The chance that two independent uniform 64-bit Philox words are equal: a tie between two of the words
#: that pick a copy's kept subset (union bound over the C(P, 2) pairs; docs/theory.md §4g).
SUBSET_TIE_PROBABILITY = 2.0**-64


class TokenAblation:
    """Randomized ablation of prompt tokens (docs/theory.md §4g; Levine & Feizi, AAAI 2020): each copy keeps a
    uniformly random subset of `keep` of the perturbed positions and replaces every other perturbed
    position by `mask_token_id` (positions stay; unperturbed positions are always kept).

    If x' differs from x in r perturbed positions, a copy sees the same ablated prompt at both unless its
    subset meets those positions, which has probability Δ_r = 1 − C(L − r, k)/C(L, k) (L = perturbed
    positions). So every smoothed probability moves by at most Δ_r, and a step whose chosen token has
    lower bound L_t > 1/2 + Δ_r keeps it at every prompt within r substitutions. The certificate's unit is
    edited tokens.

    The subset of copy i is a pure function of (key, i): the `keep` positions with the smallest 64-bit
    Philox words (`kernels.philox_uint64_reference`); ties, which would bias the subset, have probability
    at most C(L, 2)·2⁻⁶⁴ per copy, charged like the Gaussian sampler's `noise_tv`.
    """

    kind = "ablation"
    unit = "substituted tokens"

    def __init__(self, keep: int, mask_token_id: int):
        self.keep = check_count(keep, "keep")
        if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, Integral) or mask_token_id < 0:
            raise InvalidParameterError(f"mask_token_id must be a token id (an integer >= 0), got {mask_token_id!r}")
        self.mask_token_id = int(mask_token_id)

    def prompts(self, table, ids, mask, key: NoiseKey, start: int, count: int, delta=None) -> torch.Tensor:
        if delta is not None:
            raise InvalidParameterError("delta is an embedding perturbation: it applies to Gaussian noise, not to token ablation")
        if self.mask_token_id >= table.shape[0]:
            raise InvalidParameterError(f"mask_token_id {self.mask_token_id} is outside the vocabulary of {table.shape[0]}")
        return table[self.ablated_ids(ids.to(table.device), mask, key, start, count)]

    def ablated_ids(self, ids: torch.Tensor, mask: torch.Tensor, key: NoiseKey, start: int, count: int) -> torch.Tensor:
        """The token ids of copies start .. start + count − 1: the kept positions' tokens, `mask_token_id`
        at every other perturbed position (what `prompts` embeds; for models fed token ids).

        Shapes:
            ids: [L], mask: [L] -> [count, L] int64 (on ids' device)
        """
        tokens = ids.expand(count, -1).clone()
        perturbed = torch.nonzero(mask, as_tuple=False)[:, 0].to(ids.device)
        keep = min(self.keep, perturbed.numel())
        if keep < perturbed.numel():
            order = torch.from_numpy(kernels.philox_permutations(key.key, start, count, perturbed.numel())).to(ids.device)
            dropped = perturbed[order[:, keep:]]  # [count, L − k] positions to mask
            tokens.scatter_(1, dropped, self.mask_token_id)
        return tokens

    def subset_prompts(self, table, ids, mask, subsets: torch.Tensor) -> torch.Tensor:
        """The ablated prompts of explicit kept subsets [S, k] (indices into the perturbed positions)."""
        return table[self.subset_ids(ids.to(table.device), mask, subsets)]

    def subset_ids(self, ids: torch.Tensor, mask: torch.Tensor, subsets: torch.Tensor) -> torch.Tensor:
        """The token ids of the ablated prompts of explicit kept subsets [S, k] (indices into the perturbed
        positions). Shapes: ids [L], mask [L], subsets [S, k] -> [S, L] int64."""
        tokens = ids.expand(subsets.shape[0], -1).clone()
        perturbed = torch.nonzero(mask, as_tuple=False)[:, 0].to(ids.device)
        drop = torch.ones(subsets.shape[0], perturbed.numel(), dtype=torch.bool, device=ids.device)
        drop.scatter_(1, subsets.to(ids.device), False)
        rows = drop.nonzero(as_tuple=True)
        tokens[rows[0], perturbed[rows[1]]] = self.mask_token_id
        return tokens

    def noise_tv(self, length: int, dim: int, perturbed: int | None = None) -> float:
        """The tie charge C(P, 2)·`SUBSET_TIE_PROBABILITY` per copy (P perturbed positions), rounded up."""
        pairs = math.comb(length if perturbed is None else perturbed, 2)
        return math.nextafter(pairs * SUBSET_TIE_PROBABILITY, math.inf) if pairs else 0.0

    def step_radius(self, lower: float, perturbed: int) -> float:
        return float(ablation_radius(lower, perturbed, self.keep))

    def certify_threshold(self, radius: float, perturbed: int) -> float:
        """1/2 + Δ_r (as a float: it only decides when a sequential estimation stops)."""
        return 0.5 + float(ablation_delta(perturbed, self.keep, math.ceil(radius)))  # radii are whole edits

    @staticmethod
    def covers(step_radius: float, radius: float) -> bool:
        return radius <= step_radius

    def __repr__(self) -> str:
        return f"TokenAblation(keep={self.keep}, mask_token_id={self.mask_token_id})"


NoiseSpace = EmbeddingGaussian | TokenAblation | TokenDeletion


#: The noise spaces over tokens: certificates count edited tokens (TokenDeletion: edit distance).
TOKEN_NOISE = (TokenAblation, TokenDeletion)


class PromptNoise:
    """A noise space of `smoothgen.generative` as `smoothgen.center.CenterNoise`: the input is the prompt's
    token ids [L]; copies come from the space's keyed Philox streams (copy i a pure function of (key, i)).

    Threat sizes and levels (docs/theory.md §2, §4g, §4j):
    - `EmbeddingGaussian`: eps_in = a Frobenius radius on the perturbed rows; p = Φ(Φ⁻¹(1/2 + Δ) + ε/σ).
      Copies are embedding matrices [count, L, D].
    - `TokenAblation`: eps_in = r, the number of substituted perturbed positions (an integer);
      p = 1/2 + Δ + Δ_r with Δ_r = `ablation_delta`(P, k, r), P = perturbed positions. Copies are
      embedding matrices [count, L, D].
    - `TokenDeletion`: eps_in = r, inserted, deleted or substituted tokens of the perturbed run (an
      integer); p = 1/2 + Δ + Δ_r with Δ_r = 1 − p_del^r (`deletion_delta`: a bound on the total variation
      between the copies' distributions, §4j, which is all the level needs). Copies have different
      lengths, so a batch is the ids tensor [count, L] with `DELETED` at the deleted positions; the base
      model runs through `base` (closed up, grouped by length, outputs in the copies' order).

    Args:
        space: an EmbeddingGaussian, a TokenAblation or a TokenDeletion.
        table: the embedding table [V, D].
        mask: bool [L] of the perturbed positions (the prompt's length is fixed by it; one contiguous run
            under deletion).
    """

    def __init__(self, space: EmbeddingGaussian | TokenAblation | TokenDeletion, table: torch.Tensor, mask: torch.Tensor):
        if not isinstance(space, (EmbeddingGaussian, TokenAblation, TokenDeletion)):
            raise InvalidParameterError(f"space must be an EmbeddingGaussian, a TokenAblation or a TokenDeletion, got {space!r}")
        if isinstance(space, TokenAblation) and space.mask_token_id >= table.shape[0]:
            raise InvalidParameterError(f"mask_token_id {space.mask_token_id} is outside the vocabulary of {table.shape[0]}")
        if isinstance(space, TokenDeletion):
            space.check(mask, table.shape[0])
        self.space, self.table, self.mask = space, table, mask
        self.sigma = getattr(space, "sigma", None)
        self.perturbed = int(mask.sum())

    @property
    def ablation(self) -> bool:
        return isinstance(self.space, TokenAblation)

    @property
    def deletion(self) -> bool:
        return isinstance(self.space, TokenDeletion)

    def check_input(self, x: Any) -> torch.Tensor:
        ids = _as_ids(x.detach().cpu() if isinstance(x, torch.Tensor) else x, self.table.shape[0])
        if ids.numel() != self.mask.numel():
            raise InvalidInputError(f"the prompt has {ids.numel()} tokens, the mask {self.mask.numel()} positions")
        return ids.to(self.table.device)

    def check_radius(self, eps_in: Any) -> float:
        if self.ablation or self.deletion:
            ok = isinstance(eps_in, Integral) or (isinstance(eps_in, float) and eps_in.is_integer())
            if isinstance(eps_in, bool) or not ok or eps_in < 0:
                unit = "inserted, deleted or substituted tokens" if self.deletion else "substituted tokens"
                raise InvalidParameterError(
                    f"under token {self.space.kind} the threat is a number of {unit} (an integer >= 0), got {eps_in!r}"
                )
            return float(eps_in)
        return check_positive(eps_in, "eps_in", allow_zero=True)

    def copies(self, x: torch.Tensor, key: NoiseKey, start: int, count: int) -> torch.Tensor:
        if self.deletion:
            return self.space.marked(x, self.mask, key, start, count)
        return self.space.prompts(self.table, x, self.mask, key, start, count)

    def clean(self, x: torch.Tensor) -> torch.Tensor:
        return x[None] if self.deletion else self.table[x][None]

    def base(self, embedded: Callable[[torch.Tensor], Any]) -> Callable[[torch.Tensor], Any]:
        """The base model on a batch of `copies`, given the model on embedded prompts [c, L', D] (a tensor
        of outputs [c, ...] or a list of c outputs): itself, or under deletion the model run on each length
        group's embedded copies, outputs in the copies' order."""
        if not self.deletion:
            return embedded
        return lambda marked: self.space.run_grouped(marked, lambda ids: embedded(self.table[ids]))

    def noise_tv(self, x: torch.Tensor) -> float:
        return self.space.noise_tv(x.numel(), self.table.shape[1], self.perturbed)

    def level(self, x: torch.Tensor, eps_in: float, delta: float) -> float:
        if self.ablation:
            return stats.center_ablation_level(delta, ablation_delta(self.perturbed, self.space.keep, int(eps_in)))
        if self.deletion:
            return stats.center_ablation_level(delta, deletion_delta(self.space.delete_prob, int(eps_in)))
        return stats.center_certify_level(eps_in, self.sigma, delta)

    def __repr__(self) -> str:
        return f"PromptNoise({self.space!r}, perturbed={self.perturbed})"


#: What a noisy copy contributes to the smoothed next-token scores p̄_t (`SmoothedLM`'s ``score``).
SCORES = ("auto", "probability", "vote")
