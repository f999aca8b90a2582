"""The scheduler: many concurrent certification requests for one model, batched together.

Roles (as in vLLM): callers `submit` plain `Request`s and get futures; one worker thread (the loop)
fills each device batch with samples from several requests — oldest first, each taking at most its
quota per batch — runs the model once, and hands each request its slice of the outputs. Requests
finish independently: a request's reducer syncs with the host once, when its last sample is in.

Because every request draws its noise from its own key, copy by copy (counter-based, engine/noise.py), a
certificate computed among 64 concurrent requests is bit-identical to the one computed alone.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from smoothgen.engine.noise import NoiseKey, NoiseSource
from smoothgen.engine.reducers import ClassCounts, KeepOutputs, Reducer, ScoreSums
from smoothgen.engine.runtime import Runtime, as_runtime
from smoothgen.engine.sampler import DEFAULT_BATCH_SIZE, check_batch_size, detach_from, model_failure
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError, SmoothgenError, first_line
from smoothgen.validate import as_model_dtype, check_count, check_input, check_positive, check_sigma


class QueueFullError(SmoothgenError, RuntimeError):
    """The scheduler's queue stayed full for the whole submit timeout (back-pressure)."""


class SchedulerClosedError(SmoothgenError, RuntimeError):
    """A request was submitted to, or was still pending in, a closed scheduler."""


class RequestCancelledError(SmoothgenError, concurrent.futures.CancelledError):
    """The request was cancelled (by its caller, or by `close(cancel_pending=True)`) before it finished."""


@dataclass
class Request:
    """n noisy copies of x for one request, and what to keep of the model's outputs.

    Attributes:
        x: one input (no batch dimension).
        n: number of noisy copies.
        sigma: noise standard deviation.
        key: the request's noise key (`RandomStream(seed, request_id).key(purpose)`).
        reducer: what to keep (ClassCounts, KeepOutputs, ScoreSums); its result is the future's result.
        quota: at most this many of its samples per device batch (None: the scheduler's quota).
        start, total: copies start .. start + n − 1 of a stream of `total` copies (default 0 .. n − 1 of
            n), for sequential tests that continue one stream look by look.
    """

    x: torch.Tensor
    n: int
    sigma: float
    key: NoiseKey
    reducer: Reducer
    quota: int | None = None
    start: int = 0
    total: int | None = None


@dataclass(frozen=True)
class RequestStats:
    """Latency figures of one finished request (seconds, from time.perf_counter)."""

    queued_s: float  # submit -> first sample in a device batch
    service_s: float  # first batch -> result
    total_s: float  # submit -> result
    batches: int  # device batches the request had samples in


class RequestFuture(concurrent.futures.Future):
    """A future for a request's reducer result; `stats` holds its latency figures once it is done.

    A cancelled request's `result()` raises `RequestCancelledError` (a SmoothgenError, and still a
    concurrent.futures.CancelledError)."""

    stats: RequestStats | None = None

    def result(self, timeout: float | None = None) -> Any:
        try:
            return super().result(timeout)
        except concurrent.futures.CancelledError:
            raise RequestCancelledError("the request was cancelled before it finished") from None


class _Ticket:
    """An asyncio submission in progress: abandoned when its awaiting task is cancelled."""

    abandoned = False
    future: RequestFuture | None = None


@dataclass(eq=False)  # compared by identity: the loop removes exactly this entry from the queue
class _Active:
    request: Request
    future: RequestFuture
    source: NoiseSource
    submitted: float
    done: int = 0
    started: float | None = None
    batches: int = 0
    suspect: bool = False  # a batch holding it failed: it runs alone next, and fails if that fails too


class Scheduler:
    """Continuous batching of concurrent requests for one runtime.

    Args:
        model: a Runtime, torch module or callable of a batch.
        batch_size: samples per device batch.
        quota: default most samples of one request per batch (None: a whole batch, i.e. pure FIFO).
        max_pending: most requests queued or running at once; `submit` blocks beyond it (back-pressure).
        on_batch: called on the worker thread after each device batch that ran, with its number of
            samples (e.g. a metrics hook: smoothgen.service records batch fill); its errors are ignored.

    Use as a context manager, or call `close()`: the worker thread stops when the scheduler closes.
    """

    def __init__(
        self,
        model: Runtime | Callable,
        batch_size: int = DEFAULT_BATCH_SIZE,
        quota: int | None = None,
        max_pending: int = 256,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.runtime = as_runtime(model)
        self.on_batch = on_batch
        self.batch_size = check_batch_size(batch_size)
        if self.runtime.max_batch is not None:
            self.batch_size = min(self.batch_size, self.runtime.max_batch)
        self.quota = self.batch_size if quota is None else check_batch_size(quota)
        self.max_pending = check_batch_size(max_pending)
        self._active: collections.deque[_Active] = collections.deque()
        self._lock = threading.Condition()
        self._closed = False
        self._shape: tuple[tuple[int, ...], torch.dtype] | None = None
        self._shape_confirmed = False  # a batch of this shape/dtype ran: it is the model's
        self._buffer: torch.Tensor | None = None
        self.batches_run = 0
        self.batches_failed = 0
        self.samples_run = 0
        self._worker = threading.Thread(target=self._loop, name="smoothgen-scheduler", daemon=True)
        self._worker.start()

    # ---------------------------------------------------------------- callers' side
    def submit(self, request: Request, timeout: float | None = None) -> RequestFuture:
        """Queue a request; returns a future of its reducer's result (`future.stats`: latencies).

        Blocks while `max_pending` requests are in flight; raises QueueFullError after `timeout` seconds
        (at once when called from the scheduler's own thread, e.g. a done callback, which must not wait on
        itself). `future.cancel()` drops the request before its next batch. The request is validated
        before it can change any scheduler state: a bad one is refused and leaves the scheduler as it was.
        """
        return self._submit(request, timeout, None)

    def _validated(self, request: Request, timeout: float | None) -> tuple[torch.Tensor, int]:
        """(x on the model's device in the model's dtype, total) of a well-formed request, or a SmoothgenError."""
        if not isinstance(request, Request):
            raise InvalidParameterError(f"submit takes a Request, got {type(request).__name__}")
        n, start = check_count(request.n, "request n"), check_count(request.start, "request start", minimum=0)
        if request.quota is not None:
            check_batch_size(request.quota)
        total = n if request.total is None else check_count(request.total, "request total")
        if start + n > total:
            raise InvalidParameterError(f"copies {start}..{start + n} outside the stream of {total}")
        check_sigma(request.sigma)
        if not isinstance(request.key, NoiseKey):
            raise InvalidParameterError(f"request key must be a NoiseKey, got {type(request.key).__name__}")
        if not isinstance(request.reducer, Reducer):
            raise InvalidParameterError(f"request reducer must be a Reducer, got {type(request.reducer).__name__}")
        if timeout is not None:
            check_positive(timeout, "timeout (seconds)", allow_zero=True)
        x = as_model_dtype(check_input(request.x), self.runtime.input_dtype)
        return x.to(self.runtime.device), total

    def _submit(self, request: Request, timeout: float | None, ticket: _Ticket | None) -> RequestFuture:
        x, total = self._validated(request, timeout)
        signature = (tuple(x.shape), x.dtype)
        future = RequestFuture()
        on_worker = threading.current_thread() is self._worker
        with self._lock:
            if self._closed:
                raise SchedulerClosedError("the scheduler is closed")
            if signature != self._shape:
                # A shape no batch has run yet gives way when nothing is in flight: a first request that
                # failed in the model does not fix the scheduler's shape for good.
                if self._shape is not None and (self._shape_confirmed or self._active):
                    raise InvalidInputError(f"this scheduler batches inputs of shape/dtype {self._shape}, got {signature}")
            ready = lambda: len(self._active) < self.max_pending or self._closed or (ticket is not None and ticket.abandoned)  # noqa: E731
            if not ready() and on_worker:
                raise QueueFullError(f"{self.max_pending} requests in flight, and a done callback cannot wait for a slot")
            if not self._lock.wait_for(ready, timeout):
                raise QueueFullError(f"{self.max_pending} requests in flight for {timeout} s")
            if self._closed:
                raise SchedulerClosedError("the scheduler is closed")
            if ticket is not None and ticket.abandoned:
                raise RequestCancelledError("the caller gave up before the request was queued")
            if signature != self._shape:
                self._shape, self._shape_confirmed = signature, False
            source = NoiseSource(x, request.sigma, total, request.key)
            self._active.append(_Active(request, future, source, time.perf_counter()))
            if ticket is not None:
                ticket.future = future
            self._lock.notify_all()
        return future

    async def submit_async(self, request: Request, timeout: float | None = None) -> Any:
        """`submit` for asyncio: awaits back-pressure without blocking the event loop, then the result.

        A caller that gives up (its task is cancelled, or `asyncio.wait_for` times out) sheds its
        request: not queued if it was still waiting for a slot, cancelled before its next batch if it was.
        """
        loop = asyncio.get_running_loop()
        ticket = _Ticket()
        try:
            future = await loop.run_in_executor(None, self._submit, request, timeout, ticket)
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            with self._lock:
                ticket.abandoned = True
                if ticket.future is not None:
                    ticket.future.cancel()
                self._lock.notify_all()
            raise

    def sampler(self) -> "ScheduledSampler":
        """A Sampler-compatible view for SmoothedClassifier / CenterSmoother (sampler=...)."""
        return ScheduledSampler(self)

    def close(self, cancel_pending: bool = False) -> None:
        """Stop the worker: after the requests in flight finish, or cancelling them. From a done callback
        (the worker's own thread) it stops the worker without waiting for it."""
        with self._lock:
            self._closed = True
            if cancel_pending:
                for active in self._active:
                    active.future.cancel()
            self._lock.notify_all()
        if threading.current_thread() is not self._worker:
            self._worker.join()

    def __enter__(self) -> "Scheduler":
        return self

    def __exit__(self, *exc) -> None:
        self.close(cancel_pending=exc[0] is not None)

    # ---------------------------------------------------------------- the loop
    def _next_batch(self) -> list[tuple[_Active, int, int]] | None:
        """Slices (request, offset in batch, count): oldest requests first, each up to its quota."""
        with self._lock:
            self._lock.wait_for(lambda: self._active or self._closed)
            for active in [a for a in self._active if a.future.cancelled()]:
                self._active.remove(active)
                self._lock.notify_all()
            if not self._active:
                return None if self._closed else []
            suspect = next((a for a in self._active if a.suspect), None)
            if suspect is not None:  # retried alone, so that another request's failure cannot fail it twice
                take = min(suspect.request.quota or self.quota, suspect.request.n - suspect.done, self.batch_size)
                return [(suspect, 0, take)]
            slices, filled = [], 0
            for active in self._active:
                if filled == self.batch_size:
                    break
                quota = active.request.quota or self.quota
                take = min(quota, active.request.n - active.done, self.batch_size - filled)
                slices.append((active, filled, take))
                filled += take
            return slices

    def _loop(self) -> None:
        while True:
            slices = self._next_batch()
            if slices is None:
                return
            if not slices:  # only cancelled requests were left
                continue
            try:
                self._run_batch(slices)
            except BaseException as exc:  # a bug must fail its requests, never leave their callers waiting
                for active, _, _ in slices:
                    if not active.future.done():
                        self._finish(active, exception=exc)

    def _run_batch(self, slices: list[tuple[_Active, int, int]]) -> None:
        total = slices[-1][1] + slices[-1][2]
        shape, dtype = tuple(slices[0][0].source.x.shape), slices[0][0].source.x.dtype
        if self._buffer is None or self._buffer.shape[1:] != shape or self._buffer.dtype != dtype:
            # one input buffer while the shape stays (it changes only before any batch has succeeded)
            self._buffer = torch.empty((self.batch_size, *shape), dtype=dtype, device=self.runtime.device)
        batch = self._buffer[:total]
        now = time.perf_counter()
        try:
            for active, offset, count in slices:
                active.source.fill(batch[offset : offset + count], active.request.start + active.done)
                if active.started is None:
                    active.started = now
            outputs = detach_from(self.runtime.run(batch), self._buffer)
        except Exception as exc:
            # The model failed. Each request gets one retry alone (its copies are drawn again, identically);
            # one that fails alone too fails, with the model's error as a ModelOutputError.
            error = exc if isinstance(exc, SmoothgenError) else model_failure(self.runtime, batch, exc)
            if error is not exc:
                error.__cause__ = exc
            for active, _, _ in slices:
                if active.suspect:
                    self._finish(active, exception=error)
                else:
                    active.suspect = True
            self.batches_failed += 1
            return
        self.batches_run += 1
        self.samples_run += total
        with self._lock:
            self._shape_confirmed = True
        if self.on_batch is not None:
            try:
                self.on_batch(total)
            except Exception:  # a metrics hook must never fail the requests of the batch
                pass
        for active, offset, count in slices:
            try:
                active.request.reducer.add(_rows(outputs, offset, count, total), count)
                active.done += count
                active.batches += 1
                active.suspect = False
                if active.done == active.request.n:
                    self._finish(active, result=active.request.reducer.result())
            except Exception as exc:  # bad outputs for this request (or its transform): it alone fails
                self._finish(active, exception=exc)

    def _finish(self, active: _Active, result: Any = None, exception: BaseException | None = None) -> None:
        with self._lock:
            if active in self._active:
                self._active.remove(active)
            self._lock.notify_all()
        end = time.perf_counter()
        started = active.started if active.started is not None else end
        active.future.stats = RequestStats(started - active.submitted, end - started, end - active.submitted, active.batches)
        if not active.future.set_running_or_notify_cancel():
            return  # cancelled meanwhile
        if exception is not None:
            active.future.set_exception(exception)
        else:
            active.future.set_result(result)


def _rows(outputs: Any, offset: int, count: int, total: int) -> Any:
    """A request's slice of a batch's outputs (validated by its reducer)."""
    if isinstance(outputs, torch.Tensor) and outputs.ndim > 0 and outputs.shape[0] == total:
        return outputs[offset : offset + count]
    if isinstance(outputs, (list, tuple)) and len(outputs) == total:
        return outputs[offset : offset + count]
    return outputs  # wrong length or type: the reducer reports it


class ScheduledSampler:
    """The Sampler interface on top of a Scheduler: each call is one request, waited for.

    Many threads (or SmoothedClassifier instances) using the same ScheduledSampler share device batches.
    """

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        self.batch_size = scheduler.batch_size

    def _check_model(self, model: Any) -> None:
        runtime = self.scheduler.runtime
        if model is not runtime and model is not getattr(runtime, "model", runtime):
            raise InvalidParameterError("a ScheduledSampler only runs its scheduler's model: pass scheduler.runtime as the base")

    def _run(self, request: Request) -> Any:
        """Submit one request and wait for its result (subclasses add deadlines: smoothgen.service)."""
        return self.scheduler.submit(request).result()

    def _request(self, model: Any, x: torch.Tensor, n: int, sigma: float, key: NoiseKey, reducer: Reducer) -> Any:
        self._check_model(model)
        return self._run(Request(x, n, sigma, key, reducer))

    def counts(self, model: Any, x: torch.Tensor, n: int, sigma: float, num_classes: int, key: NoiseKey,
               start: int = 0, total: int | None = None) -> np.ndarray:
        self._check_model(model)
        request = Request(x, n, sigma, key, ClassCounts(num_classes, self.scheduler.runtime.device), start=start, total=total)
        return self._run(request)

    def outputs(self, model: Any, x: torch.Tensor, n: int, sigma: float, key: NoiseKey, reduce: Callable | None = None) -> Any:
        return self._request(model, x, n, sigma, key, KeepOutputs(reduce, self.scheduler.runtime.device))

    def score_sums(self, model: Any, x: torch.Tensor, n: int, sigma: float, key: NoiseKey, score: Callable | None = None):
        return self._request(model, x, n, sigma, key, ScoreSums(score, self.scheduler.runtime.device))
