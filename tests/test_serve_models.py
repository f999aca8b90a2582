"""Several named models in one server: `smoothgen serve --model NAME=SPEC` repeated, requests pick one by name
from that set only, and each one's certificates are signed and verify against that model."""
from __future__ import annotations

import json

import numpy as np
import pytest

from smoothgen.errors import InvalidParameterError
from smoothgen.registry import DEFAULT_NAME, ModelRegistry, NamedModel, named_models, parse_named
from smoothgen.service import CertificationService, ServiceConfig
from smoothgen.trust import ServerKeys, Signer



def _digit() -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().images[0] / 16.0).astype(np.float32)[None]


def test_named_specs_parse_and_refuse_what_they_cannot_be(tmp_path):
    assert parse_named("embedded", "--model") == NamedModel(DEFAULT_NAME, None)
    assert parse_named("small=embedded", "--model") == NamedModel("small", None)
    assert parse_named("robust=embedded:0.5", "--model", embedded_sigma=True) == NamedModel("robust", None, 0.5)
    assert parse_named("f=smoothgen.models:load_classifier", "--model") == NamedModel("f", "smoothgen.models:load_classifier")
    odd = tmp_path / "a=b.pt"
    odd.write_bytes(b"")
    assert parse_named(str(odd), "--model") == NamedModel(DEFAULT_NAME, str(odd))  # a file, not NAME=SPEC
    assert named_models(None, "--model") is None
    for values, message in ((["a=embedded", "a=embedded:0.5"], "given twice"),
                            (["embedded", "embedded:0.5"], "given twice"),  # both would be "default"
                            (["a="], "empty"),
                            (["a=embedded:x"], "embedded:SIGMA"),
                            (["a=/no/such/file.onnx"], "neither an existing file"),
                            (["a=../x:y"], "neither an existing file")):
        with pytest.raises(InvalidParameterError, match=message):
            named_models(values, "--model", embedded_sigma=True)
    with pytest.raises(InvalidParameterError, match="either once"):
        ServiceConfig(model="smoothgen.models:load_classifier", classifiers=(NamedModel("a", None),)).check()
    with pytest.raises(InvalidParameterError, match="name"):
        ServiceConfig(classifiers=(NamedModel("bad name", None),)).check()


def test_the_registry_loads_each_key_once():
    registry, loads = ModelRegistry(), []
    first = registry.get(("c", None), lambda: loads.append(1) or object())
    assert registry.get(("c", None), lambda: loads.append(2) or object()) is first
    assert len(loads) == 1 and len(registry) == 1


def test_serve_parses_repeated_models(tmp_path):
    from smoothgen.cli import build_parser
    from smoothgen.serve_cli import config_from_args

    args = build_parser().parse_args(["serve", "--model", "digits=embedded", "--model", "robust=embedded:0.5",
                                      "--center-model", "ae=embedded", "--state-dir", str(tmp_path)])
    config = config_from_args(args)
    assert config.classifier_models == (NamedModel("digits", None), NamedModel("robust", None, 0.5))
    assert config.center_model_list == (NamedModel("ae", None),)
    plain = config_from_args(build_parser().parse_args(["serve", "--state-dir", str(tmp_path)]))
    assert plain.classifier_models == (NamedModel(DEFAULT_NAME, None),)


@pytest.fixture(scope="module")
def service():
    keys = ServerKeys.generate()
    config = ServiceConfig(backend="eager", endpoints=("certify", "predict"), keys=keys,
                           classifiers=(NamedModel("digits", None), NamedModel("robust", None, 0.5),
                                        NamedModel("same", None)))
    svc = CertificationService(config)
    yield svc
    svc.close()


def test_requests_pick_a_model_by_name_and_only_from_the_served_set(service, tmp_path, capsys):
    described = service.describe()["models"]
    assert {k for k in described if k.startswith("classifier:")} == {"classifier:digits", "classifier:robust",
                                                                      "classifier:same"}
    assert described["classifier"]["served_as"] == "digits"  # the default: the first given
    assert described["classifier:robust"]["sigma"] == 0.5 and described["classifier:digits"]["sigma"] == 0.25
    # One runtime per distinct spec: "same" is "digits" under another name.
    assert service.models["classifier:same"].scheduler is service.models["classifier:digits"].scheduler
    assert service.models["classifier:robust"].scheduler is not service.models["classifier:digits"].scheduler
    x = _digit()
    body = {"x": x.tolist(), "n0": 50, "n": 500}
    default = service.call("certify", body)
    robust = service.call("certify", {**body, "model": "robust"})
    assert default["model"]["served_as"] == "digits" and default["record"]["sigma"] == 0.25
    assert robust["model"]["served_as"] == "robust" and robust["record"]["sigma"] == 0.5  # its own σ by default
    assert robust["model"]["name"] == "embedded:digits_cnn_sigma0.5"
    assert robust["model"]["sha256"] != default["model"]["sha256"] and robust["seed"] != default["seed"]
    same = service.call("certify", {**body, "model": "same"})
    assert same["record"] == {**default["record"], "time": same["record"]["time"]}  # the same model, the same certificate
    assert service.call("predict", {"x": x.tolist(), "n": 200, "model": "robust"})["model"]["served_as"] == "robust"
    for name in ("other", "/etc/passwd", "smoothgen.models:load_classifier", 3, ""):
        with pytest.raises(InvalidParameterError, match="not served here; /v1/certify serves: digits, robust, same"):
            service.call("certify", {**body, "model": name})
    # The certificate of the named model verifies against that model, recomputed bit for bit.
    from smoothgen.cli import main

    path = tmp_path / "robust.json"
    path.write_text(json.dumps(robust))
    np.save(tmp_path / "x.npy", x)
    key = tmp_path / "key.pub"
    key.write_text(Signer(service.config.keys).public_key)
    assert main(["verify", str(path), "--public-key", str(key), "--input", str(tmp_path / "x.npy"), "--recompute"]) == 0
    assert "recomputed certify record: identical" in capsys.readouterr().out


def test_a_named_model_over_http(service):
    from fastapi.testclient import TestClient

    from smoothgen.serve import build_app

    with TestClient(build_app(service)) as client:
        ok = client.post("/v1/predict", json={"x": _digit().tolist(), "n": 100, "model": "robust"})
        assert ok.status_code == 200 and ok.json()["model"]["served_as"] == "robust"
        bad = client.post("/v1/predict", json={"x": _digit().tolist(), "n": 100, "model": "../models/x.pt"})
        assert bad.status_code == 422 and "is not served here" in bad.json()["error"]
