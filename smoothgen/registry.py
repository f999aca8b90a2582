"""Named models: what a server offers by name, and the registry that loads each spec once.

A front door names the models it serves (`smoothgen serve --model NAME=SPEC`, repeated): requests then pick
one by NAME from that set only, never by a path or a module of the client's. The first one named is the
default of requests that name none. This module parses and checks those names (without importing torch, so
that `smoothgen serve` parses its options light) and keeps the loaded runtimes, one per distinct spec, so
two names for the same spec share one model.

Specs: a file (TorchScript, .pt2, ONNX), package.module:factory, or ``embedded`` (the embedded model of the
endpoint; for classifiers ``embedded:SIGMA`` is the embedded digits CNN trained at that σ).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

from smoothgen.errors import InvalidParameterError, short

#: What a model's name may be: a letter or digit, then letters, digits, '_', '.' or '-' (at most 64).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: The name of a model given without one (`--model SPEC`).
DEFAULT_NAME = "default"


@dataclass(frozen=True)
class NamedModel:
    """One served model: the name requests use, its spec (None: the embedded model) and, for the embedded
    classifier, the σ it was trained at (None: the server's --sigma)."""

    name: str
    spec: str | None
    sigma: float | None = None


def check_name(name: Any, option: str = "model") -> str:
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise InvalidParameterError(f"{option} name {short(name)} must be letters, digits, '_', '.' or '-' (at most 64, "
                                    "starting with a letter or digit)")
    return name


def parse_named(value: str, option: str, embedded_sigma: bool = False) -> NamedModel:
    """[NAME=]SPEC as a command line gives it. A value that is an existing file is a spec even if it holds '='."""
    name, spec = DEFAULT_NAME, value
    head, eq, tail = value.partition("=")
    if eq and not Path(value).is_file() and NAME_PATTERN.fullmatch(head):
        name, spec = head, tail
    if not spec:
        raise InvalidParameterError(f"{option} {value!r}: the spec after {name}= is empty")
    sigma = None
    if spec == "embedded":
        spec = None
    elif spec.startswith("embedded:") and embedded_sigma:
        try:
            sigma = float(spec[9:])
        except ValueError:
            raise InvalidParameterError(f"{option} {value!r}: embedded:SIGMA takes the σ of an embedded classifier, "
                                        f"got {spec[9:]!r}") from None
        spec = None
    else:
        from smoothgen.base_models import check_model_spec

        check_model_spec(spec, option)
    return NamedModel(name, spec, sigma)


def named_models(values: Iterable[str] | None, option: str, embedded_sigma: bool = False) -> tuple[NamedModel, ...] | None:
    """Every [NAME=]SPEC of a repeated option (None when it was not given), names unique."""
    if not values:
        return None
    models = tuple(parse_named(v, option, embedded_sigma) for v in values)
    check_unique(models, option)
    return models


def check_unique(models: Iterable[NamedModel], option: str) -> None:
    seen: set[str] = set()
    for model in models:
        check_name(model.name, option)
        if model.name in seen:
            raise InvalidParameterError(f"{option}: the name {model.name!r} is given twice (each model needs its own, "
                                        f"as NAME=SPEC)")
        seen.add(model.name)


class ModelRegistry:
    """Loaded models by key: `get(key, load)` loads once per key (a spec and what it is loaded for) and
    returns the same object afterwards, so models named twice are loaded and verified once."""

    def __init__(self):
        self._loaded: dict[Hashable, Any] = {}

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        if key not in self._loaded:
            self._loaded[key] = load()
        return self._loaded[key]

    def __len__(self) -> int:
        return len(self._loaded)


__all__ = ["DEFAULT_NAME", "ModelRegistry", "NamedModel", "check_name", "check_unique", "named_models", "parse_named"]
