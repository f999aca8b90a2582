"""`smoothgen serve` on a real Ray Serve instance (local Ray, one CPU-sized replica), driven by a real HTTP
client over loopback; and the command itself, started and stopped as a user would."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

ray = pytest.importorskip("ray", reason="the serve extra (pip install 'smoothgen[serve]') is installed by make test")
serve = pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from smoothgen.classify import SmoothedClassifier  # noqa: E402
from smoothgen.cli import main  # noqa: E402
from smoothgen.jobs import certify_record, without_timing  # noqa: E402
from smoothgen.models import load_classifier, load_digits_split  # noqa: E402
from smoothgen.serve import application  # noqa: E402
from smoothgen.service import ServiceConfig  # noqa: E402

X, Y = load_digits_split().x_test, load_digits_split().y_test
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base_url():
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="smoothgen-test")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(ServiceConfig(backend="eager", batch_size=500)), name="smoothgen", route_prefix="/")
        # A second application whose replica holds one request at a time: for back-pressure.
        serve.run(application(ServiceConfig(backend="eager", batch_size=500, max_queue=1, endpoints=("certify",),
                                            retry_after_s=2)), name="small", route_prefix="/small")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _expected(i, seed, rid, n):
    smoothed = SmoothedClassifier(load_classifier(0.25), 10, 0.25, batch_size=500)
    return without_timing(certify_record(smoothed, X[i], rid, None, n0=100, n=n, alpha=0.001, seed=seed))


async def _post_all(url, bodies, timeout=120.0):
    async with httpx.AsyncClient(timeout=timeout) as client:
        return await asyncio.gather(*(client.post(url, json=body) for body in bodies))


def test_concurrent_http_certificates_are_bit_identical_to_in_process(base_url):
    bodies = [{"x": X[i].tolist(), "seed": 7, "request_id": 1000 + i, "n": 1000} for i in range(12)]
    responses = asyncio.run(_post_all(f"{base_url}/v1/certify", bodies))
    torch.set_num_threads(1)
    for i, response in enumerate(responses):
        assert response.status_code == 200, response.text
        record = response.json()["record"]
        expected = _expected(i, 7, 1000 + i, 1000)
        assert {k: record[k] for k in expected} == expected
        assert record["worker"].startswith("replica-") and record["data"] == "http"


def test_bad_input_over_serve_is_a_4xx_line_and_the_service_stays_up(base_url):
    with httpx.Client(timeout=60) as client:
        response = client.post(f"{base_url}/v1/certify", json={"x": X[0].tolist(), "alpha": 1.5})
        assert response.status_code == 422 and response.json()["error"] == "alpha must lie strictly between 0 and 1, got 1.5"
        assert client.post(f"{base_url}/v1/certify", content=b"not json").status_code == 400
        assert client.post(f"{base_url}/v1/center", json={"x": X[0].tolist(), "metric": "nope"}).status_code == 422
        response = client.post(f"{base_url}/v1/predict", json={"x": X[0].tolist(), "n": 100, "seed": 1})
        assert response.status_code == 200 and response.json()["record"]["prediction"] == int(Y[0])


def test_generate_over_serve(base_url):
    body = {"prompt": "def read_lines(path):\n    with open(path) as f:\n        return f.read", "max_new_tokens": 4,
            "n0": 40, "n": 200, "seed": 1, "request_id": 2}
    response = httpx.post(f"{base_url}/v1/generate", json=body, timeout=120)
    assert response.status_code == 200, response.text
    record = response.json()["record"]
    assert record["noise"] == "ablation" and record["perturb"] == "context" and len(record["tokens"]) == 4
    assert record["seed"] == 1 and record["request_id"] == 2 and record["worker"].startswith("replica-")


def test_a_full_replica_sheds_load_with_429_and_retry_after(base_url):
    bodies = [{"x": X[i].tolist(), "n": 150_000, "timeout_s": 4} for i in range(6)]
    responses = asyncio.run(_post_all(f"{base_url}/small/v1/certify", bodies))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429, 504}, statuses
    refused = [r for r in responses if r.status_code == 429]
    assert refused and all(r.headers["retry-after"] == "2" for r in refused), statuses


def test_deadline_504_health_and_metrics_over_serve(base_url):
    with httpx.Client(timeout=60) as client:
        response = client.post(f"{base_url}/v1/certify", json={"x": X[0].tolist(), "n": 900_000, "timeout_s": 0.5})
        assert response.status_code == 504
        assert client.get(f"{base_url}/healthz").json() == {"status": "ok"}
        assert client.get(f"{base_url}/readyz").status_code == 200
        text = client.get(f"{base_url}/metrics").text
        assert 'smoothgen_requests_total{endpoint="certify",status="504"} 1.0' in text
        samples = next(float(line.split()[-1]) for line in text.splitlines()
                       if line.startswith('smoothgen_samples_total{model="embedded:digits_cnn_sigma0.25"}'))
        # 12 x 1100 + a predict of 100 + the cancelled request's share, far from its 900 100 samples.
        assert 12 * 1100 + 100 <= samples < 12 * 1100 + 100 + 900_100


def _metric(base_url, prefix):
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def test_a_client_that_disconnects_has_its_samples_cancelled(base_url):
    samples = 'smoothgen_samples_total{model="embedded:digits_cnn_sigma0.25"}'
    before = _metric(base_url, samples)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 1 s and closes its connection
        httpx.post(f"{base_url}/v1/certify", json={"x": X[0].tolist(), "n": 900_000, "timeout_s": 120}, timeout=1.0)
    deadline = time.monotonic() + 30
    while _metric(base_url, "smoothgen_queue_depth") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _metric(base_url, "smoothgen_queue_depth") == 0
    time.sleep(1.0)
    spent = _metric(base_url, samples) - before
    assert spent < 900_100  # the request stopped long before its 900 100 samples
    time.sleep(1.0)
    assert _metric(base_url, samples) - before == spent  # and nothing runs for it any more


def test_serve_without_ray_exits_2_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    assert main(["serve", "--port", "8999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'smoothgen[serve]'" in err[0]


@pytest.mark.parametrize("args,message", [
    (["--port", "0"], "--port must lie in 1..65535"),
    (["--max-queue", "0"], "--max-queue must be an integer >= 1"),
    (["--endpoints", "certify,bogus"], "--endpoints must name some of"),
    (["--model", "no/such/file.onnx"], "neither an existing file nor package.module:factory"),
    (["--input-shape", "1,x"], "--input-shape must be comma-separated integers"),
])
def test_bad_serve_options_are_one_line_exit_2(args, message, capsys):
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_the_serve_command_starts_answers_and_stops_on_sigterm(tmp_path):
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "smoothgen", "serve", "--port", str(port), "--endpoints", "predict",
                                "--backend", "eager"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 180
        ready = False
        while time.monotonic() < deadline and process.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                pass
            if ready:
                break
            time.sleep(1)
        assert ready, process.stderr.read() if process.poll() is not None else "not ready in 180 s"
        response = httpx.post(f"http://127.0.0.1:{port}/v1/predict", json={"x": X[0].tolist(), "n": 100, "seed": 3}, timeout=60)
        assert response.status_code == 200 and response.json()["record"]["prediction"] == int(Y[0])
        assert httpx.post(f"http://127.0.0.1:{port}/v1/certify", json={"x": X[0].tolist()}, timeout=60).status_code == 404
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0
        assert "smoothgen serve: stopped" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_an_address_where_no_cluster_answers_is_one_line(capsys):
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    assert main(["serve", "--endpoints", "predict", "--address", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach a Ray cluster" in err[0] and time.monotonic() - t0 < 60
