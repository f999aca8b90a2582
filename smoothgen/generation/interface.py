"""The causal LM behind `smoothgen.generative`: the Hugging Face call convention it is driven through
(`forward_lm` with ``inputs_embeds`` and an opaque KV cache), its context length, and positional masks."""
from __future__ import annotations

from numbers import Integral
from typing import Any, Callable

import torch

from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError


def model_context_length(model: Any) -> int | None:
    """The number of positions the model accepts, or None when it does not say.

    Reads ``model.context_length`` (CodeLM), then ``model.config.n_positions`` /
    ``max_position_embeddings`` / ``context_length`` (Hugging Face configs).
    """
    value = getattr(model, "context_length", None)
    if not isinstance(value, Integral):
        config = getattr(model, "config", None)
        value = None
        for name in ("n_positions", "max_position_embeddings", "context_length"):
            candidate = getattr(config, name, None)
            if isinstance(candidate, Integral) and not isinstance(candidate, bool):
                value = candidate
                break
    return None if value is None else int(value)


def forward_lm(model: Any, embeds: torch.Tensor, past: Any = None) -> tuple[torch.Tensor, Any]:
    """One call of a causal LM on embeddings: (logits [B, T, V], the extended cache).

    Raises:
        ModelOutputError: no ``logits``, a wrong shape, or NaN/Inf logits.

    Shapes:
        embeds: [B, T, D] -> logits [B, T, V]
    """
    out = model(inputs_embeds=embeds, past_key_values=past, use_cache=True)
    if isinstance(out, (tuple, list)):
        logits, cache = out[0], (out[1] if len(out) > 1 else None)
    else:
        logits, cache = getattr(out, "logits", None), getattr(out, "past_key_values", None)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or tuple(logits.shape[:2]) != tuple(embeds.shape[:2]):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelOutputError(f"the model returned logits {shape} for inputs_embeds {tuple(embeds.shape)}")
    if not bool(torch.isfinite(logits).all()):
        raise ModelOutputError("the model returned NaN or Inf logits")
    return logits, cache


def positional_mask(mask: Callable[[int], Any], length: int) -> Any:
    """The perturbed positions a callable mask gives for a prompt of `length` tokens: mask(length).

    The callable receives the length only, never the token ids. Every certificate compares the smoothed
    model at x and at x' with the SAME perturbed set M (docs/theory.md §4g); x' of the threat model has
    x's length, so mask(L) is that set. A set computed from the tokens could differ at x' (an edit that
    changes the tokens the mask looks at), and neither the ablation nor the Gaussian proof covers that.

    Raises:
        InvalidParameterError: the callable fails on an int (e.g. one written for token ids).
    """
    rule = (f"a callable mask is positional: it is called with the prompt's length L = {length} (an int), never with "
            f"the tokens, and returns L booleans (docs/theory.md §4g)")
    try:
        out = mask(int(length))
        size = len(out)
    except (TypeError, ValueError, IndexError, KeyError, AttributeError, RuntimeError) as exc:
        raise InvalidParameterError(f"{rule}; it failed: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if size != length:
        raise InvalidParameterError(f"{rule}; it returned {size} values")
    return out


def _check_mask_tensor(mask: Any, length: int, device: torch.device) -> torch.Tensor:
    try:
        m = torch.as_tensor(mask, device=device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidInputError(f"mask must be a sequence of booleans: {exc}") from exc
    if m.dtype != torch.bool:
        if m.dtype.is_floating_point or not bool(((m == 0) | (m == 1)).all()):
            raise InvalidInputError("mask must hold booleans (or 0/1)")
        m = m.bool()
    if tuple(m.shape) != (length,):
        raise InvalidInputError(f"mask has shape {tuple(m.shape)}, the prompt has {length} positions")
    if not bool(m.any()):
        raise InvalidParameterError("mask perturbs no position: there is nothing to smooth or certify")
    return m
