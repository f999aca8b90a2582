"""Concurrent certified generations through one SharedLM: merged LM calls against one request at a time (issue 24).

    python benchmarks/generate_batching.py [--requests 4] [--repeats 3] [--out benchmarks/generate_batching.jsonl]

What the service does with K generate requests that arrive together, measured in one process on the embedded
ablation LM (`code_lm_ablate0.1`) at the service's settings (n0 = 100, n = 1000, 16 new tokens, batches of
250 copies, token ablation, α = 10⁻³):

- "one at a time": the K generations one after another on the plain model (the service before SharedLM);
- "concurrent": K threads, one SharedLM with merging off (every call alone, the threads' own work overlaps);
- "merged": K threads, one SharedLM merging calls of the same shape (the service now).

Two prompt sets: K prompts of the same token count (one template filled in K ways: every call can merge) and
K prompts of different counts (nothing merges but the threads' overlap). The modes run interleaved, repeated
--repeats times; each line of the output is one (set, mode, repeat) with the wall time for all K, the LM calls
and the runs that served them, and whether every record equals the one computed one at a time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from generative_experiment import machine  # noqa: E402

SAME_LENGTH = [f"def {name}(path):\n    with open(path) as f:\n        return f.read" for name in
               ("read_text", "load_data", "parse_all", "read_conf", "load_json", "read_rows", "get_lines", "slurp_it")]
MIXED = ["import os\nimport s", "def read_lines(path):\n    with open(path) as f:\n        return f.read",
         "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.", "for i in range(10):\n    print(",
         "x = [1, 2, 3]\ny = sum(", "with open('a') as f:\n    data = json.lo", "if __name__ == '__main__':\n    ma",
         "try:\n    import numpy as np\nexcept ImportError:\n    np = No"]


def generate(model, tokenizer, name, prompt: str, seed: int) -> dict:
    from smoothgen.text_generation import certified_generation

    record, _, _ = certified_generation(model, tokenizer, name, prompt=prompt, noise="ablate", max_new_tokens=16, n0=100,
                                        n=1000, alpha=0.001, seed=seed, request_id=0, perturb=None, batch_size=250,
                                        keep=None, mask_token=None, edits=1)
    record.pop("seconds", None)
    return record


def run_mode(mode: str, lm, tokenizer, name, prompts: list[str]) -> tuple[float, list[dict], int, int]:
    from smoothgen.generation.batching import SharedLM

    if mode == "one at a time":
        start = time.perf_counter()
        records = [generate(lm, tokenizer, name, p, i) for i, p in enumerate(prompts)]
        return time.perf_counter() - start, records, 0, 0
    records: list = [None] * len(prompts)
    with SharedLM(lm, max_rows=250 * len(prompts), merge=mode == "merged") as shared:
        threads = [threading.Thread(target=lambda i=i: records.__setitem__(i, generate(shared, tokenizer, name, prompts[i], i)))
                   for i in range(len(prompts))]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - start, records, shared.calls, shared.batches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "generate_batching.jsonl"))
    args = parser.parse_args(argv)
    from smoothgen.text_generation import load_lm_spec

    lm, tokenizer, name = load_lm_spec(None, "cpu", "ablate")
    sets = {"same token count": SAME_LENGTH[:args.requests], "different token counts": MIXED[:args.requests]}
    info = machine()
    with open(args.out, "a") as out:
        for label, prompts in sets.items():
            reference = None
            for repeat in range(args.repeats):
                for mode in ("one at a time", "concurrent", "merged"):
                    seconds, records, calls, batches = run_mode(mode, lm, tokenizer, name, prompts)
                    if reference is None:
                        reference = records
                    line = {"set": label, "mode": mode, "repeat": repeat, "requests": len(prompts), "seconds": seconds,
                            "calls": calls, "batches": batches, "identical": records == reference,
                            "tokens": sum(len(r["tokens"]) for r in records), "model": name, "machine": info,
                            "date": time.strftime("%Y-%m-%d")}
                    out.write(json.dumps(line) + "\n")
                    out.flush()
                    print(f"{label:24s} {mode:14s} #{repeat} {seconds:6.2f} s  calls {calls:5d} runs {batches:5d} "
                          f"identical {line['identical']}", flush=True)
    report(args.out)
    return 0


def report(path: str) -> None:
    lines = [json.loads(line) for line in open(path)]
    print("\n| prompts | mode | wall s (median) | × one at a time | LM calls / runs | records identical |")
    print("|---|---|---:|---:|---:|---|")
    for label in dict.fromkeys(line["set"] for line in lines):
        base = statistics.median(x["seconds"] for x in lines if x["set"] == label and x["mode"] == "one at a time")
        for mode in ("one at a time", "concurrent", "merged"):
            rows = [x for x in lines if x["set"] == label and x["mode"] == mode]
            wall = statistics.median(x["seconds"] for x in rows)
            calls = f"{rows[0]['calls']} / {rows[0]['batches']}" if rows[0]["calls"] else "—"
            print(f"| {label} | {mode} | {wall:.2f} | {base / wall:.2f} | {calls} | {all(x['identical'] for x in rows)} |")


if __name__ == "__main__":
    raise SystemExit(main())
