"""ONNX Runtime backend.

Providers: by default the best available of TensorRT, CUDA and CPU (onnxruntime-gpu brings the first
two; only the CPU provider can be installed on the machines this project is tested on). onnxruntime is
an optional dependency (`pip install smoothgen[onnx]`), imported on first use.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from smoothgen.engine.runtime.base import Runtime
from smoothgen.errors import BackendUnavailableError, ModelLoadError

#: Providers in order of preference when none are named.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntime(Runtime):
    """Runs an ONNX model with one input and one output through onnxruntime.

    Args:
        path: the .onnx file. Its input's first axis must be the batch axis (dynamic, or fixed to the
            batch sizes it is called with).
        providers: ONNX Runtime execution providers, in order (default: the available ones of
            PREFERRED_PROVIDERS). Naming one that this onnxruntime lacks raises BackendUnavailableError.

    Inputs and outputs pass through host memory (NumPy), whatever the provider.
    """

    backend = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError(f"ONNX model {path} needs onnxruntime: pip install 'smoothgen[onnx]' ({exc})") from exc
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in PREFERRED_PROVIDERS if p in available]
        missing = [p for p in providers if p not in available]
        if missing:
            raise BackendUnavailableError(f"ONNX Runtime providers {missing} are not available here (available: {available})")
        self.providers = list(providers)
        try:
            self.session = ort.InferenceSession(str(path), providers=self.providers)
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
        self.input_dtype = torch.float32  # run() feeds float32 arrays to the session

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(out)
