"""The embedded default causal language model: a byte-level tokenizer and a small pre-LN transformer.

`CodeLM` is trained on the Python standard library's source (``python -m smoothgen.models.train lm``,
weights in `weights/code_lm.safetensors`, load with `smoothgen.models.load_lm`). It is the default model
of `smoothgen.generative.SmoothedLM`, and its call convention mirrors a Hugging Face causal LM so that the
smoothing code treats it and `transformers` models the same way::

    out = model(input_ids=ids, use_cache=True)                 # or inputs_embeds=[B, L, d_model]
    out.logits                                                  # [B, L, 256]
    out = model(input_ids=next_ids, past_key_values=out.past_key_values, use_cache=True)
    model.get_input_embeddings()                                # nn.Embedding(256, d_model)

The cache is the legacy Hugging Face layout: a tuple with one ``(key, value)`` pair per layer, each
[B, n_heads, T, d_model / n_heads]. Cached incremental decoding computes the same logits as recomputing
the whole sequence (to float rounding).

Tokens are the UTF-8 bytes of the text (vocabulary 256, no special tokens), so every string can be
encoded and nothing is ever out of vocabulary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from smoothgen.errors import InvalidInputError

VOCAB_SIZE = 256
"""Byte-level vocabulary: token i is the byte value i."""

DEFAULT_LM_KWARGS: dict[str, int] = {"d_model": 128, "n_layers": 4, "n_heads": 4, "context_length": 256}
"""Size of the shipped model (see `smoothgen.models.train_code_lm.train_lm` for the training time it allows)."""

PastKeyValues = tuple[tuple[torch.Tensor, torch.Tensor], ...]


def utf8_bytes(text: str) -> bytes:
    """The UTF-8 bytes of a prompt text (what both code tokenizers accept).

    Raises:
        InvalidInputError: text is not a str, or holds lone surrogates that UTF-8 cannot encode.
    """
    if not isinstance(text, str):
        raise InvalidInputError(f"encode expects a str, got {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"text cannot be encoded as UTF-8: {exc}") from exc


def encode(text: str) -> torch.Tensor:
    """Encode a string as its UTF-8 bytes.

    Args:
        text: Any string (may be empty).

    Returns:
        The token ids, int64.

    Raises:
        InvalidInputError: text is not a str, or holds lone surrogates that UTF-8 cannot encode.

    Shapes:
        returns [len(text.encode("utf-8"))].
    """
    return torch.tensor(list(utf8_bytes(text)), dtype=torch.int64)


def _check_ids(ids: torch.Tensor, name: str, vocab_size: int = VOCAB_SIZE) -> None:
    if ids.dtype in (torch.bool,) or ids.dtype.is_floating_point or ids.dtype.is_complex:
        raise InvalidInputError(f"{name} must be an integer tensor, got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        what = " (byte values)" if vocab_size == VOCAB_SIZE else ""
        raise InvalidInputError(
            f"{name} must lie in [0, {vocab_size}){what}, got values in [{int(ids.min())}, {int(ids.max())}]"
        )


def token_id_list(ids: Any, vocab_size: int = VOCAB_SIZE) -> list[int]:
    """The ids of a 1-D integer sequence or tensor, checked to lie in [0, vocab_size): what the decoders take.

    Raises:
        InvalidInputError: ids is a string, not 1-D, not integer, or holds a value outside [0, vocab_size).
    """
    if isinstance(ids, (str, bytes)):
        raise InvalidInputError(f"decode expects token ids, got {type(ids).__name__}")
    try:
        tensor = torch.as_tensor(ids) if not isinstance(ids, torch.Tensor) else ids
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidInputError(f"decode expects a sequence of integer token ids: {exc}") from exc
    if tensor.numel() == 0 and tensor.ndim == 1:
        return []
    if tensor.ndim != 1:
        raise InvalidInputError(f"decode expects a 1-D sequence of token ids, got shape {tuple(tensor.shape)}")
    _check_ids(tensor, "token ids", vocab_size)
    return tensor.to(torch.int64).tolist()


def decode(ids: Any) -> str:
    """Decode token ids (bytes) to a string; invalid UTF-8 sequences become U+FFFD.

    Args:
        ids: A 1-D integer tensor, or a sequence of ints, with values in [0, 256).

    Returns:
        The decoded text.

    Raises:
        InvalidInputError: ids is not 1-D, not integer, or holds a value outside [0, 256).

    Shapes:
        ids: [L].
    """
    return bytes(token_id_list(ids)).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class CodeLMConfig:
    """Hyperparameters of a `CodeLM` (``model.config``), with the Hugging Face aliases smoothing code reads."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    context_length: int

    @property
    def hidden_size(self) -> int:
        """Hugging Face name of d_model."""
        return self.d_model

    @property
    def max_position_embeddings(self) -> int:
        """Hugging Face name of context_length."""
        return self.context_length


@dataclass
class CodeLMOutput:
    """What `CodeLM.forward` returns (the fields of a Hugging Face ``CausalLMOutputWithPast`` it has).

    Shapes:
        logits: [B, L, vocab_size]; past_key_values: n_layers pairs of [B, n_heads, T, d_model / n_heads],
        or None when use_cache is False.
    """

    logits: torch.Tensor
    past_key_values: PastKeyValues | None = None


class _Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + MLP(LN(x)) (MLP 4x wide, GELU)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln_1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln_2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.fc_proj = nn.Linear(4 * d_model, d_model)

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        batch, length, d_model = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(d_model, dim=2)
        q, k, v = (t.view(batch, length, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        past_length = 0
        if past is not None:
            past_length = past[0].shape[2]
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        if past_length == 0:
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=length > 1)
        elif length == 1:
            # One new query sees the whole cache. Written out rather than through scaled_dot_product_attention,
            # whose CPU kernel splits this case by batch size: a row's result must not depend on which other
            # rows share its batch (concurrent generations merged by SharedLM, docs/design.md).
            scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
            attn = torch.matmul(torch.softmax(scores, dim=-1), v)
        else:
            # is_causal aligns the mask top-left; with a cache, query i sits at position past_length + i.
            mask = torch.ones(length, past_length + length, dtype=torch.bool, device=x.device).tril(past_length)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(attn.transpose(1, 2).reshape(batch, length, d_model))
        x = x + self.fc_proj(F.gelu(self.fc(self.ln_2(x))))
        return x, (k, v)


class CodeLM(nn.Module):
    """Small causal transformer (pre-LayerNorm, learned positions, LM head tied to the embedding).

    Over bytes by default (`encode` / `decode`); with ``vocab_size`` set, over the ids of a tokenizer
    (the BPE code LM ``code_bpe`` and its `smoothgen.models.bpe.CodeTokenizer`).

    Args:
        d_model: Width of the residual stream and of the token embedding.
        n_layers: Number of transformer blocks.
        n_heads: Attention heads per block (must divide d_model).
        context_length: Maximum number of positions (prompt plus generated tokens).
        vocab_size: Number of token ids (256: bytes).

    Shapes:
        input_ids: [B, L] integer in [0, vocab_size), or inputs_embeds: [B, L, d_model] floating.
        logits: [B, L, vocab_size].
    """

    def __init__(
        self, d_model: int = 128, n_layers: int = 4, n_heads: int = 4, context_length: int = 256,
        vocab_size: int = VOCAB_SIZE,
    ) -> None:
        super().__init__()
        if min(d_model, n_layers, n_heads, context_length) < 1 or vocab_size < 2 or d_model % n_heads:
            raise ValueError(
                f"need positive sizes and n_heads dividing d_model, got d_model={d_model}, n_heads={n_heads}, "
                f"n_layers={n_layers}, context_length={context_length}, vocab_size={vocab_size}"
            )
        self.config = CodeLMConfig(int(vocab_size), int(d_model), int(n_layers), int(n_heads), int(context_length))
        self.vocab_size = int(vocab_size)
        self.d_model = int(d_model)
        self.n_layers = int(n_layers)
        self.n_heads = int(n_heads)
        self.context_length = int(context_length)
        self.token_embedding = nn.Embedding(self.vocab_size, d_model)
        self.position_embedding = nn.Embedding(context_length, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2's initialization: N(0, 0.02) everywhere, residual output projections scaled by
        # 1/sqrt(2 n_layers) so that the residual stream's variance does not grow with depth.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for linear in (block.proj, block.fc_proj):
                nn.init.normal_(linear.weight, mean=0.0, std=0.02 / math.sqrt(2 * self.n_layers))

    def get_input_embeddings(self) -> nn.Embedding:
        """Return the token embedding (Hugging Face convention); its rows are the points noise is added to."""
        return self.token_embedding

    def _check_cache(self, past_key_values: Any, batch: int, device: torch.device) -> int:
        if not isinstance(past_key_values, (tuple, list)) or len(past_key_values) != self.n_layers:
            raise InvalidInputError(
                f"past_key_values must be a tuple of {self.n_layers} (key, value) pairs, the cache a previous "
                "call returned with use_cache=True"
            )
        head_dim = self.d_model // self.n_heads
        past_length = None
        for pair in past_key_values:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise InvalidInputError("each past_key_values entry must be a (key, value) pair")
            for t in pair:
                if not isinstance(t, torch.Tensor) or t.ndim != 4 or not t.is_floating_point():
                    raise InvalidInputError("cache tensors must be floating tensors [B, n_heads, T, head_dim]")
                if (t.shape[0], t.shape[1], t.shape[3]) != (batch, self.n_heads, head_dim):
                    raise InvalidInputError(
                        f"cache tensor has shape {tuple(t.shape)}, expected [{batch}, {self.n_heads}, T, {head_dim}]"
                    )
                if past_length is None:
                    past_length = t.shape[2]
                if t.shape[2] != past_length or t.device != device:
                    raise InvalidInputError("cache tensors disagree in length or device")
        return int(past_length or 0)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values: PastKeyValues | None = None,
        use_cache: bool = False,
        position_offset: int | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> CodeLMOutput:
        """Return next-token logits for every position, and the extended cache when use_cache is set.

        Args:
            input_ids: Token ids (bytes, or the tokenizer's ids); exactly one of input_ids and inputs_embeds.
            inputs_embeds: Token embeddings (for example noisy rows of `get_input_embeddings()`); the
                positional embedding is added to them inside, as for input_ids.
            past_key_values: The cache of the preceding tokens, from an earlier call with use_cache=True.
            use_cache: Whether to return the cache extended with these tokens.
            position_offset: Position of the first token (default: the cache length, or 0 without a cache).
            attention_mask: Accepted for Hugging Face compatibility; must be all ones (no padding).

        Returns:
            A `CodeLMOutput` with ``logits`` and ``past_key_values`` (None unless use_cache).

        Raises:
            InvalidInputError: Both or neither of input_ids / inputs_embeds, wrong dims or dtypes, ids
                outside [0, vocab_size), a malformed cache, padding in attention_mask, or more positions than
                context_length (the prompt plus every generated token must fit).

        Shapes:
            input_ids: [B, L]; inputs_embeds: [B, L, d_model]; logits: [B, L, vocab_size];
            past_key_values: n_layers pairs of [B, n_heads, T, d_model / n_heads].
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise InvalidInputError("pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
                raise InvalidInputError(
                    f"input_ids must be a [batch, length] integer tensor, got "
                    f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__}"
                )
            _check_ids(input_ids, "input_ids", self.vocab_size)
            batch, length = input_ids.shape
            device = input_ids.device
        else:
            if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.ndim != 3:
                raise InvalidInputError("inputs_embeds must be a [batch, length, d_model] floating tensor")
            if not inputs_embeds.is_floating_point():
                raise InvalidInputError(f"inputs_embeds must be floating, got {inputs_embeds.dtype}")
            if inputs_embeds.dtype != self.token_embedding.weight.dtype:
                raise InvalidInputError(
                    f"inputs_embeds has dtype {inputs_embeds.dtype}, the model's weights "
                    f"{self.token_embedding.weight.dtype}"
                )
            if inputs_embeds.shape[2] != self.d_model:
                raise InvalidInputError(
                    f"inputs_embeds has width {inputs_embeds.shape[2]}, the model's d_model is {self.d_model}"
                )
            batch, length, _ = inputs_embeds.shape
            device = inputs_embeds.device
        if batch == 0 or length == 0:
            raise InvalidInputError(f"empty input: batch {batch}, length {length}")
        if attention_mask is not None and not bool(torch.all(torch.as_tensor(attention_mask) == 1)):
            raise InvalidInputError("CodeLM does not support padding: attention_mask must be all ones")
        past_length = 0 if past_key_values is None else self._check_cache(past_key_values, batch, device)
        start = past_length if position_offset is None else position_offset
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise InvalidInputError(f"position_offset must be an integer >= 0, got {position_offset!r}")
        if start + length > self.context_length:
            raise InvalidInputError(
                f"sequence too long: positions {start}..{start + length - 1} exceed the context length "
                f"{self.context_length} of this model (the prompt plus every generated token must fit)"
            )
        x = self.token_embedding(input_ids) if input_ids is not None else inputs_embeds
        positions = torch.arange(start, start + length, device=device)
        x = x + self.position_embedding(positions)
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if past_key_values is None else past_key_values[i])
            new_cache.append(kv)
        logits = F.linear(self.ln_f(x), self.token_embedding.weight)
        return CodeLMOutput(logits=logits, past_key_values=tuple(new_cache) if use_cache else None)


def expand_cache(past_key_values: PastKeyValues, repeats: int) -> PastKeyValues:
    """Repeat every sequence of a cache `repeats` times along the batch (copy b goes to rows b*repeats...).

    Useful to run several continuations (or noisy copies of the continuation) from one computed prefix.

    Args:
        past_key_values: A cache returned by `CodeLM.forward(..., use_cache=True)`.
        repeats: Copies per sequence (>= 1).

    Returns:
        The expanded cache.

    Shapes:
        each tensor [B, H, T, Dh] -> [B * repeats, H, T, Dh].
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InvalidInputError(f"repeats must be an integer >= 1, got {repeats!r}")
    return tuple((k.repeat_interleave(repeats, dim=0), v.repeat_interleave(repeats, dim=0))
                 for k, v in past_key_values)
