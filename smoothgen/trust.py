"""What makes a served certificate trustworthy to a third party (docs/theory.md §8): noise keyed by the
server, signatures, digests of what was certified.

- **Issued seeds.** An issued certificate's noise comes from seed = HMAC-SHA256(server secret, model
  digest ‖ input digest ‖ parameters), so the same request always gets the same certificate, and a client
  can neither choose the noise nor search for a lucky one offline (`issued_seed`).
- **Documents.** The response to a request is a JSON document; an issued one is signed with Ed25519 over
  its canonical encoding (`canonical`: sorted keys, no spaces, ASCII, no NaN), which covers every field but
  the signature itself: the input's and the model's digests, all parameters, the seed and the record.
  `verify_signature` checks one; `GET /v1/keys` publishes the public key.
- **Digests.** `input_digest` (float32 bytes and shape of an input, or a prompt's UTF-8 bytes) and
  `model_digest` (a model file's bytes with its external data, or a torch module's state dict).

Keys live in a state folder, created on first use with mode 0600 (`ServerKeys.load_or_create`); a file
that others can read is refused, as ssh refuses such a private key.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelLoadError, SmoothgenError, first_line

#: The version of the signed document format (a field of every document).
DOCUMENT_VERSION = 1
#: The signature algorithm named in documents.
ALGORITHM = "ed25519"
#: Seeds are 63-bit (JSON integers, the engine's 64-bit keys).
SEED_BITS = 63

SEED_KEY_FILE = "seed.key"
SIGNING_KEY_FILE = "signing.key"
AUDIT_FILE = "audit.sqlite"


class SignatureError(SmoothgenError, ValueError):
    """A document's signature is missing, malformed, by another key, or does not match its content."""


class KeyFileError(SmoothgenError, OSError):
    """A key file cannot be read or created, or others may read it."""


# ------------------------------------------------------------------------------------------ encoding
def json_ready(value: Any) -> Any:
    """JSON-ready values: finite floats (±inf and NaN become null, as in results files and responses),
    lists for tuples and arrays, Python scalars for NumPy and torch scalars."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "tolist"):  # numpy / torch arrays and scalars
        return json_ready(value.tolist())
    if hasattr(value, "item"):
        return json_ready(value.item())
    raise InvalidParameterError(f"cannot encode a {type(value).__name__} in a certificate document")


def plain(document: dict[str, Any]) -> dict[str, Any]:
    """The document as a client receives it: a JSON round trip of `json_ready` values (what is signed)."""
    return json.loads(canonical(document))


def canonical(document: Any) -> bytes:
    """The canonical encoding that is signed: JSON with sorted keys, no whitespace, ASCII only, no NaN.
    Floats are written by Python's shortest round-trip repr, so a document parsed by a JSON reader that
    keeps doubles exactly (Python's, JavaScript's) and encoded again gives the same bytes."""
    return json.dumps(json_ready(document), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------ digests
def input_digest(x: Any) -> dict[str, Any]:
    """{"sha256", "shape", "dtype"} of one input as certified: its float32 values in C order with its
    shape; or, for a prompt (a str), {"sha256", "bytes", "dtype": "utf-8"} of its UTF-8 encoding."""
    if isinstance(x, str):
        raw = x.encode("utf-8")
        return {"sha256": sha256_hex(b"smoothgen-prompt-v1\0" + raw), "bytes": len(raw), "dtype": "utf-8"}
    import numpy as np

    array = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    header = json.dumps({"dtype": "float32", "shape": list(array.shape)}, sort_keys=True).encode()
    return {"sha256": sha256_hex(b"smoothgen-input-v1\0" + header + b"\0" + array.tobytes()),
            "shape": list(array.shape), "dtype": "float32"}


def module_digest(module: Any) -> str:
    """SHA-256 of a torch module's state dict: every entry's name, dtype, shape and bytes, in name order.
    It binds the weights; the module's code is named by the model's name (a file's digest binds both)."""
    import torch

    h = hashlib.sha256(b"smoothgen-state-dict-v1\0")
    for name, tensor in sorted(module.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode() + b"\0")
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _file_hash(h, path: Path) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def onnx_external_files(path: Path) -> list[Path]:
    """The external-data files an ONNX model names (their weights are not in the .onnx file itself)."""
    try:
        import onnx
    except ImportError:  # without onnx the sidecar convention of torch's exporter is all we can know
        sidecar = path.with_name(path.name + ".data")
        return [sidecar] if sidecar.exists() else []
    model = onnx.load(str(path), load_external_data=False)
    names = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            names.update(entry.value for entry in tensor.external_data if entry.key == "location")
    return [path.parent / name for name in sorted(names)]


def file_digest(path: str | Path) -> str:
    """SHA-256 of a model file's bytes, followed by those of the external-data files it names (ONNX)."""
    path = Path(path)
    h = hashlib.sha256(b"smoothgen-file-v1\0")
    try:
        _file_hash(h, path)
        if path.suffix.lower() == ".onnx":
            for extra in onnx_external_files(path):
                h.update(b"\0" + extra.name.encode() + b"\0")
                _file_hash(h, extra)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {first_line(exc)}") from exc
    return h.hexdigest()


def model_digest(spec: str | None, module: Any = None) -> str:
    """The digest of a model as certificates name it: a file's bytes (`file_digest`) when `spec` is an
    existing file, else the state dict of `module` (the loaded embedded model or factory's module)."""
    if spec is not None and Path(spec).is_file():
        return file_digest(spec)
    if module is None:
        raise InvalidParameterError(f"model {spec}: a digest needs the file or the loaded module")
    return module_digest(module)


# ------------------------------------------------------------------------------------------ keys
def _check_private(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path} may be read by others (mode {stat.S_IMODE(mode):o}): chmod 600 {path}")


def _read_or_create(path: Path, make) -> bytes:
    """The secret file's bytes; created with mode 0600 (never readable by others, not even briefly) when
    absent. Two processes racing to create it both end up reading the one that was written."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {first_line(exc)}") from exc
    else:
        try:
            data = make()
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    try:
        _check_private(path)
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {first_line(exc)}") from exc
    if not data:
        raise KeyFileError(f"{path} is empty (a creation was interrupted?): remove it and start again")
    return data


@dataclass(frozen=True)
class ServerKeys:
    """The server's secrets: the seed key (HMAC) and the Ed25519 signing key (PKCS#8 PEM). They travel
    to every replica in the service's configuration, so all replicas issue the same certificates.
    repr() never shows them."""

    seed_key: bytes = field(repr=False)
    signing_key_pem: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> "ServerKeys":
        """Fresh keys held in memory only (a service without a state folder: tests, notebooks)."""
        return cls(secrets.token_bytes(32), _new_signing_key_pem())

    @classmethod
    def load_or_create(cls, folder: str | Path) -> "ServerKeys":
        folder = Path(folder)
        seed_key = _read_or_create(folder / SEED_KEY_FILE, lambda: secrets.token_hex(32).encode())
        pem = _read_or_create(folder / SIGNING_KEY_FILE, _new_signing_key_pem)
        try:
            seed = bytes.fromhex(seed_key.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError) as exc:
            raise KeyFileError(f"{folder / SEED_KEY_FILE} is not a hex key: remove it to make a new one") from exc
        if len(seed) < 32:
            raise KeyFileError(f"{folder / SEED_KEY_FILE} holds {len(seed)} bytes; a seed key needs at least 32")
        keys = cls(seed, pem)
        keys.signer()  # a corrupt PEM fails here, at start-up
        return keys

    def signer(self):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        try:
            key = serialization.load_pem_private_key(self.signing_key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"the signing key is not an unencrypted PEM private key: {first_line(exc)}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"the signing key is a {type(key).__name__}, not an Ed25519 key")
        return key

    def public_key_b64(self) -> str:
        return public_key_b64(self.signer())


def _new_signing_key_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption())


def public_key_b64(private_key) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def key_id(public_b64: str) -> str:
    """A public key's short name: the first 16 hex digits of SHA-256 of its 32 raw bytes."""
    return sha256_hex(base64.b64decode(public_b64))[:16]


# ------------------------------------------------------------------------------------------ seeds
def issued_seed(seed_key: bytes, model_sha256: str, input_sha256: str, endpoint: str, params: dict[str, Any]) -> int:
    """The seed of an issued certificate: the first 63 bits of HMAC-SHA256(seed key, endpoint ‖ model
    digest ‖ input digest ‖ canonical parameters). A repeat of a request gets the same seed (and so the
    same certificate); without the key nobody can compute it, so nobody can search seeds."""
    message = b"smoothgen-issued-seed-v1\0" + canonical([endpoint, model_sha256, input_sha256, params])
    digest = hmac.new(seed_key, message, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)


# ------------------------------------------------------------------------------------------ signatures
class Signer:
    """Signs documents with one Ed25519 key (thread-safe: the key object is immutable)."""

    def __init__(self, keys: ServerKeys):
        self._key = keys.signer()
        self.public_key = public_key_b64(self._key)
        self.key_id = key_id(self.public_key)

    def sign(self, document: dict[str, Any]) -> dict[str, Any]:
        """The document as a client receives it (`plain`), with a "signature" field over the canonical
        encoding of everything else."""
        encoded = canonical({k: v for k, v in document.items() if k != "signature"})
        value = self._key.sign(encoded)
        return {**json.loads(encoded), "signature": {"algorithm": ALGORITHM, "key_id": self.key_id, "public_key": self.public_key,
                                      "value": base64.b64encode(value).decode("ascii")}}

    def keys_document(self) -> dict[str, Any]:
        """What GET /v1/keys publishes."""
        return {"keys": [{"algorithm": ALGORITHM, "key_id": self.key_id, "public_key": self.public_key}]}


def verify_signature(document: dict[str, Any], public_key: str | None = None) -> str:
    """Check an issued document's signature; returns the signing key's id.

    Args:
        document: a response of an issuing endpoint, as parsed from JSON.
        public_key: the server's public key (base64 of the 32 raw bytes, as GET /v1/keys gives it). None
            checks against the key the document names, which proves only that the document was not changed
            after signing by whoever holds that key: pin the key for a third-party check.

    Raises:
        SignatureError: no signature, another key, or a signature that does not match the content.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not isinstance(document, dict):
        raise SignatureError("a certificate document must be a JSON object")
    signature = document.get("signature")
    if not isinstance(signature, dict):
        if document.get("issued") is False:
            raise SignatureError("this is a reproduction with a client-chosen seed, not an issued certificate: "
                                 "it carries no signature and no guarantee")
        raise SignatureError("the document has no signature")
    if signature.get("algorithm") != ALGORITHM:
        raise SignatureError(f"unknown signature algorithm {signature.get('algorithm')!r} (expected {ALGORITHM})")
    named = signature.get("public_key")
    if public_key is not None and named != public_key:
        raise SignatureError(f"signed by key {signature.get('key_id')!r}, not by the given key {key_id(public_key)}")
    try:
        raw_key = base64.b64decode(named, validate=True)
        raw_sig = base64.b64decode(signature.get("value"), validate=True)
        verifier = Ed25519PublicKey.from_public_bytes(raw_key)
    except (TypeError, ValueError) as exc:
        raise SignatureError(f"malformed signature or key: {first_line(exc)}") from exc
    if signature.get("key_id") != key_id(named):
        raise SignatureError("the signature's key_id does not match its public key")
    body = {k: v for k, v in document.items() if k != "signature"}
    try:
        verifier.verify(raw_sig, canonical(body))
    except InvalidSignature:
        raise SignatureError("the signature does not match the document: it was changed after signing") from None
    except (InvalidParameterError, TypeError, ValueError) as exc:
        raise SignatureError(f"the document cannot be encoded canonically: {first_line(exc)}") from exc
    if document.get("issued") is not True:
        raise SignatureError("the document is signed but not marked issued")
    return signature["key_id"]


def check_input_matches(document: dict[str, Any], x: Any) -> None:
    """InvalidInputError unless `x` (an array, or the prompt) has the digest the document certifies."""
    expected = (document.get("input") or {}).get("sha256")
    got = input_digest(x)["sha256"]
    if expected != got:
        raise InvalidInputError(f"the input's digest {got[:16]}… is not the certified input's {str(expected)[:16]}…")
