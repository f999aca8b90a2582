"""Content certificates of the text-to-digit model (docs/theory.md §4f): certified radius, abstention and the
real prompt variants each certificate covers.

    python benchmarks/content_certificates.py run       # appends to benchmarks/content_certificates.jsonl
    python benchmarks/content_certificates.py report    # the Markdown table

For every digit and every prompt template in `--templates` (train and held-out), at every σ in `--sigmas`:
`SmoothedConditionalDiffusion.certify_content` with the clean digits classifier (n0, n, α), then
`text_digits.covered_variants` (same-digit templates, single-edit typos, case, punctuation, other
digits' prompts) measured with the real all-MiniLM-L6-v2 encoder. Records that exist are skipped.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "content_certificates.jsonl"
DEFAULT_TEMPLATES = ("a handwritten {w}", "the numeral {w}", "the figure {w}")  # one train, two held-out


def run(args: argparse.Namespace) -> None:
    from smoothgen.models import load_classifier, load_text_ddpm
    from smoothgen.models import text_digits as td

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["sigma"], r["prompt"], r["n0"], r["n"], r["alpha"], r["seed"]))
    unet, encoder, classifier = load_text_ddpm(), td.load_text_encoder(), load_classifier(0.0)
    for sigma in args.sigmas:
        smoothed = td.smoothed_text_digits(unet, sigma)
        for digit in range(10):
            for template in args.templates:
                prompt = td.render(template, digit)
                key = (sigma, prompt, args.n0, args.n, args.alpha, args.seed)
                if key in done:
                    continue
                e = td.encode_prompts([prompt], encoder)[0]
                start = time.perf_counter()
                cert = smoothed.certify_content(classifier, prompt_embeds=e, n0=args.n0, n=args.n, alpha=args.alpha,
                                                seed=args.seed, request_id=digit)
                seconds = time.perf_counter() - start
                rows = td.covered_variants(prompt, cert, embedding=e, digit=digit, encoder=encoder)
                covered = [r for r in rows if r.covered]
                by_kind = {}
                for r in rows:
                    k = by_kind.setdefault(r.kind, [0, 0])
                    k[0] += int(r.covered)
                    k[1] += 1
                record = {
                    "sigma": sigma, "prompt": prompt, "digit": digit, "template": template,
                    "heldout": template in td.HELDOUT_TEMPLATES,
                    **{k: v for k, v in cert.to_record().items() if k not in ("sigma", "covered_labels", "label")},
                    "correct": cert.prediction == digit,
                    "variants_total": len(rows), "variants_covered": len(covered),
                    "covered_by_kind": by_kind,
                    "covered_texts": [r.text for r in covered],
                    "nearest_uncovered": next(({"text": r.text, "distance": r.distance} for r in rows if not r.covered), None),
                    "seconds": round(seconds, 2),
                }
                with out.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"σ={sigma} {prompt!r}: class {cert.prediction} R={cert.radius:.4f} covered {len(covered)}/{len(rows)} ({seconds:.1f}s)", flush=True)


def report(args: argparse.Namespace) -> None:
    records = [json.loads(line) for line in Path(args.out).read_text().splitlines()]
    print("| σ | prompts | certified correct | wrong class | abstain | median R (certified) | median variants covered | same-digit templates covered | typos covered | other-digit prompts covered |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for sigma in sorted({r["sigma"] for r in records}):
        rs = [r for r in records if r["sigma"] == sigma]
        cert = [r for r in rs if r["certified"]]

        def share(kind_list):
            c = sum(r["covered_by_kind"].get(k, [0, 0])[0] for r in rs for k in kind_list)
            t = sum(r["covered_by_kind"].get(k, [0, 0])[1] for r in rs for k in kind_list)
            return f"{c}/{t}"

        med_r = f"{statistics.median(r['radius'] for r in cert):.4f}" if cert else "–"
        med_v = statistics.median(r["variants_covered"] for r in rs) if rs else 0
        print(f"| {sigma} | {len(rs)} | {sum(r['correct'] and r['certified'] for r in rs)} | "
              f"{sum(r['certified'] and not r['correct'] for r in rs)} | {sum(not r['certified'] for r in rs)} | {med_r} | "
              f"{med_v} | {share(['train_template', 'heldout_template'])} | {share(['typo'])} | {share(['other_digit'])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--sigmas", type=float, nargs="+", default=[0.05, 0.1])
    r.add_argument("--templates", nargs="+", default=list(DEFAULT_TEMPLATES))
    r.add_argument("--n0", type=int, default=32)
    r.add_argument("--n", type=int, default=200)
    r.add_argument("--alpha", type=float, default=0.001)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--out", default=str(DEFAULT_OUT))
    p = sub.add_parser("report")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
