"""The certification service behind `smoothgen serve`: requests as JSON, certificates as signed documents.

This module knows nothing of HTTP or Ray: `CertificationService` takes a request body (a dict, as parsed
from JSON) and the name of the client that sent it, and returns the response document, or raises a
SmoothgenError that `smoothgen.serve` maps to an HTTP status. One service runs in each Ray Serve replica,
with one `Scheduler` per model, so that concurrent requests share device batches exactly as in-process
ones do (engine/scheduler.py).

A served certificate is meant for a third party (docs/theory.md §8):

- **Issued** (the default): the noise comes from seed = HMAC(server key, model ‖ input ‖ parameters)
  (`smoothgen.trust.issued_seed`), so a repeat gets the identical certificate and nobody can search seeds;
  its failure probability is at most the server's `max_alpha` (10⁻⁶ by default); the document is signed
  (Ed25519, `GET /v1/keys`) over the input's and the model's digests, every parameter and the record; and
  it is appended to the audit log (`smoothgen.audit`), which also caps a client's summed failure
  probability when the server has a budget.
- **Reproduction** (`"reproduce": true` with the client's `seed`): the record for a seed the client chose,
  for comparing with an offline run. It holds no guarantee against that client, is never signed, and sits
  under `"reproduction"` instead of `"record"`, so it cannot be read as a certificate by mistake.

The records are built by `smoothgen.jobs` (the same code as `smoothgen certify` / `smoothgen center`), and
`smoothgen verify` recomputes an issued document through the same functions.
"""
from __future__ import annotations

import base64
import binascii
import concurrent.futures
import dataclasses
import datetime
import io
import itertools
import math
import threading
import time
import traceback
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from smoothgen._malloc import release_freed_memory
from smoothgen.audit import AuditLog, BudgetExceededError
from smoothgen.engine.scheduler import (QueueFullError, RequestCancelledError, ScheduledSampler, Scheduler,
                                        SchedulerClosedError)
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError, SmoothgenError, first_line, short
from smoothgen.service_config import DEFAULT_MAX_ALPHA, ServiceConfig  # noqa: F401  (re-exported)
from smoothgen.job_specs import CenterJob, CertifyJob, GenerateJob, PredictJob, RuntimeSpec
from smoothgen.registry import DEFAULT_NAME
from smoothgen.jobs import failure_probability, served_center, served_certify, served_generate, served_predict
from smoothgen.trust import ServerKeys, Signer, canonical, input_digest, issued_seed
from smoothgen.validate import check_alpha, check_count, check_positive, check_sigma, finite_real, load_numpy

from smoothgen.api import API_VERSION

#: Noisy prompt copies per LM call in /v1/generate (`smoothgen generate --batch-size`'s default).
LM_BATCH_SIZE = GenerateJob.batch_size
# The requests' defaults are the typed jobs' (`smoothgen.job_specs`, the CLI's too) except where a served
# request differs: one eps_in per /v1/center request; m = 10⁵ (at an issued certificate's alpha2 ≈ 4.5·10⁻⁷
# the DKW term sqrt(ln(1/α2)/(2m)) is 0.019 at m = 2·10⁴, which at h = 2 (p = 0.983) pushes q past 1,
# abstaining; 0.0085 at 10⁵); and alpha, the server's --max-alpha.
CENTER_EPS_IN = 0.2
CENTER_M = 100_000
#: The largest seed a request may name (seeds are stored as JSON integers and used as 64-bit keys).
MAX_SEED = 2**63 - 1
#: Center smoothing's default alpha1 and alpha2 are this share of max_alpha each, so that with the
#: candidate-miss term (about 4e-11 at 30 candidates) the total stays within max_alpha.
CENTER_ALPHA_SHARE = 0.45
#: The name of a client that sent no API key (a server without --api-keys, on a loopback address).
ANONYMOUS = "anonymous"
#: The most nested levels an input may have (its shape's rank).
MAX_INPUT_RANK = 16
#: A noisy copy x + σε must stay finite in float32: |x| + NOISE_REACH·σ below float32's largest value
#: (the sampler's normals lie within sqrt(130 ln 2) ≈ 9.49 of 0, docs/theory.md §6).
NOISE_REACH = 10.0
FLOAT32_MAX = float(np.finfo(np.float32).max)


class InvalidRequestError(InvalidParameterError):
    """The request body is not what the endpoint takes (not an object, unknown or missing fields): HTTP 400."""


class ServiceBusyError(QueueFullError):
    """The replica already holds its most requests in flight (`max_queue`, or `max_generate_queue` for
    /v1/generate): HTTP 429 with Retry-After."""


class DeadlineExceededError(SmoothgenError, TimeoutError):
    """The request's `timeout_s` passed before its certificate was done: HTTP 504; its remaining samples
    were cancelled, not computed."""


class EndpointDisabledError(SmoothgenError, LookupError):
    """The service was started without the model this endpoint needs: HTTP 404."""


class ModelInputError(InvalidInputError):
    """The served model gave an unusable output (NaN, Inf) at the client's input and noise level: HTTP 422.
    The model passed its start-up check, so the input (an extreme value, an extreme sigma) is the cause."""


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
        if not finite_real(value):
            raise InvalidParameterError(f"{name} must be a finite number, got {short(value)}")
        return float(value)

    def finish(self) -> None:
        unknown = sorted(set(self.body) - self.read)
        if unknown:
            raise InvalidRequestError(f"/{API_VERSION}/{self.endpoint} has no field {short(unknown[0])} "
                                      f"(it takes: {', '.join(sorted(self.read))})")


def _implied_shape(value: Any) -> tuple[int, ...]:
    """The shape nested lists claim by their first elements (cheap: no element is converted)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if len(shape) > MAX_INPUT_RANK:
            raise InvalidInputError(f"x is nested more than {MAX_INPUT_RANK} levels deep")
        if not value:
            break
        value = value[0]
    return tuple(shape)


def decode_input(value: Any, shape: tuple[int, ...] | None) -> np.ndarray:
    """One input from a request: nested lists of numbers, or {"npy": base64 of a .npy file}. With a
    shape, nested lists that claim another shape are refused before any element is converted.

    Raises:
        InvalidInputError: not numbers, NaN/Inf, an unreadable .npy, or not the model's input shape.
    """
    if isinstance(value, dict):
        if set(value) != {"npy"} or not isinstance(value["npy"], str):
            raise InvalidInputError('x must be nested lists of numbers or {"npy": "<base64 of a .npy file>"}')
        try:
            raw = base64.b64decode(value["npy"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInputError(f"x.npy is not base64: {first_line(exc)}") from exc
        array = load_numpy(raw, "x.npy", npz=False)  # never unpickles; names the format
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
            raise InvalidInputError(f"x.npy must hold real numbers, got dtype {array.dtype}")
    else:
        claimed = _implied_shape(value)
        if shape is not None and isinstance(value, list) and claimed != tuple(shape):
            raise InvalidInputError(f"x has shape {claimed}; this model takes one input of shape {tuple(shape)} (no batch axis)")
        try:
            array = np.asarray(value, dtype=np.float64)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidInputError("x must be nested lists of numbers of a regular shape (one input, no batch axis)") from exc
        if array.dtype == object:
            raise InvalidInputError("x must be nested lists of numbers of a regular shape (one input, no batch axis)")
    if array.ndim == 0 or array.size == 0:
        raise InvalidInputError(f"x must be one input (an array), got shape {tuple(array.shape)}")
    with np.errstate(over="ignore"):
        array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise InvalidInputError("x holds NaN or Inf (or values beyond float32's range)")
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise InvalidInputError(f"x has shape {tuple(array.shape)}; this model takes one input of shape {tuple(shape)} (no batch axis)")
    return np.ascontiguousarray(array)


def encode_input(x: np.ndarray) -> dict[str, str]:
    """The {"npy": ...} form of an input (for clients: exact float32 values, smaller than lists)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(x), allow_pickle=False)
    return {"npy": base64.b64encode(buffer.getvalue()).decode("ascii")}


def check_noise_scale(x: np.ndarray, sigma: float, name: str = "sigma") -> None:
    """Refuse a noise level whose noisy copies would overflow float32 (InvalidParameterError)."""
    reach = float(np.abs(x).max()) + NOISE_REACH * sigma
    if not reach < FLOAT32_MAX:
        raise InvalidParameterError(f"{name} {sigma:g} is too large: noisy copies of x would overflow float32")


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
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        self.requests = Counter("smoothgen_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("smoothgen_request_seconds", "request latency (accepted requests)", ["endpoint"],
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
                                 registry=self.registry)
        self.in_flight = Gauge("smoothgen_queue_depth", "requests accepted and not finished (queued or running)",
                               registry=self.registry)
        self.generate_in_flight = Gauge("smoothgen_generate_queue_depth", "generate requests accepted and not finished",
                                        registry=self.registry)
        self.certificates = Counter("smoothgen_certificates", "answers by endpoint and mode (issued: signed and logged; "
                                    "reproduction: a client-chosen seed, not a certificate)", ["endpoint", "mode"],
                                    registry=self.registry)
        self.samples = Counter("smoothgen_samples", "noisy copies run through the model", ["model"], registry=self.registry)
        self.batches = Counter("smoothgen_batches", "device batches run", ["model"], registry=self.registry)
        self.batch_fill = Histogram("smoothgen_batch_fill", "samples per device batch / batch size", ["model"],
                                    buckets=(0.1, 0.25, 0.5, 0.75, 0.9, 1.0), registry=self.registry)
        self.lm_calls = Gauge("smoothgen_lm_calls", "LM forward calls made by generate requests", ["lm"],
                              registry=self.registry)
        self.lm_batches = Gauge("smoothgen_lm_batches", "LM runs that served them (calls of the same shape from "
                                "concurrent generate requests run as one)", ["lm"], registry=self.registry)

    def watch_lm(self, name: str, shared: Any) -> None:
        """Export a SharedLM's counts of calls and of the model runs that served them."""
        self.lm_calls.labels(name).set_function(lambda: shared.calls)
        self.lm_batches.labels(name).set_function(lambda: shared.batches)

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
    digest: str
    input_range: tuple[float, float] | None
    num_classes: int | None = None
    served_as: str = DEFAULT_NAME
    sigma: float | None = None

    def describe(self) -> dict[str, Any]:
        """How documents name the model: its name, digest, backend and dtype, and the name requests use."""
        return {"name": self.name, "sha256": self.digest, "backend": self.backend, "dtype": self.dtype,
                "served_as": self.served_as}


def _runtime_spec(config: ServiceConfig, model: str | None, sigma: float | None = None) -> RuntimeSpec:
    """A served model's runtime, built exactly as `smoothgen certify` builds its own (backend auto: the fastest
    runtime that reproduced eager on noisy copies at `sigma`)."""
    return RuntimeSpec(model=model, device=config.device, backend=config.backend, batch_size=config.batch_size, sigma=sigma)


def _example(config: ServiceConfig, spec: str | None) -> np.ndarray:
    from smoothgen.models import DIGITS_SHAPE

    if spec is not None and config.input_shape is None:
        raise InvalidParameterError(f"--input-shape is needed with a model of your own ({spec}): one input's shape, e.g. 3,32,32")
    shape = DIGITS_SHAPE if spec is None else config.input_shape
    return np.zeros((1, *shape), dtype=np.float32)


def _shut_down(schedulers: list[Scheduler], *pools: concurrent.futures.ThreadPoolExecutor, shared: list[Any] = ()) -> None:
    for scheduler in schedulers:
        scheduler.close(cancel_pending=True)
    for pool in pools:
        pool.shutdown(wait=False, cancel_futures=True)
    for lm in shared:  # its thread ends once the calls already queued have run
        lm.close(wait=False)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CertificationService:
    """The endpoints of one replica: certify, predict, center and generate, as dict in, document out.

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
        self.lms: dict[str, tuple[Any, Any, str, str]] = {}
        self._lock = threading.Lock()
        self._in_flight = {"other": 0, "generate": 0}
        self._ids = itertools.count()
        keys = config.keys or ServerKeys.generate()  # without keys: fresh ones, for this service only
        self.signer = Signer(keys)
        self._seed_key = keys.seed_key
        self.audit = AuditLog(config.audit_db or ":memory:")
        workers = config.max_queue + config.max_generate_queue
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="smoothgen-request")
        # Generation runs on these threads (generate_concurrency requests at a time), never on the request
        # threads: the memory its tensors free stays in a few allocator arenas and is reused by the next
        # generation. Run on whichever request thread came, each thread's arena kept its own copy: +200 MB
        # after a flood of 16 requests. The LM itself runs on its SharedLM's one thread, which merges the
        # concurrent generations' calls of the same shape into one batch.
        self._lm_pool = concurrent.futures.ThreadPoolExecutor(config.generate_concurrency, thread_name_prefix="smoothgen-lm")
        # Closed by close(), when the service is collected, at interpreter exit (a scheduler thread still running
        # a batch then would end the process in C++'s terminate()), or when loading a model fails below.
        self._schedulers: list[Scheduler] = []
        self._shared: list[Any] = []
        self._finalizer = weakref.finalize(self, _shut_down, self._schedulers, self._pool, self._lm_pool, shared=self._shared)
        try:
            self._load_models()
        except BaseException:
            self._finalizer()
            self.audit.close()
            raise
        self.ready = True

    def _load_models(self) -> None:
        from smoothgen.registry import ModelRegistry

        config = self.config
        registry = ModelRegistry()  # one runtime (and scheduler) per distinct spec, whatever names it has
        if "certify" in config.endpoints or "predict" in config.endpoints:
            for named in config.classifier_models:
                sigma = config.sigma if named.sigma is None else named.sigma
                model = registry.get(("classifier", named.spec, sigma), lambda: self._load_classifier(named.spec, sigma))
                self.models[f"classifier:{named.name}"] = dataclasses.replace(model, served_as=named.name)
        if "center" in config.endpoints:
            for named in config.center_model_list:
                model = registry.get(("center", named.spec), lambda: self._load_center(named.spec))
                self.models[f"center:{named.name}"] = dataclasses.replace(model, served_as=named.name)
        if "generate" in config.endpoints:
            from smoothgen.text_generation import load_lm_spec
            from smoothgen.trust import module_digest

            from smoothgen.generation.batching import SharedLM

            for noise in ("ablate", "delete", "gaussian"):
                lm, tokenizer, name = load_lm_spec(config.lm, config.device, noise)
                shared = SharedLM(lm, max_rows=LM_BATCH_SIZE * config.generate_concurrency, merge=config.merge_generate)
                self._shared.append(shared)
                self.metrics.watch_lm(f"{noise}:{name}", shared)
                self.lms[noise] = (shared, tokenizer, name, module_digest(lm))

    def _load_classifier(self, spec: str | None, sigma: float) -> _Model:
        from smoothgen.base_models import classifier_digest, classifier_runtime, probe

        x = _example(self.config, spec)
        runtime, name = classifier_runtime(_runtime_spec(self.config, spec, sigma), x)
        logits = probe(runtime, x[0])
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise ModelOutputError(f"{name} is not a classifier: it must return logits [batch, classes]")
        return self._model(runtime, name, x, classifier_digest(spec, sigma), spec, num_classes=int(logits.shape[1]),
                           sigma=sigma)

    def _load_center(self, spec: str | None) -> _Model:
        from smoothgen.base_models import center_digest, center_runtime

        x = _example(self.config, spec)
        runtime, name = center_runtime(_runtime_spec(self.config, spec), x)
        return self._model(runtime, name, x, center_digest(spec), spec)

    def _model(self, runtime, name: str, x: np.ndarray, digest: str, spec: str | None, **extra) -> _Model:
        scheduler = Scheduler(runtime, batch_size=self.config.batch_size, max_pending=self.config.max_queue * 4,
                              on_batch=self.metrics.batch_hook(name, self.config.batch_size))
        self._schedulers.append(scheduler)
        from smoothgen.base_models import dtype_name

        # The embedded models were trained on pixels in [0, 1]: values outside are not images they know.
        value_range = self.config.input_range if self.config.input_range is not None else ((0.0, 1.0) if spec is None else None)
        return _Model(scheduler, name, runtime.backend, dtype_name(runtime), tuple(x.shape[1:]), digest, value_range, **extra)

    def _lm_names(self) -> list[tuple[str, Any]]:
        return [(f"lm_{noise}", lm) for noise, (lm, _, _, _) in self.lms.items()]

    def close(self) -> None:
        """Cancel what is in flight and stop the schedulers' threads."""
        self.ready = False
        self._finalizer()
        self.audit.close()

    def describe(self) -> dict[str, Any]:
        """What GET /v1 shows: endpoints, models (with digests), limits and the issuing policy."""
        config = self.config
        models = {}
        for key, m in self.models.items():
            entry = {**m.describe(), "input_shape": list(m.shape), "input_range": m.input_range}
            if m.sigma is not None:
                entry["sigma"] = m.sigma
            kind = key.split(":")[0]
            if kind not in models:
                models[kind] = entry  # the default of requests that name no model (the first given)
            models[key] = entry
        for noise, (_, _, name, digest) in self.lms.items():
            models[f"lm_{noise}"] = {"name": name, "sha256": digest}
        return {"api": API_VERSION, "endpoints": list(config.endpoints), "models": models, "sigma": config.sigma,
                "max_queue": config.max_queue, "max_generate_queue": config.max_generate_queue,
                "generate_concurrency": config.generate_concurrency,
                "generate_batching": {name: shared.merging for name, shared in self._lm_names()},
                "max_samples": config.max_samples, "max_prompt_bytes": config.max_prompt_bytes, "max_body": config.max_body,
                "timeout_s": config.timeout_s, "max_timeout_s": config.max_timeout_s, "max_alpha": config.max_alpha,
                "alpha_budget": config.alpha_budget, "allow_reproduction": config.allow_reproduction,
                "key_id": self.signer.key_id}

    # ---------------------------------------------------------------- admission
    def admit(self, endpoint: str = "certify") -> None:
        """Take a slot for one request, or refuse it (ServiceBusyError: 429) when the endpoint's queue
        (max_generate_queue for generate, max_queue for the others) is full."""
        kind = "generate" if endpoint == "generate" else "other"
        limit, option = ((self.config.max_generate_queue, "--max-generate-queue") if kind == "generate"
                         else (self.config.max_queue, "--max-queue"))
        with self._lock:
            if self._in_flight[kind] >= limit:
                raise ServiceBusyError(f"{self._in_flight[kind]} {'generate ' if kind == 'generate' else ''}requests in "
                                       f"flight ({option} {limit}); retry after {self.config.retry_after_s} s")
            self._in_flight[kind] += 1
            self._gauges()

    def release(self, endpoint: str = "certify") -> None:
        with self._lock:
            self._in_flight["generate" if endpoint == "generate" else "other"] -= 1
            self._gauges()


    def _gauges(self) -> None:
        self.metrics.in_flight.set(self._in_flight["other"] + self._in_flight["generate"])
        self.metrics.generate_in_flight.set(self._in_flight["generate"])

    def submit(self, endpoint: str, body: Any, client: str = ANONYMOUS) -> tuple[concurrent.futures.Future, Ticket]:
        """Run one request on the service's threads (after `admit`): (future of the response document, its
        ticket, to cancel it). `client` names who asked (the API key's name) in the audit log."""
        handler = {"certify": self.certify, "predict": self.predict, "center": self.center,
                   "generate": self.generate}.get(endpoint)
        if handler is None or endpoint not in self.config.endpoints:
            raise EndpointDisabledError(f"/{API_VERSION}/{short(endpoint)} is not served here (smoothgen serve --endpoints)")
        if not self.ready:
            raise SchedulerClosedError("the service is shutting down")
        ticket = Ticket()
        return self._pool.submit(handler, body, ticket, client), ticket

    def call(self, endpoint: str, body: Any, client: str = ANONYMOUS) -> dict[str, Any]:
        """One request, in the caller's thread, admitted like any other (for in-process use and tests)."""
        self.admit(endpoint)
        try:
            future, _ = self.submit(endpoint, body, client)
            return future.result()
        finally:
            self.release(endpoint)

    # ---------------------------------------------------------------- helpers
    def _named(self, kind: str, endpoint: str, body: "_Body") -> _Model:
        """The model a request names ("model": one of the names the server was started with), or the default."""
        name = body.get("model")
        if name is None:
            return self._get(kind, endpoint)
        if not isinstance(name, str) or f"{kind}:{name}" not in self.models:
            served = ", ".join(k.split(":", 1)[1] for k in self.models if k.startswith(kind + ":"))
            raise InvalidParameterError(f"model {short(name)} is not served here; /{API_VERSION}/{endpoint} serves: {served}")
        return self.models[f"{kind}:{name}"]

    def _get(self, kind: str, endpoint: str) -> _Model:
        """The default model of `kind` (the first one the server was given)."""
        for key, model in self.models.items():
            if key.startswith(kind + ":"):
                return model
        raise EndpointDisabledError(f"/{API_VERSION}/{endpoint} is not served here (smoothgen serve --endpoints)")

    def _stream(self, body: _Body) -> tuple[int, int] | None:
        """The client's (seed, request_id) in reproduction mode; None for an issued certificate, whose
        seed the server derives (docs/theory.md §8)."""
        reproduce = body.get("reproduce", False)
        if not isinstance(reproduce, bool):
            raise InvalidParameterError(f"reproduce must be true or false, got {short(reproduce)}")
        seed = body.integer("seed", minimum=0)
        request_id = body.integer("request_id", minimum=0)
        if not reproduce:
            if seed is not None or request_id is not None:
                raise InvalidParameterError(
                    "seed and request_id are chosen by the server for an issued certificate (docs/theory.md §8); "
                    'to reproduce a record with a seed of your own, send "reproduce": true (the answer is then not a certificate)')
            return None
        if not self.config.allow_reproduction:
            raise InvalidParameterError("this server issues certificates only (reproduction with a client's seed is off)")
        if seed is None:
            raise InvalidRequestError('"reproduce": true needs the field \'seed\' (the seed to reproduce)')
        for name, value in (("seed", seed), ("request_id", request_id)):
            if value is not None and value > MAX_SEED:
                raise InvalidParameterError(f"{name} must be at most 2**63 - 1, got {short(value)}")
        return seed, (next(self._ids) if request_id is None else request_id)

    def _deadline(self, body: _Body, ticket: Ticket) -> float:
        """The request's timeout_s; its clock starts when the request was admitted (`submit`)."""
        timeout = body.number("timeout_s", self.config.timeout_s)
        check_positive(timeout, "timeout_s")
        if timeout > self.config.max_timeout_s:
            raise InvalidParameterError(f"timeout_s must be at most {self.config.max_timeout_s} (the server's --max-timeout), got {timeout}")
        ticket.deadline = ticket.admitted + timeout
        return timeout

    def _check_samples(self, total: int, what: str) -> None:
        if total > self.config.max_samples:
            raise InvalidParameterError(f"{what} = {short(total)} noisy copies exceed this server's limit of {self.config.max_samples} "
                                        "per request (smoothgen serve --max-samples)")

    def _alpha(self, body: _Body, name: str = "alpha", default: float | None = None) -> float:
        """A failure-probability field; its default is the server's max_alpha (the cap is checked on the
        total in `_serve`, once the mode is known)."""
        return check_alpha(body.number(name, self.config.max_alpha if default is None else default), name)

    def _input(self, body: _Body, model: _Model) -> np.ndarray:
        x = decode_input(body.required("x"), model.shape)
        if model.input_range is not None:
            lo, hi = model.input_range
            if float(x.min()) < lo or float(x.max()) > hi:
                raise InvalidInputError(f"x has values in [{float(x.min()):g}, {float(x.max()):g}]; this model takes values in "
                                        f"[{lo:g}, {hi:g}] (smoothgen serve --input-range)")
        return x

    def _classifier_request(self, raw: Any, endpoint: str) -> tuple[_Model, _Body, np.ndarray, float, float]:
        """What certify and predict share: the classifier, the body, its input, σ and α."""
        self._get("classifier", endpoint)  # a disabled endpoint says so before the body is read
        body = _Body(raw, endpoint)
        model = self._named("classifier", endpoint, body)
        x = self._input(body, model)
        sigma = check_sigma(body.number("sigma", model.sigma))
        check_noise_scale(x, sigma)
        return model, body, x, sigma, self._alpha(body)

    def _serve(self, endpoint: str, body: _Body, ticket: Ticket | None, client: str, model: dict[str, Any],
               shape, x: Any, params: dict[str, Any], compute: Callable[[int, int, Ticket], Any]) -> dict[str, Any]:
        """The common path of every endpoint once its parameters are read: the mode and its seed, the
        deadline, the failure-probability cap and budget, the computation, then the document — signed and
        logged when issued, marked and logged when a reproduction."""
        stream = self._stream(body)
        ticket = ticket or Ticket()
        self._deadline(body, ticket)
        body.finish()
        issued = stream is None
        fp = failure_probability(endpoint, params, shape)
        digest = input_digest(x)
        if issued:
            if fp > self.config.max_alpha:
                fields = "alpha1 + alpha2" if endpoint == "center" else "alpha"
                raise InvalidParameterError(
                    f"{fields} = {fp:.3g}: an issued certificate may fail with probability at most {self.config.max_alpha:g} "
                    "(smoothgen serve --max-alpha; docs/theory.md §8)")
            seed = issued_seed(self._seed_key, model["sha256"], digest["sha256"], endpoint, params)
            request_id = 0
            budget = self.config.alpha_budget
            if budget is not None and not self.audit.known(client, model["sha256"], seed):  # early; again when logged
                spent = self.audit.spent(client)
                if spent + fp > budget:
                    raise BudgetExceededError(f"client {client!r} has spent {spent:.3g} of its failure-probability budget "
                                              f"{budget:g}; a certificate at {fp:.3g} would exceed it (docs/theory.md §8)")
        else:
            seed, request_id = stream
        try:
            result = compute(seed, request_id, ticket)
        except ModelOutputError as exc:
            traceback.clear_frames(exc.__traceback__)
            if isinstance(exc, InvalidInputError):
                raise
            raise ModelInputError(f"the model's output is unusable at this input and noise level: {first_line(exc)}") from exc
        except BaseException as exc:
            # The frames of a request that ended early (deadline, cancellation) hold its tensors (noisy copies,
            # KV caches); the exception kept by the future would keep them alive: ~90 MB per cancelled generate.
            traceback.clear_frames(exc.__traceback__)
            raise
        record, extra = result if isinstance(result, tuple) else (result, {})
        record = {**record, "worker": self.replica}
        document = {"api": API_VERSION, "version": 1, "endpoint": endpoint, "issued": issued,
                    "certificate_id": uuid.uuid4().hex, "issued_at": _now(), "client": client, "model": model,
                    "input": digest, "params": params, "seed": seed, "seed_source": "server" if issued else "client",
                    "request_id": request_id, "failure_probability": fp, **extra}
        if issued:
            document["record"] = record
            document = self.signer.sign(document)
        else:
            document["reproduction"] = record
            document["notice"] = ("a reproduction for a seed the client chose: not an issued certificate, and no "
                                  "guarantee against whoever chose the seed (docs/theory.md §8)")
        entry = {"certificate_id": document["certificate_id"], "issued_at": document["issued_at"], "client": client,
                 "endpoint": endpoint, "mode": "issued" if issued else "reproduction", "model_sha256": model["sha256"],
                 "input_sha256": digest["sha256"], "seed": seed, "failure_probability": fp,
                 "key_id": self.signer.key_id if issued else None}
        self.audit.record(entry, canonical(document).decode("ascii"), self.config.alpha_budget)
        self.metrics.certificates.labels(endpoint, entry["mode"]).inc()
        return document

    # ---------------------------------------------------------------- endpoints
    def certify(self, raw: Any, ticket: Ticket | None = None, client: str = ANONYMOUS) -> dict[str, Any]:
        """CERTIFY (n0, n) or, with target_radius, the sequential CERTIFY-AT of `smoothgen certify`."""
        job = CertifyJob  # the defaults of `smoothgen certify` (alpha aside: the issuing policy's)

        model, body, x, sigma, alpha = self._classifier_request(raw, "certify")
        n0 = body.integer("n0", job.n0)
        target_radius = body.number("target_radius")
        sequential, looks, max_samples, check_every = None, None, None, None
        label = body.integer("label", minimum=0)
        if target_radius is None:
            sequential_only = sorted({"looks", "sequential", "max_samples", "check_every"} & set(body.body))
            if sequential_only:
                raise InvalidParameterError(f"{sequential_only[0]} applies only with target_radius (the sequential test)")
            n = body.integer("n", job.n)
            self._check_samples(n0 + n, "n0 + n")
        else:
            check_positive(target_radius, "target_radius")
            if "n" in body.body:
                raise InvalidParameterError("n is not used with target_radius (the sequential test decides how many samples)")
            n = None
            # As `smoothgen certify --target-radius`: the betting confidence sequence unless looks are given.
            sequential = body.get("sequential", "looks" if "looks" in body.body else job.sequential)
            if sequential not in ("looks", "betting"):
                raise InvalidParameterError(f"sequential must be 'betting' or 'looks', got {short(sequential)}")
            if sequential == "looks":
                if {"max_samples", "check_every"} & set(body.body):
                    raise InvalidParameterError("max_samples and check_every apply only with sequential 'betting'")
                looks = body.get("looks", list(job.looks))
                if not isinstance(looks, list) or not looks:
                    raise InvalidParameterError(f"looks must be a list of increasing sample counts, got {short(looks)}")
                if len(looks) > 64:
                    raise InvalidParameterError(f"looks may hold at most 64 sample counts, got {len(looks)}")
                looks = [check_count(k, "looks") for k in looks]
                if any(b <= a for a, b in zip(looks, looks[1:])):
                    raise InvalidParameterError(f"looks must be increasing, got {short(looks)}")
                self._check_samples(n0 + looks[-1], "n0 + looks[-1]")
            else:
                if "looks" in body.body:
                    raise InvalidParameterError("looks applies only with sequential 'looks' (betting checks every check_every samples)")
                max_samples = body.integer("max_samples", job.max_samples)
                check_every = body.integer("check_every", job.check_every)
                self._check_samples(n0 + max_samples, "n0 + max_samples")
        if label is not None and label >= model.num_classes:
            raise InvalidParameterError(f"label {short(label)} is not a class of the model: labels lie in [0, {model.num_classes})")
        params = {"sigma": sigma, "n0": n0, "n": n, "alpha": alpha, "label": label, "target_radius": target_radius,
                  "sequential": sequential, "looks": looks, "max_samples": max_samples, "check_every": check_every}
        return self._serve_classifier("certify", served_certify, model, body, ticket, client, x, params)

    def predict(self, raw: Any, ticket: Ticket | None = None, client: str = ANONYMOUS) -> dict[str, Any]:
        """PREDICT: the smoothed classifier's class, or ABSTAIN (−1), wrong with probability at most alpha."""
        model, body, x, sigma, alpha = self._classifier_request(raw, "predict")
        n = body.integer("n", PredictJob.n)
        self._check_samples(n, "n")
        params = {"sigma": sigma, "n": n, "alpha": alpha}
        return self._serve_classifier("predict", served_predict, model, body, ticket, client, x, params)

    def _serve_classifier(self, endpoint: str, served: Callable, model: _Model, body: _Body, ticket: Ticket | None,
                          client: str, x: np.ndarray, params: dict[str, Any]) -> dict[str, Any]:
        def compute(seed: int, request_id: int, ticket: Ticket):
            return served(model.scheduler.runtime, model.num_classes, model.shape, x, params, seed=seed,
                          request_id=request_id, model=model.describe(), sampler=DeadlineSampler(model.scheduler, ticket))

        return self._serve(endpoint, body, ticket, client, model.describe(), model.shape, x, params, compute)

    def center(self, raw: Any, ticket: Ticket | None = None, client: str = ANONYMOUS) -> dict[str, Any]:
        """Center smoothing at one eps_in (sigma = eps_in / h), as one record of `smoothgen center`, with the
        smoothed output under "center"."""
        from smoothgen.metrics import get_metric

        self._get("center", "center")
        body = _Body(raw, "center")
        model = self._named("center", "center", body)
        x = self._input(body, model)
        eps_in = check_positive(body.number("eps_in", CENTER_EPS_IN), "eps_in")
        h = check_positive(body.number("h", CenterJob.h), "h")
        check_noise_scale(x, eps_in / h, "eps_in / h")
        metric = body.get("metric", CenterJob.metric)
        if not isinstance(metric, str):
            raise InvalidParameterError(f"metric must be a metric's name, got {short(metric)}")
        metric = get_metric(metric).name
        n, m = body.integer("n", CenterJob.n), body.integer("m", CENTER_M)
        delta = body.number("delta", CenterJob.delta)
        if not 0 < delta < 0.5:
            raise InvalidParameterError(f"delta must lie strictly between 0 and 1/2, got {delta}")
        share = CENTER_ALPHA_SHARE * self.config.max_alpha
        alpha1, alpha2 = self._alpha(body, "alpha1", share), self._alpha(body, "alpha2", share)
        if alpha1 + alpha2 >= 1:
            raise InvalidParameterError(f"alpha1 + alpha2 must be < 1, got {alpha1} + {alpha2}")
        n_candidates = body.integer("n_candidates", CenterJob.n_candidates, minimum=0) or None
        self._check_samples(2 * n + m, "2n + m")
        params = {"eps_in": eps_in, "h": h, "metric": metric, "n": n, "m": m, "delta": delta, "alpha1": alpha1,
                  "alpha2": alpha2, "n_candidates": n_candidates}

        def compute(seed: int, request_id: int, ticket: Ticket):
            record, center = served_center(model.scheduler.runtime, model.shape, x, params, seed=seed, request_id=request_id,
                                           model=model.describe(), sampler=DeadlineSampler(model.scheduler, ticket))
            return record, {"center": center}

        return self._serve("center", body, ticket, client, model.describe(), model.shape, x, params, compute)

    def generate(self, raw: Any, ticket: Ticket | None = None, client: str = ANONYMOUS) -> dict[str, Any]:
        """SmoothedLM's certified prefix, as the record `smoothgen generate --json` prints.

        Generation does not go through a Scheduler (each request decodes its own copies, batch by batch):
        generate_concurrency requests decode at once per replica, in their own queue (max_generate_queue),
        and with generate_batching their LM calls of the same shape run as one batch (`SharedLM`; a record
        is bit-identical alone or batched). The prompt's
        size is checked before it is tokenized and before the LM is waited for; the deadline is checked
        while waiting, after every token chosen and every chunk of estimation copies."""
        from smoothgen.text_generation import DEFAULT_TEXT_SIGMA

        if not self.lms:
            raise EndpointDisabledError(f"/{API_VERSION}/generate is not served here (smoothgen serve --endpoints)")
        body = _Body(raw, "generate")
        prompt = body.required("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise InvalidParameterError(f"prompt must be a non-empty string, got {short(prompt)}")
        size = len(prompt.encode("utf-8", errors="surrogatepass"))
        if size > self.config.max_prompt_bytes:
            raise InvalidParameterError(f"prompt has {size} bytes; this server takes at most {self.config.max_prompt_bytes} "
                                        "(smoothgen serve --max-prompt-bytes)")
        noise = body.get("noise", "ablate")
        if noise not in ("ablate", "delete", "gaussian"):
            raise InvalidParameterError("noise must be 'ablate' (token ablation), 'delete' (token deletion) or 'gaussian', "
                                        f"got {short(noise)}")
        max_new_tokens = body.integer("max_new_tokens", GenerateJob.max_new_tokens)
        n0, n = body.integer("n0", GenerateJob.n0, minimum=0), body.integer("n", GenerateJob.n)
        alpha = self._alpha(body)
        perturb = body.get("perturb")
        if perturb is not None and perturb not in ("all", "context", "last"):
            raise InvalidParameterError(f"perturb must be all, context or last, got {short(perturb)}")
        params: dict[str, Any] = {"noise": noise, "max_new_tokens": max_new_tokens, "n0": n0, "n": n, "alpha": alpha,
                                  "perturb": perturb, "keep": None, "mask_token": None, "edits": None, "sigma": None,
                                  "radius": None}
        if noise in ("ablate", "delete"):
            params.update(mask_token=body.integer("mask_token", minimum=0), edits=body.integer("edits", 1, minimum=0))
            if noise == "ablate":
                params["keep"] = body.integer("keep")
            else:
                from smoothgen.deletion import check_delete_prob
                from smoothgen.text_generation import DEFAULT_DELETE_PROB

                params["delete_prob"] = check_delete_prob(body.number("delete_prob", DEFAULT_DELETE_PROB), "delete_prob")
                params["selection"] = "equal-length"  # recorded: verify --recompute draws the selection the same way
            sequential = body.get("sequential", False)
            if not isinstance(sequential, bool):
                raise InvalidParameterError(f"sequential must be true or false, got {short(sequential)}")
            if sequential:  # n is then the most estimation copies; the record's n is the number drawn
                from smoothgen.generative import SEQUENTIAL_CHECK_EVERY

                params.update(sequential=True, check_every=body.integer("check_every", SEQUENTIAL_CHECK_EVERY),
                              first_check="earliest")
        else:
            params.update(sigma=check_sigma(body.number("sigma", DEFAULT_TEXT_SIGMA)),
                          radius=check_positive(body.number("radius", 0.0), "radius", allow_zero=True))
        self._check_samples(n0 + n, "n0 + n")
        lm, tokenizer, name, digest = self.lms[noise]

        def compute(seed: int, request_id: int, ticket: Ticket):
            def progress(phase: str, done: int, total: int) -> None:
                if ticket.cancelled:
                    raise RequestCancelledError("the request was cancelled before it finished")
                if time.monotonic() > ticket.deadline:
                    raise DeadlineExceededError("the request's timeout_s passed before its certificate was done; "
                                                "its remaining samples were cancelled")

            def run():
                try:
                    progress("", 0, 0)  # the deadline may have passed while it waited for the LM
                    return served_generate(lm, tokenizer, name, prompt, params, seed=seed, request_id=request_id,
                                           batch_size=LM_BATCH_SIZE, progress=progress)
                except BaseException as exc:  # its frames hold the generation's tensors: free them first
                    traceback.clear_frames(exc.__traceback__)
                    raise
                finally:
                    # What its tensors (KV caches, logits of hundreds of copies) freed goes back to the
                    # system: a generation stopped at another point each time fragments the heap anew
                    # (+100 to +200 MB per flood of generate requests, measured). About a millisecond,
                    # against seconds of generation.
                    release_freed_memory()

            future = self._lm_pool.submit(run)
            with ticket._lock:  # a client that goes away cancels it while it waits (running: `progress` stops it)
                ticket.future = future
                if ticket.cancelled:
                    future.cancel()
            try:
                return future.result(timeout=max(0.0, ticket.deadline - time.monotonic()))
            except concurrent.futures.TimeoutError:
                future.cancel()  # not started: dropped; running: `progress` stops it at the deadline
                raise DeadlineExceededError("the request's timeout_s passed before its certificate was done") from None
            except concurrent.futures.CancelledError:
                raise RequestCancelledError("the request was cancelled before it finished") from None

        return self._serve("generate", body, ticket, client, {"name": name, "sha256": digest, "backend": "eager",
                                                              "dtype": None}, None, prompt, params, compute)
