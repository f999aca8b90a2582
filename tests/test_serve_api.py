"""The HTTP API of `smoothgen serve` (smoothgen.serve.build_app over smoothgen.service), without Ray:
the same app a Ray Serve replica runs, driven by a real HTTP client (httpx, through Starlette's TestClient).

Ray Serve itself (replicas, the proxy, the CLI) is tested in test_serve_ray.py."""
import base64
import io
import json
import math
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra (pip install 'smoothgen[serve]') is installed by make test")
from starlette.testclient import TestClient  # noqa: E402

from smoothgen.center import CenterSmoother  # noqa: E402
from smoothgen.classify import SmoothedClassifier  # noqa: E402
from smoothgen.engine.scheduler import RequestCancelledError  # noqa: E402
from smoothgen.jobs import center_record, certify_record, without_timing  # noqa: E402
from smoothgen.models import load_autoencoder, load_classifier, load_digits_split  # noqa: E402
from smoothgen.serve import build_app  # noqa: E402
from smoothgen.service import CertificationService, ServiceConfig, encode_input  # noqa: E402

X = load_digits_split().x_test


@pytest.fixture(scope="module")
def service():
    torch.set_num_threads(1)
    svc = CertificationService(ServiceConfig(backend="eager", batch_size=500, max_queue=8, max_samples=200_000,
                                             timeout_s=20.0, max_timeout_s=30.0))
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(service):
    with TestClient(build_app(service)) as c:
        yield c


def _expected_certify(i, seed, rid, n0=100, n=2000, alpha=0.001, target_radius=None, looks=None, label=None):
    smoothed = SmoothedClassifier(load_classifier(0.25), 10, 0.25, batch_size=500)
    return without_timing(certify_record(smoothed, X[i], rid, label, n0=n0, n=n, alpha=alpha, seed=seed,
                                         target_radius=target_radius, looks=looks))


def _part(record, like):
    return {k: record[k] for k in like}


def test_certify_over_http_is_the_in_process_record(client):
    for i, form in ((0, "list"), (3, "npy"), (7, "list")):
        x = X[i].tolist() if form == "list" else encode_input(X[i])
        response = client.post("/v1/certify", json={"x": x, "seed": 11, "request_id": 100 + i, "n": 2000, "alpha": 0.001,
                                                    "label": int(load_digits_split().y_test[i]), "reproduce": True})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["seed"] == 11 and body["request_id"] == 100 + i and body["api"] == "v1"
        assert body["issued"] is False and "record" not in body and "signature" not in body  # never a certificate
        record = body["reproduction"]
        expected = _expected_certify(i, 11, 100 + i, label=int(load_digits_split().y_test[i]))
        assert _part(record, expected) == expected
        # The run's parameters travel with the record, as in a results file: it can be re-checked offline.
        assert {k: record[k] for k in ("sigma", "n0", "n", "alpha", "seed", "model", "backend", "dtype")} == {
            "sigma": 0.25, "n0": 100, "n": 2000, "alpha": 0.001, "seed": 11, "model": "embedded:digits_cnn_sigma0.25",
            "backend": "eager", "dtype": "float32"}


def test_sequential_certify_predict_and_center_match_in_process(client):
    repro = {"reproduce": True, "alpha": 0.001}
    body = client.post("/v1/certify", json={"x": X[1].tolist(), "seed": 2, "request_id": 9, "target_radius": 0.25,
                                            "looks": [100, 1000, 10000], **repro}).json()
    expected = _expected_certify(1, 2, 9, n=None, target_radius=0.25, looks=[100, 1000, 10000])
    assert _part(body["reproduction"], expected) == expected and body["reproduction"]["decision"] == "certified"

    # Without looks, the betting confidence sequence, as `smoothgen certify --target-radius` does.
    body = client.post("/v1/certify", json={"x": X[1].tolist(), "seed": 2, "request_id": 9, "target_radius": 0.25, **repro}).json()
    smoothed = SmoothedClassifier(load_classifier(0.25), 10, 0.25, batch_size=500)
    expected = without_timing(certify_record(smoothed, X[1], 9, None, n0=100, n=None, alpha=0.001, seed=2, target_radius=0.25,
                                             sequential="betting", max_samples=100_000, check_every=100))
    assert _part(body["reproduction"], expected) == expected and body["reproduction"]["sequential"] == "betting"
    assert body["reproduction"]["max_samples"] == 100_000 and body["reproduction"]["check_every"] == 100

    body = client.post("/v1/predict", json={"x": X[2].tolist(), "seed": 3, "request_id": 4, "n": 500, **repro}).json()
    prediction = SmoothedClassifier(load_classifier(0.25), 10, 0.25).predict(torch.from_numpy(X[2]), 500, 0.001, seed=3, request_id=4)
    assert _part(body["reproduction"], prediction.to_record()) == prediction.to_record()

    request = {"x": X[5].tolist(), "seed": 4, "request_id": 6, "eps_in": 0.3, "h": 2.0, "metric": "l2", "n": 1000, "m": 4000,
               "alpha1": 0.005, "alpha2": 0.005, "reproduce": True}
    body = client.post("/v1/center", json=request).json()
    smoother = CenterSmoother(load_autoencoder(), 0.15, "l2", n_candidates=30)
    expected, cert = center_record(smoother, X[5], 6, 0.3, n=1000, m=4000, delta=0.05, alpha1=0.005, alpha2=0.005, seed=4,
                                   return_certificate=True)
    expected = {k: v for k, v in without_timing(expected).items() if k not in ("center",)}
    got = body["reproduction"]
    for key, value in expected.items():
        if isinstance(value, float) and math.isinf(value):
            assert got[key] is None  # JSON has no Infinity: null, as in results files
        else:
            assert got[key] == value, key
    assert np.array_equal(np.asarray(body["center"], dtype=np.float32), cert.center.numpy())


def test_an_issued_certificate_is_the_library_certificate_at_the_servers_seed(client):
    """No seed in the request: the server keys the noise (docs/theory.md §8); the record is exactly what the
    library computes at that seed, and a repeat of the request gets the identical certificate."""
    a = client.post("/v1/certify", json={"x": X[4].tolist(), "n": 2000}).json()
    b = client.post("/v1/certify", json={"x": X[4].tolist(), "n": 2000}).json()
    assert a["issued"] is True and a["seed_source"] == "server" and a["request_id"] == 0 and a["seed"] == b["seed"]
    expected = _expected_certify(4, a["seed"], 0, n=2000, alpha=1e-6)
    assert _part(a["record"], expected) == expected == _part(b["record"], expected)
    assert a["record"]["alpha"] == 1e-6 and a["signature"]["value"] != b["signature"]["value"]  # two issuances


NAN_NPY = encode_input(np.full((1, 8, 8), np.nan, dtype=np.float32))


def _object_npy() -> str:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return base64.b64encode(buffer.getvalue()).decode()


OBJECT_NPY = _object_npy()  # a real .npy of Python objects: refused, never unpickled

BAD = [
    # (body, status, a piece of the one-line message)
    ({"x": [[1.0, 2.0]]}, 422, "shape (1, 2)"),
    ({"x": NAN_NPY}, 422, "NaN or Inf"),
    ({"x": {"npy": "not base64!"}}, 422, "x.npy is not base64"),
    ({"x": {"npy": base64.b64encode(b"hello, not numpy").decode()}}, 422, "x.npy is not a NumPy .npy file"),
    ({"x": {"npy": OBJECT_NPY}}, 422, "x.npy holds Python objects"),
    ({"x": [[1, 2], [3]]}, 422, "this model takes one input of shape (1, 8, 8)"),  # refused before conversion
    ({"x": [[row if r != 3 else row[:5] for r, row in enumerate(X[0][0].tolist())]]}, 422, "regular shape"),
    ({"x": "abc"}, 422, "x"),
    ({"sigma": 0.0}, 422, "sigma must be a finite number > 0"),
    ({"sigma": -1}, 422, "sigma must be a finite number > 0"),
    ({"alpha": 1.5}, 422, "alpha must lie strictly between 0 and 1"),
    ({"alpha": 0}, 422, "alpha must lie strictly between 0 and 1"),
    ({"n": 10**7}, 422, "exceed this server's limit"),
    ({"n": 0}, 422, "n must be an integer >= 1"),
    ({"n": 2.5}, 422, "n must be an integer"),
    ({"n": True}, 422, "n must be an integer"),
    ({"seed": -3}, 422, "seed must be an integer >= 0"),
    ({"seed": 2**70, "reproduce": True}, 422, "seed must be at most"),
    ({"seed": 3}, 422, "seed and request_id are chosen by the server"),
    ({"request_id": 3}, 422, "seed and request_id are chosen by the server"),
    ({"reproduce": True}, 400, "needs the field 'seed'"),
    ({"reproduce": "yes", "seed": 1}, 422, "reproduce must be true or false"),
    ({"alpha": 0.001}, 422, "an issued certificate may fail with probability at most 1e-06"),
    ({"label": 10}, 422, "label 10 is not a class"),
    ({"target_radius": -0.5}, 422, "target_radius must be a finite number > 0"),
    ({"target_radius": 0.5, "looks": [1000, 100]}, 422, "looks must be increasing"),
    ({"target_radius": 0.5, "n": 100}, 422, "n is not used with target_radius"),
    ({"target_radius": 0.5, "sequential": "bayes"}, 422, "sequential must be 'betting' or 'looks'"),
    ({"target_radius": 0.5, "sequential": "looks", "check_every": 10}, 422, "apply only with sequential 'betting'"),
    ({"target_radius": 0.5, "sequential": "betting", "looks": [10, 100]}, 422, "looks applies only with sequential 'looks'"),
    ({"target_radius": 0.5, "max_samples": 10**7}, 422, "exceed this server's limit"),
    ({"looks": [10, 100]}, 422, "looks applies only with target_radius"),
    ({"timeout_s": 1000}, 422, "timeout_s must be at most 30.0"),
    ({"timeout_s": 0}, 422, "timeout_s must be a finite number > 0"),
    ({"alpah": 0.01}, 400, "has no field 'alpah'"),
]


@pytest.mark.parametrize("extra,status,message", BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_bad_certify_requests_get_4xx_with_the_librarys_line(client, extra, status, message):
    body = {"x": X[0].tolist(), **({} if "target_radius" in extra else {"n": 100}), **extra}
    response = client.post("/v1/certify", content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()
    assert error["status"] == status and message in error["error"] and "\n" not in error["error"]
    assert "record" not in error  # never half a certificate


@pytest.mark.parametrize("raw,status", [(b"{nope", 400), (b"[1, 2]", 400), (b"", 400), (b"\xff\xfe", 400),
                                        (b'{"n": 100}', 400)])
def test_malformed_bodies_are_400(client, raw, status):
    response = client.post("/v1/certify", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == status and "\n" not in response.json()["error"]


def test_bad_center_and_predict_requests(client):
    x = X[0].tolist()
    cases = [("center", {"x": x, "metric": "nope"}, 422, "unknown metric"),
             ("center", {"x": x, "delta": 0.7}, 422, "delta must lie strictly between 0 and 1/2"),
             ("center", {"x": x, "alpha1": 0.6, "alpha2": 0.6}, 422, "alpha1 + alpha2 must be < 1"),
             ("center", {"x": x, "n": 100_000, "m": 100_000}, 422, "exceed this server's limit"),
             ("center", {"x": x, "eps_in": float("nan")}, 422, "eps_in must be a finite number"),
             ("predict", {"x": x, "n": -1}, 422, "n must be an integer >= 1"),
             ("predict", {"x": x, "n0": 5}, 400, "has no field 'n0'")]
    for endpoint, body, status, message in cases:
        response = client.post(f"/v1/{endpoint}", content=json.dumps(body))  # json.dumps writes NaN
        assert response.status_code == status and message in response.json()["error"], (endpoint, body, response.text)
    assert client.post("/v1/nope", json={}).status_code == 404


def test_the_service_survives_bad_requests(client):
    for _ in range(3):
        client.post("/v1/certify", content=b"garbage")
        client.post("/v1/certify", content=json.dumps({"x": [float("inf")] * 3}))
    response = client.post("/v1/certify", json={"x": X[0].tolist(), "n": 200})
    assert response.status_code == 200 and response.json()["record"]["samples"] == 200


def test_a_full_replica_answers_429_with_retry_after(service, client):
    held = 0
    try:
        for _ in range(service.config.max_queue):  # every slot taken, as by max_queue requests in flight
            service.admit()
            held += 1
        response = client.post("/v1/certify", json={"x": X[0].tolist(), "n": 100})
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1" and "--max-queue" in response.json()["error"]
    finally:
        for _ in range(held):
            service.release()
    assert client.post("/v1/certify", json={"x": X[0].tolist(), "n": 100}).status_code == 200


def test_a_deadline_gives_504_and_cancels_the_remaining_samples(service, client):
    scheduler = service.models["classifier:default"].scheduler
    before = scheduler.samples_run
    t0 = time.perf_counter()
    response = client.post("/v1/certify", json={"x": X[0].tolist(), "n": 190_000, "timeout_s": 0.3})
    assert response.status_code == 504 and "timeout_s" in response.json()["error"]
    time.sleep(1.0)  # had the request not been cancelled, its batches would still be running now
    with scheduler._lock:
        assert not scheduler._active
    assert scheduler.samples_run - before < 190_000
    assert time.perf_counter() - t0 < 30


def test_a_cancelled_ticket_stops_its_request(service):
    scheduler = service.models["classifier:default"].scheduler
    before = scheduler.samples_run
    service.admit()
    try:
        future, ticket = service.submit("certify", {"x": X[0].tolist(), "n": 190_000, "timeout_s": 30})
        time.sleep(0.3)
        ticket.cancel()  # what the app does when the client disconnects
        with pytest.raises(RequestCancelledError):
            future.result(timeout=30)
    finally:
        service.release()
    deadline = time.monotonic() + 10  # the scheduler drops a cancelled request before its next batch
    while scheduler._active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not scheduler._active and scheduler.samples_run - before < 190_000


def test_concurrent_requests_share_batches_and_match_in_process(service, client):
    scheduler = service.models["classifier:default"].scheduler
    batches_before = scheduler.batches_run
    results = {}

    def ask(i):
        results[i] = client.post("/v1/certify", json={"x": X[i].tolist(), "seed": 0, "request_id": i, "n": 1000,
                                                      "alpha": 0.001, "reproduce": True}).json()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i in range(8):
        expected = _expected_certify(i, 0, i, n=1000)
        assert _part(results[i]["reproduction"], expected) == expected
    # 8 requests of 1100 samples in batches of 500: alone they would take 8 x 3 batches.
    assert scheduler.batches_run - batches_before < 8 * 3


def test_health_readiness_description_and_metrics(service, client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    described = client.get("/v1").json()
    assert described["endpoints"] == ["certify", "predict", "center", "generate"] and described["max_samples"] == 200_000
    client.post("/v1/certify", json={"x": X[0].tolist(), "n": 100})
    client.post("/v1/certify", json={"x": X[0].tolist(), "alpha": 7})
    text = client.get("/metrics").text
    assert 'smoothgen_requests_total{endpoint="certify",status="200"}' in text
    assert 'smoothgen_requests_total{endpoint="certify",status="422"}' in text
    assert "smoothgen_request_seconds_bucket" in text and "smoothgen_queue_depth 0.0" in text

    def value(prefix):
        line = next(line for line in text.splitlines() if line.startswith(prefix))
        return float(line.rsplit(" ", 1)[1])

    assert value('smoothgen_samples_total{model="embedded:digits_cnn_sigma0.25"}') == service.models["classifier:default"].scheduler.samples_run
    assert value('smoothgen_batch_fill_count{model="embedded:digits_cnn_sigma0.25"}') == service.models["classifier:default"].scheduler.batches_run


def test_readyz_is_503_once_closed():
    svc = CertificationService(ServiceConfig(backend="eager", endpoints=("predict",)))
    with TestClient(build_app(svc)) as c:
        assert c.get("/readyz").status_code == 200
        assert c.post("/v1/center", json={"x": X[0].tolist()}).status_code == 404
        svc.close()
        assert c.get("/readyz").status_code == 503
        response = c.post("/v1/predict", json={"x": X[0].tolist(), "n": 10})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"


def test_the_default_backend_is_the_clis_verified_choice():
    """backend auto, as `smoothgen certify`: the fastest runtime that reproduced eager (ONNX Runtime on CPU),
    named with its dtype in every record."""
    svc = CertificationService(ServiceConfig(endpoints=("certify",)))
    try:
        model = svc.models["classifier:default"]
        assert (model.backend, model.dtype) == ("onnxruntime", "float32")
        record = svc.call("certify", {"x": X[0].tolist(), "n": 200})["record"]
        assert record["backend"] == "onnxruntime" and record["dtype"] == "float32" and record["samples"] == 200
    finally:
        svc.close()


@pytest.mark.parametrize("config,message", [
    (dict(sigma=0.0), "sigma must be a finite number > 0"),
    (dict(max_queue=0), "--max-queue must be an integer >= 1"),
    (dict(endpoints=("certify", "nope")), "--endpoints must name some of"),
    (dict(timeout_s=100.0, max_timeout_s=10.0), "exceeds --max-timeout"),
    (dict(model="some.module:factory"), "--input-shape is needed"),
    (dict(sigma=0.3), "0.3"),
])
def test_bad_service_configurations_are_refused(config, message):
    from smoothgen.errors import SmoothgenError

    with pytest.raises(SmoothgenError, match=None) as info:
        CertificationService(ServiceConfig(backend="eager", **config))
    assert message in str(info.value)


# ------------------------------------------------------------------------------------------ generate
@pytest.fixture(scope="module")
def lm_client():
    svc = CertificationService(ServiceConfig(backend="eager", endpoints=("generate",), timeout_s=20.0, max_timeout_s=30.0))
    with TestClient(build_app(svc)) as c:
        yield c
    svc.close()


def _cli_generation(tmp_path, args):
    from smoothgen.cli import main

    out = tmp_path / "gen.json"
    assert main(["generate", "--json", "--no-progress", "--out", str(out), *args]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("noise_args,body", [
    ([], {}),
    (["--noise", "gaussian", "--sigma", "0.01", "--radius", "0.001"], {"noise": "gaussian", "sigma": 0.01, "radius": 0.001}),
    (["--noise", "delete", "--edits", "2"], {"noise": "delete", "edits": 2}),
    (["--noise", "delete", "--delete-prob", "0.8", "--sequential", "--check-every", "40"],
     {"noise": "delete", "delete_prob": 0.8, "sequential": True, "check_every": 40}),
    (["--sequential"], {"sequential": True}),
    (["--sequential", "--selection-samples", "0"], {"sequential": True, "n0": 0}),
])
def test_generate_over_http_is_the_cli_record(lm_client, tmp_path, capsys, noise_args, body):
    prompt = "def read_lines(path):\n    with open(path) as f:\n        return f.read"
    common = ["--prompt", prompt, "--max-new-tokens", "4", "--samples", "200", "--selection-samples", "40", "--seed", "5"]
    expected = _cli_generation(tmp_path, [*common, *noise_args])
    capsys.readouterr()
    response = lm_client.post("/v1/generate", json={"prompt": prompt, "max_new_tokens": 4, "n": 200, "n0": 40, "seed": 5,
                                                    "request_id": 0, "alpha": 0.001, "reproduce": True, **body})
    assert response.status_code == 200, response.text
    record = response.json()["reproduction"]
    for key, value in expected.items():
        if key != "seconds":
            assert record[key] == value, key
    assert record["worker"] == "local"


def test_bad_generate_requests(lm_client):
    cases = [({"prompt": ""}, 422, "prompt must be a non-empty string"),
             ({"prompt": 5}, 422, "prompt must be a non-empty string"),
             ({}, 400, "needs the field 'prompt'"),
             ({"prompt": "x = 1", "noise": "laplace"}, 422, "noise must be 'ablate'"),
             ({"prompt": "x = 1", "perturb": "context"}, 422, "needs a prompt of several lines"),
             ({"prompt": "x = 1", "noise": "gaussian", "sigma": -1}, 422, "sigma must be a finite number > 0"),
             ({"prompt": "x = 1", "noise": "gaussian", "edits": 2}, 400, "has no field 'edits'"),
             ({"prompt": "x = 1", "noise": "delete", "delete_prob": 1.5}, 422, "delete_prob must be a probability"),
             ({"prompt": "x = 1", "noise": "delete", "keep": 2}, 400, "has no field 'keep'"),
             ({"prompt": "x = 1", "noise": "ablate", "delete_prob": 0.5}, 400, "has no field 'delete_prob'"),
             ({"prompt": "x = 1", "sequential": "yes"}, 422, "sequential must be true or false"),
             ({"prompt": "x = 1", "sequential": True, "check_every": 0}, 422, "check_every"),
             ({"prompt": "x = 1", "check_every": 10}, 400, "has no field 'check_every'"),
             ({"prompt": "x = 1", "noise": "gaussian", "sequential": True}, 400, "has no field 'sequential'"),
             ({"prompt": "x = 1", "max_new_tokens": 0}, 422, "max_new_tokens must be an integer >= 1"),
             ({"prompt": "x = 1", "n0": -1}, 422, "n0 must be an integer >= 0"),
             ({"prompt": "x" * 5000}, 422, "context"),
             ({"prompt": "x = 1", "n": 2_000_000}, 422, "exceed this server's limit")]
    for body, status, message in cases:
        response = lm_client.post("/v1/generate", json=body)
        assert response.status_code == status and message in response.json()["error"], (body, response.text)


def test_generate_deadline_is_504(lm_client):
    response = lm_client.post("/v1/generate", json={"prompt": "import os\nimport s", "n": 100_000, "timeout_s": 0.5})
    assert response.status_code == 504
    ok = lm_client.post("/v1/generate", json={"prompt": "import os\nimport s", "n": 50, "n0": 20, "max_new_tokens": 2})
    assert ok.status_code == 200 and len(ok.json()["record"]["tokens"]) == 2
