"""The `smoothgen serve` command: options → a ServiceConfig, keys from the state folder, a check of the
models in a child process, then Ray Serve (smoothgen.serve) until Ctrl-C or SIGTERM.

The command's own process never imports torch and holds no model: it loads the server's keys, checks the
models by building the service once in a spawned child process (a bad --model is one line now, not an
error in a replica's log; the child's memory goes back when it exits), starts Ray and waits.
"""
from __future__ import annotations

import ipaddress
import os
import re
import stat
import sys
import threading
from pathlib import Path
from typing import Any

from smoothgen.errors import InvalidParameterError, first_line
from smoothgen.api import API_VERSION, ENDPOINTS

#: Environment variable naming the state folder (keys, audit log) when --state-dir is not given.
STATE_DIR_ENV = "SMOOTHGEN_STATE_DIR"
#: A client's name in an API-key file.
CLIENT_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
#: The shortest API key accepted (characters).
MIN_API_KEY = 16


def default_state_dir() -> Path:
    """$SMOOTHGEN_STATE_DIR, else $XDG_STATE_HOME/smoothgen/serve, else ~/.local/state/smoothgen/serve."""
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "smoothgen" / "serve"


def add_parser(sub: Any) -> None:
    from smoothgen.cli_help import DefaultsFormatter

    p = sub.add_parser(
        "serve",
        help="serve signed certificates over HTTP (Ray Serve): /v1/certify, /v1/predict, /v1/center, /v1/generate",
        description="Start a Ray Serve application that answers certification requests over HTTP with the same "
        "records as `smoothgen certify` and `smoothgen center`, issued as signed certificate documents: the noise of "
        "an issued certificate is keyed by the server (a repeat gets the same certificate; no seed can be chosen or "
        "searched), its failure probability is at most --max-alpha, and each is appended to the audit log. "
        "`smoothgen verify` checks a document. A local Ray instance is started unless --address names a cluster. "
        "With no arguments: the embedded digits classifier (sigma 0.25), autoencoder and code LMs on "
        "http://127.0.0.1:8000, keys and audit log in the state folder. Stop with Ctrl-C. API: README 'Serving'; "
        "guarantees: docs/theory.md section 8.",
        formatter_class=DefaultsFormatter,
    )
    models = p.add_argument_group("models")
    models.add_argument("--model", action="append", metavar="[NAME=]SPEC",
                        help="classifier of /v1/certify and /v1/predict: TorchScript, .pt2, ONNX, package.module:factory, "
                        "embedded (the digits CNN trained at --sigma) or embedded:SIGMA (the one trained at SIGMA). "
                        "Repeat as NAME=SPEC to serve several: requests pick one with \"model\": NAME, the first is "
                        "the default (default: embedded)")
    models.add_argument("--sigma", type=float, default=0.25, help="noise level of requests that give none (and of the "
                        "embedded classifier)")
    models.add_argument("--center-model", action="append", metavar="[NAME=]SPEC",
                        help="model of /v1/center, as --model (repeat as NAME=SPEC for several) (default: embedded, the "
                        "digits autoencoder)")
    models.add_argument("--lm", help="causal LM of /v1/generate: package.module:factory, hf:FOLDER or embedded:NAME "
                        "(e.g. embedded:code_bpe_delete0.9, the word-piece code LM) (default: the embedded byte-level "
                        "code LMs, the one trained for each noise)")
    models.add_argument("--input-shape", help="one input's shape for a model of your own, e.g. 3,32,32 (the embedded "
                        "models take 1,8,8)")
    models.add_argument("--input-range", help="LO,HI: the values inputs must lie in (default: 0,1 for the embedded "
                        "models, which were trained on pixels in [0, 1]; any finite value for a model of your own)")
    models.add_argument("--endpoints", default=",".join(ENDPOINTS), help="endpoints to serve (their models are loaded)")
    run = p.add_argument_group("execution")
    run.add_argument("--backend", default="auto", choices=["auto", "eager", "compile", "onnxruntime", "tensorrt"],
                     help="runtime for torch models, as for smoothgen certify")
    run.add_argument("--device", default="cpu", help="torch device of each replica, e.g. cpu or cuda")
    run.add_argument("--batch-size", type=int, default=1000, help="noisy copies per model call (shared by concurrent requests)")
    run.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (each loads the models once)")
    run.add_argument("--num-cpus", type=float, default=1.0, help="CPUs Ray reserves per replica (its torch threads)")
    run.add_argument("--num-gpus", type=float, default=None, help="GPUs per replica (default: 1 with --device cuda, else 0)")
    trust = p.add_argument_group("issued certificates (docs/theory.md section 8)")
    trust.add_argument("--state-dir", help=f"folder of the server's keys (seed.key, signing.key; created mode 0600) and of "
                       f"the audit log (default: ${STATE_DIR_ENV}, else $XDG_STATE_HOME/smoothgen/serve, else "
                       "~/.local/state/smoothgen/serve); every replica of one server must use the same keys")
    trust.add_argument("--audit-db", help="the audit log's SQLite file (default: audit.sqlite in --state-dir)")
    trust.add_argument("--max-alpha", type=float, default=1e-6, help="the largest failure probability of an issued "
                       "certificate (alpha, or alpha1 + alpha2 + candidate miss for center); also the default alpha")
    trust.add_argument("--alpha-budget", type=float, help="refuse (403) a client once its distinct issued certificates' "
                       "failure probabilities would sum past this (default: no budget; the audit log counts them anyway)")
    trust.add_argument("--no-reproduction", action="store_true", help='refuse requests with "reproduce": true and a '
                       "seed of the client's (their answers are never certificates anyway)")
    security = p.add_argument_group("clients")
    security.add_argument("--api-keys", help="file of API keys, one 'NAME KEY' per line (mode 0600; '#' comments): "
                          "requests need 'Authorization: Bearer KEY', and the audit log names the client NAME. Needed "
                          "to bind a non-loopback --host unless --insecure-no-auth")
    security.add_argument("--insecure-no-auth", action="store_true", help="allow a non-loopback --host without "
                          "--api-keys (anyone who reaches the port may spend the server's CPU and failure-probability)")
    security.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM); needs --tls-key")
    security.add_argument("--tls-key", help="the TLS certificate's private key (PEM)")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-queue", type=int, default=64, help="certify/predict/center requests in flight per replica; "
                        "more get 429 + Retry-After")
    limits.add_argument("--max-generate-queue", type=int, default=4, help="generate requests in flight per replica "
                        "(their own queue: they never take the others' slots)")
    limits.add_argument("--generate-concurrency", type=int, default=4, help="generate requests decoding at once per "
                        "replica (the others wait in --max-generate-queue)")
    limits.add_argument("--generate-batching", choices=("auto", "on", "off"), default="auto",
                        help="run the LM calls of concurrent generate requests with prompts of the same token count as one "
                        "batch (records unchanged); auto: on a CUDA device only (on CPU it gained nothing)")
    limits.add_argument("--max-samples", type=int, default=1_000_000, help="most noisy copies one request may ask for (422 beyond)")
    limits.add_argument("--max-body", type=int, default=4 * 1024 * 1024, help="largest request body in bytes (413 beyond, "
                        "before the body is read)")
    limits.add_argument("--max-prompt-bytes", type=int, default=65_536, help="longest /v1/generate prompt in UTF-8 bytes "
                        "(422 beyond, before it is tokenized)")
    limits.add_argument("--timeout", type=float, default=60.0, help="deadline (s) of a request without timeout_s; 504 after it")
    limits.add_argument("--max-timeout", type=float, default=600.0, help="largest timeout_s a request may ask for")
    limits.add_argument("--retry-after", type=int, default=1, help="Retry-After (s) of a 429")
    net = p.add_argument_group("network")
    net.add_argument("--address", help="Ray cluster to join (e.g. auto, or HOST:PORT of `ray start --head`); default: "
                     "a local Ray instance for this command")
    net.add_argument("--host", default="127.0.0.1", help="HTTP host to bind (0.0.0.0: every interface; needs --api-keys)")
    net.add_argument("--port", type=int, default=8000, help="HTTP port")
    # The command's process only starts Ray and waits: torch is never imported there (smoothgen.cli.main).
    p.set_defaults(func=cmd_serve, run_imports=())


def read_api_keys(path: str) -> dict[str, str]:
    """An API-key file → {SHA-256 of the key: client name}. The file must be readable by its owner only;
    each line is 'NAME KEY' (blank lines and '#' comments skipped); names and keys are unique."""
    from smoothgen.serve import hash_token
    from smoothgen.trust import KeyFileError

    file = Path(path)
    try:
        mode = stat.S_IMODE(file.stat().st_mode)
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read --api-keys {path}: {first_line(exc)}") from exc
    if mode & 0o077:
        raise KeyFileError(f"--api-keys {path} may be read by others (mode {mode:o}): chmod 600 {path}")
    keys: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not CLIENT_NAME.fullmatch(parts[0]):
            raise InvalidParameterError(f"--api-keys {path}:{number}: expected 'NAME KEY' (NAME of letters, digits, _.@-)")
        name, key = parts
        if len(key) < MIN_API_KEY:
            raise InvalidParameterError(f"--api-keys {path}:{number}: the key of {name} is shorter than {MIN_API_KEY} "
                                        "characters (make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        digest = hash_token(key)
        if digest in keys or name in keys.values():
            raise InvalidParameterError(f"--api-keys {path}:{number}: {name} or its key appears twice")
        keys[digest] = name
    if not keys:
        raise InvalidParameterError(f"--api-keys {path} holds no key")
    return keys


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_from_args(args):
    """The ServiceConfig of the command line, with the server's keys loaded (or created) from the state folder."""
    from smoothgen.service_config import ServiceConfig
    from smoothgen.trust import AUDIT_FILE, ServerKeys

    shape = None
    if args.input_shape is not None:
        try:
            shape = tuple(int(v) for v in args.input_shape.split(","))
        except ValueError as exc:
            raise InvalidParameterError(f"--input-shape must be comma-separated integers, got {args.input_shape!r}") from exc
    value_range = None
    if args.input_range is not None:
        from smoothgen.validate import parse_value_range

        value_range = parse_value_range(args.input_range, "--input-range")
    endpoints = tuple(e.strip() for e in args.endpoints.split(",") if e.strip())
    from smoothgen.registry import named_models

    classifiers = named_models(args.model, "--model", embedded_sigma=True)
    center_models = named_models(args.center_model, "--center-model")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise InvalidParameterError("--tls-cert and --tls-key go together")
    for option, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path is not None and not Path(path).is_file():
            raise InvalidParameterError(f"{option} {path} is not a file")
    api_keys = read_api_keys(args.api_keys) if args.api_keys is not None else None
    if not is_loopback(args.host) and api_keys is None and not args.insecure_no_auth:
        raise InvalidParameterError(f"--host {args.host} is reachable from other machines: give --api-keys FILE (or "
                                    "--insecure-no-auth to serve anyone who reaches the port)")
    config = ServiceConfig(classifiers=classifiers, sigma=args.sigma, center_models=center_models, lm=args.lm,
                           input_shape=shape, input_range=value_range, backend=args.backend, device=args.device,
                           batch_size=args.batch_size, max_queue=args.max_queue,
                           max_generate_queue=args.max_generate_queue, generate_concurrency=args.generate_concurrency,
                           generate_batching=args.generate_batching,
                           max_samples=args.max_samples, max_prompt_bytes=args.max_prompt_bytes, max_body=args.max_body,
                           timeout_s=args.timeout, max_timeout_s=args.max_timeout, retry_after_s=args.retry_after, endpoints=endpoints,
                           max_alpha=args.max_alpha, alpha_budget=args.alpha_budget,
                           allow_reproduction=not args.no_reproduction, api_keys=api_keys).check()
    state = Path(args.state_dir) if args.state_dir is not None else default_state_dir()
    config.keys = ServerKeys.load_or_create(state)
    config.audit_db = str(Path(args.audit_db).resolve() if args.audit_db else (state / AUDIT_FILE).resolve())
    return config


def cmd_serve(args) -> int:
    import signal

    from smoothgen.serve import _import_ray, precheck, start, stop
    from smoothgen.validate import check_count, check_positive

    check_count(args.replicas, "--replicas")
    check_positive(args.num_cpus, "--num-cpus")
    if not 0 < args.port < 65536:
        raise InvalidParameterError(f"--port must lie in 1..65535, got {args.port}")
    num_gpus = (1.0 if args.device.startswith("cuda") else 0.0) if args.num_gpus is None else check_positive(args.num_gpus, "--num-gpus", allow_zero=True)
    _import_ray()
    if args.address is not None:
        from smoothgen.ray_util import check_reachable

        check_reachable(args.address, "--address")
    config = config_from_args(args)
    precheck(config)  # the device, models and backend, checked in a child process
    stopped = threading.Event()
    # From here SIGTERM stops the server once it is up (start() keeps this handler across ray.init): the
    # server may already answer requests before start() returns.
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    handle = start(config, address=args.address, host=args.host, port=args.port, replicas=args.replicas,
                   num_cpus=args.num_cpus, num_gpus=num_gpus, tls_cert=args.tls_cert, tls_key=args.tls_key)
    scheme = "https" if args.tls_cert else "http"
    try:
        print(f"smoothgen serve: {scheme}://{args.host}:{args.port}/{API_VERSION} ({args.replicas} replica(s); "
              f"endpoints: {', '.join(config.endpoints)}; signing key {_key_id(config)}; audit log {config.audit_db}"
              f"{'; API keys: ' + str(len(config.api_keys)) if config.api_keys else ''}). Ctrl-C stops.",
              file=sys.stderr, flush=True)
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        stop(handle)
    print("smoothgen serve: stopped", file=sys.stderr)
    return 0


def _key_id(config) -> str:
    from smoothgen.trust import key_id

    return key_id(config.keys.public_key_b64())
