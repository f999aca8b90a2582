"""smoothgen.engine: turning "n outputs of f at x + noise" into full device batches.

Present now: the in-process `Sampler`, per-request `RandomStream`s, and the PyTorch-eager and ONNX
Runtime (CPU) runtimes. The streaming scheduler, compiled runtimes and distributed execution arrive with
the engine issue.
"""
from smoothgen.engine.random import Purpose, RandomStream
from smoothgen.engine.runtime import OnnxRuntime, Runtime, TorchRuntime, as_runtime
from smoothgen.engine.sampler import DEFAULT_BATCH_SIZE, Sampler

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "OnnxRuntime",
    "Purpose",
    "RandomStream",
    "Runtime",
    "Sampler",
    "TorchRuntime",
    "as_runtime",
]
