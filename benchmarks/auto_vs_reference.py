"""The default `smoothgen certify` path, and the library's default, against a reference CERTIFY, per certified
input, same process (issues 15 and 25).

Default path: what `smoothgen certify` builds with its defaults (smoothgen.base_models.apply_backend):
`create_runtime(model, x[0], "auto", batch_size=1000, device="cpu", sigma=σ)` (ONNX Runtime when it reproduces
eager on the probe batch), then `SmoothedClassifier(...).certify(x, n0, n, α, seed)`.
Library default: `SmoothedClassifier(model, 10, σ, batch_size=1000)` given the torch module itself, nothing
else (with $SMOOTHGEN_BACKEND unset: its default backend, "auto", built at the first input).
Reference: Cohen, Rosenfeld & Kolter's CERTIFY as in their code (locuslab/smoothing, core.py `Smooth.certify`):
the eager torch model under `torch.no_grad`, `x.repeat` + `torch.randn_like(batch) * σ` per batch, argmax,
NumPy counts, a Clopper–Pearson lower bound (scipy.stats.beta; theirs calls statsmodels' proportion_confint,
method="beta", which is the same formula), at the same n0, n, α and batch size.
The two are interleaved input by input (order alternating) so the shared machine's load swings hit both.

Models: the embedded digits CNN (1×8×8, σ = 0.25) and the ResNet-style CIFAR-size CNN of
benchmarks/test_engine.py (3×32×32, width 16, random weights).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/auto_vs_reference.py [--inputs 6] [--n 10000]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from math import ceil
from pathlib import Path

import numpy as np
import torch
from scipy.stats import beta, norm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from smoothgen import SmoothedClassifier  # noqa: E402
from smoothgen.engine import runtime as runtimes  # noqa: E402
from smoothgen.models import load_classifier, load_digits_split  # noqa: E402
from test_engine import ResNetish  # noqa: E402

BATCH = 1000  # the CLI's --batch-size default, and Cohen et al.'s certify.py default


class ReferenceSmooth:
    """Cohen et al.'s `Smooth` (certify only), on the CPU."""

    def __init__(self, base_classifier, num_classes: int, sigma: float):
        self.base_classifier, self.num_classes, self.sigma = base_classifier, num_classes, sigma

    def certify(self, x, n0, n, alpha, batch_size):
        self.base_classifier.eval()
        counts_selection = self._sample_noise(x, n0, batch_size)
        c_a = counts_selection.argmax().item()
        counts_estimation = self._sample_noise(x, n, batch_size)
        n_a = counts_estimation[c_a].item()
        p_a = self._lower_confidence_bound(n_a, n, alpha)
        if p_a < 0.5:
            return -1, 0.0
        return c_a, self.sigma * norm.ppf(p_a)

    def _sample_noise(self, x, num, batch_size):
        with torch.no_grad():
            counts = np.zeros(self.num_classes, dtype=int)
            for _ in range(ceil(num / batch_size)):
                this_batch_size = min(batch_size, num)
                num -= this_batch_size
                batch = x.repeat((this_batch_size, 1, 1, 1))
                noise = torch.randn_like(batch) * self.sigma
                predictions = self.base_classifier(batch + noise).argmax(1)
                counts += np.bincount(predictions.cpu().numpy(), minlength=self.num_classes)
            return counts

    def _lower_confidence_bound(self, n_a, n, alpha):
        return beta.ppf(alpha, n_a, n - n_a + 1) if n_a > 0 else 0.0  # proportion_confint(.., 2α, "beta")[0]


def _models():
    digits = load_classifier(0.25)
    xs = torch.from_numpy(load_digits_split().x_test[:50])
    torch.manual_seed(0)
    resnet = ResNetish().eval()
    cifar = torch.rand(50, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return {"digits CNN (1x8x8)": (digits, xs, 0.25), "CIFAR-size ResNet-style CNN (3x32x32)": (resnet, cifar, 0.25)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=6)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.001)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, n0={args.n0} n={args.n} batch={BATCH}")
    for name, (model, xs, sigma) in _models().items():
        start = time.perf_counter()
        runtime = runtimes.create_runtime(model, xs[0], "auto", batch_size=BATCH, device="cpu", sigma=sigma)
        first = time.perf_counter() - start
        start = time.perf_counter()
        again = runtimes.create_runtime(model, xs[0], "auto", batch_size=BATCH, device="cpu", sigma=sigma)
        cached = time.perf_counter() - start
        assert again is runtime
        smoothed = SmoothedClassifier(runtime, 10, sigma, batch_size=BATCH, input_shape=tuple(xs.shape[1:]))
        library = SmoothedClassifier(model, 10, sigma, batch_size=BATCH)  # the library's default, nothing else given
        reference = ReferenceSmooth(model, 10, sigma)
        # one untimed round each (allocator, thread pools; the library default builds its runtime here)
        smoothed.certify(xs[0], args.n0, min(args.n, 2 * BATCH), args.alpha, seed=0)
        library.certify(xs[0], args.n0, min(args.n, 2 * BATCH), args.alpha, seed=0)
        reference.certify(xs[0], args.n0, min(args.n, 2 * BATCH), args.alpha, BATCH)
        times = {"default": [], "library": [], "reference": []}
        agree = 0
        for i in range(args.inputs):
            x = xs[i]
            order = ("default", "library", "reference")[:: 1 if i % 2 == 0 else -1]
            out = {}
            for which in order:
                t0 = time.perf_counter()
                if which in ("default", "library"):
                    cert = (smoothed if which == "default" else library).certify(x, args.n0, args.n, args.alpha, seed=i)
                    out[which] = (-1 if cert.abstained else cert.prediction)
                else:
                    out[which] = reference.certify(x, args.n0, args.n, args.alpha, BATCH)[0]
                times[which].append(time.perf_counter() - t0)
            agree += out["default"] == out["reference"] == out["library"]
        d, r, lib = times["default"], times["reference"], times["library"]
        print(f"{name}: auto chose {runtime.backend} ({runtime.input_dtype}); one-time create_runtime "
              f"(export + probe + warm-up) {first:.2f} s, cached call {cached * 1e3:.2f} ms")
        print(f"  per input: default {statistics.median(d):.3f} s median / {min(d):.3f} s fastest; reference "
              f"{statistics.median(r):.3f} s median / {min(r):.3f} s fastest over {args.inputs} inputs")
        print(f"  reference / default: {statistics.median(r) / statistics.median(d):.2f}x (medians), "
              f"{min(r) / min(d):.2f}x (fastest); same prediction (all three) on {agree}/{args.inputs}")
        print(f"  library default SmoothedClassifier(module): runs on {library.runtime.backend}; "
              f"{statistics.median(lib):.3f} s median / {min(lib):.3f} s fastest; reference / library "
              f"{statistics.median(r) / statistics.median(lib):.2f}x (medians), {min(r) / min(lib):.2f}x (fastest)")


if __name__ == "__main__":
    main()
