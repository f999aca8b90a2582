"""What `smoothgen.generative.SmoothedLM` and `smoothgen.encoders.SmoothedEncoder` share: a model fed
``inputs_embeds`` and a noise space over its prompt (`PromptSmoother`)."""
from __future__ import annotations

from numbers import Real
from typing import Any

import torch

from smoothgen.deletion import TokenDeletion
from smoothgen.errors import InvalidInputError, InvalidParameterError
from smoothgen.generation.batching import SharedLM
from smoothgen.generation.interface import _check_mask_tensor, model_context_length, positional_mask
from smoothgen.generation.noise import EmbeddingGaussian, NoiseSpace, TokenAblation
from smoothgen.generation.substitutions import _as_ids
from smoothgen.validate import check_count


def as_noise_space(noise: Any) -> NoiseSpace:
    """A noise space from a number σ (`EmbeddingGaussian`), or an `EmbeddingGaussian` / `TokenAblation` /
    `TokenDeletion` as is."""
    if isinstance(noise, (EmbeddingGaussian, TokenAblation, TokenDeletion)):
        return noise
    if isinstance(noise, bool) or not isinstance(noise, Real):
        raise InvalidParameterError(
            f"noise must be a number σ > 0, an EmbeddingGaussian, a TokenAblation or a TokenDeletion, got {noise!r}")
    return EmbeddingGaussian(noise)


class PromptSmoother:
    """The common part of `SmoothedLM` and `smoothgen.encoders.SmoothedEncoder`: a model that takes
    ``inputs_embeds`` and has ``get_input_embeddings()`` (put in eval mode, moved to `device`), its
    embedding table, the noise space over the prompt, the perturbed positions (`mask`) and the tokenizer.

    Raises:
        InvalidParameterError: a bad noise or batch size, or a mask token outside the vocabulary.
        InvalidInputError: a model without get_input_embeddings() returning a [V, D] weight.
    """

    #: What the model is, in error messages.
    model_kind = "a model that accepts inputs_embeds"

    def __init__(self, model: Any, noise: Any, *, mask: Any, batch_size: int, device: Any, tokenizer: Any):
        self.noise: NoiseSpace = as_noise_space(noise)
        self.sigma = getattr(self.noise, "sigma", None)
        self.batch_size = check_count(batch_size, "batch_size")
        if not callable(getattr(model, "get_input_embeddings", None)):
            raise InvalidInputError(f"model must have get_input_embeddings() ({self.model_kind})")
        if device is not None:
            model = model.to(device)
        if isinstance(model, torch.nn.Module):
            model.eval()
        self.model = model
        #: The model itself (the one a `SharedLM` stands in for): what the prompt's encoding depends on.
        self.base_model = model.model if isinstance(model, SharedLM) else model
        table = model.get_input_embeddings().weight
        if not isinstance(table, torch.Tensor) or table.ndim != 2:
            raise InvalidInputError("get_input_embeddings().weight must be a [V, D] tensor")
        self.table = table.detach()
        self.device = self.table.device
        self.vocab_size, self.dim = self.table.shape
        if isinstance(self.noise, TokenAblation) and self.noise.mask_token_id >= self.vocab_size:
            raise InvalidParameterError(f"mask_token_id {self.noise.mask_token_id} is outside the vocabulary of {self.vocab_size}")
        self.context_length = model_context_length(model)
        self.mask = mask
        self.tokenizer = tokenizer

    def prompt_ids(self, prompt: Any) -> torch.Tensor:
        """The prompt as int64 token ids [L] on the model's device (a string goes through the tokenizer).

        Raises:
            InvalidInputError: an empty prompt, ids out of range, a string without a tokenizer.
        """
        if isinstance(prompt, str):
            prompt = self._tokenize(prompt)
        ids = _as_ids(prompt.detach().cpu() if isinstance(prompt, torch.Tensor) else prompt, self.vocab_size)
        if ids.numel() == 0:
            raise InvalidInputError("the prompt is empty")
        return ids.to(self.device)

    def _tokenize(self, text: str) -> Any:
        """Token ids of a string: a Hugging Face tokenizer (called, its ``input_ids``) or anything with
        ``encode(str)``; for smoothgen's byte-level CodeLM without a tokenizer, its byte encoding."""
        tokenizer = self.tokenizer
        if tokenizer is None:
            from smoothgen.models.lm import CodeLM, encode

            if isinstance(self.base_model, CodeLM) and self.base_model.vocab_size == 256:
                return encode(text)
            if isinstance(self.base_model, CodeLM):
                raise InvalidInputError("this CodeLM has a sub-word vocabulary: pass its tokenizer "
                                        "(smoothgen.models.load_tokenizer(name)) or token ids")
            raise InvalidInputError("a string prompt needs a tokenizer (pass tokenizer=...) or token ids")
        if hasattr(tokenizer, "encode"):
            return tokenizer.encode(text)
        if callable(tokenizer):
            out = tokenizer(text)
            try:
                return out["input_ids"]
            except (TypeError, KeyError, IndexError):
                return out
        raise InvalidInputError("tokenizer must have encode(str) or be callable (returning input_ids)")

    def prompt_mask(self, ids: torch.Tensor, mask: Any = None) -> torch.Tensor:
        """The bool mask [L] of perturbed positions for this prompt (per-call mask, else the wrapper's).

        The mask is positional: L booleans, or a callable that receives the prompt's length L (an int),
        never its tokens (`positional_mask`)."""
        mask = self.mask if mask is None else mask
        if mask is None:
            m = torch.ones(ids.numel(), dtype=torch.bool, device=self.device)
        else:
            m = _check_mask_tensor(positional_mask(mask, ids.numel()) if callable(mask) else mask, ids.numel(), self.device)
        if isinstance(self.noise, TokenDeletion):  # one contiguous run, and an empty token where a copy can be empty
            self.noise.check(m, self.vocab_size)
        return m
