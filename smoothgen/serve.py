"""`smoothgen serve`: certificates over HTTP, on Ray Serve.

Each Ray Serve replica holds one `CertificationService` (smoothgen.service): one Scheduler per model, so
concurrent requests share device batches. The HTTP API (version 1):

    POST /v1/certify   CERTIFY (x, n0, n, alpha, sigma, seed, request_id, label, timeout_s), or the
                       sequential CERTIFY-AT with target_radius (and looks)
    POST /v1/predict   PREDICT (x, n, alpha, sigma, seed, request_id, timeout_s)
    POST /v1/center    center smoothing (x, eps_in, h, metric, n, m, delta, alpha1, alpha2, n_candidates, ...)
    POST /v1/generate  SmoothedLM's certified prefix (prompt, noise, max_new_tokens, n0, n, alpha, edits, ...)
    GET  /v1           what this server serves, and its limits
    GET  /healthz      the process answers;  GET /readyz  its models are loaded
    GET  /metrics      Prometheus metrics (of the replica that answers)

Responses are JSON: {"api": "v1", "seed", "request_id", "record": {...}} where the record has the fields
of a `smoothgen certify` / `smoothgen center` results line. Errors are {"error": one line, "status"}: 400
for a malformed body, 422 for a bad value, 429 (with Retry-After) when the replica is full, 504 when
timeout_s passed (the rest of the request's samples are cancelled), 404 for an endpoint not served.
"""
import asyncio
import json
import logging
import math
import sys
import threading
from typing import Any

from smoothgen.errors import (InvalidInputError, InvalidParameterError, MetricError, ModelLoadError, SmoothgenError,
                              first_line)

log = logging.getLogger("smoothgen.serve")

API_VERSION = "v1"
ENDPOINTS = ("certify", "predict", "center", "generate")

SERVE_EXTRA = "pip install 'smoothgen[serve]'"


def status_of(exc: BaseException) -> int:
    """The HTTP status of an error: 4xx for what the client sent, 5xx for what went wrong here."""
    from smoothgen.engine.scheduler import QueueFullError, SchedulerClosedError
    from smoothgen.service import DeadlineExceededError, EndpointDisabledError, InvalidRequestError, ServiceBusyError

    if isinstance(exc, InvalidRequestError):
        return 400
    if isinstance(exc, EndpointDisabledError):
        return 404
    if isinstance(exc, (InvalidParameterError, InvalidInputError, MetricError)):
        return 422
    if isinstance(exc, (ServiceBusyError, QueueFullError)):
        return 429
    if isinstance(exc, SchedulerClosedError):
        return 503
    if isinstance(exc, DeadlineExceededError):
        return 504
    return 500


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None):
    from starlette.responses import Response

    from smoothgen.results import _json_default

    # As in results files: infinite radii (abstentions) are null, JSON having no Infinity.
    content = json.dumps(_finite(body), default=_json_default, allow_nan=False)
    return Response(content, status_code=status, media_type="application/json", headers=headers)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def error_response(exc: BaseException, retry_after: int):
    status = status_of(exc)
    message = first_line(exc) if isinstance(exc, SmoothgenError) else f"internal error: {type(exc).__name__}: {first_line(exc)}"
    headers = {"Retry-After": str(retry_after)} if status in (429, 503) else None
    return _json({"error": message, "status": status}, status, headers)


def build_app(service):
    """The FastAPI application of one replica (also usable without Ray, e.g. with uvicorn or TestClient)."""
    from fastapi import FastAPI, Request
    from starlette.responses import Response

    from smoothgen.service import InvalidRequestError

    app = FastAPI(title="smoothgen", version=API_VERSION, docs_url=None, redoc_url=None, openapi_url=None)
    config = service.config
    metrics = service.metrics

    async def handle(endpoint: str, request: Request):
        status = 500
        try:
            with metrics.latency.labels(endpoint).time():
                try:
                    body = json.loads(await request.body())
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise InvalidRequestError(f"the body is not JSON: {first_line(exc)}") from exc
                service.admit()
                ticket = None
                try:
                    future, ticket = service.submit(endpoint, body)
                    result = await asyncio.wrap_future(future)
                except asyncio.CancelledError:  # the client went away: its samples are not computed for nobody
                    if ticket is not None:
                        ticket.cancel()
                    raise
                finally:
                    service.release()
            status = 200
            return _json(result)
        except Exception as exc:
            status = status_of(exc)
            if status >= 500 and status != 504:
                log.exception("request to /%s/%s failed", API_VERSION, endpoint)
            return error_response(exc, config.retry_after_s)
        finally:
            metrics.requests.labels(endpoint, str(status)).inc()

    for endpoint in ENDPOINTS:
        async def route(request: Request, endpoint: str = endpoint):
            return await handle(endpoint, request)

        app.add_api_route(f"/{API_VERSION}/{endpoint}", route, methods=["POST"], name=endpoint)

    @app.get(f"/{API_VERSION}")
    async def describe():
        return _json({"api": API_VERSION, "endpoints": list(config.endpoints),
                      "models": {k: {"name": m.name, "backend": m.backend, "dtype": m.dtype, "input_shape": list(m.shape)}
                                 for k, m in service.models.items()},
                      "sigma": config.sigma, "max_queue": config.max_queue, "max_samples": config.max_samples,
                      "timeout_s": config.timeout_s, "max_timeout_s": config.max_timeout_s})

    @app.get("/healthz")
    async def healthz():
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz():
        ready = service.ready and all(m.scheduler._worker.is_alive() for m in service.models.values())
        return _json({"ready": ready}, 200 if ready else 503)

    @app.get("/metrics")
    async def prometheus():
        content, media_type = metrics.exposition()
        return Response(content, media_type=media_type)

    return app


# ------------------------------------------------------------------------------------------ Ray Serve
class SmoothgenReplica:
    """One Ray Serve replica: a CertificationService behind the FastAPI app (built at replica start)."""

    def __init__(self, config, torch_threads: int | None = None):
        import torch
        from ray import serve

        from smoothgen.service import CertificationService

        if torch_threads:
            torch.set_num_threads(torch_threads)
        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside a replica (never in serve): a plain name
            replica = "replica"
        self.service = CertificationService(config, replica=f"replica-{replica}")

    def __serve_build_asgi_app__(self):
        return build_app(self.service)

    def __del__(self):
        service = getattr(self, "service", None)
        if service is not None:
            service.close()


def application(config, replicas: int = 1, num_cpus: float = 1.0, num_gpus: float = 0.0):
    """The Ray Serve application: `replicas` replicas, each refusing more than config.max_queue requests in
    flight (429), and Serve's own router refusing beyond max_queue queued per replica (429 + Retry-After)."""
    from ray import serve
    from ray.serve.config import BackpressureConfig

    ingress = serve.ingress()(SmoothgenReplica)
    deployment = serve.deployment(
        ingress,
        name="smoothgen",
        num_replicas=replicas,
        # A replica takes its max_queue requests and answers the next ones with 429 itself (cheap); the
        # router queues at most max_queue more per replica before answering 429 too.
        max_ongoing_requests=config.max_queue + 8,
        max_queued_requests=config.max_queue * replicas,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=config.retry_after_s),
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        max_constructor_retry_count=1,
    )
    return deployment.bind(config, max(1, int(num_cpus)))


def start(config, *, address: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          replicas: int = 1, num_cpus: float = 1.0, num_gpus: float = 0.0, namespace: str = "smoothgen") -> dict[str, Any]:
    """Start Ray (a local instance, or join `address`), Serve's HTTP proxy on host:port, and the application.

    Returns what `stop` needs. Raises BackendUnavailableError without the serve extra.
    """
    ray, serve = _import_ray()
    started_ray = not ray.is_initialized()
    if address is not None:
        from smoothgen.distributed import _check_reachable

        _check_reachable(address, "--address")  # one line at once, where ray.init would wait for minutes
    if started_ray:
        try:
            # address "local": a new Ray instance of this command's own, even when others run on this machine.
            ray.init(address=address or "local", namespace=namespace, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        except Exception as exc:  # ray.init raises ConnectionError, RuntimeError, ValueError, ...
            hint = "" if address is None else " (a cluster with token authentication also needs RAY_AUTH_MODE=token here; README: Scaling out)"
            raise InvalidParameterError(f"cannot start or reach Ray (--address {address}): {first_line(exc)}{hint}") from exc
    serve.start(http_options={"host": host, "port": port})
    serve.run(application(config, replicas, num_cpus, num_gpus), name="smoothgen", route_prefix="/", blocking=False)
    return {"started_ray": started_ray}


def stop(handle: dict[str, Any]) -> None:
    ray, serve = _import_ray()
    try:
        serve.shutdown()
    finally:
        if handle.get("started_ray"):
            ray.shutdown()


def _import_ray():
    from smoothgen.errors import BackendUnavailableError

    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise BackendUnavailableError(f"smoothgen serve needs Ray Serve: {SERVE_EXTRA}") from exc
    return ray, serve


# ------------------------------------------------------------------------------------------ the command
def add_parser(sub: Any) -> None:
    from smoothgen.cli import DefaultsFormatter

    p = sub.add_parser(
        "serve",
        help="serve certificates over HTTP (Ray Serve): /v1/certify, /v1/predict, /v1/center, /v1/generate",
        description="Start a Ray Serve application that answers certification requests over HTTP with the same "
        "records as `smoothgen certify` and `smoothgen center`. A local Ray instance is started unless --address names "
        "a cluster. Each replica batches concurrent requests on one scheduler per model. With no arguments: the "
        "embedded digits classifier (sigma 0.25), autoencoder and code LMs on http://127.0.0.1:8000. Stop with Ctrl-C. "
        "API: README 'Serving'.",
        formatter_class=DefaultsFormatter,
    )
    models = p.add_argument_group("models")
    models.add_argument("--model", help="classifier of /v1/certify and /v1/predict: TorchScript, .pt2, ONNX or "
                        "package.module:factory (default: the embedded digits CNN trained at --sigma)")
    models.add_argument("--sigma", type=float, default=0.25, help="noise level of requests that give none")
    models.add_argument("--center-model", help="model of /v1/center (default: the embedded digits autoencoder)")
    models.add_argument("--lm", help="causal LM of /v1/generate: package.module:factory or hf:FOLDER (default: the "
                        "embedded code LMs, the one trained for each noise)")
    models.add_argument("--input-shape", help="one input's shape for a model of your own, e.g. 3,32,32 (the embedded "
                        "models take 1,8,8)")
    models.add_argument("--endpoints", default=",".join(ENDPOINTS), help="endpoints to serve (their models are loaded)")
    run = p.add_argument_group("execution")
    run.add_argument("--backend", default="auto", choices=["auto", "eager", "compile", "onnxruntime", "tensorrt"],
                     help="runtime for torch models, as for smoothgen certify")
    run.add_argument("--device", default="cpu", help="torch device of each replica, e.g. cpu or cuda")
    run.add_argument("--batch-size", type=int, default=1000, help="noisy copies per model call (shared by concurrent requests)")
    run.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (each loads the models once)")
    run.add_argument("--num-cpus", type=float, default=1.0, help="CPUs Ray reserves per replica (its torch threads)")
    run.add_argument("--num-gpus", type=float, default=None, help="GPUs per replica (default: 1 with --device cuda, else 0)")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-queue", type=int, default=64, help="requests in flight per replica; more get 429 + Retry-After")
    limits.add_argument("--max-samples", type=int, default=1_000_000, help="most noisy copies one request may ask for (422 beyond)")
    limits.add_argument("--timeout", type=float, default=60.0, help="deadline (s) of a request without timeout_s; 504 after it")
    limits.add_argument("--max-timeout", type=float, default=600.0, help="largest timeout_s a request may ask for")
    limits.add_argument("--retry-after", type=int, default=1, help="Retry-After (s) of a 429")
    net = p.add_argument_group("network")
    net.add_argument("--address", help="Ray cluster to join (e.g. auto, or HOST:PORT of `ray start --head`); default: "
                     "a local Ray instance for this command")
    net.add_argument("--host", default="127.0.0.1", help="HTTP host to bind (0.0.0.0: every interface)")
    net.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.set_defaults(func=cmd_serve)


def config_from_args(args):
    from smoothgen.cli import _check_model_spec
    from smoothgen.service import ServiceConfig

    shape = None
    if args.input_shape is not None:
        try:
            shape = tuple(int(v) for v in args.input_shape.split(","))
        except ValueError as exc:
            raise InvalidParameterError(f"--input-shape must be comma-separated integers, got {args.input_shape!r}") from exc
    endpoints = tuple(e.strip() for e in args.endpoints.split(",") if e.strip())
    for option, spec in (("--model", args.model), ("--center-model", args.center_model)):
        if spec is not None:
            _check_model_spec(spec, option)
    return ServiceConfig(model=args.model, sigma=args.sigma, center_model=args.center_model, lm=args.lm, input_shape=shape,
                         backend=args.backend, device=args.device, batch_size=args.batch_size, max_queue=args.max_queue,
                         max_samples=args.max_samples, timeout_s=args.timeout, max_timeout_s=args.max_timeout,
                         retry_after_s=args.retry_after, endpoints=endpoints).check()


def cmd_serve(args) -> int:
    import signal

    from smoothgen.service import CertificationService
    from smoothgen.validate import check_count, check_device, check_positive

    config = config_from_args(args)
    check_device(args.device, "--device")
    check_count(args.replicas, "--replicas")
    check_positive(args.num_cpus, "--num-cpus")
    if not 0 < args.port < 65536:
        raise InvalidParameterError(f"--port must lie in 1..65535, got {args.port}")
    num_gpus = (1.0 if args.device.startswith("cuda") else 0.0) if args.num_gpus is None else check_positive(args.num_gpus, "--num-gpus", allow_zero=True)
    _import_ray()
    if args.address is not None:
        from smoothgen.distributed import _check_reachable

        _check_reachable(args.address, "--address")
    # Load the models here first: a bad --model fails now with one line, not inside a replica's log.
    try:
        CertificationService(config).close()
    except SmoothgenError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot build the service: {first_line(exc)}") from exc
    handle = start(config, address=args.address, host=args.host, port=args.port, replicas=args.replicas,
                   num_cpus=args.num_cpus, num_gpus=num_gpus)
    stopped = threading.Event()
    try:
        print(f"smoothgen serve: http://{args.host}:{args.port}/{API_VERSION} ({args.replicas} replica(s); "
              f"endpoints: {', '.join(config.endpoints)}). Ctrl-C stops.", file=sys.stderr, flush=True)
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        stop(handle)
    print("smoothgen serve: stopped", file=sys.stderr)
    return 0
