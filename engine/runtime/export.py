"""Exporting torch modules for the other runtimes."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from smoothgen.errors import ModelLoadError


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: str | Path, opset: int = 17) -> Path:
    """Export a module with one input and one output to ONNX, with a dynamic batch axis.

    Args:
        module: the torch module (exported in eval mode).
        example: one batch of example inputs [b, *input_shape] (any b ≥ 1).
        path: the .onnx file to write.
        opset: ONNX opset version.

    Returns:
        The path. Uses torch's TorchScript-based exporter, which needs no extra package with torch 2.13
        (the dynamo-based one needs onnxscript); its deprecation warning is silenced here.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            # The tracer's own warnings (a Python bool read from a tensor, ...) are about traces that may not
            # generalize: auto checks the exported model against eager on a probe batch instead.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                module, (example,), str(path), input_names=["input"], output_names=["output"], opset_version=opset,
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False,
            )
    except Exception as exc:
        raise ModelLoadError(f"cannot export the model to ONNX: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    return path
