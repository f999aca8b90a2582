"""The configuration of `smoothgen serve`'s replicas (`ServiceConfig`), apart from the service itself so that
the `smoothgen serve` command's own process, which only starts Ray and waits, never imports torch: it
builds this configuration, and each replica builds its `smoothgen.service.CertificationService` from it."""
from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Integral

from smoothgen.errors import InvalidParameterError
from smoothgen.registry import DEFAULT_NAME, NamedModel, check_unique
from smoothgen.api import ENDPOINTS
from smoothgen.trust import ServerKeys
from smoothgen.validate import check_alpha, check_count, check_positive, check_sigma, finite_real

#: The failure probability an issued certificate may have at most, unless the server sets another
#: (`smoothgen serve --max-alpha`); also the default alpha of a request to an issuing endpoint.
DEFAULT_MAX_ALPHA = 1e-6


@dataclass
class ServiceConfig:
    """What one replica serves (the options of `smoothgen serve`).

    Attributes:
        model: classifier for certify/predict: a file or package.module:factory (None: the embedded digits
            CNN trained at `sigma`).
        sigma: the default noise level of certify/predict requests (and the embedded classifier's).
        center_model: model for center smoothing (None: the embedded digits autoencoder).
        classifiers, center_models: several named models instead of `model` / `center_model`
            (`smoothgen.registry.NamedModel`s, the first the default; `smoothgen serve --model NAME=SPEC`,
            repeated): requests pick one by name ("model") from these only.
        lm: causal LM for generate, as `smoothgen generate --model` takes it (None: the embedded code LM
            trained for each noise).
        input_shape: one input's shape for a user's model (None: the embedded models' [1, 8, 8]).
        input_range: (lo, hi) every input value must lie in (None: [0, 1] for the embedded models, which
            were trained on pixels in [0, 1]; any finite value for a user's model).
        backend, device, batch_size: the runtime, as for `smoothgen certify`.
        max_queue: most certify/predict/center requests in flight in one replica; more get 429.
        max_generate_queue: most generate requests in flight (waiting for the LM or decoding), counted
            apart, so that generate requests never take the slots of the others.
        generate_concurrency: most generate requests decoding at once (the others wait in the queue).
        generate_batching: "on" runs their LM calls of the same shape as one batch
            (`smoothgen.generation.batching.SharedLM`), "off" one call at a time, "auto" (the default) on a
            CUDA device only: on this project's 2-core CPU merging gained nothing (benchmarks/RESULTS.md).
        max_samples: most noisy copies one request may ask for (n0 + n, n + n + m, ...): 422 beyond.
        max_prompt_bytes: the longest prompt (UTF-8 bytes) of /v1/generate, checked before tokenizing.
        max_body: the largest request body in bytes (the HTTP layer answers 413 beyond, before reading it).
        timeout_s: the deadline of a request that gives none; `max_timeout_s` caps what a request may ask.
        retry_after_s: the Retry-After of a 429.
        endpoints: which of certify, predict, center and generate to serve (and load models for).
        max_alpha: the largest failure probability of an issued certificate (and the default alpha).
        alpha_budget: the most failure probability one client's distinct issued certificates may sum to
            (None: no budget; the audit log still counts them).
        allow_reproduction: whether requests may name their own seed (`"reproduce": true`; never issued).
        keys: the server's seed and signing keys (None: fresh keys held in memory, for this service only).
        audit_db: the audit log's SQLite file (None: in memory, for this service only).
        api_keys: SHA-256 (hex) of each API key → the client's name (None: no keys; every client is
            anonymous). The HTTP layer checks them (`smoothgen.serve.client_of`).
    """

    model: str | None = None
    sigma: float = 0.25
    center_model: str | None = None
    lm: str | None = None
    classifiers: tuple[NamedModel, ...] | None = None
    center_models: tuple[NamedModel, ...] | None = None
    input_shape: tuple[int, ...] | None = None
    input_range: tuple[float, float] | None = None
    backend: str = "auto"
    device: str = "cpu"
    batch_size: int = 1000
    max_queue: int = 64
    max_generate_queue: int = 4
    generate_concurrency: int = 4
    generate_batching: str = "auto"
    max_samples: int = 1_000_000
    max_prompt_bytes: int = 65_536
    max_body: int = 4 * 1024 * 1024
    timeout_s: float = 60.0
    max_timeout_s: float = 600.0
    retry_after_s: int = 1
    endpoints: tuple[str, ...] = ENDPOINTS
    max_alpha: float = DEFAULT_MAX_ALPHA
    alpha_budget: float | None = None
    allow_reproduction: bool = True
    keys: ServerKeys | None = field(default=None, repr=False)
    audit_db: str | None = None
    api_keys: dict[str, str] | None = field(default=None, repr=False)

    @property
    def merge_generate(self) -> bool:
        """Whether concurrent generations' LM calls are merged (`generate_batching`; auto: on CUDA)."""
        return self.generate_batching == "on" or (self.generate_batching == "auto" and self.device.startswith("cuda"))

    @property
    def classifier_models(self) -> tuple[NamedModel, ...]:
        """The served classifiers by name (one named "default" when `classifiers` is not given)."""
        return self.classifiers or (NamedModel(DEFAULT_NAME, self.model),)

    @property
    def center_model_list(self) -> tuple[NamedModel, ...]:
        """The served center-smoothing models by name (one named "default" when `center_models` is not given)."""
        return self.center_models or (NamedModel(DEFAULT_NAME, self.center_model),)

    def check(self) -> "ServiceConfig":
        for option, single, several in (("--model", self.model, self.classifiers),
                                        ("--center-model", self.center_model, self.center_models)):
            if several is not None:
                if single is not None:
                    raise InvalidParameterError(f"give {option} either once as SPEC or as NAME=SPEC, repeated; not both")
                if not several:
                    raise InvalidParameterError(f"{option}: no model named")
                check_unique(several, option)

        check_sigma(self.sigma)
        check_count(self.batch_size, "--batch-size")
        check_count(self.max_queue, "--max-queue")
        check_count(self.max_generate_queue, "--max-generate-queue")
        check_count(self.generate_concurrency, "--generate-concurrency")
        if self.generate_batching not in ("auto", "on", "off"):
            raise InvalidParameterError(f"--generate-batching must be auto, on or off, got {self.generate_batching!r}")
        check_count(self.max_samples, "--max-samples")
        check_count(self.max_prompt_bytes, "--max-prompt-bytes")
        check_count(self.max_body, "--max-body")
        check_positive(self.timeout_s, "--timeout")
        check_positive(self.max_timeout_s, "--max-timeout")
        check_count(self.retry_after_s, "--retry-after", minimum=0)
        check_alpha(self.max_alpha, "--max-alpha")
        if self.alpha_budget is not None:
            check_positive(self.alpha_budget, "--alpha-budget")
            if self.alpha_budget < self.max_alpha:
                raise InvalidParameterError(f"--alpha-budget {self.alpha_budget} is below --max-alpha {self.max_alpha}: "
                                            "no client could be issued one certificate")
        if self.timeout_s > self.max_timeout_s:
            raise InvalidParameterError(f"--timeout {self.timeout_s} exceeds --max-timeout {self.max_timeout_s}")
        unknown = set(self.endpoints) - set(ENDPOINTS)
        if unknown or not self.endpoints:
            raise InvalidParameterError(f"--endpoints must name some of {', '.join(ENDPOINTS)}, got {','.join(self.endpoints)}")
        if self.input_shape is not None:
            if not self.input_shape or any(isinstance(d, bool) or not isinstance(d, Integral) or d < 1 for d in self.input_shape):
                raise InvalidParameterError(f"--input-shape must be positive integers, got {self.input_shape}")
        if self.input_range is not None:
            lo, hi = self.input_range
            if not (finite_real(lo) and finite_real(hi) and lo < hi):
                raise InvalidParameterError(f"--input-range must be two finite numbers lo < hi, got {self.input_range}")
        return self


