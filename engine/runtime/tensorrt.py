"""TensorRT runtime: an engine built from ONNX with the `tensorrt` Python API (fp32 or fp16).

TensorRT cannot be installed on the machines this project is developed and tested on; this backend is
written against the TensorRT 10 Python API (named tensors, `execute_async_v3`) and its tests run only
where `tensorrt` imports and a CUDA device exists. README says which backends were verified where.
"""
from __future__ import annotations

from pathlib import Path

import torch

from smoothgen.engine.runtime.base import Runtime
from smoothgen.errors import BackendUnavailableError, ModelLoadError


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(f"the tensorrt backend needs the tensorrt package: {exc}") from exc
    if not torch.cuda.is_available():
        raise BackendUnavailableError("the tensorrt backend needs a CUDA device")
    return trt


class TensorRTRuntime(Runtime):
    """Runs a TensorRT engine built from an ONNX file with a dynamic batch axis.

    Args:
        onnx_path: the ONNX model (one input, one output, batch axis 0 dynamic; see export_onnx).
        max_batch: largest batch of the optimization profile (the sampler's batch size).
        fp16: allow fp16 kernels (inputs and outputs stay fp32).
        workspace_bytes: the builder's workspace memory pool limit.
    """

    backend = "tensorrt"

    def __init__(self, onnx_path: str | Path, max_batch: int, fp16: bool = False, workspace_bytes: int = 1 << 30):
        trt = _import_tensorrt()
        self.device = torch.device("cuda")
        self.max_batch = int(max_batch)
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(Path(onnx_path).read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelLoadError(f"TensorRT cannot parse {onnx_path}: {errors}")
        if network.num_inputs != 1 or network.num_outputs != 1:
            raise ModelLoadError(f"{onnx_path}: the TensorRT backend needs one input and one output")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        inp = network.get_input(0)
        sample_shape = tuple(inp.shape)[1:]
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, (1, *sample_shape), (self.max_batch, *sample_shape), (self.max_batch, *sample_shape))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ModelLoadError(f"TensorRT failed to build an engine for {onnx_path}")
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
        self.context = self.engine.create_execution_context()
        self.input_name, self.output_name = inp.name, network.get_output(0).name
        self.stream = torch.cuda.Stream()

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, torch.float32).contiguous()
        self.context.set_input_shape(self.input_name, tuple(batch.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=torch.float32, device=self.device)
        self.context.set_tensor_address(self.input_name, batch.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        torch.cuda.current_stream().wait_stream(self.stream)
        return out
