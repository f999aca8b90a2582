"""`smoothgen serve`: certificates over HTTP, on Ray Serve (the command itself: `smoothgen.serve_cli`).

Each Ray Serve replica holds one `CertificationService` (smoothgen.service): one Scheduler per model, so
concurrent requests share device batches. The HTTP API (version 1):

    POST /v1/certify   CERTIFY (x, n0, n, alpha, sigma, label, timeout_s), or the sequential CERTIFY-AT
                       with target_radius (and looks)
    POST /v1/predict   PREDICT (x, n, alpha, sigma, timeout_s)
    POST /v1/center    center smoothing (x, eps_in, h, metric, n, m, delta, alpha1, alpha2, n_candidates, ...)
    POST /v1/generate  SmoothedLM's certified prefix (prompt, noise, max_new_tokens, n0, n, alpha, edits, ...)
    GET  /v1           what this server serves, its limits and issuing policy
    GET  /v1/keys      the public key that signs issued certificates
    GET  /healthz      the process answers;  GET /readyz  its models are loaded
    GET  /metrics      Prometheus metrics (of the replica that answers)

A response is a certificate document (smoothgen.service; docs/theory.md §8): issued and signed, with the
record under "record", or, for a request with "reproduce": true and its own seed, an unsigned
reproduction under "reproduction". Errors are {"error": one line, "status"}: 400 for a body that is not
JSON or has unknown fields, 401 without a known API key (when the server has keys), 403 past the
client's failure-probability budget, 413 for a body over --max-body (before it is read), 422 for a bad
value, 429 (with Retry-After) when the replica is full, 504 when timeout_s passed (the rest of the
request's samples are cancelled), 404 for an endpoint not served. A client that disconnects is counted
as 499 in the metrics.
"""
import asyncio
import json
import logging
import os
from typing import Any

from smoothgen.errors import InvalidInputError, InvalidParameterError, MetricError, ModelLoadError, SmoothgenError, first_line

log = logging.getLogger("smoothgen.serve")

from smoothgen.api import API_VERSION, ENDPOINTS  # noqa: E402, F401  (the API's names, also importable from here)

SERVE_EXTRA = "pip install 'smoothgen[serve]'"


def status_of(exc: BaseException) -> int:
    """The HTTP status of an error: 4xx for what the client sent, 5xx for what went wrong here."""
    from smoothgen.audit import BudgetExceededError
    from smoothgen.engine.scheduler import QueueFullError, SchedulerClosedError
    from smoothgen.service import DeadlineExceededError, EndpointDisabledError, InvalidRequestError, ServiceBusyError

    if isinstance(exc, (InvalidRequestError, BadBodyError)):
        return 400
    if isinstance(exc, UnauthorizedError):
        return 401
    if isinstance(exc, BudgetExceededError):
        return 403
    if isinstance(exc, EndpointDisabledError):
        return 404
    if isinstance(exc, BodyTooLargeError):
        return 413
    if isinstance(exc, (InvalidParameterError, InvalidInputError, MetricError)):
        return 422
    if isinstance(exc, (ServiceBusyError, QueueFullError)):
        return 429
    if isinstance(exc, SchedulerClosedError):
        return 503
    if isinstance(exc, DeadlineExceededError):
        return 504
    return 500


class BadBodyError(SmoothgenError, ValueError):
    """The request body is not JSON (or nests too deep, or holds an integer of more than 4300 digits): 400."""


class BodyTooLargeError(SmoothgenError, ValueError):
    """The request body is larger than --max-body: 413, answered before the body is read."""


class UnauthorizedError(SmoothgenError, PermissionError):
    """No API key, or one the server does not know: 401."""


#: Status of a request whose client went away before its answer (nginx's convention; never sent).
CLIENT_CLOSED = 499


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None):
    from starlette.responses import Response

    from smoothgen.trust import json_ready

    # As in results files: infinite radii (abstentions) are null, JSON having no Infinity.
    content = json.dumps(json_ready(body), allow_nan=False)
    return Response(content, status_code=status, media_type="application/json", headers=headers)


def error_response(exc: BaseException, retry_after: int):
    from smoothgen.serve_proxy import MAX_MESSAGE

    status = status_of(exc)
    message = first_line(exc) if isinstance(exc, SmoothgenError) else f"internal error: {type(exc).__name__}: {first_line(exc)}"
    headers = {"Retry-After": str(retry_after)} if status in (429, 503) else {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="smoothgen"'
    if status == 413:
        headers["Connection"] = "close"
    # Messages quote at most a short prefix of a bad value (errors.short); this caps what else could be long.
    return _json({"error": message[:MAX_MESSAGE], "status": status}, status, headers or None)


def hash_token(token: str) -> str:
    """How API keys are held in memory and in the configuration: SHA-256 of the token, hex."""
    import hashlib

    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def client_of(authorization: str | None, api_keys: dict[str, str] | None) -> str:
    """The client's name from its `Authorization: Bearer TOKEN` header (UnauthorizedError when the server
    has API keys and the token is missing or unknown); without keys every client is anonymous."""
    import hmac

    from smoothgen.service import ANONYMOUS

    if not api_keys:
        return ANONYMOUS
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthorizedError("this server needs an API key: send the header 'Authorization: Bearer <key>'")
    digest = hash_token(token.strip())
    for known, name in api_keys.items():  # compare_digest on every entry: no early exit that times keys
        if hmac.compare_digest(known, digest):
            return name
    raise UnauthorizedError("unknown API key")


async def read_body(request, limit: int) -> bytes:
    """The request's body, refused (BodyTooLargeError) when its Content-Length exceeds `limit` — before
    one byte of it is read — or once the bytes streamed exceed it."""
    from smoothgen.serve_proxy import too_large_message

    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadBodyError("the Content-Length header is not a number") from None
        if size > limit:
            raise BodyTooLargeError(too_large_message(limit, "the replica"))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(too_large_message(limit, "the replica"))
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    """A request body as JSON, or BadBodyError for anything else: bad UTF-8 or syntax, nesting too deep for
    the parser (RecursionError), an integer of more than 4300 digits (ValueError)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise BadBodyError("the body nests JSON arrays or objects too deep") from None
    except (ValueError, UnicodeDecodeError) as exc:
        if "integer string conversion" in str(exc):
            raise BadBodyError("the body holds an integer of more than 4300 digits") from None
        raise BadBodyError(f"the body is not JSON: {first_line(exc)[:120]}") from None


def build_app(service):
    """The FastAPI application of one replica (also usable without Ray, e.g. with uvicorn or TestClient)."""
    from fastapi import FastAPI, Request
    from starlette.responses import Response

    app = FastAPI(title="smoothgen", version=API_VERSION, docs_url=None, redoc_url=None, openapi_url=None)
    config = service.config
    metrics = service.metrics
    api_keys = config.api_keys

    async def handle(endpoint: str, request: Request):
        status = 500
        try:
            with metrics.latency.labels(endpoint).time():
                client = client_of(request.headers.get("authorization"), api_keys)
                body = parse_json(await read_body(request, config.max_body))
                service.admit(endpoint)
                ticket = None
                try:
                    future, ticket = service.submit(endpoint, body, client)
                    result = await asyncio.wrap_future(future)
                except asyncio.CancelledError:  # the client went away: its samples are not computed for nobody
                    if ticket is not None:
                        ticket.cancel()
                    raise
                finally:
                    service.release(endpoint)
            status = 200
            return _json(result)
        except asyncio.CancelledError:  # gone while its body was read, or while it waited for its answer
            status = CLIENT_CLOSED
            raise
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

    def authorized(request: Request):
        """None when the request may see a protected page, else its 401 response."""
        try:
            client_of(request.headers.get("authorization"), api_keys)
        except UnauthorizedError as exc:
            return error_response(exc, config.retry_after_s)
        return None

    @app.get(f"/{API_VERSION}")
    async def describe(request: Request):
        return authorized(request) or _json(service.describe())

    @app.get(f"/{API_VERSION}/keys")
    async def keys():
        return _json(service.signer.keys_document())

    @app.get("/healthz")
    async def healthz():
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz():
        ready = service.ready and all(m.scheduler._worker.is_alive() for m in service.models.values())
        return _json({"ready": ready}, 200 if ready else 503)

    @app.get("/metrics")
    async def prometheus(request: Request):
        denied = authorized(request)
        if denied is not None:
            return denied
        content, media_type = metrics.exposition()
        return Response(content, media_type=media_type)

    @app.exception_handler(404)
    async def not_found(request: Request, exc):
        return _json({"error": f"no such endpoint: {request.method} {request.url.path[:100]}", "status": 404}, 404)

    @app.exception_handler(405)
    async def not_allowed(request: Request, exc):
        return _json({"error": f"{request.method} is not allowed on {request.url.path[:100]}", "status": 405}, 405)

    return app


# ------------------------------------------------------------------------------------------ Ray Serve
class SmoothgenReplica:
    """One Ray Serve replica: a CertificationService behind the FastAPI app (built at replica start)."""

    def __init__(self, config, torch_threads: int | None = None):
        import torch
        from ray import serve

        from smoothgen.service import CertificationService

        from smoothgen._malloc import keep_freed_memory

        if torch_threads:
            torch.set_num_threads(torch_threads)
        keep_freed_memory()  # a long-running certifier: freed batches are reused, not faulted in again
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
    """The Ray Serve application: `replicas` replicas, each answering 429 itself (JSON, cheap) beyond
    config.max_queue certify/predict/center requests or config.max_generate_queue generate requests in
    flight, and Serve's own router answering 429 + Retry-After once as many more wait for a replica."""
    from ray import serve
    from ray.serve.config import BackpressureConfig

    ingress = serve.ingress()(SmoothgenReplica)
    deployment = serve.deployment(
        ingress,
        name="smoothgen",
        num_replicas=replicas,
        # A replica takes its requests and answers the next ones with 429 itself; the headroom above its
        # queues is for those quick refusals and for /healthz, /metrics and /v1/keys, which count too.
        max_ongoing_requests=config.max_queue + config.max_generate_queue + REPLICA_HEADROOM,
        max_queued_requests=config.max_queue * replicas,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=config.retry_after_s),
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        max_constructor_retry_count=1,
        # No access-log line per request (the metrics count requests by status; the audit log holds every
        # certificate): a per-request cost of the replica that serves no one.
        logging_config={"enable_access_log": False},
    )
    return deployment.bind(config, max(1, int(num_cpus)))


#: Requests a replica accepts beyond its queues (refused at once with 429, or health and metrics pages).
REPLICA_HEADROOM = 32


def proxy_environment(max_body: int) -> None:
    """Have the HTTP proxy of a Ray instance started by this process run `smoothgen.serve_proxy` (the body
    limit before a body is read, JSON errors): Ray's processes inherit this environment. A value the user
    set already is kept."""
    from smoothgen.serve_proxy import CALLBACK, CALLBACK_ENV, MAX_BODY_ENV

    os.environ.setdefault(CALLBACK_ENV, CALLBACK)
    os.environ[MAX_BODY_ENV] = str(int(max_body))


def _build_and_close(config) -> None:
    """Build the service once and close it (run in a spawned child process by `precheck`)."""
    import torch

    from smoothgen.service import CertificationService
    from smoothgen.validate import check_device

    torch.set_num_threads(1)
    check_device(config.device, "--device")
    CertificationService(config).close()


def precheck(config) -> None:
    """Load every model the configuration names, in a child process that exits afterwards: a bad model is
    one line now, and none of its memory stays in this process. The child writes no audit row."""
    import concurrent.futures
    import dataclasses
    import multiprocessing

    probe = dataclasses.replace(config, audit_db=None)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            pool.submit(_build_and_close, probe).result()
        except SmoothgenError:
            raise
        except concurrent.futures.process.BrokenProcessPool as exc:
            raise ModelLoadError(f"the process that checks the models died: {first_line(exc)}") from exc
        except Exception as exc:
            raise ModelLoadError(f"cannot build the service: {first_line(exc)}") from exc


def start(config, *, address: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          replicas: int = 1, num_cpus: float = 1.0, num_gpus: float = 0.0, namespace: str = "smoothgen",
          tls_cert: str | None = None, tls_key: str | None = None) -> dict[str, Any]:
    """Start Ray (a local instance, or join `address`), Serve's HTTP proxy on host:port (HTTPS with a
    certificate and key), and the application.

    Returns what `stop` needs. Raises BackendUnavailableError without the serve extra.
    """
    from smoothgen.ray_util import check_reachable, init_ray

    ray, serve = _import_ray()
    started_ray = not ray.is_initialized()
    if address is not None:
        check_reachable(address, "--address")  # one line at once, where ray.init would wait for minutes
    if started_ray:
        proxy_environment(config.max_body)
        try:
            # address "local": a new Ray instance of this command's own, even when others run on this machine.
            init_ray(ray, address is None, address=address or "local", namespace=namespace, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        except Exception as exc:  # ray.init raises ConnectionError, RuntimeError, ValueError, ...
            hint = "" if address is None else " (a cluster with token authentication also needs RAY_AUTH_MODE=token here; README: Scaling out)"
            raise InvalidParameterError(f"cannot start or reach Ray (--address {address}): {first_line(exc)}{hint}") from exc
    http_options: dict[str, Any] = {"host": host, "port": port}
    if tls_cert is not None:
        http_options.update(ssl_certfile=tls_cert, ssl_keyfile=tls_key)
    serve.start(http_options=http_options, logging_config={"enable_access_log": False})
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
