"""Sequential certification vs a fixed sample size, on the digits test images.

For each image: CERTIFY with n = 100 000 (the image is certified at r when its radius ≥ r and the
prediction is right), and CERTIFY-AT r for r ∈ {0.25, 0.5} with looks 10², 10³, 10⁴, 10⁵ and
Clopper–Pearson at α/4 per look. Prints mean samples per input (selection included) and certified
accuracy at r for both, as a Markdown table for benchmarks/RESULTS.md.

    python benchmarks/sequential_experiment.py --num 100
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from smoothgen import SmoothedClassifier
from smoothgen.models import load_classifier, load_digits_split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=100, help="digits test images (default: 100)")
    parser.add_argument("--sigma", type=float, default=0.25, help="noise level and embedded classifier (default: 0.25)")
    parser.add_argument("--radii", default="0.25,0.5", help="radii to decide (default: 0.25,0.5)")
    parser.add_argument("--n", type=int, default=100_000, help="fixed sample size (default: 100000)")
    parser.add_argument("--alpha", type=float, default=0.001, help="failure probability (default: 0.001)")
    args = parser.parse_args(argv)
    radii = [float(r) for r in args.radii.split(",")]
    split = load_digits_split()
    smoothed = SmoothedClassifier(load_classifier(args.sigma), 10, args.sigma, batch_size=1000)
    n0 = 100
    fixed_ok = {r: 0 for r in radii}
    seq_ok = {r: 0 for r in radii}
    seq_samples = {r: [] for r in radii}
    t_fixed = t_seq = 0.0
    for i in tqdm(range(args.num), file=sys.stderr, desc="inputs"):
        x, label = torch.from_numpy(split.x_test[i]), int(split.y_test[i])
        t0 = time.perf_counter()
        cert = smoothed.certify(x, n0, args.n, args.alpha, seed=0, request_id=i)
        t_fixed += time.perf_counter() - t0
        for r in radii:
            fixed_ok[r] += cert.prediction == label and cert.radius >= r
            t0 = time.perf_counter()
            seq = smoothed.certify_at(x, r, args.alpha, n0=n0, seed=0, request_id=i)
            t_seq += time.perf_counter() - t0
            seq_ok[r] += seq.certified and seq.prediction == label
            seq_samples[r].append(n0 + seq.samples)
    print(f"device: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; torch {torch.__version__}")
    print(f"{args.num} digits test images, sigma = {args.sigma}, alpha = {args.alpha}; fixed n = {args.n} (+{n0} selection)")
    print()
    print("| radius | fixed: samples/input | fixed: certified acc. | sequential: mean samples/input | sequential: certified acc. | fewer samples |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in radii:
        mean = float(np.mean(seq_samples[r]))
        print(f"| {r} | {n0 + args.n} | {fixed_ok[r] / args.num:.3f} | {mean:.0f} | {seq_ok[r] / args.num:.3f} | {(n0 + args.n) / mean:.1f}x |")
    print()
    print(f"wall time: fixed {t_fixed:.1f} s, sequential (all radii) {t_seq:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
