"""The Scheduler: continuous batching of concurrent requests, bit-identical to running alone."""
import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from smoothgen import SmoothedClassifier
from smoothgen.engine import ClassCounts, KeepOutputs, Purpose, RandomStream, Sampler, TorchRuntime
from smoothgen.engine.scheduler import QueueFullError, Request, Scheduler, SchedulerClosedError
from smoothgen.errors import InvalidInputError, ModelOutputError
from smoothgen.models import load_classifier, load_digits_split


class Recording(torch.nn.Module):
    """Wraps a model and records the batch sizes it ran."""

    def __init__(self, inner, delay: float = 0.0):
        super().__init__()
        self.inner, self.delay, self.sizes = inner, delay, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if self.delay:
            time.sleep(self.delay)
        return self.inner(x)


def sign_model(x):
    return torch.stack([-x[:, 0], x[:, 0]], dim=1)


def counts_request(seed, n, x=None, quota=None):
    x = torch.zeros(2) if x is None else x
    return Request(x, n, 1.0, RandomStream(seed).key(Purpose.ESTIMATION), ClassCounts(2), quota=quota)


def test_64_concurrent_certificates_are_bit_identical_to_alone():
    model = load_classifier(0.25)
    split = load_digits_split()
    inputs = [torch.from_numpy(split.x_test[i]) for i in range(64)]
    alone = SmoothedClassifier(model, 10, 0.25, batch_size=1000)
    expected = [alone.certify(x, 100, 1000, 0.001, seed=0, request_id=i) for i, x in enumerate(inputs)]
    recording = Recording(model)
    with Scheduler(recording, batch_size=1000, quota=250) as scheduler:
        smoothed = SmoothedClassifier(scheduler.runtime, 10, 0.25, sampler=scheduler.sampler())
        with ThreadPoolExecutor(64) as pool:
            got = list(pool.map(lambda i: smoothed.certify(inputs[i], 100, 1000, 0.001, seed=0, request_id=i), range(64)))
    assert got == expected
    # The device batches really mixed requests: fewer batches than the 2 x 64 that 64 requests alone would run.
    assert sum(recording.sizes) == 64 * 1100
    assert len(recording.sizes) < 64 * 2
    assert max(recording.sizes) == 1000


def test_fifo_with_quota_shares_batches():
    recording = Recording(sign_model)
    scheduler = Scheduler(recording, batch_size=100, quota=25)
    gate = threading.Event()
    original = recording.forward
    recording.forward = lambda x: (gate.wait(), original(x))[1]  # hold the first batch until all are queued
    futures = [scheduler.submit(counts_request(i, 100)) for i in range(4)]
    gate.set()
    results = [f.result(timeout=30) for f in futures]
    scheduler.close()
    assert all(r.sum() == 100 for r in results)
    # No request ever took more than its quota of 25 in a batch, and once all four were queued (the
    # first batch is held until then) a batch was shared by all four.
    assert all(size % 25 == 0 for size in recording.sizes)
    assert max(recording.sizes) == 100 and sum(recording.sizes) == 400
    for f in futures:
        assert f.stats.batches >= 4 and f.stats.total_s >= f.stats.service_s >= 0 and f.stats.queued_s >= 0


def test_same_result_whatever_the_quota_and_batch():
    expected = Sampler(1000).counts(sign_model, torch.tensor([0.3, 0.0]), 777, 1.0, 2, RandomStream(5).key(Purpose.ESTIMATION))
    for batch, quota in [(64, None), (1000, 7), (10, 3)]:
        with Scheduler(sign_model, batch_size=batch, quota=quota) as scheduler:
            got = scheduler.submit(counts_request(5, 777, x=torch.tensor([0.3, 0.0]))).result(timeout=30)
        assert np.array_equal(got, expected)


def test_back_pressure_and_cancellation():
    slow = Recording(sign_model, delay=0.05)
    scheduler = Scheduler(slow, batch_size=10, max_pending=2)
    first = scheduler.submit(counts_request(0, 200))
    second = scheduler.submit(counts_request(1, 200))
    with pytest.raises(QueueFullError):
        scheduler.submit(counts_request(2, 10), timeout=0.05)
    assert second.cancel()
    assert first.result(timeout=60).sum() == 200
    assert second.cancelled()
    # The cancelled request stopped taking samples: far fewer than its 200 were run.
    assert scheduler.samples_run < 200 + 200
    third = scheduler.submit(counts_request(2, 10), timeout=5)
    assert third.result(timeout=30).sum() == 10
    scheduler.close()
    with pytest.raises(SchedulerClosedError):
        scheduler.submit(counts_request(3, 10))


def test_asyncio_submission():
    async def main(scheduler):
        return await asyncio.gather(*(scheduler.submit_async(counts_request(i, 300)) for i in range(8)))

    with Scheduler(sign_model, batch_size=256, quota=64) as scheduler:
        results = asyncio.run(main(scheduler))
    for i, r in enumerate(results):
        assert np.array_equal(r, Sampler(256).counts(sign_model, torch.zeros(2), 300, 1.0, 2, RandomStream(i).key(Purpose.ESTIMATION)))


def test_failures_stay_with_their_request():
    with Scheduler(sign_model, batch_size=100, quota=50) as scheduler:
        good = scheduler.submit(counts_request(0, 100))
        bad = scheduler.submit(Request(torch.zeros(2), 100, 1.0, RandomStream(1).key(Purpose.ESTIMATION), ClassCounts(3)))
        assert good.result(timeout=30).sum() == 100
        with pytest.raises(ModelOutputError):
            bad.result(timeout=30)
        with pytest.raises(InvalidInputError):
            scheduler.submit(counts_request(0, 10, x=torch.zeros(3)))

    def broken(x):
        raise RuntimeError("device lost")

    with Scheduler(broken, batch_size=10) as scheduler:
        with pytest.raises(RuntimeError, match="device lost"):
            scheduler.submit(counts_request(0, 10)).result(timeout=30)
        # The worker survives a failed batch.
        with pytest.raises(RuntimeError):
            scheduler.submit(counts_request(0, 10)).result(timeout=30)


def test_scheduled_sampler_outputs_match_sampler():
    key = RandomStream(9).key(Purpose.CENTER)
    expected = Sampler(64).outputs(lambda x: x * 2, torch.ones(3), 300, 0.5, key)
    runtime = TorchRuntime(lambda x: x * 2)
    with Scheduler(runtime, batch_size=50, quota=20) as scheduler:
        got = scheduler.sampler().outputs(runtime, torch.ones(3), 300, 0.5, key)
        with pytest.raises(Exception):
            scheduler.sampler().outputs(lambda x: x, torch.ones(3), 10, 0.5, key)
    assert torch.equal(got, expected)


def test_quota_caps_a_request_even_alone():
    recording = Recording(sign_model)
    with Scheduler(recording, batch_size=100, quota=25) as scheduler:
        scheduler.submit(counts_request(0, 100)).result(timeout=30)
        scheduler.submit(counts_request(1, 60, quota=40)).result(timeout=30)
    assert recording.sizes == [25, 25, 25, 25, 40, 20]
