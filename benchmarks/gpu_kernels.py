"""GPU verification and benchmarks of smoothgen's Triton kernels, in one call on a CUDA machine.

    python benchmarks/gpu_kernels.py --out benchmarks/gpu_kernels.md

1. Correctness on CUDA: each kernel against its torch reference (explicit noise bit for bit, in-kernel
   noise within one output ulp of the NumPy Philox reference, its mean/variance/KS statistics, distances
   and medians to float32 tolerance, the same min-median center).
2. Speed: `triton.testing.do_bench` medians (ms) of each kernel and of the torch chain it replaces, at
   the issue's sizes (noisy_embedding: N = 100 samples of a 512-token prompt, D = 4096, bf16;
   gaussian_noise: N = 1 000 copies of 3x224x224; pairwise: n = 10 000 at d in {64, 4096, 49152}),
   and for the memory-bound noise kernels the achieved bandwidth as a fraction of a measured
   device-to-device copy.
3. A Markdown table on stdout and in --out, with the device, date, versions and command, ready for
   benchmarks/RESULTS.md. Targets (issue 4): noise kernels >= 70 % of copy bandwidth and >= 2x the
   torch chain; center selection >= 1.5x torch.cdist + median.

Exit status: 0 when every correctness check passed, 1 when one failed, 2 without a CUDA device or triton.
"""
from __future__ import annotations

import argparse
import datetime
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Correctness and do_bench speed of smoothgen's Triton kernels on a CUDA device.",
    )
    parser.add_argument("--out", help="also write the Markdown report to this file")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["noisy_embedding", "gaussian_noise", "pairwise"],
        default=["noisy_embedding", "gaussian_noise", "pairwise"],
        help="which kernels to check and time (default: all)",
    )
    parser.add_argument(
        "--pairwise-d",
        nargs="+",
        type=int,
        default=[64, 4096, 49152],
        help="dimensions d of the pairwise benchmark (n = --pairwise-n)",
    )
    parser.add_argument("--pairwise-n", type=int, default=10_000, help="points of the pairwise benchmark")
    parser.add_argument(
        "--slow-torch-l1",
        action="store_true",
        help="also time torch.cdist(p=1) at d > 4096 (seconds per call on an H100)",
    )
    parser.add_argument("--rep", type=int, default=200, help="do_bench repetition time in ms per measurement")
    parser.add_argument("--skip-correctness", action="store_true", help="only time (not recommended)")
    args = parser.parse_args(argv)
    if args.pairwise_n < 2 or any(d < 1 for d in args.pairwise_d) or args.rep < 1:
        parser.error("--pairwise-n must be >= 2, every --pairwise-d >= 1 and --rep >= 1")
    return args


@dataclass
class Report:
    rows: list[list[str]] = field(default_factory=list)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append((name, bool(ok), detail))
        print(f"[{'ok' if ok else 'FAIL'}] {name} {detail}", flush=True)

    def row(self, *cells) -> None:
        self.rows.append([str(c) for c in cells])
        print(" | ".join(self.rows[-1]), flush=True)


HEADER = ["op", "size", "Triton (ms)", "torch chain (ms)", "speed-up", "Triton GB/s", "% of copy", "target"]


def _ms(fn: Callable[[], object], rep: int) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median"))


def copy_bandwidth(rep: int) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + written), 1 GiB buffers."""
    import torch

    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = _ms(lambda: dst.copy_(src), rep)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


# --------------------------------------------------------------------------------------------------
# Correctness
# --------------------------------------------------------------------------------------------------


def check_noisy_embedding(report: Report) -> None:
    import torch
    from scipy import stats

    from smoothgen.kernels.noisy_embedding import noisy_embedding
    from smoothgen.kernels.reference import noisy_embedding_reference

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for b, l, d, n in [(1, 1, 1, 1), (2, 7, 33, 3), (3, 33, 1023, 2), (1, 1023, 5, 4)]:
            table = torch.randn(97, d, generator=g).to(dtype)
            ids = torch.randint(0, 97, (b, l), generator=g)
            mask = torch.rand(b, l, generator=g) > 0.3
            eps = torch.randn(b * n, l, d, generator=g)
            sigma = torch.rand(b * n, generator=g)
            got = noisy_embedding(ids.cuda(), table.cuda(), sigma.cuda(), n, mask.cuda(), eps=eps.cuda()).cpu()
            ref = noisy_embedding_reference(ids, table, sigma, n, mask, eps=eps)
            report.check(f"noisy_embedding eps bitwise {dtype} {(b, l, d, n)}", torch.equal(got, ref))
            got = noisy_embedding(ids.cuda(), table.cuda(), 0.5, n, mask.cuda(), seed=2**63 + 7, offset=3).cpu()
            ref = noisy_embedding_reference(ids, table, 0.5, n, mask, seed=2**63 + 7, offset=3)
            err = (got.float() - ref.float()).abs().max().item()
            tol = 2 * torch.finfo(dtype).eps * (1 + ref.float().abs().max().item())
            keep = ~mask.repeat_interleave(n, 0)
            report.check(f"noisy_embedding Philox {dtype} {(b, l, d, n)}", err <= tol, f"max err {err:.2e}")
            report.check(f"noisy_embedding clean positions exact {dtype}", torch.equal(got[keep], ref[keep]))
    zeros = torch.zeros(3, 4096, device="cuda")
    eps = noisy_embedding(torch.zeros(1, 64, dtype=torch.long, device="cuda"), zeros, 1.0, 64, seed=1).double().flatten()
    mean, var = eps.mean().item(), eps.var().item()
    ks = stats.kstest(eps[:1_000_000].cpu().numpy(), "norm").pvalue
    count = eps.numel()
    report.check(
        "noisy_embedding noise N(0,1)",
        abs(mean) < 5 / count**0.5 and abs(var - 1) < 5 * (2 / count) ** 0.5 and ks > 1e-3,
        f"mean {mean:.2e} var {var:.5f} KS p {ks:.3f}",
    )


def check_gaussian_noise(report: Report) -> None:
    import torch

    from smoothgen.kernels.gaussian_noise import gaussian_noise
    from smoothgen.kernels.reference import gaussian_noise_reference

    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for shape in [(1,), (7,), (3, 33, 5), (1023,), (3, 224, 224)]:
            x = torch.rand(shape, generator=g).to(dtype)
            opts = {"clamp": (0.0, 1.0), "mean": torch.rand(shape[0], generator=g), "std": torch.rand(shape[0], generator=g) + 0.2}
            cuda_opts = {**opts, "mean": opts["mean"].cuda(), "std": opts["std"].cuda()}
            eps = torch.randn(3, *shape, generator=g)
            got = gaussian_noise(x.cuda(), 3, 0.5, eps=eps.cuda(), **cuda_opts).cpu()
            report.check(
                f"gaussian_noise eps bitwise {dtype} {shape}",
                torch.equal(got, gaussian_noise_reference(x, 3, 0.5, eps=eps, **opts)),
            )
            got = gaussian_noise(x.cuda(), 3, 0.5, seed=11, offset=5, **cuda_opts).cpu()
            ref = gaussian_noise_reference(x, 3, 0.5, seed=11, offset=5, **opts)
            err = (got.float() - ref.float()).abs().max().item()
            tol = 2 * torch.finfo(dtype).eps * (1 + ref.float().abs().max().item())
            report.check(f"gaussian_noise Philox {dtype} {shape}", err <= tol, f"max err {err:.2e}")
    x = torch.randn(3, 32, 32, device="cuda")
    whole = gaussian_noise(x, 100, 1.0, seed=5)
    parts = torch.cat([gaussian_noise(x, 37, 1.0, seed=5), gaussian_noise(x, 63, 1.0, seed=5, offset=37)])
    report.check("gaussian_noise batch-invariant (offset counts copies)", torch.equal(whole, parts))


def check_pairwise(report: Report) -> None:
    import torch

    from smoothgen import metrics
    from smoothgen.kernels import pairwise
    from smoothgen.kernels.reference import median_distances_reference, min_median_center_reference

    g = torch.Generator().manual_seed(2)
    for metric in ("l2", "l1", "cosine"):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for n_a, n_b, d in [(1, 1, 1), (7, 33, 5), (33, 1023, 130), (300, 257, 4097)]:
                a = (3 + torch.randn(n_a, d, generator=g)).to(dtype)
                b = (3 + torch.randn(n_b, d, generator=g)).to(dtype)
                got = pairwise.pairwise_distances(a.cuda(), b.cuda(), metric).cpu()
                ref = metrics.get_metric(metric).distances(a, b).float()
                err = ((got - ref).abs() / (1e-4 * ref.abs() + 1e-5 * (1 + ref.abs().max()))).max().item()
                report.check(f"pairwise {metric} {dtype} {(n_a, n_b, d)}", err <= 1.0, f"err/tol {err:.2f}")
        samples = torch.randn(2001, 64, generator=g)
        med = pairwise.median_distances(samples.cuda(), samples.cuda(), metric).cpu()
        ref = median_distances_reference(samples, samples, metric)
        report.check(f"medians {metric}", torch.allclose(med, ref, rtol=1e-4, atol=1e-5))
        best = pairwise.min_median_center(samples.cuda(), metric)[0]
        report.check(f"min-median center {metric}", best == min_median_center_reference(samples, metric)[0])


# --------------------------------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------------------------------


def bench_noisy_embedding(report: Report, copy_gbs: float, rep: int) -> None:
    import torch

    from smoothgen.kernels.noisy_embedding import noisy_embedding

    b, l, d, n, v = 1, 512, 4096, 100, 32_000
    table = torch.randn(v, d, device="cuda").to(torch.bfloat16)
    ids = torch.randint(0, v, (b, l), device="cuda")
    mask = torch.ones(b, l, dtype=torch.bool, device="cuda")
    mask[:, 0] = False
    out = torch.empty(b * n, l, d, dtype=torch.bfloat16, device="cuda")

    def torch_chain():
        clean = table[ids].repeat_interleave(n, dim=0)
        noise = torch.randn(clean.shape, device="cuda", dtype=torch.float32).mul_(0.5)
        noisy = (clean.float() + noise).to(torch.bfloat16)
        return torch.where(mask.repeat_interleave(n, dim=0)[..., None], noisy, clean)

    t_kernel = _ms(lambda: noisy_embedding(ids, table, 0.5, n, mask, seed=1, out=out), rep)
    t_torch = _ms(torch_chain, rep)
    moved = out.numel() * 2 + b * l * d * 2  # write the copies, read each embedding row once
    gbs = moved / (t_kernel * 1e-3) / 1e9
    report.row(
        "noisy_embedding", f"B={b} N={n} L={l} D={d} bf16", f"{t_kernel:.3f}", f"{t_torch:.3f}",
        f"{t_torch / t_kernel:.2f}x", f"{gbs:.0f}", f"{100 * gbs / copy_gbs:.0f}%", ">=70% copy, >=2x",
    )


def bench_gaussian_noise(report: Report, copy_gbs: float, rep: int) -> None:
    import torch

    from smoothgen.kernels.gaussian_noise import gaussian_noise

    n, shape = 1000, (3, 224, 224)
    x = torch.rand(shape, device="cuda")
    mean = torch.tensor([0.485, 0.456, 0.406], device="cuda")
    std = torch.tensor([0.229, 0.224, 0.225], device="cuda")
    out = torch.empty(n, *shape, device="cuda")

    def chain_plain():
        return torch.randn((n, *shape), device="cuda").mul_(0.25).add_(x)

    def chain_full():
        y = torch.randn((n, *shape), device="cuda").mul_(0.25).add_(x).clamp_(0.0, 1.0)
        return y.sub_(mean[:, None, None]).div_(std[:, None, None])

    for label, kwargs, chain in (
        ("x + σε", {}, chain_plain),
        ("+ clamp + normalise", {"clamp": (0.0, 1.0), "mean": mean, "std": std}, chain_full),
    ):
        t_kernel = _ms(lambda: gaussian_noise(x, n, 0.25, seed=1, out=out, **kwargs), rep)
        t_torch = _ms(chain, rep)
        moved = out.numel() * 4 + x.numel() * 4
        gbs = moved / (t_kernel * 1e-3) / 1e9
        report.row(
            f"gaussian_noise {label}", f"N={n} 3x224x224 fp32", f"{t_kernel:.3f}", f"{t_torch:.3f}",
            f"{t_torch / t_kernel:.2f}x", f"{gbs:.0f}", f"{100 * gbs / copy_gbs:.0f}%", ">=70% copy, >=2x",
        )


def bench_pairwise(report: Report, n: int, dims: list[int], rep: int, slow_l1: bool) -> None:
    import torch

    for d in dims:
        _bench_pairwise_at(report, n, d, rep, slow_l1)  # one call per d: its points are freed after it
        torch.cuda.empty_cache()


def _bench_pairwise_at(report: Report, n: int, d: int, rep: int, slow_l1: bool) -> None:
    """The min-median center of n points in dimension d: Triton vs torch.cdist + kthvalue + argmin."""
    import torch

    from smoothgen.kernels import pairwise

    k = (n + 1) // 2
    x = torch.randn(n, d, device="cuda")
    for metric in ("l2", "l1", "cosine"):
        t_kernel = _ms(lambda: pairwise.min_median_center(x, metric), rep)
        if metric == "l1" and d > 4096 and not slow_l1:
            t_torch = math.nan
        else:
            p = 1.0 if metric == "l1" else 2.0

            def chain():
                y = x if metric != "cosine" else torch.nn.functional.normalize(x, dim=1)
                dist = torch.cdist(y, y, p=p)
                if metric == "cosine":
                    dist = dist.square_().mul_(0.5)
                return int(torch.argmin(torch.kthvalue(dist, k, dim=1).values))

            t_torch = _ms(chain, rep)
        report.row(
            f"min-median center {metric}",
            f"n={n} d={d} fp32",
            f"{t_kernel:.2f}",
            "-" if math.isnan(t_torch) else f"{t_torch:.2f}",
            "n/a (torch skipped)" if math.isnan(t_torch) else f"{t_torch / t_kernel:.2f}x",
            "-",
            "-",
            ">=1.5x cdist+median",
        )


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def markdown(report: Report, header_lines: list[str]) -> str:
    lines = header_lines + ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in report.rows]
    failed = [c for c in report.checks if not c[1]]
    lines += ["", f"Correctness on CUDA: {len(report.checks) - len(failed)} of {len(report.checks)} checks passed."]
    lines += [f"- FAILED {name} {detail}" for name, _, detail in failed]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import torch
        import triton
    except ImportError as exc:
        print(f"gpu_kernels.py needs torch and triton: {exc}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gpu_kernels.py needs a CUDA device (none found); nothing was measured", file=sys.stderr)
        return 2
    import os

    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the interpreter would be timed, not the GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # the torch chains in exact float32, as smoothgen runs them
    report = Report()
    started = time.time()
    if not args.skip_correctness:
        for name, fn in (("noisy_embedding", check_noisy_embedding), ("gaussian_noise", check_gaussian_noise),
                         ("pairwise", check_pairwise)):
            if name in args.only:
                fn(report)
    copy_gbs = copy_bandwidth(args.rep)
    print(f"device-to-device copy: {copy_gbs:.0f} GB/s", flush=True)
    if "noisy_embedding" in args.only:
        bench_noisy_embedding(report, copy_gbs, args.rep)
    if "gaussian_noise" in args.only:
        bench_gaussian_noise(report, copy_gbs, args.rep)
    if "pairwise" in args.only:
        bench_pairwise(report, args.pairwise_n, args.pairwise_d, args.rep, args.slow_torch_l1)
    header = [
        f"## smoothgen Triton kernels on {torch.cuda.get_device_name()}",
        "",
        f"- date: {datetime.date.today().isoformat()}; wall time {time.time() - started:.0f} s",
        f"- command: `python benchmarks/gpu_kernels.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"- torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}, Python {platform.python_version()}",
        f"- device-to-device copy bandwidth (read + write): {copy_gbs:.0f} GB/s",
        "- times: triton.testing.do_bench medians; torch chains with TF32 off (exact float32)",
    ]
    text = markdown(report, header)
    print("\n" + text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text)
    return 0 if all(ok for _, ok, _ in report.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
