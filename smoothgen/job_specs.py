"""Typed job specifications: what one certify, predict, center or generate job computes, and where its model
comes from.

The front doors translate into these and nothing else crosses between them: the CLI builds them from its
parsed options (`from_options`, after checking them), the HTTP service builds the `RuntimeSpec` of each
served model from its configuration, and the Ray driver ships a job to its workers. The application layer
(`smoothgen.base_models`: models, runtimes, per-input records) reads their fields. The defaults here are the
ones the CLI's options show and the service's requests take (the service's issuing policy — its α, its
center m — is its own, stated in `smoothgen.service`).

This module imports nothing heavy: the CLI builds its parser from these defaults before torch is imported.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from smoothgen.errors import InvalidParameterError

#: The sequential test's sample counts of `looks` (Cohen-style group sequential test, docs/theory.md §6).
DEFAULT_LOOKS = (100, 1_000, 10_000, 100_000)
#: The betting confidence sequence checks its bound after every this many samples.
DEFAULT_CHECK_EVERY = 100
#: The sequential test a target radius is certified with unless looks are given.
DEFAULT_SEQUENTIAL = "betting"
#: center's radii: at h = 2 on the digits autoencoder, eps_in <= 0.1 keeps eps_out (tv2d) below the distance
#: between two different digits' reconstructions (benchmarks/RESULTS.md).
DEFAULT_EPS_IN = (0.05, 0.1)
#: DiffSmooth's local smoothing: copies per purified input and their noise level.
DEFAULT_LOCAL_SAMPLES = 5
DEFAULT_LOCAL_SIGMA = 0.25
#: Tokens a certified generation decodes (α is split across them).
DEFAULT_MAX_NEW_TOKENS = 16
#: A three-line prompt: under the default --perturb (context), its first two lines may be edited and the
#: line being completed is held fixed.
DEFAULT_PROMPT = "def read_lines(path):\n    with open(path) as f:\n        return f.read"


@dataclass(frozen=True)
class RuntimeSpec:
    """A model and the runtime it runs on.

    Attributes:
        model: a file (TorchScript, .pt2, ONNX), package.module:factory, a pretrained model's name (center),
            or None for the embedded model.
        device, backend, batch_size: where and how it runs (backend "auto": the fastest runtime that
            reproduces eager on noisy copies, `smoothgen.engine.runtime.create_runtime`).
        sigma: the noise level the runtime is checked at (and the embedded classifier's training σ).
        input_range: (lo, hi) every input value must lie in (None: [0, 1] for the embedded models).
    """

    model: str | None = None
    device: str = "cpu"
    backend: str = "auto"
    batch_size: int = 1000
    sigma: float | None = None
    input_range: tuple[float, float] | None = None

    @classmethod
    def from_options(cls, options: Any, **overrides: Any):
        """The spec of a front door's options object (the CLI's parsed arguments): every field it has, by
        name, then `overrides`. The options are checked by the front door before this."""
        values = {f.name: getattr(options, f.name) for f in dataclasses.fields(cls) if hasattr(options, f.name)}
        values.update(overrides)
        for name in ("looks", "eps_in"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        if isinstance(values.get("input_range"), str):
            from smoothgen.validate import parse_value_range

            values["input_range"] = parse_value_range(values["input_range"], "--input-range")
        return cls(**values)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class CertifyJob(RuntimeSpec):
    """`smoothgen certify`: CERTIFY (n0, n) per input, or CERTIFY-AT target_radius with a sequential test;
    optionally behind a diffusion purifier (`denoiser` "dds" or "diffsmooth")."""

    sigma: float = 0.25
    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    seed: int = 0
    target_radius: float | None = None
    sequential: str = DEFAULT_SEQUENTIAL
    looks: tuple[int, ...] = DEFAULT_LOOKS
    max_samples: int = DEFAULT_LOOKS[-1]
    check_every: int = DEFAULT_CHECK_EVERY
    denoiser: str | None = None
    ddpm: str = "embedded"
    local_samples: int = DEFAULT_LOCAL_SAMPLES
    local_sigma: float = DEFAULT_LOCAL_SIGMA
    classifier_sigma: float | None = None


@dataclass(frozen=True)
class CenterJob(RuntimeSpec):
    """`smoothgen center`: center smoothing of each input at each eps_in (σ = eps_in / h)."""

    eps_in: tuple[float, ...] = DEFAULT_EPS_IN
    h: float = 2.0
    metric: str = "tv2d"
    n: int = 10_000
    m: int = 20_000
    delta: float = 0.05
    alpha1: float = 0.005
    alpha2: float = 0.005
    n_candidates: int = 30
    seed: int = 0


@dataclass(frozen=True)
class PredictJob(RuntimeSpec):
    """PREDICT (`/v1/predict`): the smoothed classifier's class from n copies, or ABSTAIN."""

    sigma: float = CertifyJob.sigma
    n: int = 1000
    alpha: float = CertifyJob.alpha


@dataclass(frozen=True)
class GenerateJob:
    """One certified text generation (`smoothgen generate`, `/v1/generate`): the keyword arguments of
    `smoothgen.text_generation.certified_generation` (`kwargs`). None leaves a choice to it: the noise's
    own keep, mask token, deletion probability, σ and radius, the sequential test's check interval."""

    prompt: str = DEFAULT_PROMPT
    noise: str = "ablate"
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    n0: int = 100
    n: int = 1000
    alpha: float = 0.001
    seed: int | None = 0
    request_id: int = 0
    perturb: str | None = None
    keep: int | None = None
    mask_token: int | None = None
    edits: int | None = None
    delete_prob: float | None = None
    sigma: float | None = None
    radius: float | None = None
    sequential: bool = False
    check_every: int | None = None
    first_check: str | None = None
    selection: str | None = None
    batch_size: int = 250

    def kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class RayOptions:
    """Where a run goes on Ray (`--ray`): the cluster (LOCAL: a local instance for this run), at most
    `workers` units at once (None: as many as the cluster has room for), and each worker's resources."""

    address: str
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def check(self) -> "RayOptions":
        if not (isinstance(self.cpus_per_worker, (int, float)) and math.isfinite(self.cpus_per_worker)
                and self.cpus_per_worker > 0):
            raise InvalidParameterError(f"--ray-cpus-per-worker must be > 0, got {self.cpus_per_worker}")
        if not (isinstance(self.gpus_per_worker, (int, float)) and math.isfinite(self.gpus_per_worker)
                and self.gpus_per_worker >= 0):
            raise InvalidParameterError(f"--ray-gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if self.workers is not None and self.workers < 1:
            raise InvalidParameterError(f"--ray-workers must be >= 1, got {self.workers}")
        return self


__all__ = ["CenterJob", "CertifyJob", "DEFAULT_CHECK_EVERY", "DEFAULT_EPS_IN", "DEFAULT_LOCAL_SAMPLES",
           "DEFAULT_LOCAL_SIGMA", "DEFAULT_LOOKS", "DEFAULT_SEQUENTIAL", "GenerateJob", "PredictJob", "RayOptions",
           "RuntimeSpec"]
