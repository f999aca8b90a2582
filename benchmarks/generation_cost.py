"""What a certified generation costs against plain greedy generation of the same model (issue 24, item 3).

For each held-out prompt (64 bytes from the start of a line of the standard-library slice, as
benchmarks/edit_certificates.py; the last 16 bytes fixed, the first 48 editable) and each setting (the
LM trained for its noise: ablation keep 0.1 or deletion p = 0.9, votes), in ONE process and one run:

* plain: greedy decoding of T tokens by the model itself, batch 1, with its KV cache;
* fixed: `SmoothedLM.generate` with n0 selection and n estimation copies (Clopper–Pearson at α/T);
* sequential: the same with `sequential=True` (estimation copies `--check-every` at a time, up to n,
  stopped once the prefix at r = 1 is decided; betting confidence sequences at α/T);
* sequential, small n0: the same with `--small-n0` selection copies (fewer copies choose each token: as
  sound, cheaper, and a wrong choice only shortens the certified prefix); and the same again with the first
  look after check_every copies (`first_check="check_every"`) instead of at the fewest that could certify;
* sequential, n0 = 0: the model's own greedy decoding of the clean prompt chooses the tokens (the plain
  generation itself), and the estimation copies certify its prefix.

`selection` measures token deletion's selection copies alone: each keeping exactly the mean number of
perturbed tokens (`generate(selection="equal-length")`, the default: one batch at every decoding step)
against independent deletions like the estimation copies (`selection="noise"`: one batch per copy length
at every step, the library before), at the same small n0, sequential estimation, with the fixed-n
certificate's prefix (n0 = 100, n = 1 000, the default selection) as the reference.

Each timing is the best of `--repeats` runs. The record keeps the certified prefixes at r = 1, the copies
drawn and the time ratios to plain generation; `report` prints the RESULTS.md table.

    python benchmarks/generation_cost.py run --prompts 27 --out benchmarks/generation_cost.jsonl
    python benchmarks/generation_cost.py report benchmarks/generation_cost.jsonl
    python benchmarks/generation_cost.py selection --prompts 27 --out benchmarks/generation_cost_selection.jsonl
    python benchmarks/generation_cost.py report benchmarks/generation_cost_selection.jsonl
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from generative_experiment import append_record, heldout_slices, line_prompts, machine  # noqa: E402

SETTINGS = {"ablation": ("code_lm_ablate0.1", "ablate"), "deletion": ("code_lm_delete0.9", "delete")}


def _best(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def run(args: argparse.Namespace) -> None:
    from smoothgen.deletion import TokenDeletion
    from smoothgen.generative import SmoothedLM, TokenAblation
    from smoothgen.models import load_lm

    torch.set_num_threads(args.threads)
    prompts = line_prompts(heldout_slices(), 64, args.prompts)
    for name, (model_name, kind) in SETTINGS.items():
        model = load_lm(model_name)
        mask = [i < 64 - 16 for i in range(64)]
        noise = TokenAblation(max(1, round(0.1 * 48)), 0) if kind == "ablate" else TokenDeletion(0.9, empty_token_id=0)
        lm = SmoothedLM(model, noise, mask=mask, batch_size=args.batch_size)
        table = model.get_input_embeddings().weight
        for index, prompt in enumerate(prompts):
            plain_s, plain = _best(lambda: lm._greedy(table[prompt][None].detach(), args.tokens)[0], args.repeats)
            common = dict(n0=args.n0, n=args.n, alpha=args.alpha, seed=0, radius=1)
            fixed_s, fixed = _best(lambda: lm.generate(prompt, args.tokens, **common), args.repeats)
            seq_s, seq = _best(lambda: lm.generate(prompt, args.tokens, **common, sequential=True,
                                                   check_every=args.check_every), args.repeats)
            small = {**common, "n0": args.small_n0}
            small_s, small_cert = _best(lambda: lm.generate(prompt, args.tokens, **small, sequential=True,
                                                            check_every=args.check_every), args.repeats)
            late_s, late_cert = _best(lambda: lm.generate(prompt, args.tokens, **small, sequential=True,
                                                          check_every=args.check_every, first_check="check_every"),
                                      args.repeats)
            clean_s, clean_cert = _best(lambda: lm.generate(prompt, args.tokens, **{**common, "n0": 0}, sequential=True,
                                                            check_every=args.check_every), args.repeats)
            record = {
                "setting": name, "model": model_name, "prompt_index": index, "tokens": args.tokens, "n0": args.n0,
                "n": args.n, "check_every": args.check_every, "alpha": args.alpha, "machine": machine(),
                "plain_seconds": plain_s, "fixed_seconds": fixed_s, "sequential_seconds": seq_s,
                "fixed_prefix_r1": fixed.prefix_at(1), "sequential_prefix_r1": seq.prefix_at(1),
                "sequential_copies": seq.n, "same_tokens": list(seq.tokens) == list(fixed.tokens),
                "small_n0": args.small_n0, "small_seconds": small_s, "small_prefix_r1": small_cert.prefix_at(1),
                "small_copies": small_cert.n, "first_check": small_cert.first_check,
                "small_late_seconds": late_s, "small_late_prefix_r1": late_cert.prefix_at(1), "small_late_copies": late_cert.n,
                "plain_matches_smoothed": list(plain[: len(seq.tokens)]) == list(seq.tokens),
                "clean_seconds": clean_s, "clean_prefix_r1": clean_cert.prefix_at(1), "clean_copies": clean_cert.n,
                "clean_is_plain": list(clean_cert.tokens) == list(plain),
            }
            append_record(Path(args.out), record)
            print(f"{name} #{index}: plain {plain_s * 1e3:.1f} ms, fixed {fixed_s / plain_s:.0f}x, sequential "
                  f"{seq_s / plain_s:.0f}x ({seq.n} copies), prefix r=1 {fixed.prefix_at(1)} / {seq.prefix_at(1)}",
                  file=sys.stderr)


def selection(args: argparse.Namespace) -> None:
    from smoothgen.deletion import TokenDeletion
    from smoothgen.generative import SmoothedLM
    from smoothgen.models import load_lm

    torch.set_num_threads(args.threads)
    prompts = line_prompts(heldout_slices(), 64, args.prompts)
    model_name = SETTINGS["deletion"][0]
    model = load_lm(model_name)
    mask = [i < 64 - 16 for i in range(64)]
    noise = TokenDeletion(0.9, empty_token_id=0)
    lm = SmoothedLM(model, noise, mask=mask, batch_size=args.batch_size)
    table = model.get_input_embeddings().weight
    variants = (("equal", "equal-length"), ("independent", "noise"))  # generate's selection=
    for _, selection in variants:  # warm up: the first calls of a process are slower
        lm.generate(prompts[0], args.tokens, n0=args.small_n0s[0], n=args.n, seed=1, sequential=True, selection=selection)
    for index, prompt in enumerate(prompts):
        plain_s, _ = _best(lambda: lm._greedy(table[prompt][None].detach(), args.tokens)[0], args.repeats)
        common = dict(n=args.n, alpha=args.alpha, seed=0, radius=1)
        reference = lm.generate(prompt, args.tokens, n0=args.n0, **common)
        record = {"setting": "deletion", "model": model_name, "prompt_index": index, "tokens": args.tokens,
                  "n": args.n, "alpha": args.alpha, "check_every": args.check_every, "machine": machine(),
                  "plain_seconds": plain_s, "reference_n0": args.n0, "reference_prefix_r1": reference.prefix_at(1)}
        for n0 in args.small_n0s:
            for label, selection in variants:
                seconds, cert = _best(lambda: lm.generate(prompt, args.tokens, n0=n0, **common, sequential=True,
                                                          check_every=args.check_every, selection=selection),
                                      args.repeats)
                record[f"{label}_{n0}"] = {"seconds": seconds, "prefix_r1": cert.prefix_at(1), "copies": cert.n,
                                           "tokens": list(cert.tokens)}
        append_record(Path(args.out), record)
        print(f"deletion #{index}: plain {plain_s * 1e3:.1f} ms, " + ", ".join(
            f"{key} {value['seconds'] / plain_s:.1f}x prefix {value['prefix_r1']}" for key, value in record.items()
            if isinstance(value, dict)), file=sys.stderr)


def selection_report(records: list[dict]) -> None:
    print("| n0 | selection copies | time ÷ plain (median) | estimation copies (median) | copies per step, n0 + mean n "
          "drawn | tokens/s certified | mean prefix r = 1 | prompts with the fixed-n prefix | paired time, equal ÷ "
          "independent (median / mean) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in sorted({k for r in records for k, v in r.items() if isinstance(v, dict)}, key=lambda k: (int(k.split("_")[1]), k)):
        label, n0 = key.split("_")
        g = [r for r in records if key in r]
        paired = [r[key]["seconds"] / r[f"independent_{n0}"]["seconds"] for r in g]
        print(f"| {n0} | {'each keeps the mean number (one length)' if label == 'equal' else 'independent deletions'} | "
              f"{statistics.median(r[key]['seconds'] / r['plain_seconds'] for r in g):.1f} | "
              f"{statistics.median(r[key]['copies'] for r in g):g} | "
              f"{n0} + {statistics.fmean(r[key]['copies'] for r in g):.0f} | "
              f"{sum(len(r[key]['tokens']) for r in g) / sum(r[key]['seconds'] for r in g):.1f} | "
              f"{statistics.fmean(r[key]['prefix_r1'] for r in g):.2f} | "
              f"{sum(r[key]['prefix_r1'] == r['reference_prefix_r1'] for r in g)}/{len(g)} | "
              f"{statistics.median(paired):.3f} / {statistics.fmean(paired):.3f} |")
    r0 = records[0]
    print(f"\n{r0['machine']}; {len(records)} prompts, deletion p = 0.9 ({r0['model']}), T = {r0['tokens']}, r = 1, "
          f"sequential up to n = {r0['n']}, check every {r0['check_every']}, alpha = {r0['alpha']}; fixed-n reference: "
          f"n0 = {r0['reference_n0']}, n = {r0['n']}, mean prefix {statistics.fmean(r['reference_prefix_r1'] for r in records):.2f}")


def _by_setting(records: list[dict], field: str):
    """(setting, its records that have `field`, median over them of a timing field ÷ plain) per setting."""
    for name in SETTINGS:
        g = [r for r in records if r["setting"] == name and field in r]
        if g:
            yield name, g, lambda key, g=g: statistics.median(r[key] / r["plain_seconds"] for r in g)


def report(paths: list[str]) -> None:
    records = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    if all("reference_prefix_r1" in r for r in records):
        selection_report(records)
        return
    print("| setting | prompts | plain ms (median) | fixed n: time ÷ plain | sequential: time ÷ plain | estimation "
          "copies drawn (median) | copies per step, n0 + n drawn | same certified prefix at r = 1 | mean prefix at r = 1, "
          "fixed / sequential | tokens/s certified (sequential) | sequential, small n0: time ÷ plain, mean prefix |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, g, ratio in _by_setting(records, "sequential_seconds"):
        same = sum(r["fixed_prefix_r1"] == r["sequential_prefix_r1"] for r in g)
        copies = statistics.median(r["sequential_copies"] for r in g)
        tokens_per_s = sum(r["tokens"] for r in g) / sum(r["sequential_seconds"] for r in g)
        print(f"| {name} ({g[0]['model']}) | {len(g)} | {statistics.median(r['plain_seconds'] for r in g) * 1e3:.1f} | "
              f"{ratio('fixed_seconds'):.1f} | {ratio('sequential_seconds'):.1f} | {copies:g} of {g[0]['n']} | "
              f"{g[0]['n0']} + {copies:g} (fixed: {g[0]['n0']} + {g[0]['n']}) | {same}/{len(g)} | "
              f"{statistics.fmean(r['fixed_prefix_r1'] for r in g):.2f} / {statistics.fmean(r['sequential_prefix_r1'] for r in g):.2f} "
              f"| {tokens_per_s:.1f} | n0 = {g[0]['small_n0']}: {ratio('small_seconds'):.1f}, "
              f"{statistics.fmean(r['small_prefix_r1'] for r in g):.2f} |")
    if any("small_late_seconds" in r for r in records):
        print("\n| setting | small n0 | first look at the earliest: time ÷ plain, copies (median), mean prefix r = 1 | "
              "first look after check_every: time ÷ plain, copies (median), mean prefix r = 1 | prompts whose prefix "
              "equals fixed n's (earliest) |")
        print("|---|---|---|---|---|")
        for name, g, ratio in _by_setting(records, "small_late_seconds"):
            print(f"| {name} | {g[0]['small_n0']} | {ratio('small_seconds'):.1f}, "
                  f"{statistics.median(r['small_copies'] for r in g):g}, {statistics.fmean(r['small_prefix_r1'] for r in g):.2f} | "
                  f"{ratio('small_late_seconds'):.1f}, {statistics.median(r['small_late_copies'] for r in g):g}, "
                  f"{statistics.fmean(r['small_late_prefix_r1'] for r in g):.2f} | "
                  f"{sum(r['small_prefix_r1'] == r['fixed_prefix_r1'] for r in g)}/{len(g)} |")
    if any("clean_seconds" in r for r in records):
        print("\n| setting | who chooses the tokens | time ÷ plain (median) | estimation copies (median) | mean prefix r = 1 "
              "| prompts with the fixed-n prefix | prompts whose prefix is shorter than with n0 = small n0 |")
        print("|---|---|---|---|---|---|---|")
        for name, g, ratio in _by_setting(records, "clean_seconds"):
            assert all(r["clean_is_plain"] for r in g)
            for label, key in ((f"{g[0]['small_n0']} noisy copies", "small"), ("the model itself (n0 = 0)", "clean")):
                print(f"| {name} | {label} | {ratio(key + '_seconds'):.1f} | "
                      f"{statistics.median(r[key + '_copies'] for r in g):g} | "
                      f"{statistics.fmean(r[key + '_prefix_r1'] for r in g):.2f} | "
                      f"{sum(r[key + '_prefix_r1'] == r['fixed_prefix_r1'] for r in g)}/{len(g)} | "
                      f"{sum(r[key + '_prefix_r1'] < r['small_prefix_r1'] for r in g)}/{len(g)} |")
    print(f"\n{records[0]['machine']}; T = {records[0]['tokens']}, n0 = {records[0]['n0']}, n = {records[0]['n']}, "
          f"check every {records[0]['check_every']}, alpha = {records[0]['alpha']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="time plain, fixed and sequential certified generation; one JSON line per prompt and setting")
    r.add_argument("--prompts", type=int, default=27)
    r.add_argument("--tokens", type=int, default=16, help="T, generated tokens")
    r.add_argument("--n0", type=int, default=100)
    r.add_argument("--n", type=int, default=1000)
    r.add_argument("--check-every", type=int, default=50)
    r.add_argument("--small-n0", type=int, default=20, help="selection copies of the cheaper sequential variant")
    r.add_argument("--alpha", type=float, default=0.001)
    r.add_argument("--batch-size", type=int, default=250)
    r.add_argument("--repeats", type=int, default=2, help="timings are the best of this many runs")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--out", default="benchmarks/generation_cost.jsonl")
    c = sub.add_parser("selection", help="token deletion: selection copies of one length against independent "
                                          "deletions; one JSON line per prompt")
    c.add_argument("--prompts", type=int, default=27)
    c.add_argument("--tokens", type=int, default=16, help="T, generated tokens")
    c.add_argument("--n0", type=int, default=100, help="selection copies of the fixed-n reference certificate")
    c.add_argument("--small-n0s", type=int, nargs="+", default=[10], help="selection copies of the sequential runs")
    c.add_argument("--n", type=int, default=1000)
    c.add_argument("--check-every", type=int, default=50)
    c.add_argument("--alpha", type=float, default=0.001)
    c.add_argument("--batch-size", type=int, default=250)
    c.add_argument("--repeats", type=int, default=2, help="timings are the best of this many runs")
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--out", default="benchmarks/generation_cost_selection.jsonl")
    s = sub.add_parser("report", help="the RESULTS.md table")
    s.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args)
    elif args.command == "selection":
        selection(args)
    else:
        report(args.paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
