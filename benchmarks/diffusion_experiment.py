"""Diffusion-purified smoothing on the digits test split: plain smoothing vs DDS vs DiffSmooth (issue 6).

Subcommands (run from the repository root with the project's venv):

    python benchmarks/diffusion_experiment.py run       # certificates, resumable (JSONL, one record per unit)
    python benchmarks/diffusion_experiment.py report    # certified-accuracy table, costs, PNG plot
    python benchmarks/diffusion_experiment.py quality   # DDPM sample-quality proxy (clean classifier on samples)
    python benchmarks/diffusion_experiment.py ablation  # why DiffSmooth does (not) beat DDS: sigma', m, classifier

`run` certifies, for every test image idx < --num and every sigma, three smoothed classifiers with the same
(seed, idx) noise stream (common random numbers, so differences are the methods' own):
  plain       SmoothedClassifier(digits_cnn_sigma{sigma}) — the classifier trained with noise sigma
  dds         DDS(DiffusionPurifier(digits_ddpm, sigma), digits_cnn_sigma0.0) — clean classifier
  diffsmooth  DiffSmooth(same purifier, classifier trained at sigma', m local copies at sigma')
with n0 = 100, n = 10 000, alpha = 0.001. Each (method, sigma, idx) is one whole JSONL record, appended and
fsync'd (smoothgen.results.ResultsFile), so a killed run loses nothing: run it again to continue.
Units are processed image by image (all methods and sigmas of image i before image i+1), so a partial
run compares the methods on the same images.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "diffusion_experiment.jsonl"
DEFAULT_PLOT = HERE / "diffusion_experiment.png"
DEFAULT_QUALITY = HERE / "diffusion_sample_quality.json"
DEFAULT_ABLATION = HERE / "diffusion_ablation.jsonl"
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
METHODS = ("plain", "dds", "diffsmooth")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _strings(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def build_base(method: str, sigma: float, local_samples: int, local_sigma: float, local_classifier_sigma: float | None,
               seed: int = 0) -> torch.nn.Module:
    """The base classifier of one method at smoothing noise sigma (see the module docstring)."""
    from smoothgen.denoise import DDS, DiffSmooth, DiffusionPurifier
    from smoothgen.models import load_classifier, load_ddpm

    if method == "plain":
        return load_classifier(sigma)
    purifier = DiffusionPurifier(load_ddpm(), sigma)
    if method == "dds":
        return DDS(purifier, load_classifier(0.0))
    if method == "diffsmooth":
        classifier_sigma = local_sigma if local_classifier_sigma is None else local_classifier_sigma
        return DiffSmooth(purifier, load_classifier(classifier_sigma), local_samples, local_sigma, seed=seed)
    raise ValueError(f"unknown method {method!r}")


def cmd_run(args: argparse.Namespace) -> int:
    from smoothgen import SmoothedClassifier
    from smoothgen.models import load_digits_split
    from smoothgen.results import ResultsFile

    torch.set_num_threads(args.threads)
    split = load_digits_split()
    x, y = split.x_test[: args.num], split.y_test[: args.num]
    run = {"n0": args.n0, "n": args.n, "alpha": args.alpha, "seed": args.seed, "local_samples": args.local_samples,
           "local_sigma": args.local_sigma, "local_classifier_sigma": args.local_classifier_sigma,
           "data": "digits-test"}
    results = ResultsFile(args.out, run, key=("method", "sigma", "idx"), resume=not args.overwrite,
                          overwrite=args.overwrite)
    done = results.done()
    smoothed = {}
    for sigma in args.sigmas:
        for method in args.methods:
            base = build_base(method, sigma, args.local_samples, args.local_sigma, args.local_classifier_sigma, args.seed)
            smoothed[method, sigma] = SmoothedClassifier(base, 10, sigma, batch_size=args.batch_size, input_shape=x.shape[1:])
    todo = [(m, s, i) for i in range(len(x)) for s in args.sigmas for m in args.methods if (m, s, i) not in done]
    print(f"{len(done)} records done, {len(todo)} to do -> {args.out}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    for k, (method, sigma, idx) in enumerate(todo):
        sc = smoothed[method, sigma]
        base = sc.runtime.model
        if hasattr(base, "reseed"):
            base.reseed(args.seed, idx)
        t0 = time.perf_counter()
        cert = sc.certify(torch.from_numpy(x[idx]), args.n0, args.n, args.alpha, seed=args.seed, request_id=idx)
        elapsed = time.perf_counter() - t0
        label = int(y[idx])
        results.append({"method": method, "sigma": sigma, "idx": idx, "label": label, "predict": cert.prediction,
                        "radius": cert.radius, "correct": not cert.abstained and cert.prediction == label, "p_lower": cert.p_lower,
                        "count": cert.count, "selected": cert.selected,
                        "time": elapsed})
        if (k + 1) % 30 == 0 or k + 1 == len(todo):
            rate = (time.perf_counter() - start) / (k + 1)
            print(f"{k + 1}/{len(todo)} units, {rate:.2f} s/unit, ~{rate * (len(todo) - k - 1) / 60:.0f} min left",
                  file=sys.stderr, flush=True)
    return 0


def _load_records(path: Path) -> list[dict[str, Any]]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a cut-off last line of a killed run
    return records


def summarize(records: list[dict[str, Any]], radii: Sequence[float] = RADII) -> dict[tuple[str, float], dict[str, Any]]:
    """Certified accuracy per (method, sigma) on the images every method of that sigma has a record for."""
    by_key: dict[tuple[str, float], dict[int, dict[str, Any]]] = {}
    for r in records:
        by_key.setdefault((r["method"], r["sigma"]), {})[r["idx"]] = r
    sigmas = sorted({s for _, s in by_key})
    out = {}
    for sigma in sigmas:
        keys = [k for k in by_key if k[1] == sigma]
        common = set.intersection(*(set(by_key[k]) for k in keys))
        for key in keys:
            rows = [by_key[key][i] for i in sorted(common)]
            if not rows:
                continue
            times = [r["time"] for r in rows]
            out[key] = {
                "images": len(rows),
                "certified_accuracy": {rad: float(np.mean([r["correct"] and r["radius"] >= rad for r in rows])) for rad in radii},
                "abstain": float(np.mean([r["predict"] == -1 for r in rows])),
                "mean_radius_correct": float(np.mean([r["radius"] if r["correct"] else 0.0 for r in rows])),
                "mean_pA_hat": float(np.mean([r["count"] / r.get("n", 10_000) for r in rows])),
                "time_median": statistics.median(times),
                "time_mean": statistics.fmean(times),
            }
    return out


def cmd_report(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = _load_records(args.out)
    if not records:
        print(f"no records in {args.out}", file=sys.stderr)
        return 1
    table = summarize(records)
    sigmas = sorted({s for _, s in table})
    lines = ["| σ | method | images | " + " | ".join(f"r = {r}" for r in RADII)
             + " | abstain | mean nA/n | s per input (median, mean) |",
             "| --- | --- | --- | " + " | ".join("---" for _ in RADII) + " | --- | --- | --- |"]
    for sigma in sigmas:
        for method in METHODS:
            row = table.get((method, sigma))
            if row is None:
                continue
            accs = " | ".join(f"{100 * row['certified_accuracy'][r]:.1f} %" for r in RADII)
            lines.append(f"| {sigma} | {method} | {row['images']} | {accs} | {100 * row['abstain']:.1f} % | "
                         f"{row['mean_pA_hat']:.3f} | {row['time_median']:.2f}, {row['time_mean']:.2f} |")
    print("\n".join(lines))

    fig, axes = plt.subplots(1, len(sigmas), figsize=(5.2 * len(sigmas), 4.3), squeeze=False)
    from smoothgen import stats

    first = records[0]
    local = f"m={first['local_samples']}, σ'={first['local_sigma']}"
    styles = {"plain": ("C0", "o", "plain (CNN trained at σ)"), "dds": ("C1", "s", "DDS (DDPM + clean CNN)"),
              "diffsmooth": ("C2", "^", f"DiffSmooth (DDPM + CNN trained at σ', {local})")}
    for ax, sigma in zip(axes[0], sigmas):
        for method in METHODS:
            row = table.get((method, sigma))
            if row is None:
                continue
            color, marker, label = styles[method]
            # The step curve: certified accuracy at every radius, from the records themselves.
            rs = np.linspace(0, 1.2, 241)
            rows = [r for r in records if r["method"] == method and r["sigma"] == sigma]
            idx = {r["idx"] for r in rows}
            for other in METHODS:
                if (other, sigma) in table:
                    idx &= {r["idx"] for r in records if r["method"] == other and r["sigma"] == sigma}
            rows = [r for r in rows if r["idx"] in idx]
            curve = [np.mean([r["correct"] and r["radius"] >= rad for r in rows]) for rad in rs]
            ax.plot(rs, curve, color=color, label=label)
            ax.plot(RADII, [row["certified_accuracy"][r] for r in RADII], color=color, marker=marker, linestyle="none")
        largest = stats.max_certifiable_radius(sigma, first["n"], first["alpha"])
        if largest < 1.2:
            ax.axvline(largest, color="gray", linestyle=":", linewidth=1)
            ax.text(largest, 0.97, f" largest certifiable\n radius {largest:.2f}", fontsize=7, color="gray", va="top")
        n_images = max(row["images"] for (m, s), row in table.items() if s == sigma)
        ax.set_title(f"σ = {sigma} ({n_images} digits test images)")
        ax.set_xlabel("ℓ2 radius")
        ax.set_ylabel("certified accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Digits: plain smoothing vs DDS vs DiffSmooth (n0=100, n=10 000, α=0.001)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(args.plot, dpi=110)
    print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def cmd_quality(args: argparse.Namespace) -> int:
    """Sample-quality proxy: accuracy of the clean classifier on DDPM samples, per class."""
    from smoothgen.models import load_classifier, load_ddpm, load_digits_split
    from smoothgen.models.ddpm import sample

    torch.set_num_threads(args.threads)
    ddpm, classifier = load_ddpm(), load_classifier(0.0)
    split = load_digits_split()
    train = torch.from_numpy(split.x_train).reshape(len(split.x_train), -1)

    def nearest_train_distance(images: torch.Tensor) -> torch.Tensor:
        return torch.cdist(images.reshape(len(images), -1), train).min(dim=1).values

    # Memorization check: a model that copies training images has samples much closer to the training set
    # than held-out test images are.
    test_nn = nearest_train_distance(torch.from_numpy(split.x_test))
    labels = torch.arange(10).repeat_interleave(args.per_class)
    report: dict[str, Any] = {"per_class": args.per_class, "seed": args.seed, "classifier": "digits_cnn_sigma0.0",
                              "sampler": "ancestral DDPM, 1000 steps, x0 clipped", "by_guidance": {}}
    for w in args.guidance:
        t0 = time.perf_counter()
        images = sample(ddpm, labels, torch.Generator().manual_seed(args.seed), guidance=w)
        elapsed = time.perf_counter() - t0
        with torch.no_grad():
            predictions = classifier(images).argmax(dim=1)
            confident = torch.softmax(classifier(images), dim=1).max(dim=1).values
        per_class = [float((predictions[labels == c] == c).float().mean()) for c in range(10)]
        sample_nn = nearest_train_distance(images)
        report["by_guidance"][str(w)] = {
            "accuracy": float((predictions == labels).float().mean()),
            "accuracy_by_class": per_class,
            "mean_max_probability": float(confident.mean()),
            "median_l2_to_nearest_train_image": float(sample_nn.median()),
            "share_closer_to_train_than_any_test_image_is": float((sample_nn < test_nn.min()).float().mean()),
            "seconds": elapsed,
        }
        print(f"guidance {w}: accuracy {report['by_guidance'][str(w)]['accuracy']:.3f} "
              f"by class {[round(a, 2) for a in per_class]} ({elapsed:.0f} s)", file=sys.stderr)
        if args.grid is not None and w == args.guidance[-1]:
            _save_grid(images, labels, Path(args.grid), f"DDPM samples, guidance w = {w}")
    # Unconditional samples: how often does the clean classifier call them each class (mode coverage).
    uncond = sample(ddpm, torch.full((10 * args.per_class,), ddpm.null_class), torch.Generator().manual_seed(args.seed + 1))
    with torch.no_grad():
        histogram = torch.bincount(classifier(uncond).argmax(dim=1), minlength=10)
    report["unconditional_predicted_class_histogram"] = histogram.tolist()
    report["test_images_median_l2_to_nearest_train_image"] = float(test_nn.median())
    report["test_images_min_l2_to_nearest_train_image"] = float(test_nn.min())
    report["date"] = datetime.date.today().isoformat()
    report["machine"] = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads"
    Path(args.quality_out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.quality_out}", file=sys.stderr)
    return 0


def _save_grid(images: torch.Tensor, labels: torch.Tensor, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_row = 10
    fig, axes = plt.subplots(10, per_row, figsize=(6, 6))
    for c in range(10):
        rows = images[labels == c][:per_row]
        for j in range(per_row):
            ax = axes[c, j]
            ax.axis("off")
            if j < len(rows):
                ax.imshow(rows[j, 0].numpy(), cmap="gray_r", vmin=0, vmax=1)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=80)


def cmd_ablation(args: argparse.Namespace) -> int:
    """Base-classifier accuracy under noise (mean vote share of the true class, share of images with pA > 1/2)
    and certificates at a small n, for a grid of DiffSmooth settings and the purifier alone."""
    from smoothgen.denoise import DDS, DiffSmooth, DiffusionPurifier
    from smoothgen.engine import Purpose, RandomStream, Sampler, as_runtime
    from smoothgen.models import load_classifier, load_ddpm, load_digits_split
    from smoothgen.results import ResultsFile

    torch.set_num_threads(args.threads)
    split = load_digits_split()
    x, y = split.x_test[: args.num], split.y_test[: args.num]
    ddpm = load_ddpm()
    run = {"num": args.num, "draws": args.draws, "seed": args.seed}
    results = ResultsFile(args.ablation_out, run, key=("config",), resume=not args.overwrite, overwrite=args.overwrite)
    done = results.done()
    configs: list[tuple[str, float, Any]] = []
    for sigma in args.sigmas:
        purifier = DiffusionPurifier(ddpm, sigma)
        configs.append((f"plain sigma={sigma}", sigma, lambda s=sigma: load_classifier(s)))
        for clf in (0.0, 0.25):
            configs.append((f"dds sigma={sigma} clf={clf}", sigma, lambda p=purifier, c=clf: DDS(p, load_classifier(c))))
        for local_sigma in (0.125, 0.25, 0.5):
            for clf in (0.0, local_sigma if local_sigma in (0.25, 0.5) else 0.25):
                for m in (1, 5, 15):
                    configs.append((f"diffsmooth sigma={sigma} m={m} local_sigma={local_sigma} clf={clf}", sigma,
                                    lambda p=purifier, c=clf, mm=m, ls=local_sigma: DiffSmooth(p, load_classifier(c), mm, ls, seed=args.seed)))
    for sigma in args.sigmas:
        name = f"purifier sigma={sigma}"
        if (name,) in done:
            continue
        # How far one-shot purification lands from the clean image, and how much it varies between noise
        # draws (the spread DiffSmooth's local smoothing at sigma' is meant to absorb); l2 over 64 pixels.
        purifier = DiffusionPurifier(ddpm, sigma)
        errors, spreads = [], []
        with torch.no_grad():
            for i in range(len(x)):
                clean = torch.from_numpy(x[i])
                gen = RandomStream(args.seed, i).generator(Purpose.ESTIMATION)
                purified = purifier(clean + sigma * torch.randn((args.draws, *clean.shape), generator=gen))
                errors.append(float((purified - clean).flatten(1).norm(dim=1).mean()))
                spreads.append(float((purified - purified.mean(dim=0)).flatten(1).norm(dim=1).mean()))
        record = {"config": name, "sigma": sigma, "mean_l2_error_to_clean": float(np.mean(errors)),
                  "mean_l2_spread_between_draws": float(np.mean(spreads)),
                  "l2_norm_of_local_noise_sigma_0.25": 0.25 * 8.0, "l2_norm_of_smoothing_noise": sigma * 8.0}
        results.append(record)
        print(json.dumps(record), file=sys.stderr, flush=True)
    seen = set()
    sampler = Sampler(args.draws)
    for name, sigma, make in configs:
        if name in seen or (name,) in done:
            continue
        seen.add(name)
        base = make()
        runtime = as_runtime(base)
        t0 = time.perf_counter()
        shares = []
        for i in range(len(x)):
            if hasattr(base, "reseed"):
                base.reseed(args.seed, i)
            key = RandomStream(args.seed, i).key(Purpose.ESTIMATION)
            counts = sampler.counts(runtime, torch.from_numpy(x[i]), args.draws, sigma, 10, key)
            shares.append(counts / args.draws)
        shares = np.array(shares)
        true_share = shares[np.arange(len(y)), y]
        correct_top = shares.argmax(axis=1) == y
        record = {"config": name, "sigma": sigma, "mean_true_vote_share": float(true_share.mean()),
                  "majority_correct": float(correct_top.mean()),
                  "share_true_above_half": float((true_share > 0.5).mean()),
                  "share_true_above_0.9": float((true_share > 0.9).mean()),
                  "seconds": time.perf_counter() - t0}
        results.append(record)
        print(json.dumps(record), file=sys.stderr, flush=True)
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    """Seconds per certified input of each method, measured side by side (methods interleaved per image)."""
    from smoothgen import SmoothedClassifier
    from smoothgen.models import load_digits_split

    torch.set_num_threads(args.threads)
    x = load_digits_split().x_test[: args.num]
    times: dict[tuple[str, float], list[float]] = {}
    for sigma in args.sigmas:
        smoothed = {m: SmoothedClassifier(build_base(m, sigma, args.local_samples, args.local_sigma, None, 0), 10, sigma,
                                          batch_size=args.batch_size) for m in METHODS}
        for sc in smoothed.values():  # warm-up, untimed
            sc.certify(torch.from_numpy(x[0]), 10, 100, 0.001, seed=1)
        for i in range(len(x)):
            for method, sc in smoothed.items():
                t0 = time.perf_counter()
                sc.certify(torch.from_numpy(x[i]), args.n0, args.n, 0.001, seed=0, request_id=i)
                times.setdefault((method, sigma), []).append(time.perf_counter() - t0)
    report = {f"{m} sigma={s}": {"median_s": statistics.median(v), "min_s": min(v),
                                 "base_evaluations_per_s": (args.n0 + args.n) / statistics.median(v)}
              for (m, s), v in times.items()}
    print(json.dumps({"images": len(x), "n0": args.n0, "n": args.n, "threads": args.threads, "batch_size": args.batch_size,
                      "times": report}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="certify (resumable)")
    run.add_argument("--num", type=int, default=300, help="first NUM digits test images (default 300)")
    run.add_argument("--sigmas", type=_floats, default=[0.25, 0.5])
    run.add_argument("--methods", type=_strings, default=list(METHODS))
    run.add_argument("--n0", type=int, default=100)
    run.add_argument("--n", type=int, default=10_000)
    run.add_argument("--alpha", type=float, default=0.001)
    run.add_argument("--local-samples", type=int, default=5)
    run.add_argument("--local-sigma", type=float, default=0.25)
    run.add_argument("--local-classifier-sigma", type=float, default=None,
                     help="training noise of DiffSmooth's classifier (default: = --local-sigma)")
    run.add_argument("--batch-size", type=int, default=1000)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--threads", type=int, default=2)
    run.add_argument("--out", type=Path, default=DEFAULT_OUT)
    run.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    run.set_defaults(func=cmd_run)
    rep = sub.add_parser("report", help="table and plot from the records")
    rep.add_argument("--out", type=Path, default=DEFAULT_OUT)
    rep.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    rep.set_defaults(func=cmd_report)
    qual = sub.add_parser("quality", help="sample-quality proxy of the embedded DDPM")
    qual.add_argument("--per-class", type=int, default=100)
    qual.add_argument("--guidance", type=_floats, default=[0.0, 2.0])
    qual.add_argument("--seed", type=int, default=0)
    qual.add_argument("--threads", type=int, default=2)
    qual.add_argument("--quality-out", type=Path, default=DEFAULT_QUALITY)
    qual.add_argument("--grid", default=None, help="also save a PNG grid of samples (last guidance value)")
    qual.set_defaults(func=cmd_quality)
    cost = sub.add_parser("cost", help="seconds per certified input, methods side by side")
    cost.add_argument("--num", type=int, default=10)
    cost.add_argument("--sigmas", type=_floats, default=[0.25, 0.5])
    cost.add_argument("--n0", type=int, default=100)
    cost.add_argument("--n", type=int, default=10_000)
    cost.add_argument("--local-samples", type=int, default=5)
    cost.add_argument("--local-sigma", type=float, default=0.25)
    cost.add_argument("--batch-size", type=int, default=1000)
    cost.add_argument("--threads", type=int, default=2)
    cost.set_defaults(func=cmd_cost)
    abl = sub.add_parser("ablation", help="base accuracy of DiffSmooth settings (sigma', m, classifier) and DDS")
    abl.add_argument("--num", type=int, default=300)
    abl.add_argument("--draws", type=int, default=200, help="noisy draws per image")
    abl.add_argument("--sigmas", type=_floats, default=[0.25, 0.5])
    abl.add_argument("--seed", type=int, default=0)
    abl.add_argument("--threads", type=int, default=2)
    abl.add_argument("--ablation-out", type=Path, default=DEFAULT_ABLATION)
    abl.add_argument("--overwrite", action="store_true")
    abl.set_defaults(func=cmd_ablation)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
