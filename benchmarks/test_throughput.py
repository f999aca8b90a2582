"""Certification throughput against the raw batched forward throughput of the same model, same run.

`make bench` runs these for real; `make test` runs them once each, as tests (--benchmark-disable).
The ratio certify/forward says what the certifier costs beyond the model: noise, argmax, counting,
the Clopper-Pearson bound. Figures go to benchmarks/RESULTS.md.
"""
import statistics
import time

import pytest
import torch

from smoothgen import SmoothedClassifier
from smoothgen.models import load_classifier, load_digits_split

from bench_record import line, record

N0, N, BATCH = 100, 20_000, 1000


@pytest.fixture(scope="module")
def setup():
    model = load_classifier(0.25)
    x = torch.from_numpy(load_digits_split().x_test[0])
    return model, x


def test_forward_throughput(benchmark, setup):
    """The model alone on (N0 + N) noisy inputs in batches of BATCH, the noise drawn before timing.

    The inputs are noisy copies like the ones certification feeds it: a batch of one repeated clean image
    runs measurably faster on CPU (about 14 vs 16 ms per 1000 here), which would flatter the reference.
    """
    model, x = setup
    generator = torch.Generator().manual_seed(0)
    rounds = (N0 + N) // BATCH
    batches = [x + 0.25 * torch.randn(BATCH, *x.shape, generator=generator) for _ in range(rounds)]

    def forward():
        with torch.inference_mode():
            for batch in batches:
                model(batch).argmax(1)

    benchmark.pedantic(forward, rounds=5, warmup_rounds=1)
    record(benchmark, "forward:digits", rounds * BATCH)


def test_certify_throughput(benchmark, setup):
    """A full CERTIFY: N0 selection + N estimation samples, noise made per batch, counts on the device."""
    model, x = setup
    smoothed = SmoothedClassifier(model, 10, 0.25, batch_size=BATCH, backend="eager")  # the eager path these figures measure
    cert = benchmark.pedantic(lambda: smoothed.certify(x, N0, N, 0.001, seed=0), rounds=5, warmup_rounds=1)
    assert not cert.abstained
    record(benchmark, "certify:digits", N0 + N)


def test_certify_vs_forward_interleaved(benchmark, setup):
    """The same two workloads, alternated within one loop (forward first in even pairs, certify first
    in odd ones), so that the machine's speed swings (±40 % between runs on the 2-core VM) hit both
    alike. Prints certify/forward throughput ratios from the fastest and from the median timings."""
    model, x = setup
    smoothed = SmoothedClassifier(model, 10, 0.25, batch_size=BATCH, backend="eager")  # the eager path these figures measure
    generator = torch.Generator().manual_seed(0)
    batches = [x + 0.25 * torch.randn(BATCH, *x.shape, generator=generator) for _ in range((N0 + N) // BATCH)]
    pairs = 1 if benchmark.disabled else 15
    timings: dict[str, list[float]] = {"forward": [], "certify": []}

    def forward():
        with torch.inference_mode():
            for batch in batches:
                model(batch).argmax(1)

    def certify():
        assert not smoothed.certify(x, N0, N, 0.001, seed=0).abstained

    def alternate():
        for i in range(pairs):
            order = (("forward", forward), ("certify", certify)) if i % 2 == 0 else (("certify", certify), ("forward", forward))
            for name, fn in order:
                start = time.perf_counter()
                fn()
                timings[name].append(time.perf_counter() - start)

    benchmark.pedantic(alternate, rounds=1, warmup_rounds=0 if benchmark.disabled else 1)
    forward_s, certify_s = timings["forward"][-pairs:], timings["certify"][-pairs:]
    assert len(forward_s) == len(certify_s) == pairs
    line(f"{'certify / forward digits, interleaved':40s} {min(forward_s) / min(certify_s):12.3f} (fastest), "
         f"{statistics.median(forward_s) / statistics.median(certify_s):.3f} (median) over {pairs} pairs")
