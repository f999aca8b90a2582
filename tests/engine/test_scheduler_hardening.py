"""What a stress test broke in the Scheduler (issue 13, items 1 and 2), each pinned by a test."""
import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from smoothgen import SmoothedClassifier
from smoothgen.engine import ClassCounts, Purpose, RandomStream, Sampler
from smoothgen.engine.scheduler import QueueFullError, Request, RequestCancelledError, Scheduler
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError, SmoothgenError
from smoothgen.models import load_classifier, load_digits_split


def sign_model(x):
    return torch.stack([-x[:, 0], x[:, 0]], dim=1)


def slow_sign_model(delay):
    def model(x):
        time.sleep(delay)
        return sign_model(x)

    return model


def request(seed, n, x=None):
    x = torch.zeros(2) if x is None else x
    return Request(x, n, 1.0, RandomStream(seed).key(Purpose.ESTIMATION), ClassCounts(2))


@pytest.fixture(scope="module")
def digit():
    return torch.from_numpy(load_digits_split().x_test[0])


def _certify(scheduler, x, request_id=0):
    smoothed = SmoothedClassifier(scheduler.runtime, 10, 0.25, sampler=scheduler.sampler())
    return smoothed.certify(x, 100, 1000, 0.001, seed=0, request_id=request_id)


# --------------------------------------------------------------------------------------------------
# 1. One bad first request must not disable the scheduler
# --------------------------------------------------------------------------------------------------


def test_a_float64_first_request_is_converted_and_the_scheduler_keeps_working(digit):
    with Scheduler(load_classifier(0.25), batch_size=1000, quota=250) as scheduler:
        first = _certify(scheduler, digit.double())  # the review's reproduction: digits are exact in float32
        second = _certify(scheduler, digit)
    assert first.to_record() == second.to_record()


@pytest.mark.parametrize("bad", ["lossy64", "int64", "bool", "nan", "shape_8x8", "shape_64"])
def test_a_bad_first_request_is_refused_or_fails_alone(digit, bad):
    inputs = {
        "lossy64": digit.double() + 1e-12,
        "int64": digit.long(),
        "bool": digit > 0.5,
        "nan": torch.full_like(digit, float("nan")),
        "shape_8x8": digit[0],
        "shape_64": digit.reshape(64),
    }
    with Scheduler(load_classifier(0.25), batch_size=1000, quota=250) as scheduler:
        with pytest.raises(SmoothgenError) as info:
            _certify(scheduler, inputs[bad])
        assert isinstance(info.value, (InvalidInputError, ModelOutputError))
        good = _certify(scheduler, digit)  # every later correct request is served
    alone = SmoothedClassifier(load_classifier(0.25), 10, 0.25).certify(digit, 100, 1000, 0.001, seed=0)
    assert good.to_record() == alone.to_record()


def test_float16_is_converted_exactly(digit):
    with Scheduler(load_classifier(0.25), batch_size=500) as scheduler:
        half = _certify(scheduler, digit.half())
        full = _certify(scheduler, digit)
    assert half.to_record() == full.to_record()


def test_a_shape_that_ran_stays_the_schedulers():
    with Scheduler(sign_model, batch_size=100) as scheduler:
        scheduler.submit(request(0, 10)).result(timeout=30)
        with pytest.raises(InvalidInputError):
            scheduler.submit(request(0, 10, x=torch.zeros(3)))


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1.0, "soon", True])
def test_bad_timeouts_are_refused(timeout):
    with Scheduler(sign_model, batch_size=10) as scheduler:
        with pytest.raises(InvalidParameterError):
            scheduler.submit(request(0, 10), timeout=timeout)
        assert scheduler.submit(request(0, 10)).result(timeout=30).sum() == 10


@pytest.mark.parametrize("field,value", [("sigma", 0.0), ("sigma", float("nan")), ("n", 0), ("n", 2.5), ("start", -1)])
def test_bad_request_fields_are_refused(field, value):
    with Scheduler(sign_model, batch_size=10) as scheduler:
        bad = request(0, 10)
        setattr(bad, field, value)
        with pytest.raises(InvalidParameterError):
            scheduler.submit(bad)
        assert scheduler.submit(request(0, 10)).result(timeout=30).sum() == 10


# --------------------------------------------------------------------------------------------------
# 2. Overload and shutdown
# --------------------------------------------------------------------------------------------------


def test_abandoned_async_requests_are_shed():
    """The review measured 11 000 samples run where 6 000 were needed: a caller whose wait_for timed out
    while waiting for a queue slot still got its request queued later."""

    async def main(scheduler):
        # 30 batches of 20 ms: the only slot stays taken while the five callers give up (5 × 50 ms).
        long = asyncio.ensure_future(scheduler.submit_async(request(0, 3000)))
        await asyncio.sleep(0.05)
        for i in range(5):  # each gives up while waiting for the only slot
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(scheduler.submit_async(request(i + 1, 1000)), timeout=0.05)
        return await long

    with Scheduler(slow_sign_model(0.02), batch_size=100, max_pending=1) as scheduler:
        counts = asyncio.run(main(scheduler))
        time.sleep(0.3)  # anything wrongly queued would run now
        assert counts.sum() == 3000
    assert scheduler.samples_run == 3000


def test_a_done_callback_cannot_deadlock_the_worker():
    seen: list[BaseException | None] = []
    scheduler = Scheduler(slow_sign_model(0.01), batch_size=10, max_pending=2)

    def callback(_):
        try:
            scheduler.submit(request(7, 10))  # fills the second slot
            scheduler.submit(request(8, 10))  # the queue is full: the worker must not wait on itself
            seen.append(None)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            seen.append(exc)

    short = scheduler.submit(request(0, 10))
    long = scheduler.submit(request(1, 200))
    short.add_done_callback(callback)
    assert long.result(timeout=60).sum() == 200
    scheduler.close()
    assert len(seen) == 1 and isinstance(seen[0], QueueFullError)


def test_close_from_a_done_callback():
    scheduler = Scheduler(sign_model, batch_size=10)
    errors: list[BaseException] = []

    def callback(_):
        try:
            scheduler.close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    future = scheduler.submit(request(0, 10))
    future.add_done_callback(callback)
    assert future.result(timeout=30).sum() == 10
    scheduler._worker.join(timeout=30)
    assert not errors and not scheduler._worker.is_alive()


def test_callers_blocked_at_shutdown_get_a_smoothgen_error():
    scheduler = Scheduler(slow_sign_model(0.02), batch_size=10)
    future = scheduler.submit(request(0, 10_000))
    closer = threading.Timer(0.1, scheduler.close, kwargs={"cancel_pending": True})
    closer.start()
    with pytest.raises(RequestCancelledError) as info:
        future.result(timeout=60)
    closer.join()
    assert isinstance(info.value, SmoothgenError)


def test_a_failed_batch_is_retried_before_its_requests_fail():
    """A model that fails on every fifth call (a transient fault): each request in a failed batch is retried
    alone once, and every result is the one computed without faults."""
    calls = {"n": 0}

    def flaky(x):
        calls["n"] += 1
        if calls["n"] % 5 == 0:
            raise RuntimeError("transient fault")
        return sign_model(x)

    with Scheduler(flaky, batch_size=100, quota=50) as scheduler:
        futures = [scheduler.submit(request(i, 300)) for i in range(6)]
        results = [f.result(timeout=60) for f in futures]
        assert scheduler.batches_failed > 0
    for i, counts in enumerate(results):
        expected = Sampler(100).counts(sign_model, torch.zeros(2), 300, 1.0, 2, RandomStream(i).key(Purpose.ESTIMATION))
        assert np.array_equal(counts, expected)


def test_a_request_that_breaks_the_model_fails_alone():
    def picky(x):
        if bool((x[:, 1] > 50).any()):
            raise RuntimeError("input out of range")
        return sign_model(x)

    with Scheduler(picky, batch_size=100, quota=50) as scheduler:
        good = scheduler.submit(request(0, 200))
        bad = scheduler.submit(request(1, 200, x=torch.tensor([0.0, 100.0])))
        assert good.result(timeout=60).sum() == 200
        with pytest.raises(ModelOutputError, match="input out of range"):
            bad.result(timeout=60)
