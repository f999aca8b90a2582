"""smoothgen.engine: turning "n outputs of f at x + noise" into full device batches.

- `Sampler`: one request at a time, noise written straight into the runtime's input buffer, outputs
  reduced on the device by a `Reducer` (class counts, kept outputs, score sums).
- `Scheduler`: many concurrent requests for one model, continuous batching, futures (also asyncio).
- `RandomStream` / `NoiseKey`: per-request, batch-invariant noise, so a certificate is bit-identical
  alone or batched.
- Runtimes: PyTorch eager, torch.compile, ONNX Runtime, TensorRT (see `engine.runtime`).
"""
from smoothgen.engine.noise import NoiseKey, NoiseSource, noise_tv
from smoothgen.engine.random import Purpose, RandomStream
from smoothgen.engine.reducers import ClassCounts, KeepOutputs, Reducer, ScoreSums
from smoothgen.engine.runtime import OnnxRuntime, Runtime, TorchRuntime, as_runtime
from smoothgen.engine.sampler import DEFAULT_BATCH_SIZE, Sampler

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "ClassCounts",
    "KeepOutputs",
    "NoiseKey",
    "NoiseSource",
    "noise_tv",
    "OnnxRuntime",
    "Purpose",
    "RandomStream",
    "Reducer",
    "Runtime",
    "Sampler",
    "ScoreSums",
    "TorchRuntime",
    "as_runtime",
]
