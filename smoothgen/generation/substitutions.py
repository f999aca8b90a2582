"""The threat model in the units a user names: token substitutions of a prompt against an embedding
radius (docs/theory.md §4c), for certificates under Gaussian embedding noise."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from smoothgen.errors import InvalidInputError
from smoothgen.generation.interface import _check_mask_tensor
from smoothgen.validate import check_positive


def _substitution_items(substitutions: Any, length: int) -> dict[int, int]:
    items = substitutions.items() if isinstance(substitutions, Mapping) else substitutions
    out: dict[int, int] = {}
    try:
        for pos, tok in items:
            if isinstance(pos, bool) or isinstance(tok, bool) or int(pos) != pos or int(tok) != tok:
                raise InvalidInputError(f"substitution ({pos!r}, {tok!r}) is not a pair of integers")
            pos = int(pos)
            if not 0 <= pos < length:
                raise InvalidInputError(f"substitution position {pos} outside the prompt's 0..{length - 1}")
            if pos in out:
                raise InvalidInputError(f"position {pos} is substituted twice")
            out[pos] = int(tok)
    except TypeError as exc:
        raise InvalidInputError(f"substitutions must be a mapping or (position, token) pairs: {exc}") from exc
    return out


def _as_ids(ids: Any, vocab: int) -> torch.Tensor:
    try:
        t = torch.as_tensor(ids)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidInputError(f"token ids must be a sequence of integers: {exc}") from exc
    if t.ndim == 1 and t.numel() == 0:
        return t.long()  # [] is a float tensor to torch
    if t.ndim != 1 or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise InvalidInputError(f"token ids must be a 1-D integer sequence, got {t.dtype} of shape {tuple(t.shape)}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= vocab):
        raise InvalidInputError(f"token ids must lie in [0, {vocab}), got values in [{int(t.min())}, {int(t.max())}]")
    return t.long()


def substitution_radius(table: torch.Tensor, ids: Sequence[int], substitutions: Any) -> float:
    """Embedding distance of a set of token substitutions: sqrt(Σ_i ‖e_{ids[i]} − e_{new_i}‖²).

    Replacing token ids[i] by new_i moves row i of the prompt's embedding matrix by that distance, so the
    Frobenius norm of the whole move is the root of the sum of squares (docs/theory.md §4c).

    Args:
        table: the embedding table [V, D].
        ids: the prompt's token ids [L].
        substitutions: {position: new token} or (position, new token) pairs.
    """
    ids_t = _as_ids(ids, table.shape[0])
    subs = _substitution_items(substitutions, ids_t.numel())
    if not subs:
        return 0.0
    pos = torch.tensor(list(subs), dtype=torch.long)
    new = _as_ids(list(subs.values()), table.shape[0])
    with torch.no_grad():
        rows = table.detach().double().cpu()
        diff = rows[ids_t[pos]] - rows[new]
        return float(diff.pow(2).sum().sqrt())


def substitutions_covered(
    table: torch.Tensor, ids: Sequence[int], substitutions: Any, radius: float, mask: Sequence[bool] | None = None
) -> bool:
    """Whether a certified radius covers these substitutions: every position perturbed and distance < radius.

    `radius` is a certified radius in the strict sense of `GenerationCertificate` (R_t, or
    ``prefix_radius(k)``): covered means substitution_radius < radius.
    """
    radius = check_positive(radius, "radius", allow_zero=True) if not math.isinf(radius) else math.inf
    ids_t = _as_ids(ids, table.shape[0])
    subs = _substitution_items(substitutions, ids_t.numel())
    if mask is not None:
        m = _check_mask_tensor(mask, ids_t.numel(), torch.device("cpu"))
        if not all(bool(m[p]) for p in subs):
            return False
    return substitution_radius(table, ids_t, subs) < radius


def nearest_neighbor_distances(table: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """Per position, the smallest embedding move of any single substitution: min_{v ≠ ids[i]} ‖e_{ids[i]} − e_v‖.

    The smallest radius that admits some one-token substitution at that position (0 when another token
    shares the embedding row).

    Shapes:
        table: [V, D], ids: [L] -> [L] (float64)
    """
    ids_t = _as_ids(ids, table.shape[0])
    if table.shape[0] < 2:
        raise InvalidInputError("a vocabulary of one token admits no substitution")
    with torch.no_grad():
        rows = table.detach().double().cpu()
        d = torch.cdist(rows[ids_t], rows)  # [L, V]
        d[torch.arange(ids_t.numel()), ids_t] = math.inf
        return d.min(dim=1).values
