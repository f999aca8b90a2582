"""Anytime-valid (betting) vs 4-look vs fixed-n certification at a target radius, on the digits test images.

For each image and each radius r: CERTIFY with n = 100 000 (certified at r when its radius ≥ r and the
prediction is right; it costs n0 + n samples), CERTIFY-AT r with the 4-look Clopper–Pearson test
(looks 10², 10³, 10⁴, 10⁵ at α/4 each), and CERTIFY-AT r with the betting confidence sequence checked
after every 100 samples up to 10⁵ (docs/theory.md §6). All three use the same random streams (seed 0,
request id = image index): the same selection sample, so the same selected class, and the same
estimation copies, of which the sequential tests read a prefix. Prints mean samples per input (n0
selection samples included), the ratio to n0 + n, and certified accuracy at r, as Markdown for
benchmarks/RESULTS.md; with --out, one JSON record per image.

    python benchmarks/anytime_experiment.py --num 100 --out benchmarks/anytime_experiment.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from smoothgen import SmoothedClassifier
from smoothgen.models import load_classifier, load_digits_split

METHODS = ("fixed", "looks", "betting")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=100, help="first digits test images (default: 100)")
    parser.add_argument("--sigma", type=float, default=0.25, help="noise level and embedded classifier (default: 0.25)")
    parser.add_argument("--radii", default="0.25,0.5", help="radii to decide (default: 0.25,0.5)")
    parser.add_argument("--n", type=int, default=100_000, help="fixed sample size, and the sequential tests' maximum (default: 100000)")
    parser.add_argument("--n0", type=int, default=100, help="selection samples, the same for all three (default: 100)")
    parser.add_argument("--alpha", type=float, default=0.001, help="failure probability (default: 0.001)")
    parser.add_argument("--check-every", type=int, default=100, help="samples between checks of the betting test (default: 100)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--out", help="write one JSON record per image here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    radii = [float(r) for r in args.radii.split(",")]
    looks = tuple(k for k in (100, 1_000, 10_000) if k < args.n) + (args.n,)
    split = load_digits_split()
    smoothed = SmoothedClassifier(load_classifier(args.sigma), 10, args.sigma, batch_size=1000, input_shape=(1, 8, 8))
    ok = {(m, r): 0 for m in METHODS for r in radii}
    samples = {(m, r): [] for m in METHODS for r in radii}
    wall = {m: 0.0 for m in METHODS}
    decisions = {(m, r): {"certified": 0, "rejected": 0, "undecided": 0} for m in ("looks", "betting") for r in radii}
    out = open(args.out, "w", encoding="utf-8") if args.out else None
    for i in range(args.num):
        x, label = torch.from_numpy(split.x_test[i]), int(split.y_test[i])
        t0 = time.perf_counter()
        cert = smoothed.certify(x, args.n0, args.n, args.alpha, seed=0, request_id=i)
        wall["fixed"] += time.perf_counter() - t0
        record = {"idx": i, "label": label, "fixed": {"prediction": cert.prediction, "radius": cert.radius,
                                                      "count": cert.count, "samples": cert.samples}}
        for r in radii:
            ok["fixed", r] += cert.prediction == label and cert.radius >= r
            samples["fixed", r].append(args.n0 + args.n)  # what a fixed-n run costs (see the note on early abstention)
            for method in ("looks", "betting"):
                t0 = time.perf_counter()
                if method == "looks":
                    seq = smoothed.certify_at(x, r, args.alpha, n0=args.n0, looks=looks, seed=0, request_id=i)
                else:
                    seq = smoothed.certify_at(x, r, args.alpha, n0=args.n0, seed=0, request_id=i, method="betting",
                                              max_samples=args.n, check_every=args.check_every)
                wall[method] += time.perf_counter() - t0
                ok[method, r] += seq.certified and seq.prediction == label
                samples[method, r].append(args.n0 + seq.samples)
                decisions[method, r][seq.decision] += 1
                record[f"{method}@{r}"] = {"decision": seq.decision, "selected": seq.selected, "samples": seq.samples,
                                           "count": seq.count, "p_lower": seq.p_lower, "p_upper": seq.p_upper}
        if out:
            out.write(json.dumps(record) + "\n")
        print(f"{i + 1}/{args.num} " + " ".join(f"{k}={v:.0f}s" for k, v in wall.items()), file=sys.stderr, flush=True)
    if out:
        out.close()
    fixed_cost = args.n0 + args.n
    print(f"device: {platform.machine()} ({os.cpu_count()} cores), {torch.get_num_threads()} torch thread(s); torch {torch.__version__}")
    print(f"{args.num} digits test images, sigma = {args.sigma}, alpha = {args.alpha}, n0 = {args.n0}; fixed n = {args.n}; "
          f"looks {looks} at alpha/{len(looks)}; betting checked every {args.check_every} up to {args.n}")
    print()
    print("| radius | test | mean samples/input | fewer than n0 + n | certified acc. | certified / rejected / undecided |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in radii:
        for method in METHODS:
            mean = float(np.mean(samples[method, r]))
            counts = "—" if method == "fixed" else " / ".join(str(decisions[method, r][d]) for d in ("certified", "rejected", "undecided"))
            print(f"| {r} | {method} | {mean:.0f} | {fixed_cost / mean:.1f}× | {ok[method, r] / args.num:.2f} | {counts} |")
    print()
    print("wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in wall.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
