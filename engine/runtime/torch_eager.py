"""PyTorch eager runtime."""
from __future__ import annotations

from typing import Any, Callable

import torch

from smoothgen.engine.runtime.base import Runtime
from smoothgen.errors import InvalidParameterError


class NotCallableError(InvalidParameterError, TypeError):
    """The model is neither a torch module nor a callable (a SmoothgenError, and a TypeError as before)."""


def _module_dtype(model: Any) -> torch.dtype | None:
    """The dtype of a module's first floating parameter or buffer (None for callables and empty modules)."""
    if isinstance(model, torch.nn.Module):
        for tensor in list(model.parameters()) + list(model.buffers()):
            if torch.is_floating_point(tensor):
                return tensor.dtype
    return None


def _module_device(model: Any) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for tensor in list(model.parameters()) + list(model.buffers()):
            return tensor.device
    return torch.device("cpu")


class TorchRuntime(Runtime):
    """Runs a torch module (or any callable of a batch) under `torch.inference_mode`.

    Args:
        model: a torch.nn.Module or a callable of a batch. Modules are put in eval mode.
        device: where to run; default: the device of the module's first parameter, else CPU.
    """

    backend = "eager"

    def __init__(self, model: "torch.nn.Module | Callable[[torch.Tensor], Any]", device: str | None = None):
        if not callable(model):
            raise NotCallableError(f"the model must be a torch module or a callable of a batch, got {type(model).__name__}")
        if isinstance(model, torch.nn.Module):
            try:
                model.eval()
            except NotImplementedError:
                # A torch.export program's module() has no train/eval switch: its mode was fixed at export.
                pass
        self.model = model
        self.device = torch.device(device) if device is not None else _module_device(model)
        self.max_batch = None
        self.input_dtype = _module_dtype(model)

    def run(self, batch: torch.Tensor) -> Any:
        with torch.inference_mode():
            return self.model(batch)
