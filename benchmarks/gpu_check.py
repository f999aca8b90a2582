"""One command that proves smoothgen's GPU path: `make gpu-check` (or `python benchmarks/gpu_check.py OUT`).

On a CUDA machine with no network (README: "GPU check"), in a few minutes on one H100/H200:

1. setup       installs the wheels the machine lacks from --wheels (made here by `make gpu-wheels`) and
               builds smoothgen._C there (`pip install --no-deps --no-build-isolation -e .`);
2. cuda-tests  runs every test file of the suite that exercises CUDA (pytest, in parallel when
               pytest-xdist is there);
3. kernels     runs benchmarks/gpu_kernels.py (Triton kernels: correctness, do_bench, bandwidth);
4. certify/forward  CERTIFY's throughput ÷ the bare model's, on a CIFAR-size CNN: eager and torch.compile
               with CUDA graphs (mode reduce-overhead), fp32 and bf16 (target ≥ 0.95);
5. imagenet    CERTIFY of one 3×224×224 input on a ResNet-50-shaped model (random weights) at n = 100 000
               (target ≤ 5 s; Cohen et al. published ≈ 150 s per image);
6. dds         DDS per input: a CIFAR-size UNet purifier (random weights) + CNN, CERTIFY at n = 10 000;
7. lm          SmoothedLM certified decoding on the embedded code LM (16 tokens, token ablation and Gaussian),
               and four concurrent generations through SharedLM, merged against one at a time.

It writes OUT/gpu_check.md (device, date, versions, command, every figure against its target) and
OUT/gpu_check.json. A step that fails is reported and the others still run; the exit status is 0 only
when every step passed. `--device cpu --quick` runs steps 4–7 at toy sizes on a CPU (what the test suite
does to keep this script working); without CUDA and without `--device cpu` it exits 2.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("setup", "cuda-tests", "kernels", "certify-forward", "imagenet", "dds", "lm")
#: Wheels the GPU machine's image lacks (KINDS.md lists what it has): the C++ core's Boost headers and
#: rapidfuzz (smoothgen's Levenshtein metric). `make gpu-wheels` downloads them for its Python 3.12.
WHEELS = {"boost_headers": "boost-headers", "rapidfuzz": "rapidfuzz"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="smoothgen's GPU check: build, CUDA tests, kernels and engine "
                                     "timings on one CUDA device; a Markdown and a JSON report in OUT.")
    parser.add_argument("out", help="folder for gpu_check.md and gpu_check.json (created)")
    parser.add_argument("--wheels", default=str(ROOT / "gpu-wheels"), help="folder of wheels to install from (make gpu-wheels)")
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a toy run of steps 4-7, with --quick)")
    parser.add_argument("--quick", action="store_true", help="toy sizes (for testing this script)")
    parser.add_argument("--skip", default="", help=f"comma-separated steps to skip: {', '.join(STEPS)}")
    parser.add_argument("--test-timeout", type=int, default=240, help="seconds for the CUDA tests")
    args = parser.parse_args(argv)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = args.skip - set(STEPS)
    if unknown:
        parser.error(f"--skip: unknown steps {sorted(unknown)}; steps are {', '.join(STEPS)}")
    return args


# ------------------------------------------------------------------------------------------ helpers
def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device, repeat: int = 1) -> float:
    """Best wall time of `repeat` calls of fn (after one warm-up call), synchronised."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _run(cmd: list[str], timeout: int, cwd: Path = ROOT) -> tuple[int, str]:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        return done.returncode, (done.stdout + done.stderr)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return 124, out + f"\n(timed out after {timeout} s)"


# ------------------------------------------------------------------------------------------ steps
def step_setup(args, result: dict) -> None:
    missing = [pkg for module, pkg in WHEELS.items() if importlib.util.find_spec(module) is None]
    if missing:
        code, out = _run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", args.wheels, *missing], 300)
        result["wheels"] = {"installed": missing, "exit": code}
        if code != 0:
            raise RuntimeError(f"installing {missing} from {args.wheels} failed: {out[-800:]}")
    probe = [sys.executable, "-c", "import smoothgen._C"]
    if _run(probe, 120)[0] != 0:
        t0 = time.perf_counter()
        code, out = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."], 600)
        result["build_s"] = round(time.perf_counter() - t0, 1)
        if code != 0 or _run(probe, 120)[0] != 0:
            raise RuntimeError(f"building smoothgen._C failed: {out[-1500:]}")
    result["core"] = "smoothgen._C imports"


def cuda_test_files() -> list[str]:
    """Test files that exercise CUDA (they skip those tests on a machine without it)."""
    files = sorted({*ROOT.glob("tests/**/test_*.py"), *ROOT.glob("benchmarks/test_*.py")})
    pattern = re.compile(r"cuda", re.IGNORECASE)
    return [str(f.relative_to(ROOT)) for f in files if pattern.search(f.read_text(encoding="utf-8", errors="replace"))]


def step_cuda_tests(args, result: dict) -> None:
    files = cuda_test_files()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable", "-rfE", *files]
    if importlib.util.find_spec("xdist") is not None:
        cmd[4:4] = ["-n", "8"]
    code, out = _run(cmd, args.test_timeout)
    summary = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    result.update(files=len(files), exit=code, summary=summary[-1] if summary else out[-300:])
    failures = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
    if failures:
        result["failures"] = failures[:30]
    if code not in (0, 5):
        raise RuntimeError(f"CUDA tests: {result['summary']}")


def step_kernels(args, result: dict) -> None:
    report = Path(args.out) / "gpu_kernels.md"
    code, out = _run([sys.executable, str(ROOT / "benchmarks" / "gpu_kernels.py"), "--out", str(report)], 300)
    result.update(exit=code, report=str(report), tail=out[-1500:])
    if code != 0:
        raise RuntimeError(f"gpu_kernels.py exited {code}")


def _classifier_runtime(model, example, backend: str, batch: int, device: str):
    from smoothgen.engine.runtime import TorchRuntime, create_runtime

    if backend == "eager":
        return TorchRuntime(model, device=device)
    return create_runtime(model, example, "compile", batch_size=batch, device=device, compile_mode="reduce-overhead")


def step_certify_forward(args, result: dict) -> None:
    """CERTIFY ÷ forward: the bare model over N inputs in batches, against CERTIFY at n0 + n = N."""
    import torch

    from gpu_models import CifarClassifier
    from smoothgen.classify import SmoothedClassifier

    device = args.device
    batch, total, width = (128, 512, 8) if args.quick else (4_096, 200_000, 64)
    rows = []
    for backend in ("eager", "compile"):
        if backend == "compile" and (args.quick or device == "cpu"):
            continue  # CUDA graphs need CUDA; compiling on CPU is slow
        for dtype in (torch.float32, torch.bfloat16):
            model = Cast(CifarClassifier(width).to(device).eval(), dtype)
            example = torch.rand(3, 32, 32, device=device)
            runtime = _classifier_runtime(model, example, backend, batch, device)
            inputs = torch.rand(batch, 3, 32, 32, device=device)

            def forward():
                with torch.inference_mode():
                    for _ in range(total // batch):
                        runtime.run(inputs)

            smoothed = SmoothedClassifier(runtime, 10, 0.25, batch_size=batch)
            x = torch.rand(3, 32, 32, device=device, dtype=torch.float32)
            n = (total // batch) * batch - 100
            t_forward = _timed(forward, device, repeat=3)
            t_certify = _timed(lambda: smoothed.certify(x, 100, n, 0.001, seed=0), device, repeat=3)
            rows.append({"backend": "compile (CUDA graphs)" if backend == "compile" else backend,
                         "dtype": str(dtype).replace("torch.", ""), "samples": n + 100,
                         "forward_s": t_forward, "certify_s": t_certify, "ratio": t_forward / t_certify})
    result["rows"] = rows
    result["target"] = "certify ÷ forward ≥ 0.95"
    result["met"] = all(r["ratio"] >= 0.95 for r in rows)


def step_imagenet(args, result: dict) -> None:
    import torch

    from gpu_models import ResNet50
    from smoothgen.classify import SmoothedClassifier

    device = args.device
    side, n, batch, layers = (32, 300, 100, (1, 1, 1, 1)) if args.quick else (224, 100_000, 1_000, (3, 4, 6, 3))
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        model = ResNet50(layers=layers).to(device=device).eval()
        model = Cast(model.to(memory_format=torch.channels_last) if device != "cpu" else model, dtype)
        smoothed = SmoothedClassifier(model, 1000, 0.25, batch_size=batch)
        x = torch.rand(3, side, side, device=device)
        seconds = _timed(lambda: smoothed.certify(x, 100, n, 0.001, seed=0), device)
        rows.append({"model": f"ResNet-50 shape{'' if layers == (3, 4, 6, 3) else ' (toy)'}", "input": f"3x{side}x{side}",
                     "dtype": str(dtype).replace("torch.", ""), "n": n, "seconds": seconds})
    result["rows"] = rows
    result["target"] = "≤ 5 s at n = 100 000 (Cohen et al.: ≈ 150 s)"
    result["met"] = not args.quick and min(r["seconds"] for r in rows) <= 5.0


def Autocast(module, dtype):
    """The module run under torch.autocast(dtype) (its float32 weights and schedule stay as they are)."""
    import torch

    class _Autocast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, x):
            with torch.autocast(device_type=x.device.type, dtype=dtype):
                return self.inner(x).float()

    return _Autocast().eval()


def Cast(module, dtype):
    """A module with weights in `dtype` that casts its (noisy, float32) input itself: the rounding is part of
    the base classifier, after the noise, so certificates stay about the float32 input."""
    import torch

    class _Cast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module.to(dtype)

        def forward(self, x):
            return self.inner(x.to(dtype)).float()

    return _Cast().eval()


def step_dds(args, result: dict) -> None:
    import torch

    from gpu_models import CifarClassifier, CifarUNet
    from smoothgen.classify import SmoothedClassifier
    from smoothgen.denoise import DDS, DiffusionPurifier

    device = args.device
    channels, n, batch = (8, 200, 100) if args.quick else (128, 10_000, 1_000)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        unet = CifarUNet(channels).to(device).eval()
        base = DDS(DiffusionPurifier(unet, 0.5), CifarClassifier(8 if args.quick else 64).to(device).eval()).to(device=device)
        if dtype != torch.float32:
            base = Autocast(base, dtype)
        smoothed = SmoothedClassifier(base, 10, 0.5, batch_size=batch)
        x = torch.rand(3, 32, 32, device=device)
        seconds = _timed(lambda: smoothed.certify(x, 100, n, 0.001, seed=0), device)
        rows.append({"dtype": "fp32" if dtype == torch.float32 else "bf16 autocast", "n": n, "seconds_per_input": seconds})
    result["rows"] = rows


def step_lm(args, result: dict) -> None:
    from smoothgen.generative import SmoothedLM, TokenAblation
    from smoothgen.models import load_lm

    device = args.device
    n, tokens = (20, 4) if args.quick else (1_000, 16)
    prompt = "def read_lines(path):\n    with open(path) as f:\n        return f.read"
    rows = []
    for noise in ("ablation", "gaussian"):
        model = load_lm("code_lm_ablate0.1" if noise == "ablation" else "code_lm").to(device)
        probe = SmoothedLM(model, 0.01, device=device)
        ids = probe.prompt_ids(prompt)
        space = TokenAblation(max(1, round(0.1 * len(ids))), 0) if noise == "ablation" else 0.01
        smoothed = SmoothedLM(model, space, device=device, batch_size=250)
        t0 = time.perf_counter()
        cert = smoothed.generate(ids, tokens, n0=20 if args.quick else 100, n=n, alpha=0.001, seed=0)
        seconds = time.perf_counter() - t0
        rows.append({"noise": noise, "tokens": len(cert.tokens), "n": n, "certified_tokens": cert.certified_prefix,
                     "seconds": seconds})
    result["rows"] = rows
    result["batching"] = _lm_batching(args, load_lm("code_lm_ablate0.1").to(device), n, tokens)


def _lm_batching(args, model, n: int, tokens: int) -> dict:
    """The service's --generate-batching on this device: whether the embedded LM passes SharedLM's probe
    (rows the same alone and merged), and four concurrent generations of one token count, merged against
    one at a time (wall time, and whether the records are identical)."""
    import threading

    from smoothgen.generation.batching import SharedLM, probe
    from smoothgen.generative import SmoothedLM, TokenAblation

    prompts = [f"def {name}(path):\n    with open(path) as f:\n        return f.read"
               for name in ("read_text", "load_data", "parse_all", "read_conf")]

    def certify(m, prompt, seed):
        ids = SmoothedLM(m, 0.01, device=args.device).prompt_ids(prompt)
        smoothed = SmoothedLM(m, TokenAblation(max(1, round(0.1 * len(ids))), 0), device=args.device, batch_size=250)
        return smoothed.generate(ids, tokens, n0=20 if args.quick else 100, n=n, alpha=0.001, seed=seed)

    t0 = time.perf_counter()
    alone = [certify(model, p, i) for i, p in enumerate(prompts)]
    _sync(args.device)
    alone_s = time.perf_counter() - t0
    together: list = [None] * len(prompts)
    with SharedLM(model) as shared:
        threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, certify(shared, prompts[i], i)))
                   for i in range(len(prompts))]
        t0 = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        _sync(args.device)
        merged_s = time.perf_counter() - t0
        return {"probe": probe(model), "merging": shared.merging, "calls": shared.calls, "runs": shared.batches,
                "one_at_a_time_s": alone_s, "merged_s": merged_s, "speedup": alone_s / merged_s,
                "identical": together == alone}


RUNNERS = {"setup": step_setup, "cuda-tests": step_cuda_tests, "kernels": step_kernels,
           "certify-forward": step_certify_forward, "imagenet": step_imagenet, "dds": step_dds, "lm": step_lm}


# ------------------------------------------------------------------------------------------ report
def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "triton", "numpy", "scipy", "onnxruntime"):
        try:
            out[name] = __import__(name).__version__
        except Exception:
            out[name] = "not installed"
    return out


def markdown(report: dict) -> str:
    lines = [f"## GPU check — {report['device']}, {report['date']}", "",
             f"Command: `{report['command']}`  ", "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    for name, step in report["steps"].items():
        status = step.get("status")
        lines.append(f"### {name}: {status}" + (f" ({step['seconds']:.1f} s)" if "seconds" in step else ""))
        if "error" in step:
            lines.append(f"\n```\n{step['error'][-1500:]}\n```")
        rows = step.get("rows")
        if rows:
            keys = list(rows[0])
            lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            for row in rows:
                lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
        for key in ("target", "met", "summary", "failures", "core", "build_s", "report", "batching"):
            if key in step:
                value = step[key]
                lines.append(f"- {key}: " + ("; ".join(value) if isinstance(value, list) else str(value)))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (run it on a GPU machine, or --device cpu --quick for a toy run)", file=sys.stderr)
        return 2
    if args.device == "cpu":
        args.skip |= {"setup", "cuda-tests", "kernels"}  # they prove nothing without a GPU
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({platform.processor() or platform.machine()})"
    report = {"device": device_name, "date": datetime.date.today().isoformat(), "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
              "versions": versions(), "steps": {}}
    ok = True
    for name in STEPS:
        if name in args.skip:
            report["steps"][name] = {"status": "skipped"}
            continue
        step: dict[str, Any] = {}
        t0 = time.perf_counter()
        try:
            RUNNERS[name](args, step)
            step["status"] = "passed"
        except Exception as exc:  # a failed step is reported; the others still run
            ok = False
            step.update(status="FAILED", error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}")
        step["seconds"] = time.perf_counter() - t0
        report["steps"][name] = step
        print(f"gpu_check: {name}: {step['status']} ({step['seconds']:.1f} s)", file=sys.stderr, flush=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    (out / "gpu_check.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
