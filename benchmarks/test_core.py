"""The C++ core against the torch/SciPy reference, in the same run (RESULTS.md, "C++ core").

Center smoothing, distances and selection only (no model): SMOOTH's min-median center over n samples,
the distances of n fresh check samples and of m = n radius samples to the center, and the order
statistic R̂ — through the public functions, with the core switched on or off (`smoothgen._core`). The
reference is torch.cdist (direct form) + torch.kthvalue medians, as smoothgen.center computes without
the core. Cohen certificates from class counts: the core's cohen_certify against the same decision in
Python with SciPy's Clopper–Pearson bound.

`make test` runs each case once (--benchmark-disable); the n = 10 000, d = 4 096 case (minutes for the
reference) runs only with SMOOTHGEN_BENCH_FULL=1. `make bench` times them and prints core/reference ratios.
"""
import os

import numpy as np
import pytest
import torch

from smoothgen import _core, stats
from smoothgen.center import _center_distances, min_median_center
from smoothgen.metrics import get_metric

FULL = os.environ.get("SMOOTHGEN_BENCH_FULL") == "1"
MEDIANS: dict[tuple, float] = {}

needs_core = pytest.mark.skipif(not _core.HAVE_CORE, reason=f"C++ core not built: {_core.REASON}")


@pytest.fixture(scope="module", autouse=True)
def ratio_report(request):
    """Print core/reference ratios once the run is over (output capture is off by then)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")

    def report():
        if reporter is None or not MEDIANS:
            return
        reporter.section("C++ core vs reference (median seconds per round; ratio = reference / core)")
        for key in sorted({k[:-1] for k in MEDIANS}):
            core, ref = MEDIANS.get((*key, "core")), MEDIANS.get((*key, "reference"))
            if core and ref:
                reporter.write_line(f"{' '.join(key):34s} core {core:10.4f}  reference {ref:10.4f}  ratio {ref / core:7.1f}x")

    request.config.add_cleanup(report)
    yield


def _record(benchmark, key):
    stats_ = getattr(benchmark, "stats", None)
    if stats_ is not None and not benchmark.disabled:
        MEDIANS[key] = stats_.stats.median


def _center_round(samples, check, radius_samples, metric):
    """SMOOTH's center, the check distances and p, the radius distances and R̂ (what certify computes)."""
    center, r = min_median_center(samples, metric)
    p = float((_center_distances(metric, check, center) <= r).sum()) / check.shape[0]
    distances = _center_distances(metric, radius_samples, center)
    k = stats.order_statistic_index(0.75, radius_samples.shape[0])
    return center, p, stats.order_statistic(distances.numpy(), k)


CASES = [
    pytest.param(1000, 64, id="n1000-d64"),
    pytest.param(1000, 4096, id="n1000-d4096"),
    pytest.param(10000, 64, id="n10000-d64"),
    pytest.param(10000, 4096, id="n10000-d4096",
                 marks=pytest.mark.skipif(not FULL, reason="minutes for the reference: SMOOTHGEN_BENCH_FULL=1")),
]


@needs_core
@pytest.mark.parametrize("impl", ["core", "reference"])
@pytest.mark.parametrize("n,d", CASES)
def test_center_smoothing(benchmark, n, d, impl):
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(d, generator=g)
    samples, check, radius_samples = (mean + 0.1 * torch.randn(n, d, generator=g) for _ in range(3))
    metric = get_metric("l2")
    previous = _core.enabled()
    _core.set_enabled(impl == "core")
    try:
        rounds = 1 if (n >= 10000 and impl == "reference") else 3
        benchmark.pedantic(_center_round, args=(samples, check, radius_samples, metric), rounds=rounds, warmup_rounds=0)
    finally:
        _core.set_enabled(previous)
    _record(benchmark, ("center l2", f"n={n}", f"d={d}", impl))


@needs_core
@pytest.mark.parametrize("impl", ["core", "reference"])
def test_cohen_certificates_from_counts(benchmark, impl):
    rng = np.random.default_rng(0)
    batch = [(rng.multinomial(100, [0.9, 0.05, 0.05]), rng.multinomial(100_000, [0.97, 0.02, 0.01])) for _ in range(1000)]
    sigma, alpha = 0.25, 0.001

    def core_certify():
        return [_core._C.cohen_certify(sel, est, sigma, alpha) for sel, est in batch]

    def reference_certify():
        # smoothgen.classify's decision on the same counts, with SciPy (the core switched off).
        out = []
        with _core.disabled():
            for sel, est in batch:
                c_hat = int(np.argmax(sel))
                n_a, n = int(est[c_hat]), int(est.sum())
                p_lower = stats.clopper_pearson_lower(n_a, n, alpha)
                out.append((c_hat, stats.cohen_radius(sigma, p_lower) if p_lower > 0.5 else 0.0))
        return out

    result = benchmark.pedantic(core_certify if impl == "core" else reference_certify, rounds=5, warmup_rounds=1)
    assert len(result) == len(batch)
    _record(benchmark, ("cohen certificates x1000", impl))
