"""Loading base models and data for the CLI (and for users who want the same conventions).

Models: a TorchScript file, a `torch.export` program (.pt2), an ONNX file (ONNX Runtime, CPU provider),
or `package.module:factory` naming a function that returns a torch module. Data: `.npy` (inputs only) or
`.npz` with arrays `x` (inputs) and optionally `y` (integer labels).
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smoothgen.engine.runtime import OnnxRuntime, Runtime, TorchRuntime
from smoothgen.errors import InvalidInputError, ModelLoadError, first_line
from smoothgen.validate import load_numpy


def load_model(spec: str, device: str | torch.device = "cpu") -> Runtime:
    """A Runtime for a model given as a file path or as `package.module:factory`.

    Args:
        spec: `model.onnx`, `program.pt2` (torch.export.save), any other existing file (TorchScript,
            torch.jit.save), or `package.module:factory`.
        device: where torch models run (ONNX models run on the CPU provider).

    Raises:
        ModelLoadError: missing or unreadable file, unknown factory, or a factory returning a non-callable.
    """
    path = Path(spec)
    if path.exists():
        if path.is_dir():
            raise ModelLoadError(f"model path {spec} is a directory, expected a model file")
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            return OnnxRuntime(path)
        try:
            if suffix == ".pt2":
                # torch.export logs the whole traceback of an unreadable file before raising: the error below says it.
                export_log = logging.getLogger("torch.export")
                level = export_log.level
                export_log.setLevel(logging.CRITICAL)
                try:
                    module = torch.export.load(str(path)).module()
                finally:
                    export_log.setLevel(level)
            else:
                module = torch.jit.load(str(path), map_location=device)
        except Exception as exc:  # torch raises RuntimeError, pickle errors, zip errors ... for bad files
            kind = "torch.export program" if suffix == ".pt2" else "TorchScript model"
            raise ModelLoadError(f"cannot load {kind} {spec}: {first_line(exc)}") from exc
        return TorchRuntime(module.to(device) if hasattr(module, "to") else module, device=str(device))
    if ":" in spec and not spec.endswith((".onnx", ".pt", ".pt2", ".pth", ".ts")):
        return TorchRuntime(_from_factory(spec).to(device), device=str(device))
    raise ModelLoadError(f"model {spec} not found (expected a .onnx/.pt2/TorchScript file or package.module:factory)")


def _from_factory(spec: str) -> torch.nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:  # ValueError: an empty module name (":x")
        raise ModelLoadError(f"cannot import model factory {spec}: {first_line(exc)}") from exc
    try:
        model = factory()
    except Exception as exc:
        raise ModelLoadError(f"model factory {spec} failed: {first_line(exc)}") from exc
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"model factory {spec} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def load_data(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Inputs (float32, finite) and optional integer labels from a .npy or .npz file.

    Returns:
        (x [N, *input_shape], y [N] or None).

    Raises:
        InvalidInputError: unreadable file, missing `x`, NaN/Inf, non-numeric data, label count mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"data file {path} not found")
    loaded: Any = load_numpy(path, f"data file {path}")  # never unpickles; names the formats
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if "x" not in loaded.files:
                raise InvalidInputError(f"{path} has arrays {loaded.files}; expected 'x' (and optionally 'y')")
            x, y = loaded["x"], (loaded["y"] if "y" in loaded.files else None)
    else:
        x, y = loaded, None
    if x.ndim < 2 or x.shape[0] == 0:
        raise InvalidInputError(f"{path}: inputs must be an array [N, ...] with N >= 1, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise InvalidInputError(f"{path}: inputs must be real numbers, got dtype {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
        raise InvalidInputError(f"{path}: {bad} input(s) contain NaN or Inf")
    if y is not None:
        if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise InvalidInputError(f"{path}: labels 'y' must be integers of shape ({x.shape[0]},), got {y.dtype} {y.shape}")
        y = y.astype(np.int64)
    return x, y
