"""Content certificates in edited prompt tokens for the embedded text-to-digit model (docs/theory.md §4f, §4g).

For held-out prompts (`text_digits.HELDOUT_TEMPLATES`, never seen in training), optionally rendered with
redundancy (the digit stated in several templates joined by ", ") and/or with the digit word protected,
certify the digit the generated images show against edited tokens (`PromptContentSmoother.certify`) and
write one JSON record per prompt: the certificate, whether its class is the digit asked for, and how many
of the prompt's rewordings are covered as token substitutions.

    python benchmarks/prompt_content.py --digits 3,7 --templates 2 --n 200 --steps 5 --out results/prompt_content.jsonl

The encoder is a parameter (`--encoder FOLDER`, a sentence-transformers folder; default the packaged
all-MiniLM-L6-v2), so an encoder fine-tuned under ablation can be compared on the same prompts.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def prompts(digits: list[int], templates: int, redundancy: int) -> list[tuple[str, int]]:
    from smoothgen.models import text_digits

    chosen = text_digits.HELDOUT_TEMPLATES[:templates]
    out = []
    for digit in digits:
        for i, template in enumerate(chosen):
            parts = [text_digits.render(t, digit) for t in (chosen[i:] + chosen[:i])[:redundancy]]
            out.append((", ".join(parts), digit))
    return out


def run(args: argparse.Namespace, encoder=None) -> list[dict]:
    from smoothgen.errors import SmoothgenError
    from smoothgen.models import load_classifier, load_text_ddpm, text_digits

    if encoder is None:
        encoder = text_digits.load_text_encoder() if args.encoder is None else _load_encoder(args.encoder)
    unet, classifier = load_text_ddpm(), load_classifier(0.0)
    records = []
    for text, digit in prompts(args.digits, args.templates, args.redundancy):
        protect = text_digits.NUMBER_WORDS[digit] if args.protect_digit and text_digits.NUMBER_WORDS[digit] in text else None
        smoother = text_digits.prompt_token_text_digits(unet, classifier, keep=args.keep, encoder=encoder, protect=protect,
                                                        num_steps=args.steps, batch_size=args.batch_size)
        start = time.perf_counter()
        try:
            cert = smoother.certify(text, edits=1, n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed)
        except SmoothgenError as exc:  # e.g. a prompt too short for this keep: recorded, not fatal
            records.append({"text": text, "digit": digit, "protect": protect, "error": str(exc)})
            continue
        variants = text_digits.token_variants(text, cert, smoother.tokenizer, digit=digit, include_other_digits=False)
        records.append({
            "text": text, "digit": digit, "protect": protect, "keep": args.keep, "steps": args.steps,
            "seconds": time.perf_counter() - start, "correct": cert.prediction == digit,
            "certified_edits": cert.certified_edits, "p_lower": cert.p_lower, "perturbed": cert.perturbed,
            "variants": len(variants), "covered_variants": sum(v.covered for v in variants),
            "certificate": cert.to_record(),
        })
        print(f"{text!r}: digit {cert.prediction} (asked {digit}), {cert.certified_edits} edits, "
              f"p_lower {cert.p_lower:.3f}", file=sys.stderr)
    return records


def _load_encoder(folder: str):
    import sentence_transformers

    return sentence_transformers.SentenceTransformer(folder, device="cpu", local_files_only=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9", type=lambda s: [int(d) for d in s.split(",")])
    parser.add_argument("--templates", type=int, default=3, help="held-out templates per digit")
    parser.add_argument("--redundancy", type=int, default=1, help="templates joined into one prompt")
    parser.add_argument("--protect-digit", action="store_true", help="protect the number word")
    parser.add_argument("--keep", type=int, default=1)
    parser.add_argument("--n0", type=int, default=20)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder", default=None, help="a sentence-transformers folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--out", default="results/prompt_content.jsonl")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    records = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    certified = [r for r in records if r.get("correct") and r["certified_edits"] >= 1]
    print(f"{len(certified)} of {len(records)} prompts certified with their own digit against one edit; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
