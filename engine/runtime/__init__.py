"""Runtimes: one class per backend behind one interface, `run(batch) -> outputs`.

Present now: PyTorch eager (`TorchRuntime`) and ONNX Runtime on the CPU provider (`OnnxRuntime`).
torch.compile, ONNX Runtime's GPU providers and TensorRT arrive with the engine issue.
"""
from smoothgen.engine.runtime.base import Runtime, as_runtime
from smoothgen.engine.runtime.onnx import OnnxRuntime
from smoothgen.engine.runtime.torch_eager import TorchRuntime

__all__ = ["Runtime", "TorchRuntime", "OnnxRuntime", "as_runtime"]
