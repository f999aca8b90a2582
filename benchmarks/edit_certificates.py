"""Certificates in edited tokens on held-out prompts: both noise spaces, the clean LM and the LMs trained
for their noise (issue 11's frontier).

    python benchmarks/edit_certificates.py run --prompts 40                 # appends to edit_certificates.jsonl
    python benchmarks/edit_certificates.py report                            # the Markdown table

For each held-out prompt (`--prompt-length` bytes from the start of a line of each held-out standard-
library slice, as benchmarks/generative_experiment.py) and each setting, `SmoothedLM.generate` certifies
T = --max-new-tokens tokens (n0, n, α) and the record keeps every step's certified number of substituted
tokens r_t:
- token ablation (keep k of P positions): r_t directly (L_t > 1/2 + Δ_r);
- Gaussian noise of σ on the embeddings: r_t = the largest r such that EVERY set of r substitutions
  is inside the certified radius R_t, i.e. the root of the sum of the r largest per-position worst-case
  row moves max_v ‖e_{x_i} − e_v‖ (over all 256 bytes) is below R_t.
The report gives, per model and setting: the share of prompts whose first generated token is certified
against r = 1, 2, 4 substituted tokens, whose first 4 tokens are at r = 1, and the mean prefix certified
at r = 1. Quality retention of each model under its noise is in smoothgen/models/weights/models.json
(recorded by the training script) and quoted in benchmarks/RESULTS.md next to this table.
A unit (model, setting, prompt) is skipped when its record exists: a stopped run resumes.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from generative_experiment import append_record, heldout_slices, line_prompts, machine, read_records  # noqa: E402

DEFAULT_OUT = HERE / "edit_certificates.jsonl"
#: (model name, noise kind, level): level = keep fraction for ablation, σ for Gaussian.
SETTINGS = (
    ("code_lm", "ablate", 0.1),
    ("code_lm_ablate0.1", "ablate", 0.1),
    ("code_lm", "ablate", 0.25),
    ("code_lm_ablate0.25", "ablate", 0.25),
    ("code_lm", "gauss", 0.5),
    ("code_lm_gauss0.5", "gauss", 0.5),
)
MASK = 0


def worst_case_edit_counts(table: torch.Tensor, prompt: torch.Tensor, radius: float) -> int:
    """The largest r such that every set of r substitutions in the prompt moves it by less than radius."""
    with torch.no_grad():
        rows = table.detach().double()
        worst = torch.cdist(rows[prompt], rows).max(dim=1).values.sort(descending=True).values
    total, r = 0.0, 0
    for value in worst.tolist():
        total += value * value
        if math.sqrt(total) >= radius:
            break
        r += 1
    return r


def certify(model_name: str, kind: str, level: float, prompt: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    from smoothgen.generative import SmoothedLM, TokenAblation
    from smoothgen.models import load_lm

    model = load_lm(model_name)
    if kind == "ablate":
        noise: Any = TokenAblation(max(1, round(level * prompt.numel())), MASK)
    else:
        noise = float(level)
    lm = SmoothedLM(model, noise, batch_size=args.batch_size)
    start = time.perf_counter()
    cert = lm.generate(prompt, args.max_new_tokens, n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed)
    seconds = time.perf_counter() - start
    if kind == "ablate":
        edits = [int(r) for r in cert.step_radius]
    else:
        edits = [worst_case_edit_counts(lm.table, prompt, r) if r > 0 else -1 for r in cert.step_radius]
    return {"tokens": list(cert.tokens), "p_lower": list(cert.p_lower), "step_radius": list(cert.step_radius),
            "edits": edits, "keep": cert.keep, "seconds": seconds}


def cmd_run(args: argparse.Namespace) -> None:
    prompts = line_prompts(heldout_slices(), args.prompt_length, args.prompts)
    done = {(r["model"], r["kind"], r["level"], r["prompt_index"]) for r in read_records(args.out)}
    for model_name, kind, level in SETTINGS:
        for index, prompt in enumerate(prompts):
            if (model_name, kind, level, index) in done:
                continue
            result = certify(model_name, kind, level, prompt, args)
            append_record(args.out, {
                "model": model_name, "kind": kind, "level": level, "prompt_index": index,
                "prompt": bytes(prompt.tolist()).decode("utf-8", "replace"), "prompt_length": args.prompt_length,
                "n0": args.n0, "n": args.n, "alpha": args.alpha, "max_new_tokens": args.max_new_tokens,
                "seed": args.seed, "machine": machine(), **result,
            })
            print(f"{model_name} {kind} {level} prompt {index}: edits {result['edits']} ({result['seconds']:.1f} s)",
                  file=sys.stderr)


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for model_name, kind, level in SETTINGS:
        group = [r for r in records if (r["model"], r["kind"], r["level"]) == (model_name, kind, level)]
        if not group:
            continue

        def share(predicate) -> float:
            return sum(1 for r in group if predicate(r)) / len(group)

        def prefix(r: dict[str, Any], edits: int) -> int:
            k = 0
            while k < len(r["edits"]) and r["edits"][k] >= edits:
                k += 1
            return k

        rows.append({
            "model": model_name, "noise": f"ablate keep {level:g}·P" if kind == "ablate" else f"gauss σ = {level:g}",
            "prompts": len(group),
            "first_r1": share(lambda r: r["edits"][0] >= 1), "first_r2": share(lambda r: r["edits"][0] >= 2),
            "first_r4": share(lambda r: r["edits"][0] >= 4), "four_r1": share(lambda r: prefix(r, 1) >= 4),
            "first_r0": share(lambda r: r["edits"][0] >= 0),
            "mean_prefix_r1": sum(prefix(r, 1) for r in group) / len(group),
            "seconds": sum(r["seconds"] for r in group) / len(group),
        })
    return rows


def cmd_report(args: argparse.Namespace) -> None:
    rows = summarize(read_records(args.out))
    print("| model | noise | prompts | first token certified at r = 0 | r = 1 | r = 2 | r = 4 | first 4 tokens at r = 1 "
          "| mean prefix at r = 1 | s / prompt |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['noise']} | {r['prompts']} | {r['first_r0']:.0%} | {r['first_r1']:.0%} | "
              f"{r['first_r2']:.0%} | {r['first_r4']:.0%} | {r['four_r1']:.0%} | {r['mean_prefix_r1']:.2f} | "
              f"{r['seconds']:.1f} |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON lines, appended and resumed")
    parser.add_argument("--prompts", type=int, default=40, help="held-out prompts (one per held-out file)")
    parser.add_argument("--prompt-length", type=int, default=32, help="bytes per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=4, help="T, the certified tokens per prompt")
    parser.add_argument("--n0", type=int, default=100, help="selection copies")
    parser.add_argument("--n", type=int, default=1000, help="estimation copies")
    parser.add_argument("--alpha", type=float, default=0.001, help="failure probability per certificate")
    parser.add_argument("--batch-size", type=int, default=250, help="copies per model call")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random streams")
    args = parser.parse_args(argv)
    (cmd_run if args.command == "run" else cmd_report)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
