"""Train the embedded BPE code LM (``code_bpe``) and its version fine-tuned for token deletion.

    python -m smoothgen.models.train_code_bpe base        # tokenizer + code_bpe (about 30 min on 2 cores)
    python -m smoothgen.models.train_code_bpe delete      # code_bpe_delete0.9 from the shipped code_bpe
    python -m smoothgen.models.train_code_bpe all         # both

The deletion fine-tune deletes tokens of each training prompt's lines before its last only (the line being
completed stays whole: `smoothgen generate --noise delete`'s default `--perturb context`); `--whole-prompt`
deletes from every prompt token instead, as the shipped model was trained before 2026-12-07 (late).

The tokenizer (`smoothgen.models.bpe`) is a byte-level BPE of `BPE_VOCAB_SIZE` ids trained on the training
files of the LM corpus (`smoothgen.models.train_code_lm.lm_corpus_files`: the standard library's sources, the same
split as the byte-level ``code_lm``, so held-out files are held out from both). The model is a `CodeLM`
over its ids with more capacity and a longer context in bytes than ``code_lm``: `BPE_LM_KWARGS`. Training
and fine-tuning are `smoothgen.models.train_code_lm.train_lm` / `finetune_lm` (the shared loop) given the
tokenizer; the records in ``models.json`` carry the tokenizer file and its SHA-256, and the held-out metrics
per token and in bits per byte (the measure comparable with ``code_lm``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from smoothgen.models import METADATA_FILENAME, WEIGHTS_DIR
from smoothgen.models.bpe import CodeTokenizer, train_code_tokenizer
from smoothgen.models.train_code_lm import (
    _read_corpus,
    finetune_lm,
    finetuned_lm_name,
    lm_corpus_files,
    stdlib_root,
    train_lm,
)
from smoothgen.models.train_common import DEFAULT_SEED, _sha256, save_model, update_metadata

BPE_LM_NAME = "code_bpe"
"""The BPE code LM's key in models.json (and its weights file's stem)."""

BPE_TOKENIZER_FILENAME = f"{BPE_LM_NAME}.tokenizer.json"
BPE_VOCAB_SIZE = 2048
"""Ids of the tokenizer: <mask>, the 256 bytes and 1 791 merges (about 3 bytes of Python per token)."""

BPE_LM_KWARGS: dict[str, int] = {"d_model": 192, "n_layers": 6, "n_heads": 6, "context_length": 256}
"""3.1 M parameters (code_lm: 0.86 M); 256 tokens are about 770 bytes of context (code_lm: 256 bytes)."""

DEFAULT_BPE_STEPS = 1500
BPE_LEARNING_RATE = 1.5e-3
DEFAULT_BPE_DELETE_PROB = 0.9
DEFAULT_BPE_FINETUNE_STEPS = 400


def train_tokenizer(root: Path | None = None, vocab_size: int = BPE_VOCAB_SIZE) -> CodeTokenizer:
    """Train the BPE on the training files of the LM corpus (never on held-out files)."""
    root = stdlib_root() if root is None else Path(root)
    train_files, _ = lm_corpus_files(root)
    texts = [data.decode("utf-8", errors="replace") for data in _read_corpus(train_files, root)]
    return train_code_tokenizer(texts, vocab_size)


BPE_STORED_DTYPE = torch.float16
"""The weights ship in float16 (6.2 MB a model); they are rounded before evaluation, so records describe them."""


def _save(model: torch.nn.Module, out_dir: Path, name: str, record: dict[str, Any]) -> dict[str, Any]:
    """Save a BPE LM's float16 weights with its record, which names the tokenizer file and its SHA-256."""
    record = {**record, "tokenizer_file": BPE_TOKENIZER_FILENAME,
              "tokenizer_sha256": _sha256(out_dir / BPE_TOKENIZER_FILENAME)}
    return save_model(model, out_dir, f"{name}.safetensors", record, dtype=BPE_STORED_DTYPE)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m smoothgen.models.train_code_bpe",
        description=(
            "Train the embedded BPE code LM deterministically: a byte-level BPE tokenizer "
            f"({BPE_VOCAB_SIZE} ids, line breaks kept as tokens of their own) on the standard library's training "
            f"files, then a CodeLM over its ids ({BPE_LM_KWARGS}); 'delete' fine-tunes it for token deletion "
            "(each token of a training prompt's lines before its last deleted with probability p). Weights, the "
            "tokenizer and records go to --out."
        ),
    )
    parser.add_argument("what", choices=["base", "delete", "all"],
                        help="base: tokenizer and code_bpe; delete: code_bpe_delete<p> from code_bpe; all: both")
    parser.add_argument("--steps", type=int, default=None, metavar="S",
                        help=f"optimizer steps (default: {DEFAULT_BPE_STEPS} for base, {DEFAULT_BPE_FINETUNE_STEPS} "
                             "for delete)")
    parser.add_argument("--delete-prob", type=float, default=DEFAULT_BPE_DELETE_PROB, metavar="P",
                        help=f"deletion probability of the fine-tuned model, in (0, 1) (default: {DEFAULT_BPE_DELETE_PROB})")
    parser.add_argument("--whole-prompt", action="store_true",
                        help="delete: delete from every token of each training prompt (--perturb all), instead of only "
                             "up to its last line break, keeping the line being completed whole (the default: the "
                             "distribution of smoothgen generate --noise delete with its default --perturb context)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="N", help="training seed (default: 0)")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, metavar="DIR",
                        help="output folder for the weights, the tokenizer and models.json (default: the package's)")
    parser.add_argument("--threads", type=int, default=2, metavar="T", help="torch CPU threads (default: 2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see ``python -m smoothgen.models.train_code_bpe --help``."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if not 0 < args.delete_prob < 1:
        parser.error(f"--delete-prob must lie in (0, 1), got {args.delete_prob}")
    if args.seed < 0 or args.threads < 1:
        parser.error("--seed must be >= 0 and --threads >= 1")
    torch.set_num_threads(args.threads)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    records: dict[str, dict[str, Any]] = {}
    base: Any = BPE_LM_NAME
    tokenizer = None
    if args.what in ("base", "all"):
        tokenizer = train_tokenizer()
        tokenizer.save(out_dir / BPE_TOKENIZER_FILENAME)
        model, record = train_lm(args.steps or DEFAULT_BPE_STEPS, args.seed, learning_rate=BPE_LEARNING_RATE,
                                 progress=True, tokenizer=tokenizer, stored_dtype=BPE_STORED_DTYPE, **BPE_LM_KWARGS)
        records[BPE_LM_NAME] = _save(model, out_dir, BPE_LM_NAME, record)
        base = model
        held = record["heldout"]
        print(f"{BPE_LM_NAME}: held-out next-token accuracy {held['accuracy']:.4f}, {held['bits_per_byte']:.3f} "
              f"bits/byte, {held['bytes_per_token']:.2f} bytes/token; trained in {record['train_seconds']:.0f} s",
              file=sys.stderr)
    if args.what in ("delete", "all"):
        model, record = finetune_lm("delete", args.delete_prob, args.steps or DEFAULT_BPE_FINETUNE_STEPS, args.seed,
                                    base=base, progress=True, tokenizer=tokenizer, stored_dtype=BPE_STORED_DTYPE,
                                    keep_last_line=not args.whole_prompt)
        if not isinstance(base, str):
            record.update(base_model=BPE_LM_NAME, base_sha256=records[BPE_LM_NAME]["sha256"])
        name = finetuned_lm_name("delete", args.delete_prob, BPE_LM_NAME)
        records[name] = _save(model, out_dir, name, record)
        clean, smoothed = record["heldout_slice"], record["smoothed_heldout_slice"]
        print(f"{name}: held-out slice accuracy {clean['accuracy']:.4f} clean, smoothed {smoothed['model']['accuracy']:.4f} "
              f"(code_bpe smoothed {smoothed['base']['accuracy']:.4f}); trained in {record['train_seconds']:.0f} s",
              file=sys.stderr)
    update_metadata(out_dir, records)
    print(f"wrote {out_dir / METADATA_FILENAME} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
