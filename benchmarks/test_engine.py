"""Engine benchmarks (pytest-benchmark): efficiency on a larger CNN, backends side by side, the scheduler.

(a) certification samples/s ÷ the same runtime's raw forward samples/s at the same batch size, for a
    ResNet-style CNN on 3×32×32 with random weights (the digits CNN is in test_throughput.py);
(b) eager vs torch.compile vs ONNX Runtime forward throughput on CPU, same inputs;
(c) the scheduler: 64 concurrent certification requests vs the same 64 one at a time, with p50/p99
    request latency.
`make bench` runs them for real; `make test` runs each once as a test (--benchmark-disable). Figures
go to benchmarks/RESULTS.md with device, date and command.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

from smoothgen import SmoothedClassifier
from smoothgen.engine.runtime import create_runtime
from smoothgen.engine.scheduler import Scheduler
from smoothgen.models import load_classifier, load_digits_split

from bench_record import line, record

BATCH = 256
N0, N = 100, 2_000


class Block(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ResNetish(nn.Module):
    """A small ResNet-style CNN for 3×32×32 inputs (random weights: only its cost matters here)."""

    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stage1 = Block(width)
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.stage2 = Block(2 * width)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


def _resnet():
    torch.manual_seed(0)
    return ResNetish().eval(), torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))


def _digits():
    return load_classifier(0.25), torch.from_numpy(load_digits_split().x_test[0])


def _noisy_batches(x, count, sigma=0.25):
    generator = torch.Generator().manual_seed(0)
    return [x + sigma * torch.randn(BATCH, *x.shape, generator=generator) for _ in range(count)]


# ---------------------------------------------------------------- (a) efficiency on a larger CNN
def test_forward_resnet(benchmark):
    model, x = _resnet()
    batches = _noisy_batches(x, N // BATCH)

    def forward():
        with torch.inference_mode():
            for batch in batches:
                model(batch).argmax(1)

    benchmark.pedantic(forward, rounds=3, warmup_rounds=1)
    record(benchmark, "forward:resnet", len(batches) * BATCH)


def test_certify_resnet(benchmark):
    model, x = _resnet()
    smoothed = SmoothedClassifier(model, 10, 0.25, batch_size=BATCH, backend="eager")  # the eager path these figures measure
    benchmark.pedantic(lambda: smoothed.certify(x, N0, N, 0.001, seed=0), rounds=3, warmup_rounds=1)
    record(benchmark, "certify:resnet", N0 + N)


# ---------------------------------------------------------------- (b) backends side by side on CPU
@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["digits", "resnet"])
@pytest.mark.parametrize("backend", ["eager", "compile", "onnxruntime"])
def test_backend_forward(benchmark, backend, model_name):
    model, x = _digits() if model_name == "digits" else _resnet()
    runtime = create_runtime(model, x, backend=backend, batch_size=BATCH, device="cpu")
    batches = _noisy_batches(x, 8)

    def forward():
        for batch in batches:
            runtime.run(batch)

    benchmark.pedantic(forward, rounds=3, warmup_rounds=1)
    record(benchmark, f"backend {backend}:{model_name}", len(batches) * BATCH)


# ---------------------------------------------------------------- (c) the scheduler
REQUESTS = 64


def _certify_all(smoothed, inputs):
    latencies = []

    def one(i):
        t0 = time.perf_counter()
        cert = smoothed.certify(inputs[i], N0, 1_000, 0.001, seed=0, request_id=i)
        latencies.append(time.perf_counter() - t0)
        return cert

    return one, latencies


def test_scheduler_64_concurrent_requests(benchmark):
    model, _ = _digits()
    split = load_digits_split()
    inputs = [torch.from_numpy(split.x_test[i]) for i in range(REQUESTS)]

    alone = SmoothedClassifier(model, 10, 0.25, batch_size=1000, backend="eager")
    one_alone, alone_latencies = _certify_all(alone, inputs)
    t0 = time.perf_counter()
    expected = [one_alone(i) for i in range(REQUESTS)]
    alone_s = time.perf_counter() - t0

    def concurrent():
        with Scheduler(model, batch_size=1000, quota=250) as scheduler:
            smoothed = SmoothedClassifier(scheduler.runtime, 10, 0.25, sampler=scheduler.sampler())
            one, latencies = _certify_all(smoothed, inputs)
            with ThreadPoolExecutor(REQUESTS) as pool:
                certs = list(pool.map(one, range(REQUESTS)))
        return certs, latencies

    certs, latencies = benchmark.pedantic(concurrent, rounds=3, warmup_rounds=0)
    assert certs == expected  # batching together changes nothing
    if not benchmark.disabled:
        batched_s = benchmark.stats.stats.min
        samples = REQUESTS * (N0 + 1_000)
        # All 64 arrive at once: served one at a time, request i waits for the i before it.
        queued = np.cumsum(alone_latencies)
        line(f"scheduler: {REQUESTS} requests one at a time {samples / alone_s:8.0f} samples/s, "
             f"latency p50 {np.percentile(queued, 50) * 1e3:.0f} ms, p99 {np.percentile(queued, 99) * 1e3:.0f} ms")
        line(f"scheduler: {REQUESTS} concurrent requests    {samples / batched_s:8.0f} samples/s, "
             f"latency p50 {np.percentile(latencies, 50) * 1e3:.0f} ms, p99 {np.percentile(latencies, 99) * 1e3:.0f} ms")
