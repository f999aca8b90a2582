"""Randomized deletion of prompt tokens: certificates in edit distance (docs/theory.md §4j).

`TokenDeletion` is a noise space of `smoothgen.generative.SmoothedLM`, beside `EmbeddingGaussian` and
`TokenAblation`: each copy of the prompt deletes every perturbed token independently with probability p
(the positions close up; unperturbed tokens always stay). The perturbed positions form ONE contiguous run
[s, e) of the prompt: a fixed head of s tokens and a fixed tail of L − e tokens, the same at every prompt
the certificate covers (an insertion lengthens the run, the head and tail stay).

The bound (docs/theory.md §4j; randomized deletion, RS-Del, Huang et al., NeurIPS 2023). Let x' have the
same head and tail as x and a run within Levenshtein distance r of x's (insertions, deletions and
substitutions of tokens). Take a longest common subsequence z of the two runs; x's run has a ≤ r tokens
outside z and x''s has b ≤ r. With probability p^a every token of x's run outside z is deleted, and then
the copy of x is distributed exactly as the copy of head + z + tail; likewise for x' with p^b. So the two
copies' distributions share a component of weight min(p^a, p^b) ≥ p^r, their total variation is at most
Δ_r = 1 − p^r, and every smoothed probability (a vote share or a mean softmax) moves by at most Δ_r. A
step whose chosen token has lower bound L_t > 1/2 + Δ_r keeps it at every such x', and the prefix
induction of §4g goes through unchanged: the certificate's unit is inserted, deleted or substituted tokens.

Sampling. Copy i deletes perturbed position j iff the 64-bit Philox word (key, i·P + j) is below
ceil(p·2⁶⁴): a deletion probability in [p, p + 2⁻⁶⁴), the P positions independent. The distance to the
nominal product distribution, at most P·2⁻⁶⁴ per copy, is charged like the Gaussian sampler's `noise_tv`.

Copies have different lengths. The base model is the LM on the kept tokens exactly (no padding, which
would make it depend on the prompt's length rather than on the copy); copies are grouped by length and
each group runs as one batch. A copy with no token left (possible only when the whole prompt is
perturbed) is fed `empty_token_id` alone, a fixed function of the (empty) copy. Where one tensor per
batch is needed (center smoothing's batches, `smoothgen.center.CenterSmoother`), a batch of copies is an
ids tensor [c, L] with `DELETED` at the deleted positions (`marked`), which `run_grouped` closes up and
runs group by group, putting the outputs back in the copies' order.
"""
from __future__ import annotations

import math
from fractions import Fraction
from numbers import Integral, Real
from typing import Any, Callable

import numpy as np
import torch

from smoothgen import kernels
from smoothgen.engine.noise import NoiseKey
from smoothgen.errors import InvalidInputError, InvalidParameterError

#: What an edit is, in certificates' words.
DELETION_UNIT = "inserted, deleted or substituted tokens"

#: One Philox word per perturbed position decides its deletion; the deletion probability is rounded up to
#: a multiple of 2⁻⁶⁴, so each position deviates from p by less than this (charged per copy, times P).
THRESHOLD_ERROR = 2.0**-64

#: What a deleted position holds in a `TokenDeletion.marked` batch of copies (never a token id).
DELETED = -1


def check_delete_prob(delete_prob: Any, name: str = "delete_prob") -> float:
    if isinstance(delete_prob, bool) or not isinstance(delete_prob, Real) or not 0.0 < float(delete_prob) < 1.0:
        raise InvalidParameterError(f"{name} must be a probability strictly between 0 and 1, got {delete_prob!r}")
    return float(delete_prob)


def deletion_delta(delete_prob: float, edits: int) -> Fraction:
    """Δ_r = 1 − p^r, exactly (p is the float's exact rational value): the total variation between the
    deleted copies of two prompts whose perturbed runs are r edits apart (docs/theory.md §4j)."""
    p = Fraction(check_delete_prob(delete_prob))
    if edits <= 0:
        return Fraction(0)
    return 1 - p**int(edits)


def deletion_radius(lower: float, delete_prob: float) -> int:
    """The largest r with L > 1/2 + Δ_r = 3/2 − p^r (exact rational comparison), or −1 when L ≤ 1/2.

    p^r > 3/2 − L: a float estimate of r, then corrected with exact powers (Python's Fraction ** int)."""
    p = Fraction(check_delete_prob(delete_prob))
    margin = Fraction(lower) - Fraction(1, 2)
    if margin <= 0:
        return -1
    c = 1 - margin  # in [1/2, 1) for L in (1/2, 1]: need p^r > c
    r = max(0, math.floor(math.log(float(c)) / math.log(float(p))))
    while r > 0 and not p**r > c:
        r -= 1
    while p ** (r + 1) > c:
        r += 1
    return r


def perturbed_run(mask: torch.Tensor) -> tuple[int, int]:
    """(s, e): the one contiguous run of perturbed positions [s, e) of a bool mask [L].

    Raises:
        InvalidParameterError: no perturbed position, or more than one run (the certificate needs the
            unperturbed head and tail to be the same tokens at every covered prompt).
    """
    positions = torch.nonzero(mask.cpu(), as_tuple=False)[:, 0]
    if positions.numel() == 0:
        raise InvalidParameterError("token deletion needs at least one perturbed position")
    s, e = int(positions[0]), int(positions[-1]) + 1
    if positions.numel() != e - s:
        raise InvalidParameterError(
            "token deletion needs the perturbed positions to be one contiguous run (a fixed head and a fixed tail); "
            f"this mask has gaps between positions {s} and {e - 1}")
    return s, e


class TokenDeletion:
    """Randomized deletion of the perturbed prompt tokens, each independently with probability
    `delete_prob` (see the module docstring and docs/theory.md §4j): certificates against any r inserted,
    deleted or substituted tokens inside the perturbed run, with Δ_r = 1 − p^r.

    Args:
        delete_prob: p in (0, 1). Larger p certifies more edits (Δ_1 = 1 − p) and leaves less of the prompt:
            a copy keeps (1 − p)·P of P perturbed tokens on average.
        empty_token_id: the token a copy with nothing left is fed (needed only when every prompt position
            is perturbed).
    """

    kind = "deletion"
    unit = DELETION_UNIT

    def __init__(self, delete_prob: float, empty_token_id: int | None = None):
        self.delete_prob = check_delete_prob(delete_prob)
        if empty_token_id is not None and (
                isinstance(empty_token_id, bool) or not isinstance(empty_token_id, Integral) or empty_token_id < 0):
            raise InvalidParameterError(f"empty_token_id must be a token id (an integer >= 0), got {empty_token_id!r}")
        self.empty_token_id = None if empty_token_id is None else int(empty_token_id)
        self.threshold = min(math.ceil(Fraction(self.delete_prob) * 2**64), 2**64 - 1)

    # ------------------------------------------------------------------------------ copies

    def check(self, mask: torch.Tensor, vocab_size: int) -> tuple[int, int]:
        """The perturbed run of `mask`; refuses a mask that perturbs every position without an empty token."""
        s, e = perturbed_run(mask)
        if s == 0 and e == mask.numel():
            if self.empty_token_id is None:
                raise InvalidParameterError(
                    "every prompt position may be deleted, so a copy can be empty: pass TokenDeletion(..., "
                    "empty_token_id=...) (the token such a copy is fed), or hold some positions fixed with mask")
            if self.empty_token_id >= vocab_size:
                raise InvalidParameterError(f"empty_token_id {self.empty_token_id} is outside the vocabulary of {vocab_size}")
        return s, e

    def kept(self, mask: torch.Tensor, key: NoiseKey, start: int, count: int) -> np.ndarray:
        """Which positions copies start .. start + count − 1 keep: bool [count, L] (unperturbed: always)."""
        perturbed = torch.nonzero(mask.cpu(), as_tuple=False)[:, 0].numpy()
        out = np.ones((count, mask.numel()), dtype=bool)
        if perturbed.size:
            words = kernels.philox_uint64_reference(key.key, start, count, perturbed.size)
            out[:, perturbed] = words >= np.uint64(self.threshold)
        return out

    def selection_size(self, perturbed: int) -> int:
        """k = ⌊(1 − p)·P + 1/2⌉: how many of the P perturbed positions a selection copy keeps (the mean number a
        deletion copy keeps, rounded)."""
        return max(0, min(perturbed, math.floor((1.0 - self.delete_prob) * perturbed + 0.5)))

    def selection_kept(self, mask: torch.Tensor, key: NoiseKey, start: int, count: int) -> np.ndarray:
        """Which positions selection copies start .. start + count − 1 keep: bool [count, L]. Each keeps exactly
        k = `selection_size`(P) of the P perturbed positions, a uniformly random k-subset (those with the k
        smallest of its P Philox words), and every unperturbed position.

        Selection copies only guess the tokens, and the certificate asks of the guess only that it not depend
        on the estimation copies (docs/theory.md §4c), so they need not follow the deletion distribution; at
        one length they run as ONE batch, where copies of independent deletions (a dozen lengths) would run
        as a dozen small ones at every decoding step. Estimation copies always follow it (`kept`)."""
        perturbed = torch.nonzero(mask.cpu(), as_tuple=False)[:, 0].numpy()
        out = np.ones((count, mask.numel()), dtype=bool)
        if perturbed.size:
            order = kernels.philox_permutations(key.key, start, count, perturbed.size)
            chosen = np.zeros((count, perturbed.size), dtype=bool)
            np.put_along_axis(chosen, order[:, :self.selection_size(perturbed.size)], True, axis=1)
            out[:, perturbed] = chosen
        return out

    def by_length(self, ids: torch.Tensor, kept: np.ndarray) -> list[tuple[np.ndarray, torch.Tensor]]:
        """The copies of `kept` [c, L] grouped by length, ascending: (their row indices, their token ids
        [c_g, L_g] int64) per length. A copy with nothing kept is [empty_token_id]. `ids` is the prompt [L]
        (the same for every copy) or one row per copy [c, L]."""
        rows_ids = ids[None].expand(kept.shape[0], -1) if ids.ndim == 1 else ids
        lengths = kept.sum(axis=1)
        out = []
        for length in np.unique(lengths):
            rows = np.nonzero(lengths == length)[0]
            if length == 0:
                if self.empty_token_id is None:
                    raise InvalidInputError("a copy lost every token and this TokenDeletion has no empty_token_id")
                out.append((rows, torch.full((rows.size, 1), self.empty_token_id, dtype=torch.long, device=ids.device)))
                continue
            selected = torch.from_numpy(kept[rows]).to(ids.device)
            out.append((rows, rows_ids[torch.from_numpy(rows).to(ids.device)][selected].reshape(rows.size, int(length))))
        return out

    def groups(self, ids: torch.Tensor, kept: np.ndarray) -> list[torch.Tensor]:
        """The copies' token ids grouped by length (`by_length` without the row indices)."""
        return [group for _, group in self.by_length(ids, kept)]

    def marked(self, ids: torch.Tensor, mask: torch.Tensor, key: NoiseKey, start: int, count: int) -> torch.Tensor:
        """Copies start .. start + count − 1 as one ids tensor [count, L]: the prompt's ids, `DELETED` where
        a copy deleted the position (`run_grouped` turns it into the copies themselves)."""
        kept = torch.from_numpy(self.kept(mask, key, start, count)).to(ids.device)
        return torch.where(kept, ids[None].expand(count, -1), torch.full_like(ids, DELETED)[None])

    def run_grouped(self, marked: torch.Tensor, fn: Callable[[torch.Tensor], Any]) -> Any:
        """fn on the copies of a `marked` batch [c, L], closed up and grouped by length (fn takes token ids
        [c_g, L_g]), with the outputs in the copies' order: a tensor [c, ...] when fn returns tensors, else
        a list of c outputs (fn's per-copy outputs, e.g. token sequences)."""
        if not isinstance(marked, torch.Tensor) or marked.ndim != 2:
            raise InvalidInputError(f"a batch of deletion copies is an ids tensor [copies, length], got {type(marked).__name__}")
        kept = (marked != DELETED).cpu().numpy()
        parts = [(rows, fn(group)) for rows, group in self.by_length(marked, kept)]
        count = marked.shape[0]
        if parts and all(isinstance(out, torch.Tensor) for _, out in parts):
            first = parts[0][1]
            result = first.new_empty((count, *first.shape[1:]))
            for rows, out in parts:
                result[torch.from_numpy(rows).to(result.device)] = out
            return result
        placed: list[Any] = [None] * count
        for rows, out in parts:
            for row, value in zip(rows.tolist(), out):
                placed[row] = value
        return placed

    def prompt_groups(self, table, ids, mask, key: NoiseKey, start: int, count: int, delta=None) -> list[torch.Tensor]:
        """The embedded copies start .. start + count − 1, grouped by length: [c_g, L_g, D] each."""
        return self._embedded_groups(table, ids, self.kept, mask, key, start, count, delta)

    def selection_groups(self, table, ids, mask, key: NoiseKey, start: int, count: int, delta=None) -> list[torch.Tensor]:
        """The embedded selection copies start .. start + count − 1 (`selection_kept`): one batch [c, L_k, D]."""
        return self._embedded_groups(table, ids, self.selection_kept, mask, key, start, count, delta)

    def _embedded_groups(self, table, ids, kept: Callable, mask, key: NoiseKey, start: int, count: int,
                         delta) -> list[torch.Tensor]:
        """table rows of the copies whose kept positions `kept`(mask, key, start, count) gives, grouped by length."""
        if delta is not None:
            raise InvalidParameterError("delta is an embedding perturbation: it applies to Gaussian noise, not to token deletion")
        ids = ids.to(table.device)
        return [table[g] for g in self.groups(ids, kept(mask, key, start, count))]

    def all_patterns(self, perturbed: int, max_patterns: int) -> tuple[np.ndarray, np.ndarray]:
        """Every deletion pattern of P perturbed positions and its exact probability:
        (kept bool [2^P, P], weights float64 [2^P], p^deleted · (1 − p)^kept)."""
        if 2**perturbed > max_patterns:
            raise InvalidParameterError(f"2^{perturbed} deletion patterns exceed max_subsets = {max_patterns}")
        codes = np.arange(2**perturbed, dtype=np.int64)[:, None]
        kept = ((codes >> np.arange(perturbed)[None, :]) & 1).astype(bool)
        num_kept = kept.sum(axis=1)
        p = self.delete_prob
        weights = np.array([(1 - p) ** int(k) * p ** int(perturbed - k) for k in num_kept], dtype=np.float64)
        return kept, weights

    # ------------------------------------------------------------------------------ the certificate

    def noise_tv(self, length: int, dim: int, perturbed: int | None = None) -> float:
        """P·2⁻⁶⁴ per copy (P perturbed positions), rounded up: the rounding of p to the Philox threshold."""
        count = length if perturbed is None else perturbed
        return math.nextafter(count * THRESHOLD_ERROR, math.inf) if count else 0.0

    def step_radius(self, lower: float, perturbed: int) -> float:
        return float(deletion_radius(lower, self.delete_prob))

    def certify_threshold(self, radius: float, perturbed: int) -> float:
        """1/2 + Δ_r = 3/2 − p^r (as a float: it only decides when a sequential estimation stops)."""
        return 0.5 + float(deletion_delta(self.delete_prob, math.ceil(radius)))  # radii are whole edits

    @staticmethod
    def covers(step_radius: float, radius: float) -> bool:
        return radius <= step_radius

    def __repr__(self) -> str:
        extra = "" if self.empty_token_id is None else f", empty_token_id={self.empty_token_id}"
        return f"TokenDeletion(delete_prob={self.delete_prob}{extra})"
