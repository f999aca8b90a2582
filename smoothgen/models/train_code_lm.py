"""Train the code LMs: the corpus (the standard library's sources), the byte-level ``code_lm``, its
fine-tunes for the smoothing distributions of `smoothgen.generative.SmoothedLM`, and their metrics. The
training loop serves the BPE code LM too (`smoothgen.models.train_code_bpe`, given its tokenizer).

``python -m smoothgen.models.train lm`` / ``lm-ablate`` / ``lm-gauss`` / ``lm-delete`` (`smoothgen.models.train`)."""
from __future__ import annotations

import copy
import hashlib
import math
import os
import platform
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from smoothgen.errors import InvalidParameterError
from smoothgen.models import DEFAULT_LM_NAME, load_lm, load_tokenizer, model_info
from smoothgen.models.lm import DEFAULT_LM_KWARGS, VOCAB_SIZE, CodeLM
from smoothgen.validate import check_count, check_positive
from smoothgen.models.train_common import DEFAULT_SEED, EVAL_NOISE_SEED, _deterministic, _num_parameters, _timing_record


LM_NAME = DEFAULT_LM_NAME


LM_FILENAME = f"{LM_NAME}.safetensors"


LM_KWARGS: dict[str, int] = dict(DEFAULT_LM_KWARGS)


LM_TOKENIZER = "UTF-8 bytes (vocabulary 256, no special tokens)"


DEFAULT_LM_STEPS = 1200


LM_BATCH_SIZE = 32


LM_LEARNING_RATE = 2e-3


LM_WARMUP_STEPS = 100


LM_WEIGHT_DECAY = 0.01


LM_HELDOUT_MODULUS = 20
"""A stdlib file is held out when sha256(its path relative to the stdlib folder) is 0 modulo this (~5%)."""


LM_EXCLUDED_DIRS: frozenset[str] = frozenset({
    "site-packages", "dist-packages", "__pycache__", "test", "tests", "idlelib", "lib2to3",
    "encodings", "pydoc_data", "ensurepip",
})
"""Folders (at any depth) left out of the LM corpus: installed packages, test suites, and generated or
table-like modules (codec tables, the pydoc topic strings), which are not representative Python code.
Folders named ``config-*`` (platform build files) are left out too."""


LM_SLICE_CHARS = 1024
"""Characters per held-out file in the fixed evaluation slice recorded for tests (`lm_heldout_slice`)."""


LM_NOISE_KINDS: tuple[str, ...] = ("ablate", "gauss", "delete")
"""Smoothing distributions `finetune_lm` trains for: token ablation, Gaussian embedding noise, token deletion."""


DEFAULT_LM_KEEP_FRACTIONS: tuple[float, ...] = (0.1, 0.25)
"""Keep fractions of the shipped ablation-trained LMs (``code_lm_ablate0.25``)."""


DEFAULT_LM_GAUSS_SIGMAS: tuple[float, ...] = (0.5,)
"""Embedding noise levels of the shipped Gaussian-trained LMs (``code_lm_gauss0.5``)."""


DEFAULT_LM_DELETE_PROBS: tuple[float, ...] = (0.9,)
"""Deletion probabilities of the shipped deletion-trained LMs (``code_lm_delete0.9``)."""


ABLATION_MASK_TOKEN = 0
"""The ablation MASK token: byte 0 (NUL), which the training corpus never contains."""


DEFAULT_FINETUNE_STEPS = 500


FINETUNE_LEARNING_RATE = 3e-4


FINETUNE_WARMUP_STEPS = 25


FINETUNE_PROMPT_LENGTHS: tuple[int, int] = (8, 160)
"""Inclusive range of the prompt length drawn per training window (the rest of the window is the clean continuation)."""


FINETUNE_EVAL_PROMPT_LENGTH = 64


FINETUNE_EVAL_STRIDE = 32


FINETUNE_EVAL_COPIES = 32


def stdlib_root() -> Path:
    """Return the folder of the running interpreter's standard library (``sysconfig`` "stdlib")."""
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def is_heldout_file(relative_path: str) -> bool:
    """Return whether a stdlib file belongs to the LM's held-out evaluation files.

    The choice depends only on the path (sha256 of its POSIX form modulo `LM_HELDOUT_MODULUS`), so it
    is the same on every machine and Python patch release, whatever else the stdlib holds.

    Args:
        relative_path: Path relative to the stdlib folder, POSIX separators (``"email/parser.py"``).
    """
    digest = hashlib.sha256(relative_path.encode("utf-8")).hexdigest()
    return int(digest, 16) % LM_HELDOUT_MODULUS == 0


def lm_corpus_files(root: Path | None = None) -> tuple[list[str], list[str]]:
    """Return the LM corpus of a standard library folder, split into training and held-out files.

    The corpus is every ``*.py`` file under root outside `LM_EXCLUDED_DIRS` and ``config-*`` folders,
    sorted by relative path (so the order, hence the training stream, is deterministic).

    Args:
        root: Standard library folder (default: `stdlib_root()`, the running interpreter's).

    Returns:
        (train, heldout): relative POSIX paths, each sorted.

    Raises:
        InvalidParameterError: root holds no corpus file.
    """
    root = stdlib_root() if root is None else Path(root)
    names: list[str] = []
    for folder, subfolders, filenames in os.walk(root):
        # Prune while walking: site-packages alone can hold far more files than the stdlib.
        subfolders[:] = [f for f in subfolders if f not in LM_EXCLUDED_DIRS and not f.startswith("config-")]
        base = Path(folder).relative_to(root)
        names.extend((base / f).as_posix() for f in filenames if f.endswith(".py") and (Path(folder) / f).is_file())
    train: list[str] = []
    heldout: list[str] = []
    for name in sorted(names):
        (heldout if is_heldout_file(name) else train).append(name)
    if not train or not heldout:
        raise InvalidParameterError(f"no Python source files for the LM corpus under {root}")
    return train, heldout


def _read_corpus(files: Sequence[str], root: Path) -> list[bytes]:
    return [(root / name).read_bytes() for name in files]


def heldout_texts(max_files: int | None = None, max_chars: int | None = None, root: Path | None = None) -> list[str]:
    """Return the LM's held-out texts, read from the running interpreter's standard library.

    The weights do not ship the corpus; every machine with Python has its own stdlib, and the held-out
    choice depends only on file paths (`is_heldout_file`), so evaluations elsewhere read the same files
    (with the content of their Python release).

    Args:
        max_files: Keep the first max_files held-out files (sorted by path); None keeps all.
        max_chars: Keep, of each file, the max_chars characters around its middle (code rather than
            the license header and module docstring); None keeps whole files.
        root: Standard library folder (default: `stdlib_root()`).

    Returns:
        One string per file (UTF-8 decoded; undecodable bytes become U+FFFD).
    """
    root = stdlib_root() if root is None else Path(root)
    _, files = lm_corpus_files(root)
    if max_files is not None:
        files = files[: check_count(max_files, "max_files")]
    texts = [data.decode("utf-8", errors="replace") for data in _read_corpus(files, root)]
    if max_chars is not None:
        max_chars = check_count(max_chars, "max_chars")
        texts = [t[max(0, (len(t) - max_chars) // 2):][:max_chars] for t in texts]
    return texts


def _token_ids(texts: Sequence[str | bytes], tokenizer: Any = None) -> list[list[int]]:
    """The token ids of each text: its UTF-8 bytes, or the tokenizer's ids (bytes decoded as UTF-8 first)."""
    if tokenizer is None:
        return [list(text.encode("utf-8") if isinstance(text, str) else bytes(text)) for text in texts]
    return tokenizer.encode_batch([t if isinstance(t, str) else bytes(t).decode("utf-8", errors="replace")
                                   for t in texts])


def _lm_blocks(texts: Sequence[str | bytes], context_length: int, tokenizer: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each text into windows of context_length inputs and their next-token targets (padding: -100)."""
    inputs, targets = [], []
    for data in _token_ids(texts, tokenizer):
        ids = torch.tensor(data, dtype=torch.int64)
        for start in range(0, len(ids) - 1, context_length):
            block = ids[start : start + context_length + 1]
            x = torch.zeros(context_length, dtype=torch.int64)
            y = torch.full((context_length,), -100, dtype=torch.int64)
            x[: len(block) - 1] = block[:-1]
            y[: len(block) - 1] = block[1:]
            inputs.append(x)
            targets.append(y)
    if not inputs:
        raise InvalidParameterError("the texts hold no byte to predict (each needs at least 2 bytes)")
    return torch.stack(inputs), torch.stack(targets)


def _metrics_from(nll_nats: float, correct: int, count: int, num_bytes: int | None = None) -> dict[str, Any]:
    """Byte-level metrics; with num_bytes (the bytes the count sub-word tokens spell), per-token ones plus
    bits per byte, the measure comparable across tokenizers."""
    mean = nll_nats / count
    if num_bytes is None:
        return {"num_predicted_bytes": count, "accuracy": correct / count, "nll_nats_per_byte": mean,
                "bits_per_byte": mean / math.log(2), "perplexity": math.exp(mean)}
    return {"num_predicted_tokens": count, "num_predicted_bytes": num_bytes, "bytes_per_token": num_bytes / count,
            "accuracy": correct / count, "nll_nats_per_token": mean, "bits_per_byte": nll_nats / num_bytes / math.log(2),
            "perplexity": math.exp(mean)}


@torch.no_grad()
def lm_metrics(model: nn.Module, texts: Sequence[str | bytes], batch_size: int = 32, tokenizer: Any = None) -> dict[str, Any]:
    """Return the next-token accuracy and perplexity of a causal LM on texts (bytes, or a tokenizer's ids).

    Each text is cut into consecutive windows of the model's context length; every token except a text's
    first is predicted once, from the tokens before it in its window (so from 0 to context_length − 1
    tokens of context). Accuracy counts argmax predictions equal to the next token.

    Args:
        model: A `CodeLM` (or a model with the same call convention and a ``context_length``).
        texts: Strings (encoded as UTF-8) or bytes.
        batch_size: Windows per forward pass.
        tokenizer: None for a byte-level model; else the model's tokenizer (`smoothgen.models.bpe.CodeTokenizer`).

    Returns:
        ``num_predicted_bytes``, ``accuracy``, ``nll_nats_per_byte``, ``bits_per_byte`` and
        ``perplexity`` (per byte, exp of the mean negative log-likelihood). With a tokenizer: per token
        (``num_predicted_tokens``, ``nll_nats_per_token``, perplexity per token), and ``bits_per_byte`` over
        the ``num_predicted_bytes`` UTF-8 bytes the predicted tokens spell.
    """
    batch_size = check_count(batch_size, "batch_size")
    inputs, targets = _lm_blocks(texts, int(model.context_length), tokenizer)
    was_training = model.training
    model.eval()
    nll, correct = 0.0, 0
    try:
        for x, y in zip(inputs.split(batch_size), targets.split(batch_size)):
            logits = model(input_ids=x).logits.float()
            nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                         ignore_index=-100, reduction="sum").double())
            correct += int(((logits.argmax(-1) == y) & (y >= 0)).sum())
    finally:
        model.train(was_training)
    num_bytes = None
    if tokenizer is not None:
        lengths = torch.tensor([tokenizer.byte_length(i) for i in range(model.vocab_size)], dtype=torch.int64)
        num_bytes = int(lengths[targets[targets >= 0]].sum())
    return _metrics_from(nll, correct, int((targets >= 0).sum()), num_bytes)


def unigram_metrics(train: Sequence[str | bytes], texts: Sequence[str | bytes]) -> dict[str, Any]:
    """Return the metrics of `lm_metrics` for the unigram baseline: byte frequencies of train (add-one).

    The same bytes are predicted as in `lm_metrics` (all but each text's first), always by the most
    frequent training byte.

    Args:
        train: Texts whose byte frequencies define the baseline (pass texts itself for the in-sample,
            best possible unigram).
        texts: Evaluation texts.

    Returns:
        As `lm_metrics`.
    """
    def counts(items: Sequence[str | bytes], skip_first: bool) -> torch.Tensor:
        total = torch.zeros(VOCAB_SIZE, dtype=torch.float64)
        for item in items:
            data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            array = np.frombuffer(data[1:] if skip_first else data, dtype=np.uint8)
            total += torch.from_numpy(np.bincount(array, minlength=VOCAB_SIZE).astype(np.float64))
        return total

    log_p = torch.log((counts(train, False) + 1.0) / (counts(train, False).sum() + VOCAB_SIZE))
    target = counts(texts, True)
    count = int(target.sum())
    if count == 0:
        raise InvalidParameterError("the texts hold no byte to predict (each needs at least 2 bytes)")
    return _metrics_from(float(-(target * log_p).sum()), int(target[int(log_p.argmax())]), count)


def lm_heldout_slice(root: Path | None = None) -> list[str]:
    """Return the fixed held-out evaluation slice: `LM_SLICE_CHARS` characters from the middle of every
    held-out file (about 27 kB, evaluated in seconds), whose metrics `train_lm` records."""
    return heldout_texts(max_chars=LM_SLICE_CHARS, root=root)


def _texts_sha256(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


LM_TEXT_BYTES: tuple[int, ...] = (9, 10, *range(32, 127))
"""Tab, newline and printable ASCII: the bytes of ordinary source text."""


@torch.no_grad()
def _embedding_geometry(model: CodeLM) -> dict[str, float]:
    """Norms of the token embedding rows and distances between them, over `LM_TEXT_BYTES`: the scale
    against which an embedding-space smoothing σ and a certified radius (docs/theory.md §4(c)) are read."""
    rows = model.get_input_embeddings().weight[list(LM_TEXT_BYTES)].double()
    distances = torch.cdist(rows, rows)
    off_diagonal = distances[~torch.eye(len(rows), dtype=torch.bool)]
    return {"text_bytes": len(rows), "row_norm_median": float(rows.norm(dim=1).median()),
            "row_distance_min": float(off_diagonal.min()), "row_distance_median": float(off_diagonal.median())}


def _lm_learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    # Linear warmup, then cosine decay to 10% of the peak.
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def _lm_training_stream(
    root: Path, context_length: int, tokenizer: Any = None,
) -> tuple[list[str], list[str], list[bytes], torch.Tensor]:
    """(train files, held-out files, training file contents, their concatenation as one token stream:
    uint8 bytes, or the tokenizer's ids as int32)."""
    train_files, heldout_files = lm_corpus_files(root)
    train_data = _read_corpus(train_files, root)
    if tokenizer is None:
        stream = torch.frombuffer(bytearray(b"".join(train_data)), dtype=torch.uint8)
    else:
        ids = _token_ids(train_data, tokenizer)
        stream = torch.tensor([i for file_ids in ids for i in file_ids], dtype=torch.int32)
    if len(stream) <= context_length + 1:
        raise InvalidParameterError(f"the training corpus ({len(stream)} tokens) is shorter than one window")
    return train_files, heldout_files, train_data, stream


def _lm_corpus_record(
    train_files: Sequence[str], heldout_files: Sequence[str], stream: torch.Tensor, heldout_data: Sequence[bytes],
    train_data: Sequence[bytes] | None = None,
) -> dict[str, Any]:
    sizes = {"train_bytes": int(len(stream))}
    if stream.dtype != torch.uint8:  # a tokenized stream
        sizes = {"train_bytes": sum(len(d) for d in train_data or ()), "train_tokens": int(len(stream))}
    return {
        "description": (
            "*.py files of the CPython standard library of the training interpreter, sorted by path, "
            f"without the folders {sorted(LM_EXCLUDED_DIRS)} and config-*; held out: files whose "
            f"sha256(relative path) % {LM_HELDOUT_MODULUS} == 0"
        ),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "train_files": len(train_files),
        **sizes,
        "heldout_files": len(heldout_files),
        "heldout_bytes": sum(len(d) for d in heldout_data),
        "heldout_file_list": list(heldout_files),
    }


def _check_lm_training(steps, seed, batch_size, warmup_steps, learning_rate, weight_decay) -> tuple:
    """The LM training settings of train_lm and finetune_lm, checked."""
    return (check_count(steps, "steps"), check_count(seed, "seed", minimum=0), check_count(batch_size, "batch_size"),
            check_count(warmup_steps, "warmup_steps", minimum=0), check_positive(learning_rate, "learning_rate"),
            check_positive(weight_decay, "weight_decay", allow_zero=True))


@torch.no_grad()
def _round_weights(model: nn.Module, stored_dtype: torch.dtype) -> dict[str, Any]:
    """Round the weights to the precision they are stored in, so that the recorded metrics are those of the
    shipped model (loading converts them back to float32 exactly); returns the record's entry (none for
    float32, which needs no rounding)."""
    if stored_dtype == torch.float32:
        return {}
    for parameter in model.parameters():
        parameter.copy_(parameter.to(stored_dtype).float())
    return {"stored_dtype": str(stored_dtype).removeprefix("torch.")}


def _lm_run_record(model: nn.Module, seed: int, steps: int, batch_size: int, context: int, learning_rate: float,
                   warmup_steps: int, weight_decay: float, smoothed_loss: float, seconds: float,
                   cpu_seconds: float) -> dict[str, Any]:
    """The training settings and cost of one LM run, as models.json records them (train_lm and finetune_lm)."""
    return {
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "train_tokens": steps * batch_size * context,
        "learning_rate": learning_rate,
        "warmup_steps": warmup_steps,
        "weight_decay": weight_decay,
        "num_parameters": _num_parameters(model),
        "final_train_loss_ema": smoothed_loss,
        **_timing_record(seconds, cpu_seconds),
    }


def _lm_clean_metrics(model: nn.Module, heldout_data: Sequence[bytes], root: Path, tokenizer: Any = None) -> dict[str, Any]:
    """Clean next-token metrics on every held-out file and on the fixed slice of `lm_heldout_slice`."""
    slice_texts = lm_heldout_slice(root)
    return {
        "heldout": lm_metrics(model, heldout_data, tokenizer=tokenizer),
        "heldout_slice": {"chars_per_file": LM_SLICE_CHARS, "sha256": _texts_sha256(slice_texts),
                          **lm_metrics(model, slice_texts, tokenizer=tokenizer)},
    }


def _lm_optimize(
    model: nn.Module,
    stream: torch.Tensor,
    window_loss: Callable[[torch.Tensor], torch.Tensor],
    steps: int,
    batch_size: int,
    learning_rate: float,
    warmup_steps: int,
    weight_decay: float,
    generator: torch.Generator,
    desc: str,
    progress: bool,
) -> float:
    """The LM training loop shared by `train_lm` and `finetune_lm`.

    Each step draws batch_size windows of context_length + 1 bytes at uniform offsets of the stream (from
    `generator`), and `window_loss(windows)` (which may draw its own noise from `generator`, after the
    offsets) returns the loss. AdamW (β = 0.9, 0.95) over the parameters that require gradients (frozen
    ones get neither updates nor weight decay), the learning rate of `_lm_learning_rate`, gradients clipped
    at norm 1. Leaves the model in eval mode and returns the exponential moving average (0.98) of the loss.
    """
    context = int(model.context_length)
    offsets = torch.arange(context + 1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate,
                                  betas=(0.9, 0.95), weight_decay=weight_decay)
    model.train()
    smoothed_loss = float("nan")
    bar = tqdm(range(steps), desc=desc, file=sys.stderr, disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _lm_learning_rate(step, steps, learning_rate, warmup_steps)
        starts = torch.randint(len(stream) - context - 1, (batch_size, 1), generator=generator)
        loss = window_loss(stream[starts + offsets].long())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        value = loss.item()
        smoothed_loss = value if math.isnan(smoothed_loss) else 0.98 * smoothed_loss + 0.02 * value
        bar.set_postfix(loss=f"{smoothed_loss:.3f}")
    model.eval()
    return smoothed_loss


def train_lm(
    steps: int = DEFAULT_LM_STEPS,
    seed: int = DEFAULT_SEED,
    *,
    batch_size: int = LM_BATCH_SIZE,
    learning_rate: float = LM_LEARNING_RATE,
    warmup_steps: int = LM_WARMUP_STEPS,
    weight_decay: float = LM_WEIGHT_DECAY,
    root: Path | None = None,
    evaluate: bool = True,
    progress: bool = False,
    tokenizer: Any = None,
    stored_dtype: torch.dtype = torch.float32,
    **model_kwargs: Any,
) -> tuple[CodeLM, dict[str, Any]]:
    """Train the embedded byte-level code LM (`CodeLM`) on the Python standard library's source.

    The training files of `lm_corpus_files` are concatenated (sorted by path) into one byte stream;
    each step takes batch_size windows of context_length + 1 bytes at uniformly drawn offsets and
    minimizes the next-byte cross-entropy. AdamW (β = 0.9, 0.95), linear warmup then cosine decay to
    10% of the peak learning rate, gradients clipped at norm 1.

    Args:
        steps: Optimizer steps.
        seed: Seed of initialization and window offsets.
        batch_size: Windows per step.
        learning_rate: Peak learning rate.
        warmup_steps: Steps of linear warmup.
        weight_decay: AdamW weight decay.
        root: Standard library folder (default: the running interpreter's).
        evaluate: Whether to compute the held-out metrics (all held-out files, and the fixed slice of
            `lm_heldout_slice`) and the unigram baseline; a tiny test run can skip them.
        progress: Whether to show a tqdm progress bar on stderr.
        tokenizer: None for the byte-level model; else a sub-word tokenizer
            (`smoothgen.models.bpe.CodeTokenizer`): the stream, windows and metrics are its ids, the
            vocabulary its size, and the record describes it (the BPE code LM,
            `smoothgen.models.train_code_bpe`).
        stored_dtype: The precision the weights are saved in; the trained weights are rounded to it before
            evaluation (float16 halves the file of a larger model).
        **model_kwargs: Overrides of `LM_KWARGS` (d_model, n_layers, n_heads, context_length).

    Returns:
        The trained model in eval mode, and its metadata record: architecture and kwargs, corpus
        description and sizes, training settings and time, and held-out metrics of the model and of the
        unigram baseline.
    """
    steps, seed, batch_size, warmup_steps, learning_rate, weight_decay = _check_lm_training(
        steps, seed, batch_size, warmup_steps, learning_rate, weight_decay)
    unknown = set(model_kwargs) - set(LM_KWARGS)
    if unknown:
        raise InvalidParameterError(f"unknown CodeLM arguments {sorted(unknown)}; known: {sorted(LM_KWARGS)}")
    kwargs = {**LM_KWARGS, **model_kwargs}
    if tokenizer is not None:
        kwargs["vocab_size"] = int(tokenizer.vocab_size)
    root = stdlib_root() if root is None else Path(root)
    train_files, heldout_files, train_data, stream = _lm_training_stream(root, int(kwargs["context_length"]), tokenizer)
    start_time, start_cpu = time.perf_counter(), time.process_time()
    with _deterministic(seed) as generator:
        model = CodeLM(**kwargs)

        def window_loss(windows: torch.Tensor) -> torch.Tensor:
            logits = model(input_ids=windows[:, :-1]).logits
            return F.cross_entropy(logits.reshape(-1, model.vocab_size), windows[:, 1:].reshape(-1))

        smoothed_loss = _lm_optimize(model, stream, window_loss, steps, batch_size, learning_rate, warmup_steps,
                                     weight_decay, generator, "code lm" if tokenizer is None else "code bpe lm", progress)
    train_seconds, train_cpu_seconds = time.perf_counter() - start_time, time.process_time() - start_cpu
    stored = _round_weights(model, stored_dtype)
    heldout_data = _read_corpus(heldout_files, root)
    metrics: dict[str, Any] = {
        "kind": "lm",
        "architecture": CodeLM.__name__,
        "kwargs": kwargs,
        "tokenizer": LM_TOKENIZER if tokenizer is None else tokenizer.description,
        "corpus": _lm_corpus_record(train_files, heldout_files, stream, heldout_data, train_data),
        **_lm_run_record(model, seed, steps, batch_size, int(kwargs["context_length"]), learning_rate, warmup_steps,
                         weight_decay, smoothed_loss, train_seconds, train_cpu_seconds),
        **stored,
    }
    if evaluate:
        clean = _lm_clean_metrics(model, heldout_data, root, tokenizer)
        metrics["heldout"] = clean["heldout"]
        if tokenizer is None:  # byte-level: the unigram baseline and the rows of the text bytes
            metrics["heldout_unigram_baseline"] = unigram_metrics(train_data, heldout_data)
        metrics["heldout_slice"] = clean["heldout_slice"]
        if tokenizer is None:
            metrics["embedding"] = _embedding_geometry(model)
    return model, metrics


def finetuned_lm_name(noise: str, level: float, base: str = LM_NAME) -> str:
    """Return the key in `models.json` of the code LM fine-tuned for a smoothing distribution.

    Args:
        noise: ``"ablate"`` (token ablation, level = keep fraction), ``"gauss"`` (Gaussian embedding
            noise, level = σ) or ``"delete"`` (token deletion, level = deletion probability).
        level: The keep fraction, σ or deletion probability.
        base: The name of the model fine-tuned (``"code_lm"`` or the BPE code LM ``"code_bpe"``).

    Returns:
        For example ``"code_lm_ablate0.25"``, ``"code_lm_gauss0.5"``, ``"code_lm_delete0.9"`` or
        ``"code_bpe_delete0.9"`` (also the weights file's stem).
    """
    return f"{base}_{_check_noise(noise, level)[0]}{float(level)}"


def _check_noise(noise: str, level: float) -> tuple[str, float]:
    if noise not in LM_NOISE_KINDS:
        raise InvalidParameterError(f"noise must be one of {list(LM_NOISE_KINDS)}, got {noise!r}")
    level = check_positive(level, {"ablate": "keep fraction", "gauss": "sigma", "delete": "deletion probability"}[noise])
    if noise == "ablate" and level > 1.0:
        raise InvalidParameterError(f"the keep fraction must lie in (0, 1], got {level}")
    if noise == "delete" and level >= 1.0:
        raise InvalidParameterError(f"the deletion probability must lie in (0, 1), got {level}")
    return noise, level


def line_break_ids(vocab_size: int, tokenizer: Any = None) -> torch.Tensor:
    """bool [vocab_size]: the tokens whose text holds a line break (byte 10 for the byte-level LMs), as
    `smoothgen.text_generation.perturbed_positions` finds the last line of a prompt."""
    if tokenizer is None:
        return torch.arange(vocab_size) == ord("\n")
    return torch.tensor(["\n" in tokenizer.decode([i]) for i in range(vocab_size)])


def _delete_prompts(
    windows: torch.Tensor, prompt_lengths: torch.Tensor, level: float, pad_token_id: int, generator: torch.Generator,
    line_breaks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows whose first prompt_lengths[b] bytes lose each byte independently with probability `level`
    (token deletion, as the smoothed LM perturbs a prompt); the rest closes up and the row is padded at the
    end with pad_token_id. A row that lost its whole prompt starts with pad_token_id alone (the token a
    smoothed LM feeds an empty copy). With `line_breaks` (bool [V], `line_break_ids`), a prompt that holds a
    line break before its last token loses tokens only up to and including its last one: the line being
    completed stays whole, as `smoothgen generate --perturb context` (its default) perturbs a prompt.

    Returns:
        (ids [B, T], kept prompt lengths [B]) for windows [B, T] (T = context + 1); a causal model's
        predictions at a row's real positions never see its padding.
    """
    rows, kept_lengths = [], []
    for row, length in zip(windows, prompt_lengths.tolist()):
        perturbed = length
        if line_breaks is not None:
            breaks = torch.nonzero(line_breaks[row[:length - 1]], as_tuple=False)
            if breaks.numel():
                perturbed = int(breaks[-1, 0]) + 1
        keep = torch.cat([torch.rand(perturbed, generator=generator) >= level,
                          torch.ones(length - perturbed, dtype=torch.bool)])
        prompt = row[:length][keep]
        if prompt.numel() == 0:
            prompt = torch.tensor([pad_token_id], dtype=row.dtype)
        kept_lengths.append(prompt.numel())
        rows.append(torch.cat([prompt, row[length:]]))
    width = windows.shape[1]
    out = torch.full_like(windows, pad_token_id)
    for b, r in enumerate(rows):
        out[b, : min(width, r.numel())] = r[:width]
    return out, torch.tensor(kept_lengths)


def ablation_keep(fraction: float, prompt_length: int) -> int:
    """Return k = max(1, round(fraction · prompt_length)) (Python's round), the positions an ablated copy
    keeps: the rule of `finetune_lm`'s training prompts and of `lm_smoothed_metrics` (16 for 0.25 · 64)."""
    return max(1, round(fraction * prompt_length))


def _perturb_prompts(
    model: CodeLM, ids: torch.Tensor, prompt_lengths: torch.Tensor, noise: str, level: float, mask_token_id: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Input embeddings of ids with the first prompt_lengths[b] positions of row b perturbed as the smoothed
    LM perturbs a prompt: token ablation (keep ablation_keep(level, P) uniformly random positions, replace
    the others by mask_token_id) or Gaussian N(0, level² I) noise added to the embedding rows.

    Shapes:
        ids: [B, L] int64; prompt_lengths: [B] (each in [1, L]); returns [B, L, d_model].
    """
    table = model.get_input_embeddings().weight
    prompt = torch.arange(ids.shape[1]) < prompt_lengths[:, None]  # [B, L]
    if noise == "ablate":
        ids = ids.clone()
        for row, length in enumerate(prompt_lengths.tolist()):
            keep = ablation_keep(level, length)
            masked = torch.randperm(length, generator=generator)[keep:]
            ids[row, masked] = mask_token_id
        return table[ids]
    eps = torch.randn((*ids.shape, table.shape[1]), generator=generator, dtype=table.dtype)
    return table[ids] + level * eps * prompt[..., None].to(table.dtype)


def finetune_lm(
    noise: str,
    level: float,
    steps: int = DEFAULT_FINETUNE_STEPS,
    seed: int = DEFAULT_SEED,
    *,
    base: str | CodeLM = LM_NAME,
    batch_size: int = LM_BATCH_SIZE,
    learning_rate: float = FINETUNE_LEARNING_RATE,
    warmup_steps: int = FINETUNE_WARMUP_STEPS,
    weight_decay: float = LM_WEIGHT_DECAY,
    prompt_lengths: tuple[int, int] = FINETUNE_PROMPT_LENGTHS,
    mask_token_id: int = ABLATION_MASK_TOKEN,
    root: Path | None = None,
    evaluate: bool = True,
    progress: bool = False,
    tokenizer: Any = None,
    stored_dtype: torch.dtype = torch.float32,
    keep_last_line: bool = False,
) -> tuple[CodeLM, dict[str, Any]]:
    """Fine-tune the code LM for a smoothing distribution of `smoothgen.generative.SmoothedLM`.

    The training distribution is the smoothing distribution (docs/theory.md §4c, §4g). Each step draws
    batch_size windows of context_length + 1 bytes from the training stream (as `train_lm`); each window
    gets a prompt length P uniform in [prompt_lengths[0], prompt_lengths[1]], its first P positions are the
    prompt and the rest plays the generated tokens (always clean). The prompt is perturbed:

    - ``noise="ablate"``, level = keep fraction f: k = max(1, round(f·P)) uniformly random prompt positions
      are kept and every other prompt position becomes mask_token_id (byte 0, NUL, by default);
    - ``noise="gauss"``, level = σ: N(0, σ² I) is added to the prompt positions' input embeddings (fed with
      ``inputs_embeds``), and the token embedding is frozen. The CodeLM output head is tied to that
      embedding, so the head is frozen too: the fine-tuned table equals the base's exactly, and a
      certified embedding radius means the same token substitutions for both models;
    - ``noise="delete"``, level = deletion probability p: each prompt byte is deleted independently with
      probability p and the window closes up (padded at its end with mask_token_id; a prompt that lost every
      byte is mask_token_id alone, what `smoothgen.deletion.TokenDeletion` feeds an empty copy); the loss
      is on the continuation's real bytes only. With `keep_last_line`, a prompt that holds a line break
      loses tokens only up to its last one: the line being completed stays whole, the distribution of
      `smoothgen generate --noise delete` with its default `--perturb context`.

    The loss is the next-byte cross-entropy of the predictions at positions ≥ P − 1 (the continuation, what
    smoothed decoding uses). Optimizer and schedule as `train_lm` (shared loop), with a smaller peak
    learning rate and a short warmup. All randomness (offsets, P, subsets, noise) comes from the seeded
    generator of `_deterministic`, so a run is reproducible bit for bit on the same software stack.

    Args:
        noise: ``"ablate"`` or ``"gauss"``.
        level: Keep fraction in (0, 1] for ablation, σ > 0 for Gaussian noise.
        steps: Optimizer steps.
        seed: Seed of the data and noise draws.
        base: Name of an embedded LM (`smoothgen.models.load_lm`) or a `CodeLM` to start from (copied,
            the caller's model is not changed).
        batch_size: Windows per step.
        learning_rate: Peak learning rate.
        warmup_steps: Steps of linear warmup.
        weight_decay: AdamW weight decay (not applied to frozen parameters).
        prompt_lengths: Inclusive range (min, max) of the prompt length P; max ≤ context_length.
        mask_token_id: The ablation MASK token (ignored for Gaussian noise).
        root: Standard library folder (default: the running interpreter's).
        evaluate: Whether to compute the held-out metrics: clean (all held-out files and the fixed slice)
            and smoothed (`lm_smoothed_metrics` on the slice, also for the base model at the same noise).
        progress: Whether to show a tqdm progress bar on stderr.
        tokenizer: The base model's tokenizer when it is not byte-level (default: the embedded base's own,
            `smoothgen.models.load_tokenizer`, e.g. the BPE code LM's); windows, prompts and P count its tokens.
        stored_dtype: The precision the weights are saved in (as `train_lm`).
        keep_last_line: Deletion only: keep every prompt's last line whole (see above).

    Returns:
        The fine-tuned model in eval mode, and its metadata record: base model, noise kind and level, mask
        token, training settings and time, and the clean and smoothed held-out metrics.
    """
    noise, level = _check_noise(noise, level)
    steps, seed, batch_size, warmup_steps, learning_rate, weight_decay = _check_lm_training(
        steps, seed, batch_size, warmup_steps, learning_rate, weight_decay)
    mask_token_id = check_count(mask_token_id, "mask_token_id", minimum=0)
    if isinstance(base, str):
        model = load_lm(base)
        base_name, base_sha256 = base, model_info()["models"][base].get("sha256")
        if tokenizer is None:
            tokenizer = load_tokenizer(base)
    elif isinstance(base, CodeLM):
        base_name, base_sha256, model = None, None, copy.deepcopy(base)
    else:
        raise InvalidParameterError(f"base must be an embedded LM name or a CodeLM, got {type(base).__name__}")
    if mask_token_id >= model.vocab_size:
        raise InvalidParameterError(f"mask_token_id must be a token id in [0, {model.vocab_size}), got {mask_token_id}")
    if (tokenizer is None) != (model.vocab_size == VOCAB_SIZE):  # else the stream's ids mean other tokens
        raise InvalidParameterError(f"a base of vocabulary {model.vocab_size} needs "
                                    f"{'its tokenizer' if tokenizer is None else 'no tokenizer (it is byte-level)'}")
    context = int(model.context_length)
    min_prompt, max_prompt = (check_count(n, "prompt length") for n in prompt_lengths)
    if not min_prompt <= max_prompt <= context:
        raise InvalidParameterError(
            f"prompt_lengths must satisfy 1 <= min <= max <= context_length ({context}), got {tuple(prompt_lengths)}"
        )
    if keep_last_line and noise != "delete":
        raise InvalidParameterError(f"keep_last_line applies to token deletion, not to {noise!r}")
    line_breaks = line_break_ids(model.vocab_size, tokenizer) if keep_last_line else None
    base_model = copy.deepcopy(model).eval() if evaluate else None
    kwargs = {"d_model": model.d_model, "n_layers": model.n_layers, "n_heads": model.n_heads,
              "context_length": context}
    if tokenizer is not None:
        kwargs["vocab_size"] = model.vocab_size
    root = stdlib_root() if root is None else Path(root)
    train_files, heldout_files, train_data, stream = _lm_training_stream(root, context, tokenizer)
    if noise == "gauss":
        model.get_input_embeddings().weight.requires_grad_(False)  # also the tied output head
    positions = torch.arange(context)
    start_time, start_cpu = time.perf_counter(), time.process_time()
    with _deterministic(seed) as generator:

        def window_loss(windows: torch.Tensor) -> torch.Tensor:
            lengths = torch.randint(min_prompt, max_prompt + 1, (len(windows),), generator=generator)
            if noise == "delete":  # shorter rows, padded at the end: score only their real continuation
                deleted, kept = _delete_prompts(windows, lengths, level, mask_token_id, generator, line_breaks)
                logits = model(inputs_embeds=model.get_input_embeddings().weight[deleted[:, :-1]]).logits
                real = positions[None] < (kept + windows.shape[1] - 1 - lengths)[:, None]
                targets = deleted[:, 1:].masked_fill((positions[None] < kept[:, None] - 1) | ~real, -100)
                return F.cross_entropy(logits.reshape(-1, model.vocab_size), targets.reshape(-1), ignore_index=-100)
            embeds = _perturb_prompts(model, windows[:, :-1], lengths, noise, level, mask_token_id, generator)
            logits = model(inputs_embeds=embeds).logits
            # The prediction at position i is of byte i + 1: score those from the last prompt byte on.
            targets = windows[:, 1:].masked_fill(positions[None] < lengths[:, None] - 1, -100)
            return F.cross_entropy(logits.reshape(-1, model.vocab_size), targets.reshape(-1), ignore_index=-100)

        smoothed_loss = _lm_optimize(model, stream, window_loss, steps, batch_size, learning_rate, warmup_steps,
                                     weight_decay, generator, f"{base_name or 'code lm'} {noise} {level}", progress)
    train_seconds, train_cpu_seconds = time.perf_counter() - start_time, time.process_time() - start_cpu
    stored = _round_weights(model, stored_dtype)
    model.get_input_embeddings().weight.requires_grad_(True)
    heldout_data = _read_corpus(heldout_files, root)
    metrics: dict[str, Any] = {
        "kind": "lm",
        "architecture": CodeLM.__name__,
        "kwargs": kwargs,
        "tokenizer": LM_TOKENIZER if tokenizer is None else tokenizer.description,
        "base_model": base_name,
        "base_sha256": base_sha256,
        "noise": noise,
        "noise_level": level,
        "smoothing": {
            "ablate": f"TokenAblation(keep=max(1, round({level}·P)), mask_token_id={mask_token_id})",
            "gauss": f"EmbeddingGaussian(sigma={level})",
            "delete": f"TokenDeletion(delete_prob={level}, empty_token_id={mask_token_id})",
        }[noise],
        "mask_token_id": mask_token_id if noise in ("ablate", "delete") else None,
        "frozen": ["token_embedding (tied output head)"] if noise == "gauss" else [],
        "prompt_lengths": [min_prompt, max_prompt],
        **({"perturbed": "every prompt token up to the last line break (the last line kept whole), or every one "
                         "of a one-line prompt"} if keep_last_line else {}),
        "loss": f"next-{'byte' if tokenizer is None else 'token'} cross-entropy of the predictions at positions >= P - 1 (clean continuation)",
        "corpus": _lm_corpus_record(train_files, heldout_files, stream, heldout_data, train_data),
        **_lm_run_record(model, seed, steps, batch_size, context, learning_rate, warmup_steps, weight_decay,
                         smoothed_loss, train_seconds, train_cpu_seconds),
        **stored,
    }
    if evaluate:
        assert base_model is not None
        start_eval = time.perf_counter()
        metrics.update(_lm_clean_metrics(model, heldout_data, root, tokenizer))
        slice_texts = lm_heldout_slice(root)
        settings = {"prompt_length": FINETUNE_EVAL_PROMPT_LENGTH, "stride": FINETUNE_EVAL_STRIDE}
        smoothed = {"noise": noise, "noise_level": level, "copies": FINETUNE_EVAL_COPIES, "seed": EVAL_NOISE_SEED,
                    "mask_token_id": mask_token_id if noise in ("ablate", "delete") else None, **settings}
        if noise == "ablate":
            smoothed["keep"] = ablation_keep(level, FINETUNE_EVAL_PROMPT_LENGTH)
        for key, evaluated in (("model", model), ("base", base_model)):
            smoothed[key] = lm_smoothed_metrics(evaluated, slice_texts, noise, level, copies=FINETUNE_EVAL_COPIES,
                                                mask_token_id=mask_token_id, tokenizer=tokenizer, **settings)
            smoothed[f"{key}_unsmoothed"] = lm_smoothed_metrics(evaluated, slice_texts, None, tokenizer=tokenizer, **settings)
        smoothed["num_prompts"] = smoothed["model"].get("num_predicted_tokens", smoothed["model"]["num_predicted_bytes"])
        metrics["smoothed_heldout_slice"] = smoothed
        metrics["eval_seconds"] = round(time.perf_counter() - start_eval, 1)
    return model, metrics


@torch.no_grad()
def lm_smoothed_metrics(
    model: CodeLM,
    texts: Sequence[str | bytes],
    noise: str | None,
    level: float = 0.0,
    *,
    prompt_length: int = FINETUNE_EVAL_PROMPT_LENGTH,
    stride: int = FINETUNE_EVAL_STRIDE,
    copies: int = FINETUNE_EVAL_COPIES,
    mask_token_id: int = ABLATION_MASK_TOKEN,
    seed: int = EVAL_NOISE_SEED,
    batch_prompts: int = 8,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Return the next-byte metrics of the smoothed predictor on fixed-length prompts of texts.

    The prompts are the bytes [s, s + prompt_length) of each text for s = 0, stride, 2·stride, ... (while
    the next byte exists), each followed by its next byte. The smoothed next-byte distribution is the mean
    softmax over `copies` perturbed copies of the prompt (token ablation with k = `ablation_keep(level,
    prompt_length)`, or Gaussian noise of σ = level on the prompt embeddings; the distribution of
    `smoothgen.generative.SmoothedLM`'s first step, with the copies drawn here from a seeded torch
    generator, the same draws for every model of the same width). noise=None scores the model itself on
    the same prompts (one clean copy).

    Args:
        model: A `CodeLM` (or a model with its call convention and ``context_length``).
        texts: Strings (encoded as UTF-8) or bytes.
        noise: ``"ablate"``, ``"gauss"``, ``"delete"`` or None.
        level: Keep fraction, σ or deletion probability (ignored for None).
        prompt_length: Bytes per prompt.
        stride: Bytes between consecutive prompt starts in a text (a deterministic subsample).
        copies: Perturbed copies per prompt.
        mask_token_id: The ablation MASK token.
        seed: Seed of the perturbations.
        batch_prompts: Prompts per forward pass.
        tokenizer: None for a byte-level model; else its tokenizer (prompts and targets are then its tokens).

    Returns:
        ``num_predicted_bytes`` (the number of prompts), ``accuracy`` (argmax of the mean distribution),
        ``nll_nats_per_byte``, ``bits_per_byte`` and ``perplexity`` of the mean distribution, and
        ``mean_top_probability``, the mean over prompts of the largest mean probability. With noise,
        also ``plugin_threshold`` (1/2 + Δ_1 = 1/2 + k/P for ablation, 1/2 for Gaussian noise) and
        ``plugin_fraction_above_threshold``: the fraction of prompts whose top mean probability exceeds it,
        a plug-in estimate (no confidence bound) of how often the first step could be certified (against 1
        substituted token; against some embedding radius > 0).
    """
    prompt_length = check_count(prompt_length, "prompt_length")
    stride, copies = check_count(stride, "stride"), check_count(copies, "copies")
    batch_prompts = check_count(batch_prompts, "batch_prompts")
    if prompt_length > int(model.context_length):
        raise InvalidParameterError(f"prompt_length {prompt_length} exceeds the context length {model.context_length}")
    if noise is None:
        copies = 1
    else:
        noise, level = _check_noise(noise, level)
    prompts, targets = [], []
    for data in _token_ids(texts, tokenizer):
        for start in range(0, len(data) - prompt_length, stride):
            prompts.append(list(data[start : start + prompt_length]))
            targets.append(data[start + prompt_length])
    if not prompts:
        raise InvalidParameterError(f"no text is longer than the prompt length {prompt_length}")
    ids_all, target_all = torch.tensor(prompts, dtype=torch.int64), torch.tensor(targets, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    table = model.get_input_embeddings().weight
    lengths = torch.full((copies,), prompt_length, dtype=torch.int64)
    was_training = model.training
    model.eval()
    nll, correct, top = 0.0, 0, []
    try:
        for ids, target in zip(ids_all.split(batch_prompts), target_all.split(batch_prompts)):
            if noise is None:
                logits = model(inputs_embeds=table[ids]).logits[:, -1].double()
            elif noise == "delete":  # copies of different lengths, padded at the end: read each at its last byte
                deleted, kept = zip(*[_delete_prompts(row.expand(copies, -1), lengths, level, mask_token_id, generator)
                                      for row in ids])
                deleted, kept = torch.cat(deleted), torch.cat(kept)
                out = model(inputs_embeds=table[deleted]).logits
                logits = out[torch.arange(out.shape[0]), kept - 1].double()
            else:  # prompt by prompt, so the draws of a prompt do not depend on batch_prompts
                embeds = torch.cat([_perturb_prompts(model, row.expand(copies, -1), lengths, noise, level,
                                                     mask_token_id, generator) for row in ids])
                logits = model(inputs_embeds=embeds).logits[:, -1].double()
            log_mean = torch.logsumexp(logits.log_softmax(-1).view(len(ids), copies, -1), dim=1) - math.log(copies)
            nll -= float(log_mean.gather(1, target[:, None]).sum())
            correct += int((log_mean.argmax(-1) == target).sum())
            top.append(log_mean.max(-1).values.exp())
    finally:
        model.train(was_training)
    num_bytes = None if tokenizer is None else sum(tokenizer.byte_length(int(t)) for t in target_all.tolist())
    metrics = _metrics_from(nll, correct, len(prompts), num_bytes)
    top_probability = torch.cat(top)
    metrics["mean_top_probability"] = float(top_probability.mean())
    if noise is not None:
        # Δ_1 = 1 − C(P − 1, k)/C(P, k) = k/P (docs/theory.md §4g); deletion: Δ_1 = 1 − p (§4j).
        threshold = {"ablate": 0.5 + ablation_keep(level, prompt_length) / prompt_length, "gauss": 0.5,
                     "delete": 0.5 + (1 - level)}[noise]
        metrics["plugin_threshold"] = threshold
        metrics["plugin_fraction_above_threshold"] = float((top_probability > threshold).double().mean())
    return metrics
