"""ONNX Runtime backend (CPU execution provider).

onnxruntime is an optional dependency (`pip install smoothgen[onnx]`); it is imported on first use so that
`import smoothgen` never requires it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from smoothgen.engine.runtime.base import Runtime
from smoothgen.errors import ModelLoadError


class OnnxRuntime(Runtime):
    """Runs an ONNX model with one input and one output through onnxruntime.

    Args:
        path: the .onnx file. Its input's first axis must be the batch axis (dynamic, or fixed to the
            batch sizes it is called with).
        providers: ONNX Runtime execution providers (default: CPU only).
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelLoadError(f"ONNX model {path} needs onnxruntime: pip install 'smoothgen[onnx]' ({exc})") from exc
        try:
            self.session = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            raise ModelLoadError(f"cannot load ONNX model {path}: {str(exc).splitlines()[0]}") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelLoadError(f"ONNX model {path} must have exactly one input, has {len(inputs)}")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        batch_dim = inputs[0].shape[0] if inputs[0].shape else None
        self.max_batch = batch_dim if isinstance(batch_dim, int) else None
        self.device = torch.device("cpu")

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(out)
