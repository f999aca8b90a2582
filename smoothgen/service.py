"""The certification service behind `smoothgen serve`: requests as JSON, certificates as records.

This module knows nothing of HTTP or Ray: `CertificationService` takes a request body (a dict, as parsed
from JSON) and returns the response body, or raises a SmoothgenError that `smoothgen.serve` maps to an
HTTP status. One service runs in each Ray Serve replica, with one `Scheduler` per model, so that
concurrent requests share device batches exactly as in-process ones do (engine/scheduler.py).

Soundness of a served certificate is the library's: the records are built by `smoothgen.jobs`, the same
code as `smoothgen certify` / `smoothgen center`, and a request's noise comes from its own stream
(seed, request_id), so a response can be recomputed offline, bit for bit. A request that names no seed
gets a fresh random one (a client must not be able to predict the noise of a certificate it did not ask
to reproduce); the seed and request id used are in every response.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import concurrent.futures
import io
import itertools
import math
import secrets
import threading
import time
import weakref
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, Callable

import numpy as np
import torch

from smoothgen.engine.scheduler import (QueueFullError, RequestCancelledError, ScheduledSampler, Scheduler,
                                        SchedulerClosedError)
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError, SmoothgenError, first_line
from smoothgen.jobs import center_record, certify_record, certify_run
from smoothgen.validate import check_alpha, check_count, check_positive, check_sigma

from smoothgen.serve import API_VERSION, ENDPOINTS  # noqa: E402  (the HTTP layer's names, light to import)

#: Noisy prompt copies per LM call in /v1/generate (`smoothgen generate --batch-size`'s default).
LM_BATCH_SIZE = 250
#: The largest seed a request may name (seeds are stored as JSON integers and used as 64-bit keys).
MAX_SEED = 2**63 - 1


class InvalidRequestError(InvalidParameterError):
    """The request body is not what the endpoint takes (not an object, unknown or missing fields): HTTP 400."""


class ServiceBusyError(QueueFullError):
    """The replica already holds its most requests in flight (`max_queue`): HTTP 429 with Retry-After."""


class DeadlineExceededError(SmoothgenError, TimeoutError):
    """The request's `timeout_s` passed before its certificate was done: HTTP 504; its remaining samples
    were cancelled, not computed."""


class EndpointDisabledError(SmoothgenError, LookupError):
    """The service was started without the model this endpoint needs: HTTP 404."""


@dataclass
class ServiceConfig:
    """What one replica serves (the options of `smoothgen serve`).

    Attributes:
        model: classifier for certify/predict: a file or package.module:factory (None: the embedded digits
            CNN trained at `sigma`).
        sigma: the default noise level of certify/predict requests (and the embedded classifier's).
        center_model: model for center smoothing (None: the embedded digits autoencoder).
        lm: causal LM for generate, as `smoothgen generate --model` takes it (None: the embedded code LM
            trained for each noise).
        input_shape: one input's shape for a user's model (None: the embedded models' [1, 8, 8]).
        backend, device, batch_size: the runtime, as for `smoothgen certify`.
        max_queue: most requests in flight in one replica; more are refused with 429 and Retry-After.
        max_samples: most noisy copies one request may ask for (n0 + n, n + n + m, ...): 422 beyond.
        timeout_s: the deadline of a request that gives none; `max_timeout_s` caps what a request may ask.
        retry_after_s: the Retry-After of a 429.
        endpoints: which of certify, predict, center and generate to serve (and load models for).
    """

    model: str | None = None
    sigma: float = 0.25
    center_model: str | None = None
    lm: str | None = None
    input_shape: tuple[int, ...] | None = None
    backend: str = "auto"
    device: str = "cpu"
    batch_size: int = 1000
    max_queue: int = 64
    max_samples: int = 1_000_000
    timeout_s: float = 60.0
    max_timeout_s: float = 600.0
    retry_after_s: int = 1
    endpoints: tuple[str, ...] = ENDPOINTS

    def check(self) -> "ServiceConfig":
        check_sigma(self.sigma)
        check_count(self.batch_size, "--batch-size")
        check_count(self.max_queue, "--max-queue")
        check_count(self.max_samples, "--max-samples")
        check_positive(self.timeout_s, "--timeout")
        check_positive(self.max_timeout_s, "--max-timeout")
        check_count(self.retry_after_s, "--retry-after", minimum=0)
        if self.timeout_s > self.max_timeout_s:
            raise InvalidParameterError(f"--timeout {self.timeout_s} exceeds --max-timeout {self.max_timeout_s}")
        unknown = set(self.endpoints) - set(ENDPOINTS)
        if unknown or not self.endpoints:
            raise InvalidParameterError(f"--endpoints must name some of {', '.join(ENDPOINTS)}, got {','.join(self.endpoints)}")
        if self.input_shape is not None:
            if not self.input_shape or any(isinstance(d, bool) or not isinstance(d, Integral) or d < 1 for d in self.input_shape):
                raise InvalidParameterError(f"--input-shape must be positive integers, got {self.input_shape}")
        return self


# ------------------------------------------------------------------------------------------ parsing
class _Body:
    """Typed access to a request body; every field read is checked, unread fields are an error."""

    def __init__(self, body: Any, endpoint: str):
        if not isinstance(body, dict):
            raise InvalidRequestError(f"the body of /{API_VERSION}/{endpoint} must be a JSON object, got {type(body).__name__}")
        self.body, self.endpoint, self.read = body, endpoint, set()

    def get(self, name: str, default: Any = None) -> Any:
        self.read.add(name)
        value = self.body.get(name, default)
        return default if value is None else value

    def required(self, name: str) -> Any:
        self.read.add(name)
        if self.body.get(name) is None:
            raise InvalidRequestError(f"/{API_VERSION}/{self.endpoint} needs the field {name!r}")
        return self.body[name]

    def integer(self, name: str, default: int | None = None, minimum: int = 1) -> int | None:
        value = self.get(name, default)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return check_count(value, name, minimum=minimum)

    def number(self, name: str, default: float | None = None) -> float | None:
        value = self.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise InvalidParameterError(f"{name} must be a finite number, got {value!r}")
        return float(value)

    def finish(self) -> None:
        unknown = sorted(set(self.body) - self.read)
        if unknown:
            raise InvalidRequestError(f"/{API_VERSION}/{self.endpoint} has no field {unknown[0]!r} "
                                      f"(it takes: {', '.join(sorted(self.read))})")


def decode_input(value: Any, shape: tuple[int, ...] | None) -> np.ndarray:
    """One input from a request: nested lists of numbers, or {"npy": base64 of a .npy file}.

    Raises:
        InvalidInputError: not numbers, NaN/Inf, an unreadable .npy, or not the model's input shape.
    """
    if isinstance(value, dict):
        if set(value) != {"npy"} or not isinstance(value["npy"], str):
            raise InvalidInputError('x must be nested lists of numbers or {"npy": "<base64 of a .npy file>"}')
        try:
            raw = base64.b64decode(value["npy"], validate=True)
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        except (binascii.Error, ValueError, OSError, EOFError) as exc:
            raise InvalidInputError(f"x.npy is not a base64-encoded .npy array: {first_line(exc)}") from exc
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
            raise InvalidInputError(f"x.npy must hold real numbers, got dtype {array.dtype}")
    else:
        try:
            array = np.asarray(value, dtype=np.float64)
        except (ValueError, TypeError) as exc:
            raise InvalidInputError("x must be nested lists of numbers of a regular shape (one input, no batch axis)") from exc
        if array.dtype == object:
            raise InvalidInputError("x must be nested lists of numbers of a regular shape (one input, no batch axis)")
    array = array.astype(np.float32)
    if array.ndim == 0 or array.size == 0:
        raise InvalidInputError(f"x must be one input (an array), got shape {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise InvalidInputError("x holds NaN or Inf")
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise InvalidInputError(f"x has shape {tuple(array.shape)}; this model takes one input of shape {tuple(shape)} (no batch axis)")
    return np.ascontiguousarray(array)


def encode_input(x: np.ndarray) -> dict[str, str]:
    """The {"npy": ...} form of an input (for clients: exact float32 values, smaller than lists)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(x), allow_pickle=False)
    return {"npy": base64.b64encode(buffer.getvalue()).decode("ascii")}


# ------------------------------------------------------------------------------------------ deadlines
class Ticket:
    """One request's hold on the scheduler: its deadline, and a way to cancel it from outside (a client that
    went away). Cancelling drops the scheduler request in flight before its next batch."""

    def __init__(self):
        self.admitted = time.monotonic()
        self.deadline = math.inf
        self.cancelled = False
        self.future = None
        self._lock = threading.Lock()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self.future is not None:
                self.future.cancel()


class DeadlineSampler(ScheduledSampler):
    """A ScheduledSampler that gives up at its ticket's deadline, or when the ticket is cancelled: the
    scheduler request in flight is cancelled (its remaining samples are dropped before the next batch),
    and no further request is submitted."""

    def __init__(self, scheduler: Scheduler, ticket: Ticket):
        super().__init__(scheduler)
        self.ticket = ticket

    def _expired(self) -> DeadlineExceededError:
        return DeadlineExceededError("the request's timeout_s passed before its certificate was done; "
                                     "its remaining samples were cancelled")

    def _run(self, request):
        ticket = self.ticket
        remaining = ticket.deadline - time.monotonic()
        if remaining <= 0:
            raise self._expired()
        future = self.scheduler.submit(request, timeout=None if math.isinf(remaining) else remaining)
        with ticket._lock:
            ticket.future = future
            if ticket.cancelled:
                future.cancel()
        try:
            remaining = ticket.deadline - time.monotonic()
            return future.result(timeout=None if math.isinf(remaining) else max(0.0, remaining))
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise self._expired() from None
        except RequestCancelledError:
            if ticket.cancelled:
                raise
            raise self._expired() from None


# ------------------------------------------------------------------------------------------ metrics
class ServiceMetrics:
    """Prometheus metrics of one service (its own registry: several services may share a process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("smoothgen_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("smoothgen_request_seconds", "request latency (accepted requests)", ["endpoint"],
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
                                 registry=self.registry)
        self.in_flight = Gauge("smoothgen_queue_depth", "requests accepted and not finished (queued or running)",
                               registry=self.registry)
        self.samples = Counter("smoothgen_samples", "noisy copies run through the model", ["model"], registry=self.registry)
        self.batches = Counter("smoothgen_batches", "device batches run", ["model"], registry=self.registry)
        self.batch_fill = Histogram("smoothgen_batch_fill", "samples per device batch / batch size", ["model"],
                                    buckets=(0.1, 0.25, 0.5, 0.75, 0.9, 1.0), registry=self.registry)

    def batch_hook(self, model: str, batch_size: int) -> Callable[[int], None]:
        samples, batches, fill = self.samples.labels(model), self.batches.labels(model), self.batch_fill.labels(model)

        def on_batch(count: int) -> None:
            samples.inc(count)
            batches.inc()
            fill.observe(count / batch_size)

        return on_batch

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# ------------------------------------------------------------------------------------------ models
@dataclass
class _Model:
    scheduler: Scheduler
    name: str
    backend: str
    dtype: str | None
    shape: tuple[int, ...]
    num_classes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _runtime_args(config: ServiceConfig, model: str | None, sigma: float | None = None) -> argparse.Namespace:
    """The CLI's options for its runtime helpers: the service builds runtimes exactly as `smoothgen certify`
    does (backend auto: the fastest runtime that reproduces eager on noisy copies at `sigma`)."""
    return argparse.Namespace(model=model, device=config.device, backend=config.backend, batch_size=config.batch_size,
                              sigma=sigma)


def _example(config: ServiceConfig, spec: str | None) -> np.ndarray:
    from smoothgen.models import DIGITS_SHAPE

    if spec is not None and config.input_shape is None:
        raise InvalidParameterError(f"--input-shape is needed with a model of your own ({spec}): one input's shape, e.g. 3,32,32")
    shape = DIGITS_SHAPE if spec is None else config.input_shape
    return np.zeros((1, *shape), dtype=np.float32)


def _shut_down(schedulers: list[Scheduler], pool: concurrent.futures.ThreadPoolExecutor) -> None:
    for scheduler in schedulers:
        scheduler.close(cancel_pending=True)
    pool.shutdown(wait=False, cancel_futures=True)


class CertificationService:
    """The endpoints of one replica: certify, predict, center and generate, as dict in, dict out.

    Args:
        config: a ServiceConfig (checked here).
        replica: a name for this replica in the records' `worker` field.
    """

    def __init__(self, config: ServiceConfig, replica: str = "local"):
        self.ready = False
        self.config = config.check()
        self.replica = replica
        self.metrics = ServiceMetrics()
        self.models: dict[str, _Model] = {}
        self.lms: dict[str, tuple[Any, Any, str]] = {}
        self._lm_lock = threading.Lock()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._ids = itertools.count()
        self._pool = concurrent.futures.ThreadPoolExecutor(config.max_queue, thread_name_prefix="smoothgen-request")
        # Closed by close(), when the service is collected, at interpreter exit (a scheduler thread still running
        # a batch then would end the process in C++'s terminate()), or when loading a model fails below.
        self._schedulers: list[Scheduler] = []
        self._finalizer = weakref.finalize(self, _shut_down, self._schedulers, self._pool)
        try:
            self._load_models()
        except BaseException:
            self._finalizer()
            raise
        self.ready = True

    def _load_models(self) -> None:
        from smoothgen.cli import _center_runtime, _classifier_runtime, _probe

        config = self.config
        if "certify" in config.endpoints or "predict" in config.endpoints:
            x = _example(config, config.model)
            runtime, name = _classifier_runtime(_runtime_args(config, config.model, config.sigma), x)
            logits = _probe(runtime, x[0])
            if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
                raise ModelOutputError(f"{name} is not a classifier: it must return logits [batch, classes]")
            self.models["classifier"] = self._model(runtime, name, x, num_classes=int(logits.shape[1]))
        if "center" in config.endpoints:
            x = _example(config, config.center_model)
            runtime, name = _center_runtime(_runtime_args(config, config.center_model), x)
            self.models["center"] = self._model(runtime, name, x)
        if "generate" in config.endpoints:
            from smoothgen.generate_cli import _load_lm

            for noise in ("ablate", "gaussian"):
                self.lms[noise] = _load_lm(config.lm, config.device, noise)

    def _model(self, runtime, name: str, x: np.ndarray, **extra) -> _Model:
        scheduler = Scheduler(runtime, batch_size=self.config.batch_size, max_pending=self.config.max_queue * 4,
                              on_batch=self.metrics.batch_hook(name, self.config.batch_size))
        self._schedulers.append(scheduler)
        from smoothgen.cli import _dtype_name

        return _Model(scheduler, name, runtime.backend, _dtype_name(runtime), tuple(x.shape[1:]), **extra)

    def close(self) -> None:
        """Cancel what is in flight and stop the schedulers' threads."""
        self.ready = False
        self._finalizer()

    # ---------------------------------------------------------------- admission
    def admit(self) -> None:
        """Take a slot for one request, or refuse it (ServiceBusyError: 429) when max_queue are in flight."""
        with self._lock:
            if self._in_flight >= self.config.max_queue:
                raise ServiceBusyError(f"{self._in_flight} requests in flight (--max-queue {self.config.max_queue}); "
                                       f"retry after {self.config.retry_after_s} s")
            self._in_flight += 1
            self.metrics.in_flight.set(self._in_flight)

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self.metrics.in_flight.set(self._in_flight)

    def submit(self, endpoint: str, body: Any) -> tuple[concurrent.futures.Future, Ticket]:
        """Run one request on the service's threads (after `admit`): (future of the response body, its
        ticket, to cancel it)."""
        handler = {"certify": self.certify, "predict": self.predict, "center": self.center,
                   "generate": self.generate}.get(endpoint)
        if handler is None or endpoint not in self.config.endpoints:
            raise EndpointDisabledError(f"/{API_VERSION}/{endpoint} is not served here (smoothgen serve --endpoints)")
        if not self.ready:
            raise SchedulerClosedError("the service is shutting down")
        ticket = Ticket()
        return self._pool.submit(handler, body, ticket), ticket

    def call(self, endpoint: str, body: Any) -> dict[str, Any]:
        """One request, in the caller's thread, admitted like any other (for in-process use and tests)."""
        self.admit()
        try:
            future, _ = self.submit(endpoint, body)
            return future.result()
        finally:
            self.release()

    # ---------------------------------------------------------------- helpers
    def _get(self, key: str, endpoint: str) -> _Model:
        model = self.models.get(key)
        if model is None:
            raise EndpointDisabledError(f"/{API_VERSION}/{endpoint} is not served here (smoothgen serve --endpoints)")
        return model

    def _stream(self, body: _Body) -> tuple[int, int]:
        seed = body.integer("seed", minimum=0)
        request_id = body.integer("request_id", minimum=0)
        for name, value in (("seed", seed), ("request_id", request_id)):
            if value is not None and value > MAX_SEED:
                raise InvalidParameterError(f"{name} must be at most 2**63 - 1, got {value}")
        if seed is None:
            seed = secrets.randbelow(MAX_SEED)
        if request_id is None:
            request_id = next(self._ids)
        return seed, request_id

    def _deadline(self, body: _Body, ticket: Ticket) -> float:
        """The request's timeout_s; its clock starts when the request was admitted (`submit`)."""
        timeout = body.number("timeout_s", self.config.timeout_s)
        check_positive(timeout, "timeout_s")
        if timeout > self.config.max_timeout_s:
            raise InvalidParameterError(f"timeout_s must be at most {self.config.max_timeout_s} (the server's --max-timeout), got {timeout}")
        ticket.deadline = ticket.admitted + timeout
        return timeout

    def _admitted(self, body: _Body, ticket: Ticket | None) -> tuple[int, int, Ticket]:
        """The request's stream and deadline, once every field is read (unknown fields refused here)."""
        seed, request_id = self._stream(body)
        ticket = ticket or Ticket()
        self._deadline(body, ticket)
        body.finish()
        return seed, request_id, ticket

    def _check_samples(self, total: int, what: str) -> None:
        if total > self.config.max_samples:
            raise InvalidParameterError(f"{what} = {total} noisy copies exceed this server's limit of {self.config.max_samples} "
                                        "per request (smoothgen serve --max-samples)")

    def _classifier_request(self, raw: Any, endpoint: str) -> tuple[_Model, _Body, np.ndarray, float, float]:
        """What certify and predict share: the classifier, the body, its input, σ and α."""
        model = self._get("classifier", endpoint)
        body = _Body(raw, endpoint)
        x = decode_input(body.required("x"), model.shape)
        return model, body, x, check_sigma(body.number("sigma", self.config.sigma)), check_alpha(body.number("alpha", 0.001))

    def _response(self, record: dict[str, Any], seed: int, request_id: int, **extra) -> dict[str, Any]:
        return {"api": API_VERSION, "seed": seed, "request_id": request_id, "record": record, **extra}

    # ---------------------------------------------------------------- endpoints
    def certify(self, raw: Any, ticket: Ticket | None = None) -> dict[str, Any]:
        """CERTIFY (n0, n) or, with target_radius, the sequential CERTIFY-AT of `smoothgen certify`."""
        from smoothgen.classify import DEFAULT_CHECK_EVERY, DEFAULT_LOOKS, SmoothedClassifier
        from smoothgen.cli import DEFAULT_SEQUENTIAL

        model, body, x, sigma, alpha = self._classifier_request(raw, "certify")
        n0 = body.integer("n0", 100)
        target_radius = body.number("target_radius")
        sequential, looks, betting = "looks", None, {}
        label = body.integer("label", minimum=0)
        if target_radius is None:
            sequential_only = sorted({"looks", "sequential", "max_samples", "check_every"} & set(body.body))
            if sequential_only:
                raise InvalidParameterError(f"{sequential_only[0]} applies only with target_radius (the sequential test)")
            n = body.integer("n", 10_000)
            self._check_samples(n0 + n, "n0 + n")
        else:
            check_positive(target_radius, "target_radius")
            if "n" in body.body:
                raise InvalidParameterError("n is not used with target_radius (the sequential test decides how many samples)")
            n = None
            # As `smoothgen certify --target-radius`: the betting confidence sequence unless looks are given.
            sequential = body.get("sequential", "looks" if "looks" in body.body else DEFAULT_SEQUENTIAL)
            if sequential not in ("looks", "betting"):
                raise InvalidParameterError(f"sequential must be 'betting' or 'looks', got {sequential!r}")
            if sequential == "looks":
                if {"max_samples", "check_every"} & set(body.body):
                    raise InvalidParameterError("max_samples and check_every apply only with sequential 'betting'")
                looks = body.get("looks", list(DEFAULT_LOOKS))
                if not isinstance(looks, list) or not looks:
                    raise InvalidParameterError(f"looks must be a list of increasing sample counts, got {looks!r}")
                looks = [check_count(k, "looks") for k in looks]
                if any(b <= a for a, b in zip(looks, looks[1:])):
                    raise InvalidParameterError(f"looks must be increasing, got {looks}")
                self._check_samples(n0 + looks[-1], "n0 + looks[-1]")
            else:
                if "looks" in body.body:
                    raise InvalidParameterError("looks applies only with sequential 'looks' (betting checks every check_every samples)")
                betting = {"max_samples": body.integer("max_samples", DEFAULT_LOOKS[-1]),
                           "check_every": body.integer("check_every", DEFAULT_CHECK_EVERY)}
                self._check_samples(n0 + betting["max_samples"], "n0 + max_samples")
        if label is not None and label >= model.num_classes:
            raise InvalidParameterError(f"label {label} is not a class of the model: labels lie in [0, {model.num_classes})")
        seed, request_id, ticket = self._admitted(body, ticket)
        smoothed = SmoothedClassifier(model.scheduler.runtime, model.num_classes, sigma, input_shape=model.shape,
                                      sampler=DeadlineSampler(model.scheduler, ticket))
        record = certify_record(smoothed, x, request_id, label, n0=n0, n=n, alpha=alpha, seed=seed,
                                target_radius=target_radius, looks=looks, sequential=sequential, **betting)
        run = certify_run(sigma=sigma, n0=n0, n=n, alpha=alpha, seed=seed, model=model.name, data="http",
                          backend=model.backend, dtype=model.dtype, target_radius=target_radius, sequential=sequential,
                          looks=looks, **betting)
        return self._response({**record, **run, "worker": self.replica}, seed, request_id)

    def predict(self, raw: Any, ticket: Ticket | None = None) -> dict[str, Any]:
        """PREDICT: the smoothed classifier's class, or ABSTAIN (−1), wrong with probability at most alpha."""
        from smoothgen.classify import SmoothedClassifier

        model, body, x, sigma, alpha = self._classifier_request(raw, "predict")
        n = body.integer("n", 1000)
        self._check_samples(n, "n")
        seed, request_id, ticket = self._admitted(body, ticket)
        smoothed = SmoothedClassifier(model.scheduler.runtime, model.num_classes, sigma, input_shape=model.shape,
                                      sampler=DeadlineSampler(model.scheduler, ticket))
        t0 = time.perf_counter()
        prediction = smoothed.predict(torch.from_numpy(x), n, alpha, seed=seed, request_id=request_id)
        record = {"idx": request_id, **prediction.to_record(), "model": model.name, "data": "http", "backend": model.backend,
                  "dtype": model.dtype, "time": time.perf_counter() - t0, "worker": self.replica}
        return self._response(record, seed, request_id)

    def center(self, raw: Any, ticket: Ticket | None = None) -> dict[str, Any]:
        """Center smoothing at one eps_in (sigma = eps_in / h), as one record of `smoothgen center`."""
        from smoothgen.center import CenterSmoother
        from smoothgen.metrics import get_metric

        model = self._get("center", "center")
        body = _Body(raw, "center")
        x = decode_input(body.required("x"), model.shape)
        eps_in = check_positive(body.number("eps_in", 0.2), "eps_in")
        h = check_positive(body.number("h", 2.0), "h")
        metric = body.get("metric", "tv2d")
        if not isinstance(metric, str):
            raise InvalidParameterError(f"metric must be a metric's name, got {metric!r}")
        metric = get_metric(metric)
        n, m = body.integer("n", 10_000), body.integer("m", 20_000)
        delta = body.number("delta", 0.05)
        if not 0 < delta < 0.5:
            raise InvalidParameterError(f"delta must lie strictly between 0 and 1/2, got {delta}")
        alpha1, alpha2 = check_alpha(body.number("alpha1", 0.005), "alpha1"), check_alpha(body.number("alpha2", 0.005), "alpha2")
        if alpha1 + alpha2 >= 1:
            raise InvalidParameterError(f"alpha1 + alpha2 must be < 1, got {alpha1} + {alpha2}")
        n_candidates = body.integer("n_candidates", 30, minimum=0) or None
        self._check_samples(2 * n + m, "2n + m")
        seed, request_id, ticket = self._admitted(body, ticket)
        smoother = CenterSmoother(model.scheduler.runtime, eps_in / h, metric, n_candidates=n_candidates,
                                  input_shape=model.shape, sampler=DeadlineSampler(model.scheduler, ticket))
        run = {"backend": model.backend, "dtype": model.dtype, "metric": metric.name, "h": h, "n": n, "m": m, "delta": delta, "alpha1": alpha1,
               "alpha2": alpha2, "n_candidates": n_candidates, "seed": seed, "model": model.name, "data": "http"}
        record, cert = center_record(smoother, x, request_id, eps_in, n=n, m=m, delta=delta, alpha1=alpha1, alpha2=alpha2,
                                     seed=seed, run_fields=tuple(run), return_certificate=True)
        center = cert.center.detach().cpu().tolist() if isinstance(cert.center, torch.Tensor) else cert.center
        return self._response({**record, **run, "worker": self.replica}, seed, request_id, center=center)

    def generate(self, raw: Any, ticket: Ticket | None = None) -> dict[str, Any]:
        """SmoothedLM's certified prefix, as the record `smoothgen generate --json` prints.

        Generation does not go through a Scheduler (each request decodes its own copies, batch by batch);
        requests to it run one at a time per replica, and its deadline is checked after every token chosen
        and every chunk of estimation copies."""
        from smoothgen.generate_cli import DEFAULT_TEXT_SIGMA, certified_generation

        if not self.lms:
            raise EndpointDisabledError(f"/{API_VERSION}/generate is not served here (smoothgen serve --endpoints)")
        body = _Body(raw, "generate")
        prompt = body.required("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise InvalidParameterError(f"prompt must be a non-empty string, got {prompt!r}")
        noise = body.get("noise", "ablate")
        if noise not in ("ablate", "gaussian"):
            raise InvalidParameterError(f"noise must be 'ablate' (token ablation) or 'gaussian', got {noise!r}")
        max_new_tokens = body.integer("max_new_tokens", 16)
        n0, n = body.integer("n0", 100), body.integer("n", 1000)
        alpha = check_alpha(body.number("alpha", 0.001))
        perturb = body.get("perturb")
        if perturb is not None and perturb not in ("all", "context", "last"):
            raise InvalidParameterError(f"perturb must be all, context or last, got {perturb!r}")
        options: dict[str, Any] = {}
        if noise == "ablate":
            options.update(keep=body.integer("keep"), mask_token=body.integer("mask_token", minimum=0),
                           edits=body.integer("edits", 1, minimum=0))
        else:
            options.update(sigma=check_sigma(body.number("sigma", DEFAULT_TEXT_SIGMA)),
                           radius=check_positive(body.number("radius", 0.0), "radius", allow_zero=True))
        self._check_samples(n0 + n, "n0 + n")
        seed, request_id, ticket = self._admitted(body, ticket)
        model, tokenizer, name = self.lms[noise]

        def progress(phase: str, done: int, total: int) -> None:
            if ticket.cancelled:
                raise RequestCancelledError("the request was cancelled before it finished")
            if time.monotonic() > ticket.deadline:
                raise DeadlineExceededError("the request's timeout_s passed before its certificate was done; "
                                            "its remaining samples were cancelled")

        with self._lm_lock:
            progress("", 0, 0)  # the deadline may have passed while it waited for the LM
            record, _, _ = certified_generation(model, tokenizer, name, prompt=prompt, noise=noise,
                                                max_new_tokens=max_new_tokens, n0=n0, n=n, alpha=alpha, seed=seed,
                                                request_id=request_id, perturb=perturb, batch_size=LM_BATCH_SIZE,
                                                progress=progress, **options)
        return self._response({**record, "worker": self.replica}, seed, request_id)
