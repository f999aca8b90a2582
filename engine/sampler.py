"""The Sampler: "n outputs of f at x + noise", in full device batches, for one request at a time.

The algorithms (`smoothgen.classify`, `smoothgen.center`) ask a sampler for what they need and never
loop over batches themselves:
- `counts`: class votes of a classifier, reduced on the device; one host copy per request.
- `outputs`: every output (center smoothing's center selection), or a per-sample map of them
  (distances to a center), so that only n numbers are kept.
- `score_sums`: sums and squared sums of [0, 1] scores.
Noise is written straight into one preallocated input buffer, which the runtime reads; memory is
bounded by the batch size for any n (n = 10⁶ with `counts` keeps 10 integers).

`Scheduler.sampler()` (engine/scheduler.py) has the same three methods and batches many concurrent
requests together; because noise is keyed per request (engine/noise.py), both give identical results.
"""
from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from smoothgen.engine.noise import NoiseKey, NoiseSource
from smoothgen.engine.reducers import ClassCounts, KeepOutputs, Reducer, ScoreSums
from smoothgen.engine.runtime import Runtime, as_runtime
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError, SmoothgenError, first_line
from smoothgen.kernels.reference import check_counter_range
from smoothgen.validate import as_model_dtype

#: Default batch of noisy copies per model call. On the digits CNN (2-core CPU) throughput is flat from
#: about 500 upwards; larger batches only cost memory.
DEFAULT_BATCH_SIZE = 1000


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidParameterError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size


def run_model(runtime: Runtime, batch: torch.Tensor) -> Any:
    """runtime.run(batch), with the model's own failures (a wrong input shape, a dtype it cannot take)
    as one SmoothgenError that names them (`model_failure`)."""
    try:
        outputs = runtime.run(batch)
    except SmoothgenError:
        raise
    except Exception as exc:
        raise model_failure(runtime, batch, exc) from exc
    _remember_shape(runtime, tuple(batch.shape[1:]))
    return outputs


# ---------------------------------------------------------------- what a failing model wants
class InputShapeError(InvalidInputError, ModelOutputError):
    """The input's shape is not one the model takes (learned from the model, as no input_shape was given):
    the caller's error (an InvalidInputError), found because the model refused it (a ModelOutputError,
    which is what this failure was before the model's expected shape was named)."""


#: The last input shape (no batch dimension) each runtime ran without raising: what an input of another
#: shape is told the model takes. Weak keys: a runtime's entry goes with it.
_RAN: "weakref.WeakKeyDictionary[Runtime, tuple[int, ...]]" = weakref.WeakKeyDictionary()


def _remember_shape(runtime: Runtime, shape: tuple[int, ...]) -> None:
    try:
        if _RAN.get(runtime) != shape:
            _RAN[runtime] = shape
    except TypeError:  # a runtime that is not hashable or weak-referenceable: nothing is remembered
        pass


@dataclass(frozen=True)
class ExpectedInput:
    """The input shape (no batch dimension) a model takes, as far as it could be learned.

    Attributes:
        dims: sizes; a str is a size the model does not fix ("H", a symbolic batch-free dimension).
        source: how it was learned, for the message.
        match: "shape" (same rank, every integer size equal), "last" (the last size: a first Linear
            layer takes any leading dimensions) or "numel" (a Flatten, then a Linear: any shape of that size).
    """

    dims: tuple[int | str, ...]
    source: str
    match: str = "shape"

    def fits(self, shape: tuple[int, ...]) -> bool:
        if self.match == "numel":
            return math.prod(shape) == self.dims[0]
        if self.match == "last":
            return len(shape) >= 1 and shape[-1] == self.dims[-1]
        return len(shape) == len(self.dims) and all(isinstance(d, str) or d == s for d, s in zip(self.dims, shape))

    def __str__(self) -> str:
        if self.match == "numel":
            return f"of {self.dims[0]} values in all, e.g. ({self.dims[0]},)"
        dims = ", ".join(str(d) for d in self.dims)
        if self.match == "last":
            return f"of shape (..., {dims}), e.g. ({dims},)"
        return f"of shape ({dims}{',' if len(self.dims) == 1 else ''})"


def model_failure(runtime: Runtime, batch: torch.Tensor, exc: BaseException) -> SmoothgenError:
    """The error for a model that raised `exc` on `batch` [b, *S]: InputShapeError naming the shape the
    model takes when S is not one it takes, else ModelOutputError with what the model said (and which of
    its layers failed, and on what, when that can be seen by running it once more on one input)."""
    shape = tuple(batch.shape[1:])
    try:
        expected, failed_layer = expected_input(runtime, batch[:1])
    except Exception:  # noqa: BLE001 - explaining a failure must never replace it with another one
        expected, failed_layer = None, None
    said = _model_said(exc)
    if expected is not None and not expected.fits(shape):
        return InputShapeError(f"input of shape {shape} does not fit the model: it takes inputs {expected} ({expected.source}); "
                               f"the model said: {said}")
    # The model's own words always come through (a user's model may say exactly what it wants).
    message = f"the model failed on a batch of shape {tuple(batch.shape)}: {f'{failed_layer}: {said}' if failed_layer else said}"
    if expected is not None:
        message += f"; it takes inputs {expected} ({expected.source})"
    return ModelOutputError(message)


def _model_said(exc: BaseException) -> str:
    """The line of a model's exception that says what went wrong (TorchScript puts it last, after its traceback)."""
    text = str(exc).strip()
    if text.startswith("The following operation failed in the TorchScript interpreter"):
        last = text.splitlines()[-1]
        name, sep, rest = last.partition(": ")
        return rest if sep and name.isidentifier() and name.endswith(("Error", "Exception")) else last
    return first_line(exc)


def expected_input(runtime: Runtime, example: torch.Tensor | None = None) -> tuple[ExpectedInput | None, str | None]:
    """What a model takes, learned cheaply: (ExpectedInput or None, a description of its layer that failed on
    `example` or None). In order: the shape it last ran on, the input an exported program or an ONNX model
    declares, and for a torch module its first layer — seen by running it once on `example` [1, *S] with
    hooks on its layers (eager modules), or as registered (TorchScript)."""
    failed = None
    ran = _ran_shape(runtime)
    if ran is not None:
        return ExpectedInput(ran, "the shape it last ran on"), None
    declared = _declared_input(runtime)
    if declared is not None:
        return declared, None
    module = _torch_module(runtime)
    if module is None:
        return None, None
    if isinstance(module, torch.jit.ScriptModule):
        return _first_registered_layer(module), None
    if example is not None:
        expected, failed = _probe_layers(module, example.to(runtime.device))
        if expected is not None or failed is not None:
            return expected, failed
    return _first_registered_layer(module), failed


def _ran_shape(runtime: Runtime) -> tuple[int, ...] | None:
    try:
        return _RAN.get(runtime)
    except TypeError:  # not hashable or weak-referenceable: nothing was remembered
        return None


def _torch_module(runtime: Runtime) -> torch.nn.Module | None:
    for name in ("model", "module"):  # TorchRuntime.model, CompiledRuntime.module (its eager module)
        module = getattr(runtime, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


def _declared_input(runtime: Runtime) -> ExpectedInput | None:
    """The input shape an ONNX model or a torch.export program declares (its batch dimension dropped)."""
    session = getattr(runtime, "session", None)
    if session is not None and hasattr(session, "get_inputs"):
        try:
            dims = session.get_inputs()[0].shape
        except Exception:  # noqa: BLE001 - a session without readable metadata: nothing declared
            return None
        if dims and len(dims) >= 1:
            return ExpectedInput(tuple(d if isinstance(d, int) else str(d or "?") for d in dims[1:]), "the ONNX model's declared input")
    module = _torch_module(runtime)
    if isinstance(module, torch.fx.GraphModule):
        for node in module.graph.nodes:
            if node.op != "placeholder":
                continue
            value = node.meta.get("val")
            if isinstance(value, torch.Tensor) and value.dim() >= 1:
                dims = tuple(d if isinstance(d, int) else str(d) for d in value.shape[1:])
                return ExpectedInput(dims, "the input its exported program was traced with")
            break
    return None


_SPATIAL = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}


def _layer_input(name: str, layer: Any, kind: str, flattened: bool) -> ExpectedInput | None:
    """What a model takes when `layer` (a `kind`, e.g. "Conv2d") is the first thing its input meets."""
    where = f"its first layer{' ' + name if name else ''} is a {kind}"
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2 or weight.is_meta:
        return None
    if kind.startswith("Conv") and weight.dim() - 2 in _SPATIAL:
        channels = int(weight.shape[0] if kind.startswith("ConvTranspose") else weight.shape[1] * _attr(layer, "groups", 1))
        return ExpectedInput((channels, *_SPATIAL[weight.dim() - 2]), f"{where} with in_channels={channels}")
    if kind == "Linear":
        features = int(weight.shape[1])
        if flattened:
            return ExpectedInput((features,), f"it flattens its input for its layer {name or '(the model)'}, a Linear with in_features={features}", "numel")
        return ExpectedInput((features,), f"{where} with in_features={features}", "last")
    return None


def _attr(layer: Any, name: str, default: Any) -> Any:
    try:
        return getattr(layer, name)
    except Exception:  # noqa: BLE001 - a traced module keeps its parameters, not its Python attributes
        return default


def _kind(layer: Any) -> str:
    return getattr(layer, "original_name", None) or type(layer).__name__


def _is_flatten(layer: Any) -> bool:
    return _kind(layer) == "Flatten" and _attr(layer, "start_dim", 1) == 1 and _attr(layer, "end_dim", -1) == -1


def _first_registered_layer(module: torch.nn.Module) -> ExpectedInput | None:
    """The first layer with parameters in registration order (a TorchScript module runs no Python hooks)."""
    flattened = False
    for name, layer in module.named_modules():
        if _is_flatten(layer):
            flattened = True
        if next(iter(layer.parameters(recurse=False)), None) is not None:
            return _layer_input(name, layer, _kind(layer), flattened)
    return None


def _probe_layers(module: torch.nn.Module, example: torch.Tensor) -> tuple[ExpectedInput | None, str | None]:
    """Run the module once on `example` [1, *S] with hooks on its leaf layers: what its first layer, if it
    meets the input as it is (or flattened), takes; and which layer failed, on what."""
    me = threading.get_ident()
    calls: list[list[Any]] = []  # [name, layer, input shape, finished], in call order

    def before(name):
        def hook(layer, args):
            if threading.get_ident() == me:
                arg = args[0] if args and isinstance(args[0], torch.Tensor) else None
                calls.append([name, layer, None if arg is None else tuple(arg.shape), False])
        return hook

    def after(layer, args, output):
        if threading.get_ident() == me:
            for call in reversed(calls):
                if call[1] is layer and not call[3]:
                    call[3] = True
                    break

    handles = []
    try:
        for name, layer in module.named_modules():
            if next(layer.children(), None) is None:
                handles.append(layer.register_forward_pre_hook(before(name)))
                handles.append(layer.register_forward_hook(after))
        with torch.inference_mode():
            module(example)
    except Exception:  # noqa: BLE001 - the failure being explained; what the hooks saw is the answer
        pass
    finally:
        for handle in handles:
            handle.remove()
    expected = None
    if calls and calls[0][2] == tuple(example.shape):
        name, layer = calls[0][0], calls[0][1]
        expected = _layer_input(name, layer, _kind(layer), False)
        if expected is None and _is_flatten(layer) and len(calls) > 1 and calls[1][2] == (1, example[0].numel()):
            expected = _layer_input(calls[1][0], calls[1][1], _kind(calls[1][1]), True)
    failed = next((c for c in reversed(calls) if not c[3]), None)
    if failed is None:
        return expected, None
    name, layer, shape = failed[0], failed[1], failed[2]
    detail = ", ".join(f"{a}={getattr(layer, a)}" for a in ("in_channels", "in_features") if hasattr(layer, a))
    what = f"{_kind(layer)}{', ' + detail if detail else ''}"
    return expected, f"its layer {name or '(the model)'} ({what}) failed on a tensor of shape {shape}"


def detach_from(outputs: Any, buffer: torch.Tensor) -> Any:
    """Outputs that alias the input buffer (an identity model) are copied before the buffer is reused."""
    if isinstance(outputs, torch.Tensor) and outputs.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr():
        return outputs.clone()
    return outputs


class Sampler:
    """Draws noisy copies of one input and runs them through a runtime in batches.

    Args:
        batch_size: noisy copies per model call (capped by the runtime's max_batch).
        on_batch: called after each model call with its number of copies (e.g. a progress bar).
    """

    def __init__(self, batch_size: int = DEFAULT_BATCH_SIZE, on_batch: Callable[[int], None] | None = None):
        self.batch_size = check_batch_size(batch_size)
        self.on_batch = on_batch

    def run(
        self,
        model: Runtime | Callable,
        x: torch.Tensor,
        n: int,
        sigma: float,
        key: NoiseKey,
        reducer: Reducer,
        start: int = 0,
        total: int | None = None,
    ) -> Any:
        """Feed n noisy copies x + σ·ε_i (noise keyed by `key`) to the model and return `reducer.result()`.

        Args:
            start, total: take copies start .. start + n − 1 of a stream of `total` copies (default:
                0 .. n − 1 of n), so that a sequential test can continue one stream look by look.

        Shapes:
            x: one input [*S] (no batch dimension).
        """
        total = n if total is None else total
        if start < 0 or start + n > total:
            raise InvalidParameterError(f"copies {start}..{start + n} outside the stream of {total}")
        # A stream whose counters would wrap is refused now, not when sampling reaches its end (n = 2^64
        # copies of a 2-element input would otherwise sample for years before failing).
        check_counter_range(0, total, x.numel())
        runtime = as_runtime(model)
        size = self.batch_size if runtime.max_batch is None else min(self.batch_size, runtime.max_batch)
        x = as_model_dtype(x.detach(), runtime.input_dtype, strict=False).to(runtime.device)
        buffer = torch.empty((min(size, n), *x.shape), dtype=x.dtype, device=runtime.device)
        source = NoiseSource(x, sigma, total, key)
        done = 0
        while done < n:
            b = min(size, n - done)
            batch = buffer[:b]
            source.fill(batch, start + done)
            reducer.add(detach_from(run_model(runtime, batch), buffer), b)
            done += b
            if self.on_batch is not None:
                self.on_batch(b)
        return reducer.result()

    def counts(
        self,
        model: Runtime | Callable,
        x: torch.Tensor,
        n: int,
        sigma: float,
        num_classes: int,
        key: NoiseKey,
        start: int = 0,
        total: int | None = None,
    ) -> np.ndarray:
        """Class counts of argmax f(x + ε) over n noisy copies: an int64 array [num_classes].

        Raises:
            ModelOutputError: the model returned a wrong shape, a non-floating tensor, or NaN/Inf.
        """
        runtime = as_runtime(model)
        return self.run(runtime, x, n, sigma, key, ClassCounts(num_classes, runtime.device), start, total)

    def outputs(
        self,
        model: Runtime | Callable,
        x: torch.Tensor,
        n: int,
        sigma: float,
        key: NoiseKey,
        reduce: Callable[[Any], torch.Tensor] | None = None,
    ) -> Any:
        """The n outputs f(x + ε_i) — a tensor [n, *out] or a list — or, with `reduce`, a tensor [n].

        Raises:
            ModelOutputError: wrong batch length, changing output shapes, or NaN/Inf outputs.
        """
        runtime = as_runtime(model)
        return self.run(runtime, x, n, sigma, key, KeepOutputs(reduce, runtime.device))

    def score_sums(
        self,
        model: Runtime | Callable,
        x: torch.Tensor,
        n: int,
        sigma: float,
        key: NoiseKey,
        score: Callable[[Any], torch.Tensor] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Sums and squared sums of the [0, 1] scores of n noisy copies, and n."""
        runtime = as_runtime(model)
        return self.run(runtime, x, n, sigma, key, ScoreSums(score, runtime.device))
