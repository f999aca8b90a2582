"""Quality of the smoothed conditional digits DDPM: does the label survive noise on the class embedding? (issue 7)

    python benchmarks/conditional_experiment.py                       # default sizes, writes the JSON below
    python benchmarks/conditional_experiment.py --sigmas 0,1,2 --per-class 40 --num-steps 100

For every σ (σ = 0 is the base, unsmoothed conditional DDPM) and every class k, it draws --per-class
samples of `SmoothedConditionalDiffusion` (each conditioned on e_k + ε_i, ε_i ~ N(0, σ²I), with the same
keyed sampler randomness at every σ: common random numbers, so differences come from the embedding noise)
and reports the accuracy of the clean digits classifier (`load_classifier(sigma=0.0)`) per class on:
  samples  the individual smoothed samples (each is one draw of the distribution §4a certifies);
  mean     the mean image of each group of --group samples (the §4e aggregate);
  center   the min-median (ℓ2) center of each group (the §2 center, without center smoothing's
           acceptance check, so it never abstains here).
Also recorded per σ: the §4a TV bound at radius 1 and at the smallest distance between two class
embeddings (what certifying a label change would need), and the §4e mean-certificate numbers for
N = --group. Retention = accuracy / base accuracy (the proposal's target: ≥ 95 %).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "conditional_experiment.json"


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    from smoothgen import stats
    from smoothgen.center import min_median_center
    from smoothgen.conditional import SmoothedConditionalDiffusion
    from smoothgen.metrics import get_metric
    from smoothgen.models import load_classifier, load_ddpm

    torch.set_num_threads(args.threads)
    ddpm, classifier = load_ddpm(), load_classifier(0.0)
    if args.per_class % args.group:
        raise SystemExit("--per-class must be a multiple of --group")
    l2 = get_metric("l2")
    probe = SmoothedConditionalDiffusion(ddpm, 1.0, guidance=args.guidance, num_steps=args.num_steps)
    table = np.stack([probe.class_distances(k) for k in range(10)])
    off_diagonal = table[~np.eye(10, dtype=bool)]
    min_distance = float(off_diagonal.min())
    report: dict[str, Any] = {
        "command": "python benchmarks/conditional_experiment.py " + " ".join(argv),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads",
        "classifier": "digits_cnn_sigma0.0",
        "sampler": (f"ancestral DDPM, {probe.num_steps} steps"
                    + (" (respaced)" if probe.num_steps < ddpm.num_timesteps else "")
                    + f", guidance {args.guidance}, x0 clipped"),
        "per_class": args.per_class,
        "group": args.group,
        "seed": args.seed,
        "class_embedding_distance": {"min": min_distance, "median": float(np.median(off_diagonal)),
                                     "max": float(off_diagonal.max())},
        "by_sigma": {},
    }

    def accuracy(images: torch.Tensor, label: int) -> float:
        with torch.no_grad():
            return float((classifier(images).argmax(dim=1) == label).float().mean())

    for sigma in args.sigmas:
        t0 = time.perf_counter()
        per_class: dict[str, list[float]] = {"samples": [], "mean": [], "center": []}
        smoothed = SmoothedConditionalDiffusion(ddpm, sigma if sigma > 0 else 1.0, guidance=args.guidance,
                                                num_steps=args.num_steps)
        for k in range(10):
            if sigma > 0:
                images = smoothed.samples(k, n=args.per_class, seed=args.seed, request_id=k)
            else:  # the base generator, same sampler-noise stream (seed, k) as the smoothed runs
                smoothed.generator.reseed(args.seed, k)
                with torch.inference_mode():
                    images = smoothed.generator(smoothed.embedding(k).expand(args.per_class, -1))
            groups = images.reshape(args.per_class // args.group, args.group, *images.shape[1:])
            means = groups.mean(dim=1)
            centers = torch.cat([min_median_center(g, l2)[0] for g in groups])
            per_class["samples"].append(accuracy(images, k))
            per_class["mean"].append(accuracy(means, k))
            per_class["center"].append(accuracy(centers, k))
        elapsed = time.perf_counter() - t0
        entry: dict[str, Any] = {f"accuracy_{kind}": float(np.mean(v)) for kind, v in per_class.items()}
        entry.update({f"accuracy_{kind}_by_class": v for kind, v in per_class.items()})
        if sigma > 0:
            bound = 0.5 * probe.image_diameter
            entry["tv_bound_at_radius_1"] = stats.tv_bound(1.0, sigma)
            entry["tv_bound_at_min_class_distance"] = stats.tv_bound(min_distance, sigma)
            entry["mean_certificate_at_radius_1"] = {
                "n": args.group,
                "expectation_bound": stats.mean_smoothing_bound(bound, 1.0, sigma),
                "estimation_radius_alpha_0.001": stats.vector_mean_deviation(bound, args.group, 0.001),
                "image_l2_diameter": probe.image_diameter,
            }
        entry["seconds"] = elapsed
        report["by_sigma"][str(sigma)] = entry
        print(f"sigma {sigma}: samples {entry['accuracy_samples']:.3f}  mean {entry['accuracy_mean']:.3f}  "
              f"center {entry['accuracy_center']:.3f}  ({elapsed:.0f} s)", file=sys.stderr)
    base = report["by_sigma"].get("0.0")
    if base is not None:
        for entry in report["by_sigma"].values():
            for kind in ("samples", "mean", "center"):
                b = base[f"accuracy_{kind}"]
                entry[f"retention_{kind}"] = entry[f"accuracy_{kind}"] / b if b > 0 else None
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sigmas", type=_floats, default=[0.0, 1.0, 2.0, 4.0, 8.0],
                        help="comma-separated noise levels in embedding units; 0 = the base model (default 0,1,2,4,8)")
    parser.add_argument("--per-class", type=int, default=100, help="samples per class and sigma (default 100)")
    parser.add_argument("--group", type=int, default=10, help="samples per mean / center aggregate (default 10)")
    parser.add_argument("--num-steps", type=int, default=100, help="respaced DDPM sampling steps (default 100)")
    parser.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance weight (default 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON report (default {DEFAULT_OUT.name})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    report = run(args, argv)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
