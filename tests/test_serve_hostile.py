"""The service against hostile clients (the stress set of issue 21): bodies too large, nested too deep,
integers too long, values too large, prompts too long, generate floods, bad API keys, and arbitrary JSON
— every one a 4xx with the JSON error body, none a 500, and none able to hold a certify request past
its own deadline. The app runs as a Ray Serve replica runs it, driven by a real HTTP client (Starlette's
TestClient); the proxy middleware (smoothgen.serve_proxy) is exercised as an ASGI app of its own, and on a
real Ray Serve proxy in test_serve_ray.py."""
import asyncio
import json
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra (pip install 'smoothgen[serve]') is installed by make test")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from smoothgen.models import load_digits_split  # noqa: E402
from smoothgen.serve import build_app, hash_token  # noqa: E402
from smoothgen.serve_proxy import BodyLimitAndJsonErrors, MAX_MESSAGE  # noqa: E402
from smoothgen.service import CertificationService, ServiceConfig  # noqa: E402

X = load_digits_split().x_test
KEYS = {hash_token("alice-secret-key-0123456789"): "alice", hash_token("bob-secret-key-9876543210"): "bob"}
ALICE = {"authorization": "Bearer alice-secret-key-0123456789"}


@pytest.fixture(scope="module")
def service():
    torch.set_num_threads(1)
    svc = CertificationService(ServiceConfig(backend="eager", batch_size=500, max_queue=8, max_generate_queue=2,
                                             max_samples=20_000, max_body=200_000, max_prompt_bytes=4096,
                                             timeout_s=20.0, max_timeout_s=30.0, api_keys=KEYS))
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(service):
    with TestClient(build_app(service), headers=ALICE) as c:
        yield c


def _is_json_error(response, status):
    body = response.json()
    return response.status_code == status and body["status"] == status and "\n" not in body["error"] \
        and len(body["error"]) <= MAX_MESSAGE


def test_api_keys_name_the_client_and_unknown_ones_get_401(service, client):
    with TestClient(build_app(service)) as anonymous:
        for headers in ({}, {"authorization": "Bearer wrong-key-wrong-key"}, {"authorization": "Basic abc"}):
            response = anonymous.post("/v1/predict", json={"x": X[0].tolist(), "n": 50}, headers=headers)
            assert _is_json_error(response, 401) and response.headers["www-authenticate"].startswith("Bearer")
        assert anonymous.get("/metrics").status_code == 401 and anonymous.get("/v1").status_code == 401
        assert anonymous.get("/healthz").status_code == 200 and "keys" in anonymous.get("/v1/keys").json()
    document = client.post("/v1/predict", json={"x": X[0].tolist(), "n": 50}).json()
    assert document["client"] == "alice"
    bob = client.post("/v1/predict", json={"x": X[1].tolist(), "n": 50},
                      headers={"authorization": "Bearer bob-secret-key-9876543210"}).json()
    assert bob["client"] == "bob" and service.audit.count(client="bob") >= 1


def test_a_body_over_the_limit_is_413_before_it_is_read(client):
    big = b'{"x": "' + b"a" * 300_000 + b'"}'
    response = client.post("/v1/certify", content=big)  # with Content-Length
    assert _is_json_error(response, 413) and "--max-body" in response.json()["error"]

    def chunks():  # no Content-Length: cut off once the streamed bytes pass the limit
        for _ in range(100):
            yield b" " * 10_000

    response = client.post("/v1/certify", content=chunks())
    assert _is_json_error(response, 413)


@pytest.mark.parametrize("raw,status,message", [
    ("[" * 100_000 + "]" * 100_000, 400, "nests JSON arrays or objects too deep"),
    ('{"x": 1' + "0" * 5000 + "}", 400, "more than 4300 digits"),
    ('{"n": 1' + "0" * 400 + ', "x": ' + json.dumps(X[0].tolist()) + "}", 422, "exceed this server's limit"),
    ('{"x": 1e400}', 422, "x must be one input"),
    ('{"n": 100, "timeout_s": 1' + "0" * 400 + ', "x": ' + json.dumps(X[0].tolist()) + "}", 422, "timeout_s must be a finite number"),
    ('{"n": 100, "sigma": 1e300, "x": ' + json.dumps(X[0].tolist()) + "}", 422, "noisy copies of x would overflow float32"),
    ('{"n": 100, "x": ' + json.dumps((X[0] * 0 + 3e38).tolist()) + "}", 422, "this model takes values in [0, 1]"),
    ('{"n": 100, "x": ' + json.dumps(list(range(20_000))) + "}", 422, "takes one input of shape (1, 8, 8)"),
    ('{"n": ' + json.dumps(list(range(20_000))) + ', "x": ' + json.dumps(X[0].tolist()) + "}", 422, "n must be an integer"),
    ('{"metric": "' + "m" * 50_000 + '"}', 400, "needs the field 'x'"),
    ("\xff\xfe", 400, "not JSON"),
])
def test_hostile_bodies_are_4xx_with_a_short_line(client, raw, status, message):
    response = client.post("/v1/certify", content=raw.encode("latin-1") if raw == "\xff\xfe" else raw.encode())
    assert _is_json_error(response, status), response.text[:300]
    assert message in response.json()["error"]


def test_a_model_that_overflows_at_the_clients_input_is_422_not_500():
    """x = 3e38 within an input range that allows it: the model's logits overflow; the answer says the
    model's output is unusable at this input (the model passed its start-up check)."""
    svc = CertificationService(ServiceConfig(backend="eager", endpoints=("certify",), input_range=(-3.4e38, 3.4e38)))
    try:
        with TestClient(build_app(svc)) as c:
            response = c.post("/v1/certify", json={"x": (X[0] * 0 + 3e38).tolist(), "n": 100})
            assert _is_json_error(response, 422) and "unusable at this input" in response.json()["error"]
            assert c.post("/v1/certify", json={"x": X[0].tolist(), "n": 100}).status_code == 200
    finally:
        svc.close()


def test_a_long_prompt_is_refused_before_tokenizing_and_without_waiting_for_the_lm(service, client):
    """The size check runs before a generation thread is waited for: with every one of them held by other
    work, a 100 kB prompt is still refused at once (were it checked on those threads, it would wait and end
    in 504)."""
    gate = threading.Event()
    busy = [service._lm_pool.submit(gate.wait, 30) for _ in range(service.config.generate_concurrency)]
    try:
        response = client.post("/v1/generate", json={"prompt": "x" * 1_000_00, "timeout_s": 1})
    finally:
        gate.set()
        for future in busy:
            future.result()
    assert _is_json_error(response, 422) and "at most 4096" in response.json()["error"]


def test_a_generate_flood_neither_takes_certify_slots_nor_delays_certify_past_its_deadline(service, client):
    statuses, lock = [], threading.Lock()

    def flood():
        response = client.post("/v1/generate", json={"prompt": "import os\nimport s", "n0": 100, "n": 19_900,
                                                     "max_new_tokens": 16, "timeout_s": 6})
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=flood) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # the flood holds both generate slots now
    certify = client.post("/v1/certify", json={"x": X[0].tolist(), "n": 2000, "timeout_s": 5})
    for t in threads:
        t.join(timeout=120)
    assert certify.status_code == 200, certify.text
    assert set(statuses) <= {200, 429, 504} and statuses.count(429) >= 5, statuses
    assert client.post("/v1/generate", json={"prompt": "import os\nimport s", "n0": 20, "n": 50,
                                             "max_new_tokens": 1}).status_code == 200


def test_messages_quote_a_short_prefix_of_a_bad_value(client):
    for body in ({"x": X[0].tolist(), "n": [1] * 1_000}, {"x": X[0].tolist(), "metric": "q" * 10_000},
                 {"x": X[0].tolist(), "sigma": "s" * 10_000}, {"x": X[0].tolist(), "z" * 10_000: 1}):
        response = client.post("/v1/center" if "metric" in body else "/v1/certify", json=body)
        assert response.status_code in (400, 422) and len(response.json()["error"]) < 300, response.text[:400]


# Arbitrary JSON where a request body belongs: every answer is 200 or a 4xx with the JSON error body.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10**30, max_value=10**30) | st.floats()
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
FIELDS = ["x", "n", "n0", "alpha", "sigma", "label", "target_radius", "looks", "sequential", "max_samples", "check_every",
          "seed", "request_id", "reproduce", "timeout_s", "eps_in", "h", "metric", "m", "delta", "alpha1", "alpha2",
          "n_candidates", "prompt", "noise", "max_new_tokens", "perturb", "keep", "mask_token", "edits", "radius",
          "delete_prob"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(endpoint=st.sampled_from(["certify", "predict", "center", "generate"]),
       body=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6) | JSON_VALUES,
       valid_x=st.booleans())
def test_arbitrary_json_bodies_never_give_500(client, endpoint, body, valid_x):
    if isinstance(body, dict) and valid_x and endpoint != "generate":
        body = {**body, "x": X[0].tolist()}
        for name in ("n", "m", "max_samples"):
            if isinstance(body.get(name), int) and body[name] > 5000:
                body[name] = 5000
    if endpoint == "generate" and isinstance(body, dict) and isinstance(body.get("n"), int):
        body["n"] = min(body["n"], 200)
    response = client.post(f"/v1/{endpoint}", content=json.dumps(body))  # NaN and Infinity too, as Python clients send them
    assert response.status_code != 500, response.text
    if response.status_code != 200:
        assert _is_json_error(response, response.status_code), response.text


# ------------------------------------------------------------------------------------------ the proxy middleware
def _run_asgi(app, body_chunks, headers=()):
    sent = []

    async def main():
        chunks = list(body_chunks)

        async def receive():
            if chunks:
                chunk = chunks.pop(0)
                return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        await app({"type": "http", "method": "POST", "path": "/v1/certify", "headers": list(headers)}, receive, send)

    asyncio.run(main())
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start, body


def _plain_app(status, text, headers=()):
    async def app(scope, receive, send):
        while (await receive())["type"] != "http.disconnect":
            pass
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), *headers]})
        await send({"type": "http.response.body", "body": text.encode(), "more_body": False})
    return app


def test_the_proxy_rewrites_its_plain_text_errors_as_json():
    """What Ray Serve's proxy answers itself (the router's 429 with Retry-After, a dying replica's 500, 503)
    reaches the client as {"error", "status"}; JSON answers of the replicas pass unchanged."""
    for status, text, headers in ((429, "Request dropped due to backpressure (num_queued_requests=9).\nmore", [(b"retry-after", b"2")]),
                                  (500, "ray.exceptions.ActorDiedError: The actor died unexpectedly" + "!" * 5000, []),
                                  (503, "", [])):
        start, body = _run_asgi(BodyLimitAndJsonErrors(_plain_app(status, text, headers), max_body=1000), [b"{}"])
        error = json.loads(body)
        assert start["status"] == status and error["status"] == status and (b"content-type", b"application/json") in start["headers"]
        assert "\n" not in error["error"] and 0 < len(error["error"]) <= MAX_MESSAGE
        if status == 429:
            assert error["error"].startswith("Request dropped") and (b"retry-after", b"2") in start["headers"]

    async def json_app(scope, receive, send):
        await send({"type": "http.response.start", "status": 422, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"error": "x", "status": 422}', "more_body": False})

    start, body = _run_asgi(BodyLimitAndJsonErrors(json_app, max_body=1000), [b"{}"])
    assert start["status"] == 422 and json.loads(body) == {"error": "x", "status": 422}


def test_the_proxy_refuses_a_large_body_before_reading_it():
    reads = []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            reads.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    start, body = _run_asgi(BodyLimitAndJsonErrors(app, max_body=1000), [b"x" * 500] * 4, [(b"content-length", b"2000")])
    assert start["status"] == 413 and reads == [] and "refused by the HTTP proxy" in json.loads(body)["error"]
    start, body = _run_asgi(BodyLimitAndJsonErrors(app, max_body=1000), [b"x" * 500] * 4)  # chunked: cut at the limit
    assert start["status"] == 413 and sum(len(m.get("body", b"")) for m in reads) <= 1000
    reads.clear()
    start, body = _run_asgi(BodyLimitAndJsonErrors(app, max_body=1000), [b"x" * 400, b"y" * 400])
    assert start["status"] == 200 and body == b"{}"
