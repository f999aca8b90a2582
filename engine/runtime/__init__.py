"""Runtimes: one class per backend behind one interface, `run(batch) -> outputs`.

| backend | class | where it was verified |
| --- | --- | --- |
| "eager" | TorchRuntime | CPU (test suite) |
| "compile" | CompiledRuntime (torch.compile) | CPU (test suite) |
| "onnxruntime" | OnnxRuntime | CPU provider (test suite); CUDA/TensorRT providers only where onnxruntime-gpu is installed |
| "tensorrt" | TensorRTRuntime | not verified: TensorRT cannot be installed on the project's machines |

`create_runtime` picks one: an automatically chosen backend that fails falls back to the next with a
logged reason; an explicitly requested one raises BackendUnavailableError.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from pathlib import Path

import torch

from smoothgen.engine.runtime.base import Runtime, as_runtime
from smoothgen.engine.runtime.compiled import CompiledRuntime
from smoothgen.engine.runtime.export import export_onnx
from smoothgen.engine.runtime.onnx import OnnxRuntime
from smoothgen.engine.runtime.tensorrt import TensorRTRuntime
from smoothgen.engine.runtime.torch_eager import TorchRuntime
from smoothgen.errors import BackendUnavailableError, InvalidParameterError

log = logging.getLogger("smoothgen.engine")

BACKENDS = ("auto", "eager", "compile", "onnxruntime", "tensorrt")


def _build(backend: str, module: torch.nn.Module, example: torch.Tensor, batch_size: int, device: str,
           compile_mode: str, fp16: bool, workdir: Path) -> Runtime:
    if backend == "eager":
        return TorchRuntime(module.to(device), device=device)
    if backend == "compile":
        return CompiledRuntime(module.to(device), batch_size, mode=compile_mode, device=device)
    onnx_path = export_onnx(module.to("cpu"), example[None].cpu(), workdir / "model.onnx")
    if backend == "onnxruntime":
        return OnnxRuntime(onnx_path)
    return TensorRTRuntime(onnx_path, max_batch=batch_size, fp16=fp16)


def create_runtime(
    module: torch.nn.Module,
    example: torch.Tensor,
    backend: str = "auto",
    batch_size: int = 1000,
    device: str | None = None,
    compile_mode: str = "default",
    fp16: bool = False,
) -> Runtime:
    """A warmed-up runtime for a torch module.

    Args:
        module: the base model.
        example: one input (no batch dimension), used to export, compile and warm up.
        backend: "auto", "eager", "compile", "onnxruntime" or "tensorrt". "auto" tries TensorRT, then
            torch.compile, then eager on CUDA, and eager on CPU (where torch.compile's long first
            compile rarely pays off for a single run).
        batch_size: the batch size the sampler will use (compiled graphs and engines are built for it).
        device: "cpu", "cuda", ...; default: CUDA when available.
        compile_mode: torch.compile mode ("reduce-overhead" uses CUDA graphs on GPU).
        fp16: TensorRT may use fp16 kernels.

    Raises:
        BackendUnavailableError: an explicitly requested backend cannot run here.
    """
    if backend not in BACKENDS:
        raise InvalidParameterError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if backend == "auto":
        candidates = ["tensorrt", "compile", "eager"] if torch.device(device).type == "cuda" else ["eager"]
    else:
        candidates = [backend]
    # Exported models and engines go to a private folder, removed with the runtime (or at exit) and at
    # once when no backend could be built: runs never leave folders behind in the temporary directory.
    workdir = Path(tempfile.mkdtemp(prefix="smoothgen-runtime-"))
    try:
        for name in candidates:
            try:
                runtime = _build(name, module, example, batch_size, device, compile_mode, fp16, workdir)
                runtime.warmup(example)
                weakref.finalize(runtime, shutil.rmtree, str(workdir), True)
                workdir = None
                return runtime
            except Exception as exc:
                if backend != "auto":
                    if isinstance(exc, BackendUnavailableError):
                        raise
                    raise BackendUnavailableError(f"backend {name!r} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
                log.warning("runtime backend %r unavailable, falling back: %s", name, exc)
        raise BackendUnavailableError(f"no runtime backend could run the model (tried {candidates})")
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


__all__ = [
    "BACKENDS",
    "CompiledRuntime",
    "OnnxRuntime",
    "Runtime",
    "TensorRTRuntime",
    "TorchRuntime",
    "as_runtime",
    "create_runtime",
    "export_onnx",
]
