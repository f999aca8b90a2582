"""Runtimes: one class per backend behind one interface, `run(batch) -> outputs`.

| backend | class | where it was verified |
| --- | --- | --- |
| "eager" | TorchRuntime | CPU (test suite) |
| "compile" | CompiledRuntime (torch.compile) | CPU (test suite) |
| "onnxruntime" | OnnxRuntime | CPU provider (test suite); CUDA/TensorRT providers only where onnxruntime-gpu is installed |
| "tensorrt" | TensorRTRuntime | not verified: TensorRT cannot be installed on the project's machines |

`create_runtime` picks one: "auto" takes the first candidate (ONNX Runtime, torch.compile, eager on CPU) that
builds and reproduces eager on a probe batch of noisy inputs, falling back with a logged reason; an
explicitly requested one raises BackendUnavailableError.
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


#: What `auto` tries, in order, per device type (tests may narrow it). A candidate that cannot be built, or whose
#: outputs on the probe batch differ from eager's, is skipped with a logged reason; eager always closes the list.
AUTO_CANDIDATES = {"cpu": ("onnxruntime", "compile", "eager"),
                   "cuda": ("tensorrt", "onnxruntime", "compile", "eager")}
#: The probe batch `auto` checks a candidate on: PROBE_ROWS noisy copies of the example, Gaussian noise at the
#: smoothing sigma when the caller gives it, else at DEFAULT_PROBE_SIGMA x the example's value range (1 when flat).
PROBE_ROWS = 256
DEFAULT_PROBE_SIGMA = 0.25
#: A candidate reproduces eager when every row has the same argmax (for [batch, classes] outputs) and every
#: output satisfies |candidate - eager| <= PROBE_ATOL * max(1, max|eager|) + PROBE_RTOL * |eager| (fp16
#: TensorRT engines: FP16_TOL for both).
PROBE_RTOL, PROBE_ATOL, FP16_TOL = 1e-3, 1e-4, 1e-2
#: Runtimes chosen by `auto`, per (module, parameter storage and versions, example shape/dtype, device, batch
#: size, options, probe sigma): a second create_runtime for the same model neither exports nor probes again.
_AUTO_CACHE: "dict[tuple, tuple[weakref.ref, Runtime]]" = {}
_AUTO_CACHE_SIZE = 8
#: How many models `auto` exported (counted for tests and benchmarks).
EXPORTS = {"count": 0}


def _fingerprint(module: torch.nn.Module) -> tuple:
    """The identity of a module's weights: each tensor's storage and in-place version (changes on any update)."""
    return tuple((t.data_ptr(), t._version, tuple(t.shape), t.dtype) for t in list(module.parameters()) + list(module.buffers()))


def _probe_batch(example: torch.Tensor, sigma: float | None, rows: int) -> torch.Tensor:
    example = example.detach().to("cpu", torch.float32)
    if sigma is None:
        spread = float(example.max() - example.min()) if example.numel() else 0.0
        sigma = DEFAULT_PROBE_SIGMA * (spread if spread > 0 else 1.0)
    generator = torch.Generator().manual_seed(20261130)
    return example + sigma * torch.randn(rows, *example.shape, generator=generator)


def _run_chunked(runtime: Runtime, batch: torch.Tensor, chunk: int) -> torch.Tensor:
    chunk = min(chunk, runtime.max_batch or chunk)
    outs = []
    for start in range(0, batch.shape[0], chunk):
        piece = batch[start:start + chunk].to(runtime.device)
        if runtime.input_dtype is not None and runtime.backend != "onnxruntime":
            piece = piece.to(runtime.input_dtype)
        out = runtime.run(piece)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"outputs are {type(out).__name__}, not a tensor")
        outs.append(out.detach().to("cpu", torch.float64))
    return torch.cat(outs)


def _mismatch(candidate: torch.Tensor, reference: torch.Tensor, tol: tuple[float, float]) -> str | None:
    """Why a candidate's probe outputs do not reproduce eager's (None when they do)."""
    if candidate.shape != reference.shape:
        return f"output shape {tuple(candidate.shape)} != eager's {tuple(reference.shape)}"
    if not bool(torch.isfinite(candidate).eq(torch.isfinite(reference)).all()):
        return "non-finite outputs where eager's are finite (or the reverse)"
    finite = torch.isfinite(reference)
    rtol, atol = tol
    scale = max(1.0, float(reference[finite].abs().max())) if bool(finite.any()) else 1.0
    diff = (candidate - reference).abs()[finite]
    bound = (atol * scale + rtol * reference.abs())[finite]
    if reference.ndim == 2 and reference.shape[1] > 1:
        rows = int((candidate.argmax(1) != reference.argmax(1)).sum())
        if rows:
            return f"argmax differs from eager's on {rows} of {reference.shape[0]} probe rows"
    if bool((diff > bound).any()):
        return f"outputs differ from eager's by up to {float(diff.max()):.3g} (tolerance {atol:g}*{scale:.3g} + {rtol:g}*|eager|)"
    return None


def _build(backend: str, module: torch.nn.Module, example: torch.Tensor, batch_size: int, device: str,
           compile_mode: str, fp16: bool, workdir: Path) -> Runtime:
    if backend == "eager":
        return TorchRuntime(module.to(device), device=device)
    if backend == "compile":
        return CompiledRuntime(module.to(device), batch_size, mode=compile_mode, device=device)
    if backend == "onnxruntime" and torch.device(device).type == "cuda":
        import onnxruntime as ort  # auto on CUDA: only with onnxruntime-gpu's providers, never the CPU one

        gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in ort.get_available_providers()]
        if not gpu:
            raise BackendUnavailableError("onnxruntime has no CUDA or TensorRT provider here")
        onnx_path = _export(module, example, workdir)
        return OnnxRuntime(onnx_path, providers=gpu)
    onnx_path = _export(module, example, workdir)
    if backend == "onnxruntime":
        return OnnxRuntime(onnx_path)
    return TensorRTRuntime(onnx_path, max_batch=batch_size, fp16=fp16)


def _export(module: torch.nn.Module, example: torch.Tensor, workdir: Path) -> Path:
    path = workdir / "model.onnx"
    if not path.exists():
        EXPORTS["count"] += 1
        export_onnx(module.to("cpu"), example[None].cpu(), path)
    return path


def create_runtime(
    module: torch.nn.Module,
    example: torch.Tensor,
    backend: str = "auto",
    batch_size: int = 1000,
    device: str | None = None,
    compile_mode: str = "default",
    fp16: bool = False,
    sigma: float | None = None,
) -> Runtime:
    """A warmed-up runtime for a torch module.

    Args:
        module: the base model.
        example: one input (no batch dimension), used to export, compile, warm up and (auto) probe.
        backend: "auto", "eager", "compile", "onnxruntime" or "tensorrt". "auto" is the fastest runtime
            verified to run the same model: on CPU it tries ONNX Runtime, then torch.compile, then eager; on
            CUDA TensorRT, ONNX Runtime's TensorRT/CUDA providers (onnxruntime-gpu only), torch.compile with
            CUDA graphs (mode "reduce-overhead" unless compile_mode says otherwise), then eager
            (AUTO_CANDIDATES). A candidate is used only after it reproduced eager on a probe batch of
            PROBE_ROWS noisy copies of `example` (Gaussian noise at `sigma`), and on the clean `example` as a
            batch of one: the same output shapes, the same argmax on every row
            of [batch, classes] outputs and every output within PROBE_ATOL*max(1, max|eager|) +
            PROBE_RTOL*|eager|. A traced export of a model with data-dependent control flow fails that
            check and is skipped with the reason logged. A model whose outputs are not one tensor gets
            eager. The choice is cached per process (_AUTO_CACHE).
        batch_size: the batch size the sampler will use (compiled graphs and engines are built for it).
        device: "cpu", "cuda", ...; default: CUDA when available.
        compile_mode: torch.compile mode ("reduce-overhead" uses CUDA graphs on GPU).
        fp16: TensorRT may use fp16 kernels (auto then compares with the looser FP16_TOL).
        sigma: the smoothing noise level, for auto's probe batch (default: DEFAULT_PROBE_SIGMA x the
            example's value range).

    Raises:
        BackendUnavailableError: an explicitly requested backend cannot run here.
    """
    if backend not in BACKENDS:
        raise InvalidParameterError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if backend == "auto":
        return _create_auto(module, example, batch_size, device, compile_mode, fp16, sigma)
    return _create(module, example, [backend], False, batch_size, device, compile_mode, fp16)


def _create_auto(module, example, batch_size, device, compile_mode, fp16, sigma) -> Runtime:
    kind = torch.device(device).type
    if kind == "cuda" and compile_mode == "default":
        compile_mode = "reduce-overhead"
    key = (id(module), _fingerprint(module), tuple(example.shape), example.dtype, str(device), batch_size,
           compile_mode, fp16, sigma)
    hit = _AUTO_CACHE.get(key)
    if hit is not None and hit[0]() is module:
        return hit[1]
    runtime = _create(module, example, list(AUTO_CANDIDATES.get(kind, ("eager",))), True, batch_size, device,
                      compile_mode, fp16, sigma)
    if len(_AUTO_CACHE) >= _AUTO_CACHE_SIZE:
        _AUTO_CACHE.pop(next(iter(_AUTO_CACHE)))
    _AUTO_CACHE[key] = (weakref.ref(module), runtime)
    return runtime


def _create(module, example, candidates, auto, batch_size, device, compile_mode, fp16, sigma=None) -> Runtime:
    reference = probe = single = None
    if auto and candidates != ["eager"]:
        # The probe needs eager's outputs on noisy copies; a model whose outputs are not one tensor
        # cannot be checked, and gets eager.
        eager = TorchRuntime(module.to(device), device=device)
        probe = _probe_batch(example, sigma, PROBE_ROWS)
        clean = example.detach().to("cpu", torch.float32)[None]
        try:
            reference = _run_chunked(eager, probe, batch_size)
            # ... and the clean example alone: a batch of one catches outputs that depend on the batch size.
            single = _run_chunked(eager, clean, batch_size)
        except Exception as exc:
            log.info("runtime auto: eager outputs cannot be compared (%s); using eager", exc)
            candidates = ["eager"]
    # Exported models go to a private folder, removed as soon as the backend is built (ONNX Runtime and
    # TensorRT hold the model in memory from then on), whether or not one could be: a process killed later
    # (a Ray worker at shutdown) leaves no folder behind in the temporary directory.
    workdir = Path(tempfile.mkdtemp(prefix="smoothgen-runtime-"))
    try:
        for name in candidates:
            try:
                runtime = _build(name, module, example, batch_size, device, compile_mode, fp16, workdir)
                runtime.warmup(example)
                if reference is not None and name != "eager":
                    tol = (FP16_TOL, FP16_TOL) if fp16 and name == "tensorrt" else (PROBE_RTOL, PROBE_ATOL)
                    try:
                        reason = (_mismatch(_run_chunked(runtime, probe, batch_size), reference, tol)
                                  or _mismatch(_run_chunked(runtime, clean, batch_size), single, tol))
                    except Exception as exc:  # e.g. a trace that unrolled a loop over one example's rows
                        reason = f"it fails on the probe batch: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                    if reason is not None:
                        log.warning("runtime backend %r does not reproduce eager on the probe batch, falling back: %s", name, reason)
                        continue
                if auto:
                    log.info("runtime auto: using %r", name)
                return runtime
            except Exception as exc:
                if not auto:
                    if isinstance(exc, BackendUnavailableError):
                        raise
                    raise BackendUnavailableError(f"backend {name!r} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
                log.warning("runtime backend %r unavailable, falling back: %s", name, exc)
        raise BackendUnavailableError(f"no runtime backend could run the model (tried {candidates})")
    finally:
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
    "AUTO_CANDIDATES",
]
