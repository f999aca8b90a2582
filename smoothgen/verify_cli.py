"""`smoothgen verify`: check a certificate document issued by `smoothgen serve` (docs/theory.md §8).

    smoothgen verify RESPONSE.json [--public-key KEY] [--input x.npy] [--model SPEC] [--recompute]

1. The Ed25519 signature over the canonical encoding of every other field (`smoothgen.trust`), by the
   pinned key when `--public-key` is given (what `GET /v1/keys` publishes).
2. With `--input`: the input's digest is the certified one (an .npy array for certify/predict/center, the
   prompt's text file for generate, whose prompt is also in the signed record).
3. With `--model` (or `--recompute` for an embedded model): the model's digest is the certified one, and
   the certificate is computed again from the signed parameters and seed, with the same code as the
   server (`smoothgen.jobs.served_*`), and must equal the signed record field for field (time and worker
   aside).

Exit 0: every check passed; 1: the document was rejected (the line says why); 2: a usage error.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from smoothgen.errors import InvalidInputError, InvalidParameterError, SmoothgenError, first_line

#: Record fields that legitimately differ between two computations of one certificate.
VOLATILE = ("time", "worker", "seconds")


class VerificationError(SmoothgenError, ValueError):
    """The document does not verify: a changed field, another input or model, a different recomputation."""


def add_parser(sub: Any) -> None:
    from smoothgen.cli_help import DefaultsFormatter

    p = sub.add_parser(
        "verify",
        help="check a certificate issued by smoothgen serve: signature, input, model, and a recomputation",
        description="Check a certificate document returned by smoothgen serve (saved as JSON): its Ed25519 signature "
        "(pin the server's key with --public-key, from GET /v1/keys), that --input is the certified input, and, "
        "with --model or --recompute, that the model is the certified one and that recomputing the certificate "
        "from its signed parameters and seed gives the signed record bit for bit. Exit 0: verified; 1: rejected "
        "(one line says why); 2: a usage error. docs/theory.md section 8 says what an issued certificate guarantees.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("document", help="the response of /v1/certify, /v1/predict, /v1/center or /v1/generate, as JSON ('-': stdin)")
    p.add_argument("--public-key", help="the server's public key (base64, as GET /v1/keys gives it) or a file holding it; "
                   "without it the signature is checked against the key the document names, which shows only that "
                   "the document was not changed since that key signed it")
    p.add_argument("--input", help="the certified input: an .npy file (one input, no batch axis) or, for generate, "
                   "a text file holding the prompt")
    p.add_argument("--model", help="the certified model, as smoothgen serve took it (--model, --center-model or --lm); "
                   "with it the certificate is recomputed")
    p.add_argument("--recompute", action="store_true", help="recompute with the embedded model the document names "
                   "(implied by --model)")
    p.add_argument("--device", default="cpu", help="torch device for the recomputation")
    p.add_argument("--batch-size", type=int, default=1000, help="noisy copies per model call in the recomputation "
                   "(the certificate does not depend on it)")
    p.set_defaults(func=cmd_verify)


def _load_document(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read {path}: {first_line(exc)}") from exc
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidInputError(f"{path} is not JSON: {first_line(exc)[:120]}") from exc
    if not isinstance(document, dict):
        raise InvalidInputError(f"{path} holds a JSON {type(document).__name__}, not a certificate document (an object)")
    return document


def _public_key(value: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value)
    text = path.read_text().strip() if path.is_file() else value.strip()
    try:
        data = json.loads(text)  # the whole GET /v1/keys answer is accepted too
    except ValueError:
        return text
    if isinstance(data, dict) and isinstance(data.get("keys"), list) and data["keys"]:
        return data["keys"][0].get("public_key")
    return text


def _load_input(path: str, document: dict[str, Any]) -> Any:
    if document.get("endpoint") == "generate":
        try:
            return Path(path).read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"cannot read the prompt file {path}: {first_line(exc)}") from exc
    from smoothgen.validate import load_numpy

    return load_numpy(path, f"--input {path}", npz=False)  # never unpickles; names the format


def _embedded_spec(name: str) -> tuple[None, float | None]:
    """(None, the classifier's σ) for an embedded model's name; InvalidParameterError for other names."""
    match = re.fullmatch(r"embedded:digits_cnn_sigma([0-9.]+)", name)
    if match:
        return None, float(match.group(1))
    if name.startswith("embedded:"):
        return None, None
    raise InvalidParameterError(f"the document's model {name} is not embedded: give it with --model to recompute")


def _recompute(document: dict[str, Any], spec: str | None, x: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The record computed again from the document's parameters and seed, after checking the model's digest."""
    import numpy as np

    from smoothgen import jobs
    from smoothgen.base_models import center_digest, center_runtime, classifier_digest, classifier_runtime, probe

    endpoint, params, model = document.get("endpoint"), document.get("params"), document.get("model")
    seed, request_id = document.get("seed"), document.get("request_id")
    if not isinstance(params, dict) or not isinstance(model, dict) or not isinstance(seed, int) or not isinstance(request_id, int):
        raise VerificationError("the document lacks its params, model, seed or request_id")
    embedded_sigma = None
    if spec is None and endpoint == "generate" and str(model.get("name")).startswith("embedded:"):
        spec = str(model["name"])  # embedded:NAME loads that LM (and its tokenizer)
    elif spec is None:
        spec, embedded_sigma = _embedded_spec(str(model.get("name")))
    if endpoint == "generate":
        from smoothgen.text_generation import load_lm_spec
        from smoothgen.trust import module_digest

        lm, tokenizer, name = load_lm_spec(spec, args.device, params.get("noise", "ablate"))
        _check_digest(module_digest(lm), model)
        prompt = (document.get("record") or {}).get("prompt")
        if not isinstance(prompt, str):
            raise VerificationError("the generate record holds no prompt")
        return jobs.served_generate(lm, tokenizer, name, prompt, params, seed=seed, request_id=request_id,
                                    batch_size=250)
    if x is None:
        raise InvalidParameterError("recomputing needs the certified input: --input x.npy")
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    from smoothgen.job_specs import RuntimeSpec

    runtime_args = RuntimeSpec(model=spec, device=args.device, backend=model.get("backend") or "eager",
                               batch_size=args.batch_size, sigma=embedded_sigma if spec is None else params.get("sigma"))
    if endpoint in ("certify", "predict"):
        _check_digest(classifier_digest(spec, embedded_sigma if spec is None else 0.0), model)
        runtime, _ = classifier_runtime(runtime_args, x[None])
        num_classes = int(probe(runtime, x).shape[1])
        compute = jobs.served_certify if endpoint == "certify" else jobs.served_predict
        return compute(runtime, num_classes, x.shape, x, params, seed=seed, request_id=request_id, model=model,
                       batch_size=args.batch_size)
    if endpoint == "center":
        _check_digest(center_digest(spec), model)
        from smoothgen.job_specs import CenterJob

        center_job = CenterJob(model=spec, device=args.device, backend=runtime_args.backend, batch_size=args.batch_size,
                               eps_in=(params["eps_in"],), h=params["h"])
        runtime, _ = center_runtime(center_job, x[None])
        record, center = jobs.served_center(runtime, x.shape, x, params, seed=seed, request_id=request_id, model=model,
                                            batch_size=args.batch_size)
        if center != document.get("center"):
            raise VerificationError("the recomputed smoothed output differs from the signed one")
        return record
    raise VerificationError(f"unknown endpoint {endpoint!r}")


def _check_digest(digest: str, model: dict[str, Any]) -> None:
    if digest != model.get("sha256"):
        raise VerificationError(f"the model's digest {digest[:16]}… is not the certified model's {str(model.get('sha256'))[:16]}…")


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    from smoothgen.trust import plain

    return plain({k: v for k, v in record.items() if k not in VOLATILE})


def verify(document: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Every check `smoothgen verify` makes; returns what passed, or raises VerificationError (or
    SignatureError, also a rejection)."""
    from smoothgen.trust import check_input_matches, verify_signature

    passed = []
    key = _public_key(args.public_key)
    key_id = verify_signature(document, key)
    passed.append(f"signature: valid, key {key_id}" + ("" if key else " (named by the document; pin it with --public-key)"))
    x = None
    if args.input is not None:
        x = _load_input(args.input, document)
        try:
            check_input_matches(document, x)
        except InvalidInputError as exc:
            raise VerificationError(str(exc)) from None
        passed.append(f"input: {args.input} is the certified input")
    if args.model is not None or args.recompute:
        recomputed = _recompute(document, args.model, x, args)
        signed = document.get("record")
        if not isinstance(signed, dict):
            raise VerificationError("the document holds no record")
        # Every signed field must be recomputed exactly; fields a later smoothgen adds to its records (and the
        # signed one does not claim) are not compared, so documents signed by an earlier version still verify.
        got, want = _comparable(recomputed), _comparable(signed)
        missing = object()
        differ = sorted(k for k in want if got.get(k, missing) != want[k])
        if differ:
            raise VerificationError(f"the recomputed certificate differs from the signed one in: {', '.join(differ[:8])}")
        passed.append(f"model: the certified model; recomputed {document.get('endpoint')} record: identical")
    return passed


def cmd_verify(args: argparse.Namespace) -> int:
    from smoothgen.trust import SignatureError
    from smoothgen.validate import check_count, check_device

    check_count(args.batch_size, "--batch-size")
    if args.model is not None or args.recompute:
        check_device(args.device, "--device")
    document = _load_document(args.document)
    try:
        passed = verify(document, args)
    except (SignatureError, VerificationError) as exc:
        print(f"smoothgen verify: REJECTED: {exc}", file=sys.stderr)
        return 1
    for line in passed:
        print(line)
    record = document.get("record") or {}
    summary = {k: record[k] for k in ("predict", "prediction", "radius", "eps_out", "certified_prefix") if k in record}
    print(f"verified: {document.get('endpoint')} certificate {document.get('certificate_id')} issued "
          f"{document.get('issued_at')} to {document.get('client')}, failure probability {document.get('failure_probability')}; "
          + ", ".join(f"{k} {v}" for k, v in summary.items()))
    return 0
