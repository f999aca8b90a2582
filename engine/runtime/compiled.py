"""torch.compile runtime."""
from __future__ import annotations

import torch

from smoothgen.engine.runtime.base import Runtime
from smoothgen.engine.runtime.torch_eager import _module_device, _module_dtype
from smoothgen.errors import InvalidParameterError

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class CompiledRuntime(Runtime):
    """A torch module compiled with `torch.compile`, run on batches of one fixed size.

    Batches smaller than `batch_size` (a request's last one) are padded with zeros and the padding's
    outputs dropped, so one compiled graph serves every call — and, with mode="reduce-overhead" on GPU,
    one CUDA graph. The first call compiles (tens of seconds on CPU); `warmup` does it up front.

    Args:
        module: the torch module (put in eval mode).
        batch_size: the fixed batch size (the sampler's batch size).
        mode: torch.compile mode: "default", "reduce-overhead" (CUDA graphs on GPU), "max-autotune", ...
        device: where to run; default: the module's device.
    """

    backend = "compile"

    def __init__(self, module: torch.nn.Module, batch_size: int, mode: str = "default", device: str | None = None):
        if mode not in MODES:
            raise InvalidParameterError(f"torch.compile mode must be one of {MODES}, got {mode!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidParameterError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.module = module.eval()
        self.device = torch.device(device) if device is not None else _module_device(module)
        self.input_dtype = _module_dtype(module)
        self.max_batch = batch_size
        self.mode = mode
        self.compiled = torch.compile(self.module, mode=mode, dynamic=False)
        self._pad: torch.Tensor | None = None

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        b = batch.shape[0]
        if b > self.max_batch:
            raise InvalidParameterError(f"batch of {b} exceeds the compiled batch size {self.max_batch}")
        if b < self.max_batch:
            if self._pad is None or self._pad.shape[1:] != batch.shape[1:] or self._pad.dtype != batch.dtype:
                self._pad = torch.zeros((self.max_batch, *batch.shape[1:]), dtype=batch.dtype, device=batch.device)
            self._pad[:b].copy_(batch)
            batch = self._pad
        with torch.inference_mode():
            out = self.compiled(batch)
        # CUDA graphs reuse their output memory on the next replay: hand out a copy when padded or graphed.
        if b < self.max_batch or self.mode == "reduce-overhead":
            out = out[:b].clone()
        return out

    def warmup(self, example: torch.Tensor) -> None:
        """Compile for the fixed batch size now (example: one input, no batch dimension)."""
        self.run(example.to(self.device).expand(self.max_batch, *example.shape).contiguous())
