"""Typed job specifications (smoothgen.job_specs): the one source of the runs' defaults, what the CLI builds from
its options, and what the Ray driver ships to its workers."""
from __future__ import annotations

import dataclasses
import pickle

import pytest

from smoothgen.cli import build_parser
from smoothgen.errors import InvalidParameterError
from smoothgen.job_specs import CenterJob, CertifyJob, RayOptions, RuntimeSpec

SHARED_CERTIFY = ("sigma", "n0", "n", "alpha", "seed", "looks", "max_samples", "check_every", "batch_size", "device",
                  "backend", "ddpm", "local_samples", "local_sigma", "model")


def test_the_cli_shows_the_jobs_defaults():
    job = CertifyJob.from_options(build_parser().parse_args(["certify"]))
    assert {name: getattr(job, name) for name in SHARED_CERTIFY} == {name: getattr(CertifyJob(), name) for name in SHARED_CERTIFY}
    center = CenterJob.from_options(build_parser().parse_args(["center"]))
    for name in ("alpha1", "alpha2", "n_candidates", "seed", "batch_size", "device", "backend"):
        assert getattr(center, name) == getattr(CenterJob(), name), name
    # The options center leaves to the model (None on the command line) default to the job's, or a pretrained
    # model's own: `smoothgen center --help` names the job's.
    text = " ".join(build_parser()._subparsers._group_actions[0].choices["center"].format_help().split())
    assert "default: 0.05,0.1 at --h 2" in text and "(default: 20000)" in text


def test_the_service_takes_the_same_defaults():
    import numpy as np
    from sklearn.datasets import load_digits

    from smoothgen.service import CertificationService, ServiceConfig

    svc = CertificationService(ServiceConfig(backend="eager", endpoints=("certify",)))
    try:
        x = (load_digits().images[0] / 16.0).astype(np.float32)[None]
        params = svc.call("certify", {"x": x.tolist(), "reproduce": True, "seed": 1, "request_id": 0, "n": 200})["params"]
        assert params["n0"] == CertifyJob.n0 and params["sigma"] == CertifyJob.sigma
        target = svc.call("certify", {"x": x.tolist(), "reproduce": True, "seed": 1, "request_id": 0,
                                      "target_radius": 0.1, "max_samples": 300})["params"]
        assert target["sequential"] == CertifyJob.sequential and target["check_every"] == CertifyJob.check_every
    finally:
        svc.close()


def test_options_become_typed_fields():
    args = build_parser().parse_args(["certify", "--looks", "10,20", "--input-range", "0,255", "--target-radius", "0.5"])
    job = CertifyJob.from_options(args, sequential="looks")
    assert job.looks == (10, 20) and job.input_range == (0.0, 255.0) and job.target_radius == 0.5
    assert job.sequential == "looks" and isinstance(job, RuntimeSpec)
    center = CenterJob.from_options(build_parser().parse_args(["center", "--eps-in", "0.1,0.2"]))
    assert center.eps_in == (0.1, 0.2)
    # Frozen (a worker cannot change the driver's job), picklable (Ray ships it), and replaced whole.
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.n = 5
    assert pickle.loads(pickle.dumps(job)) == job
    assert job.replace(backend="onnxruntime").backend == "onnxruntime" and job.backend == "auto"


def test_ray_options_are_checked():
    assert RayOptions("local").check() == RayOptions("local", None, 1.0, 0.0)
    for bad, option in ((RayOptions("local", cpus_per_worker=0), "--ray-cpus-per-worker"),
                        (RayOptions("local", cpus_per_worker=float("nan")), "--ray-cpus-per-worker"),
                        (RayOptions("local", gpus_per_worker=-1), "--ray-gpus-per-worker"),
                        (RayOptions("local", workers=0), "--ray-workers")):
        with pytest.raises(InvalidParameterError, match=option):
            bad.check()


def test_worker_options_without_ray_are_refused(capsys):
    from smoothgen.cli import main

    assert main(["certify", "--num", "1", "--ray-workers", "2"]) == 2
    assert "--ray-workers applies only with --ray" in capsys.readouterr().err


def test_generation_and_prediction_take_the_jobs_defaults():
    from smoothgen.job_specs import GenerateJob, PredictJob
    from smoothgen.service import CertificationService, ServiceConfig

    args = build_parser().parse_args(["generate"])
    assert (args.samples, args.selection_samples, args.alpha, args.batch_size) == (
        GenerateJob.n, GenerateJob.n0, GenerateJob.alpha, GenerateJob.batch_size)
    assert PredictJob.sigma == CertifyJob.sigma and PredictJob.alpha == CertifyJob.alpha
    svc = CertificationService(ServiceConfig(backend="eager", endpoints=("generate",)))
    try:
        params = svc.call("generate", {"prompt": "import os\nimport s", "reproduce": True, "seed": 0, "request_id": 0,
                                       "sequential": True})["params"]
        assert (params["max_new_tokens"], params["n0"], params["n"]) == (GenerateJob.max_new_tokens, GenerateJob.n0,
                                                                         GenerateJob.n)
    finally:
        svc.close()
