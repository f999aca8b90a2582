"""Certificates in edited tokens on held-out prompts: both noise spaces, both scores, the clean LM and the
LMs trained for their noise (issue 11's frontier).

    python benchmarks/edit_certificates.py run --prompts 40          # certificates, appended to edit_certificates.jsonl
    python benchmarks/edit_certificates.py quality                   # smoothed next-byte accuracy per setting
    python benchmarks/edit_certificates.py exhaustive --prompts 10   # exact check of every single substitution
    python benchmarks/edit_certificates.py report                    # the Markdown tables

Prompts: `--prompt-length` bytes from the start of a line of each held-out standard-library slice (as
benchmarks/generative_experiment.py). A setting (`SETTINGS`) is a model, a noise space and level, a
score, and which positions may be edited: "all" (every prompt position, the issue's threat model) or
"context" (every position but the last `--fixed` bytes, which are held fixed: edits anywhere before the
line being completed, as `smoothgen generate --perturb context`). For each prompt and setting,
`SmoothedLM.generate` certifies T = --max-new-tokens tokens (n0, n, α) and the record keeps every step's
certified number of substituted tokens r_t:
- token ablation (keep k of P perturbed positions): r_t directly (L_t > 1/2 + Δ_r);
- token deletion (each perturbed byte deleted with probability p): r_t directly, in inserted, deleted or
  substituted bytes (L_t > 3/2 − p^r, docs/theory.md §4j);
- Gaussian noise of σ on the embeddings: r_t = the largest r such that EVERY set of r substitutions
  is inside the certified radius R_t, i.e. the root of the sum of the r largest per-position worst-case
  row moves max_v ‖e_{x_i} − e_v‖ (over all 256 bytes) is below R_t.
`quality` measures each setting's smoothed next-byte predictor (the first decoding step, 64 copies per
prompt) on the fixed held-out slice of `smoothgen.models.train_code_lm.lm_heldout_slice`: accuracy, relative to
the clean `code_lm` on the same prompts (retention), and bits/byte for the probability score.
`exhaustive` decodes exactly (every kept subset) at every prompt with one substituted byte and counts
changes inside the prefix certified at r = 1.
Units (setting, prompt) whose record exists are skipped: a stopped run resumes.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from generative_experiment import append_record, heldout_slices, line_prompts, machine, read_records  # noqa: E402

DEFAULT_OUT = HERE / "edit_certificates.jsonl"
MASK = 0


@dataclass(frozen=True)
class Setting:
    model: str
    kind: str  # "ablate", "delete" or "gauss"
    level: float  # keep fraction of the perturbed positions, deletion probability, or σ
    score: str  # "vote" or "probability"
    edits: str  # "all" or "context"

    @property
    def name(self) -> str:
        return f"{self.model}|{self.kind}{self.level:g}|{self.score}|{self.edits}"


SETTINGS = (
    Setting("code_lm", "ablate", 0.1, "vote", "all"),
    Setting("code_lm_ablate0.1", "ablate", 0.1, "vote", "all"),
    Setting("code_lm_ablate0.1", "ablate", 0.1, "probability", "all"),
    Setting("code_lm_ablate0.25", "ablate", 0.25, "vote", "all"),
    Setting("code_lm", "gauss", 0.5, "probability", "all"),
    Setting("code_lm_gauss0.5", "gauss", 0.5, "probability", "all"),
    Setting("code_lm_gauss0.5", "gauss", 0.5, "vote", "all"),
    Setting("code_lm", "ablate", 0.1, "vote", "context"),
    Setting("code_lm_ablate0.1", "ablate", 0.1, "vote", "context"),
    Setting("code_lm_ablate0.1", "ablate", 0.1, "probability", "context"),
    Setting("code_lm_ablate0.25", "ablate", 0.25, "vote", "context"),
    Setting("code_lm_gauss0.5", "gauss", 0.5, "vote", "context"),
    # Token deletion (docs/theory.md §4j): r_t counts inserted, deleted or substituted bytes.
    Setting("code_lm", "delete", 0.9, "vote", "context"),
    Setting("code_lm_ablate0.1", "delete", 0.9, "vote", "context"),
    Setting("code_lm_delete0.9", "delete", 0.9, "vote", "context"),
    Setting("code_lm_delete0.9", "delete", 0.9, "vote", "all"),
)


def perturbed_mask(setting: Setting, length: int, fixed: int) -> list[bool]:
    """The positions that may be edited (and carry the noise): all, or all but the last `fixed`."""
    if setting.edits == "all":
        return [True] * length
    return [i < length - fixed for i in range(length)]


def smoothed_lm(setting: Setting, length: int, fixed: int, batch_size: int) -> Any:
    from smoothgen.deletion import TokenDeletion
    from smoothgen.generative import SmoothedLM, TokenAblation
    from smoothgen.models import load_lm

    mask = perturbed_mask(setting, length, fixed)
    if setting.kind == "ablate":
        noise: Any = TokenAblation(max(1, round(setting.level * sum(mask))), MASK)
    elif setting.kind == "delete":
        noise = TokenDeletion(setting.level, empty_token_id=MASK)
    else:
        noise = float(setting.level)
    return SmoothedLM(load_lm(setting.model), noise, mask=mask, batch_size=batch_size, score=setting.score)


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


def certify(setting: Setting, prompt: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    lm = smoothed_lm(setting, prompt.numel(), args.fixed, args.batch_size)
    start = time.perf_counter()
    cert = lm.generate(prompt, args.max_new_tokens, n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed)
    seconds = time.perf_counter() - start
    if setting.kind in ("ablate", "delete"):  # r_t directly (deletion: inserted, deleted or substituted)
        edits = [int(r) for r in cert.step_radius]
    else:
        editable = prompt[torch.tensor(cert.mask)]
        edits = [worst_case_edit_counts(lm.table, editable, r) if r > 0 else -1 for r in cert.step_radius]
    return {"tokens": list(cert.tokens), "p_lower": list(cert.p_lower), "step_radius": list(cert.step_radius),
            "edits": edits, "keep": cert.keep, "perturbed": int(sum(cert.mask)), "seconds": seconds}


def _common(args: argparse.Namespace) -> dict[str, Any]:
    return {"prompt_length": args.prompt_length, "fixed": args.fixed, "n0": args.n0, "n": args.n, "alpha": args.alpha,
            "max_new_tokens": args.max_new_tokens, "seed": args.seed}


def cmd_run(args: argparse.Namespace) -> None:
    prompts = line_prompts(heldout_slices(), args.prompt_length, args.prompts)
    done = {(r["setting"], r["prompt_index"]) for r in read_records(args.out)
            if r.get("type") == "certificate" and _matches(r, args)}
    for setting in SETTINGS:
        for index, prompt in enumerate(prompts):
            if (setting.name, index) in done:
                continue
            result = certify(setting, prompt, args)
            append_record(args.out, {
                "type": "certificate", "setting": setting.name, "model": setting.model, "kind": setting.kind,
                "level": setting.level, "score": setting.score, "editable": setting.edits, "prompt_index": index,
                "prompt": bytes(prompt.tolist()).decode("utf-8", "replace"), **_common(args), "machine": machine(),
                **result,
            })
            print(f"{setting.name} prompt {index}: edits {result['edits']} ({result['seconds']:.1f} s)", file=sys.stderr)


def _matches(record: dict[str, Any], args: argparse.Namespace) -> bool:
    keys = ("prompt_length", "fixed") if record.get("type") == "quality" else tuple(_common(args))
    return all(record.get(k) == v for k, v in _common(args).items() if k in keys)


@torch.no_grad()
def smoothed_accuracy(setting: Setting | None, prompts: torch.Tensor, targets: torch.Tensor, args: argparse.Namespace,
                      copies: int = 64) -> dict[str, Any]:
    """Next-byte accuracy (and bits/byte for probabilities) of the setting's smoothed first step, or of the
    clean code_lm (setting None), on [N, L] prompts."""
    from smoothgen.engine import RandomStream
    from smoothgen.models import load_lm

    if setting is None:
        model = load_lm("code_lm").eval()
        logits = model(inputs_embeds=model.get_input_embeddings().weight[prompts]).logits[:, -1].double()
        nll = -float(logits.log_softmax(-1).gather(1, targets[:, None]).sum())
        correct = int((logits.argmax(-1) == targets).sum())
        return {"accuracy": correct / len(prompts), "bits_per_byte": nll / len(prompts) / math.log(2)}
    lm = smoothed_lm(setting, prompts.shape[1], args.fixed, args.batch_size)
    correct, nll = 0, 0.0
    for i, (ids, target) in enumerate(zip(prompts, targets.tolist())):
        p_bar = lm.next_token_distribution(ids, copies, seed=args.seed, request_id=i)
        correct += int(int(p_bar.argmax()) == target)
        nll -= math.log(max(float(p_bar[target]), 1e-300))
    out: dict[str, Any] = {"accuracy": correct / len(prompts)}
    if setting.score == "probability":
        out["bits_per_byte"] = nll / len(prompts) / math.log(2)
    return out


def quality_prompts(length: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    from smoothgen.models.train_code_lm import lm_heldout_slice

    prompts, targets = [], []
    for text in lm_heldout_slice():
        data = text.encode("utf-8")
        for start in range(0, len(data) - length, stride):
            prompts.append(list(data[start:start + length]))
            targets.append(data[start + length])
    return torch.tensor(prompts, dtype=torch.long), torch.tensor(targets, dtype=torch.long)


def cmd_quality(args: argparse.Namespace) -> None:
    prompts, targets = quality_prompts(args.prompt_length, args.prompt_length)
    done = {r["setting"] for r in read_records(args.out) if r.get("type") == "quality" and _matches(r, args)}
    for setting in (None, *SETTINGS):
        name = "clean code_lm" if setting is None else setting.name
        if name in done:
            continue
        start = time.perf_counter()
        result = smoothed_accuracy(setting, prompts, targets, args)
        append_record(args.out, {"type": "quality", "setting": name, "prompt_length": args.prompt_length,
                                 "fixed": args.fixed, "prompts": len(prompts), "copies": 64, "seed": args.seed,
                                 "machine": machine(), "seconds": time.perf_counter() - start, **result})
        print(f"{name}: {result}", file=sys.stderr)


def cmd_exhaustive(args: argparse.Namespace) -> None:
    """Exact decoding at every single-byte substitution of short prompts (the CLI's --exhaustive)."""
    from smoothgen.generate_cli import _exhaustive_check

    setting = Setting("code_lm_ablate0.1", "ablate", 0.1, "vote", "context")
    prompts = line_prompts(heldout_slices(), args.exhaustive_length, args.prompts)
    done = {r["prompt_index"] for r in read_records(args.out)
            if r.get("type") == "exhaustive" and r.get("prompt_length") == args.exhaustive_length}
    for index, prompt in enumerate(prompts):
        if index in done:
            continue
        lm = smoothed_lm(setting, prompt.numel(), args.exhaustive_fixed, args.batch_size)
        start = time.perf_counter()
        cert = lm.generate(prompt, args.max_new_tokens, n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed)
        check = _exhaustive_check(lm, cert)
        append_record(args.out, {"type": "exhaustive", "setting": setting.name, "prompt_index": index,
                                 "prompt": bytes(prompt.tolist()).decode("utf-8", "replace"),
                                 "prompt_length": args.exhaustive_length, "fixed": args.exhaustive_fixed, "keep": cert.keep,
                                 "n0": args.n0, "n": args.n, "alpha": args.alpha, "tokens": list(cert.tokens),
                                 "certified_r1": cert.prefix_at(1), "machine": machine(),
                                 "seconds": time.perf_counter() - start, **check})
        print(f"exhaustive prompt {index}: {check}", file=sys.stderr)


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting (in SETTINGS order) with its certificates and its quality."""
    certificates = [r for r in records if r.get("type") == "certificate"]
    quality = {r["setting"]: r for r in records if r.get("type") == "quality"}
    clean = quality.get("clean code_lm")
    rows = []
    for setting in SETTINGS:
        group = [r for r in certificates if r["setting"] == setting.name]
        if not group:
            continue

        def share(predicate) -> float:
            return sum(1 for r in group if predicate(r)) / len(group)

        def prefix(r: dict[str, Any], edits: int) -> int:
            k = 0
            while k < len(r["edits"]) and r["edits"][k] >= edits:
                k += 1
            return k

        q = quality.get(setting.name)
        rows.append({
            "setting": setting, "prompts": len(group),
            "keep": sorted({r["keep"] for r in group if r.get("keep") is not None}),
            "perturbed": sorted({r["perturbed"] for r in group}),
            "first_r0": share(lambda r: r["edits"][0] >= 0),
            "first_r1": share(lambda r: r["edits"][0] >= 1), "first_r2": share(lambda r: r["edits"][0] >= 2),
            "first_r4": share(lambda r: r["edits"][0] >= 4), "four_r1": share(lambda r: prefix(r, 1) >= 4),
            "mean_prefix_r1": sum(prefix(r, 1) for r in group) / len(group),
            "seconds": sum(r["seconds"] for r in group) / len(group),
            "accuracy": None if q is None else q["accuracy"],
            "retention": None if q is None or clean is None else q["accuracy"] / clean["accuracy"],
            "bits_per_byte": None if q is None else q.get("bits_per_byte"),
        })
    return rows


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def cmd_report(args: argparse.Namespace) -> None:
    records = [r for r in read_records(args.out) if _matches(r, args)]
    clean = next((r for r in records if r.get("setting") == "clean code_lm"), None)
    if clean is not None:
        print(f"Clean code_lm on the {clean['prompts']} quality prompts: accuracy {clean['accuracy']:.3f}, "
              f"{clean['bits_per_byte']:.2f} bits/byte.\n")
    print("| model | noise | score | editable positions | smoothed accuracy (retention) | bits/byte | prompts "
          "| first token certified at r = 0 | r = 1 | r = 2 | r = 4 | first 4 tokens at r = 1 | mean prefix at r = 1 "
          "| s / prompt |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in summarize(records):
        st = r["setting"]
        noise = {"ablate": f"ablation, keep {st.level:g}·P ({'/'.join(map(str, r['keep']))})",
                 "delete": f"deletion, p = {st.level:g} (edit distance)"}.get(st.kind, f"Gaussian σ = {st.level:g}")
        editable = "all" if st.edits == "all" else f"first {'/'.join(map(str, r['perturbed']))} (context)"
        acc = "–" if r["accuracy"] is None else f"{r['accuracy']:.3f} ({_pct(r['retention'])})"
        bits = "–" if r["bits_per_byte"] is None else f"{r['bits_per_byte']:.2f}"
        print(f"| {st.model} | {noise} | {st.score} | {editable} | {acc} | {bits} | {r['prompts']} | {_pct(r['first_r0'])} | "
              f"{_pct(r['first_r1'])} | {_pct(r['first_r2'])} | {_pct(r['first_r4'])} | {_pct(r['four_r1'])} | "
              f"{r['mean_prefix_r1']:.2f} | {r['seconds']:.1f} |")
    exhaustive = [r for r in read_records(args.out) if r.get("type") == "exhaustive"]
    if exhaustive:
        certified = sum(1 for r in exhaustive if r["certified_steps"] > 0)
        print(f"\nExhaustive check ({exhaustive[0]['setting']}, prompts of {exhaustive[0]['prompt_length']} bytes, the last "
              f"{exhaustive[0]['fixed']} fixed, keep {exhaustive[0]['keep']}): {len(exhaustive)} prompts, {certified} with a "
              f"prefix certified at r = 1 ({sum(r['certified_steps'] for r in exhaustive)} tokens in all); "
              f"{sum(r['edited_prompts'] for r in exhaustive)} edited prompts decoded exactly; "
              f"{sum(r['changed'] for r in exhaustive)} changed a certified prefix.")


COMMANDS = {"run": cmd_run, "quality": cmd_quality, "exhaustive": cmd_exhaustive, "report": cmd_report}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("command", choices=list(COMMANDS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON lines, appended and resumed")
    parser.add_argument("--prompts", type=int, default=40, help="held-out prompts (one per held-out file)")
    parser.add_argument("--prompt-length", type=int, default=64, help="bytes per prompt")
    parser.add_argument("--fixed", type=int, default=16,
                        help="bytes at the end of the prompt held fixed in the 'context' settings")
    parser.add_argument("--exhaustive-length", type=int, default=16, help="bytes per prompt of the exhaustive check")
    parser.add_argument("--exhaustive-fixed", type=int, default=4, help="bytes held fixed at the end of those prompts")
    parser.add_argument("--max-new-tokens", type=int, default=4, help="T, the certified tokens per prompt")
    parser.add_argument("--n0", type=int, default=100, help="selection copies")
    parser.add_argument("--n", type=int, default=1000, help="estimation copies")
    parser.add_argument("--alpha", type=float, default=0.001, help="failure probability per certificate")
    parser.add_argument("--batch-size", type=int, default=250, help="copies per model call")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random streams")
    args = parser.parse_args(argv)
    COMMANDS[args.command](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
