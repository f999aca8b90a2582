"""The Runtime interface shared by every backend."""
from __future__ import annotations

import abc
from typing import Any, Callable

import torch


class Runtime(abc.ABC):
    """Runs a base model on batches.

    Attributes:
        device: where inputs must live and outputs come back.
        max_batch: the largest batch the backend accepts (None: no limit of its own).
        input_dtype: the floating dtype the model computes in, when known (None: whatever it is given).
    """

    device: torch.device
    max_batch: int | None = None
    backend: str = "custom"
    input_dtype: torch.dtype | None = None

    @abc.abstractmethod
    def run(self, batch: torch.Tensor) -> Any:
        """Model outputs for a batch.

        Shapes:
            batch: [b, *input_shape] -> a tensor [b, *output_shape] (or a list of b outputs for
            models whose outputs are sequences).
        """

    def warmup(self, example: torch.Tensor) -> None:
        """Run once so that lazy initialisation (compilation, engine build) is not timed or certified.

        Args:
            example: one input, no batch dimension.
        """
        self.run(example.to(self.device)[None])

    def __call__(self, batch: torch.Tensor) -> Any:
        return self.run(batch)


def as_runtime(model: "Runtime | torch.nn.Module | Callable[[torch.Tensor], Any]") -> Runtime:
    """Wrap a torch module or any callable of a batch into a Runtime (a Runtime passes through)."""
    if isinstance(model, Runtime):
        return model
    from smoothgen.engine.runtime.torch_eager import TorchRuntime

    return TorchRuntime(model)
