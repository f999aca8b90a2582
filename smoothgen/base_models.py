"""The base models of a run, as every front door gets them: loaded from a model spec (a file, a factory, an
embedded or a pretrained model), checked against the data, put on the chosen runtime, and the per-input
record builders on top (`certify_unit`, `center_unit`). `smoothgen certify` / `center`, the HTTP service,
the Ray workers and `smoothgen verify --recompute` call these; none of them imports another for it.

`args` is a typed specification (`smoothgen.job_specs`): a `RuntimeSpec` (the model and its runtime: the
service's served models, `verify --recompute`), or the run's `CertifyJob` / `CenterJob` (the CLI builds it
from its options; the Ray driver ships it to its workers).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from smoothgen._lazy import lazy_module
from smoothgen.errors import InvalidInputError, InvalidParameterError
from smoothgen.job_specs import DEFAULT_SEQUENTIAL, CenterJob, CertifyJob, RuntimeSpec  # noqa: F401  (DEFAULT_SEQUENTIAL: named here too)
from smoothgen.jobs import center_record, certify_record

np = lazy_module("numpy")
torch = lazy_module("torch")


def pretrained_registry():
    from smoothgen import pretrained

    return pretrained


def pretrained_spec(args: RuntimeSpec):
    """The pretrained model --model names (smoothgen.pretrained.PretrainedModel), or None for a file, factory
    or the embedded model."""
    return pretrained_registry().MODELS.get(args.model) if getattr(args, "model", None) is not None else None


def check_model_spec(spec: str, option: str) -> None:
    """A model option is an existing file or package.module:factory (an empty module name was a ValueError)."""
    if spec and Path(spec).is_file():
        return
    module, colon, factory = spec.partition(":")
    if colon and all(part.isidentifier() for part in module.split(".")) and factory.isidentifier():
        return
    raise InvalidParameterError(f"{option} {spec!r} is neither an existing file nor package.module:factory")


def load_base_model(args: RuntimeSpec, embedded, embedded_name: str, x: np.ndarray):
    """The user's model (--model), or the embedded one after checking the data fits it. Returns (runtime, name)."""
    from smoothgen.engine.runtime import TorchRuntime
    from smoothgen.loading import load_model
    from smoothgen.models import DIGITS_SHAPE

    check_input_range(args, x)
    if args.model is not None:
        return load_model(args.model, device=args.device), model_record_name(args.model)
    if x.shape[1:] != DIGITS_SHAPE:
        raise InvalidInputError(f"the embedded digits models take inputs of shape {DIGITS_SHAPE}, got {x.shape[1:]}")
    return TorchRuntime(embedded().to(args.device), device=args.device), embedded_name


def check_input_range(args: RuntimeSpec, x: np.ndarray) -> None:
    """--input-range, or [0, 1] for the embedded models: data outside is refused before anything runs (pixels
    in [0, 255] given to a model trained on [0, 1] used to certify 1.000 at a radius in 0-255 units)."""
    from smoothgen.validate import check_value_range

    if args.input_range is not None:  # parsed and checked when the spec was built (RuntimeSpec.from_options)
        check_value_range(x, args.input_range, "--data", " (--input-range)")
    elif args.model is None:
        check_value_range(x, (0.0, 1.0), "--data", ", the range of the pixels the embedded digits models were trained "
                          "on: scale the inputs to [0, 1] (a model of your own: --model, and --input-range LO,HI)")


def model_record_name(spec: str) -> str:
    """How a model option is recorded: a file by its absolute path (as --data is), so that a run resumed from
    another directory, or with the path written another way, has the same parameters; package.module:factory
    as typed."""
    path = Path(spec)
    return str(path.resolve()) if path.is_file() else spec


def apply_backend(args: RuntimeSpec, runtime, x: np.ndarray):
    """The runtime for --backend: torch models are re-wrapped (compiled, exported); ONNX files stay on ONNX Runtime.

    The model first runs once as loaded, so that data it cannot take fails with what it takes
    (`probe`), not as "no runtime backend could run the model" from the backend's warm-up."""
    from smoothgen.engine.runtime import OnnxRuntime, TorchRuntime, create_runtime

    probe(runtime, x[0])

    if isinstance(runtime, OnnxRuntime):
        if args.backend not in ("auto", "onnxruntime"):
            raise InvalidParameterError(f"--backend {args.backend} needs a torch model; {args.model} is an ONNX file")
        if runtime.max_batch is not None and runtime.max_batch < args.batch_size:
            print(f"note: {args.model} takes batches of exactly {runtime.max_batch} input(s) (its batch axis is fixed): "
                  f"every --batch-size {args.batch_size} batch becomes {-(-args.batch_size // runtime.max_batch)} model "
                  "calls, which is much slower; export it with a dynamic batch axis (README: bring your own model)",
                  file=sys.stderr)
        return runtime
    if not isinstance(runtime, TorchRuntime) or not isinstance(runtime.model, torch.nn.Module):
        raise InvalidParameterError("--backend needs a torch module")
    # auto checks each candidate against eager on noisy copies drawn like the certifier's: noise at --sigma
    # (certify), at the largest eps_in / h (center); engine.runtime.create_runtime.
    sigma = getattr(args, "sigma", None)
    if sigma is None and getattr(args, "eps_in", None) and getattr(args, "h", None):
        sigma = max(args.eps_in) / args.h
    return create_runtime(runtime.model, torch.from_numpy(x[0]), args.backend, batch_size=args.batch_size, device=args.device,
                          sigma=sigma)


def dtype_name(runtime) -> str | None:
    """The dtype a runtime computes in, as records name it ("float32"; None when unknown)."""
    dtype = getattr(runtime, "input_dtype", None)
    return None if dtype is None else str(dtype).removeprefix("torch.")


def probe(runtime, x0: np.ndarray) -> Any:
    """Run the model once on a clean input so that a wrong model fails before any record is written (with
    the shape it takes, when that is what is wrong and it can be learned: engine.sampler.model_failure)."""
    from smoothgen.engine.sampler import run_model

    return run_model(runtime, torch.from_numpy(x0[None]).to(runtime.device))


def progress_bar(iterable, disable: bool, total: int, desc: str, unit: str = "input"):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True)


def default_classifier_sigma(args: CertifyJob) -> float:
    """The embedded classifier behind a purifier: DiffSmooth classifies copies noisy at sigma', so the
    classifier trained at sigma' (when one is embedded) beats the clean one there (benchmarks/RESULTS.md,
    DDS/DiffSmooth ablation); DDS classifies the purified image itself, so the clean one."""
    if args.denoiser == "diffsmooth":
        from smoothgen.models import available_classifier_sigmas

        if float(args.local_sigma) in available_classifier_sigmas():
            return float(args.local_sigma)
    return 0.0


def load_noise_model(args: CertifyJob, x: np.ndarray) -> tuple[torch.nn.Module, str]:
    """The DDPM's noise-prediction network (--ddpm, or the embedded digits DDPM) on --device."""
    if args.ddpm == "embedded":
        from smoothgen.models import DIGITS_SHAPE, load_ddpm

        if x.shape[1:] != DIGITS_SHAPE:
            raise InvalidInputError(f"the embedded digits DDPM takes inputs of shape {DIGITS_SHAPE}, got {x.shape[1:]}")
        return load_ddpm().to(args.device), "embedded:digits_ddpm"
    if args.ddpm.startswith("diffusers:"):
        from smoothgen.denoise import load_diffusers_noise_model

        return load_diffusers_noise_model(args.ddpm.partition(":")[2], device=args.device), args.ddpm
    from smoothgen.loading import load_model

    runtime = load_model(args.ddpm, device=args.device)
    module = getattr(runtime, "model", None)
    if module is None or getattr(module, "betas", None) is None:
        raise InvalidParameterError(f"--ddpm {args.ddpm} must be a torch module with a `betas` attribute (its noise schedule)")
    return module, model_record_name(args.ddpm)


def load_denoised(args: CertifyJob, x: np.ndarray):
    """The randomized base classifier DDS(purifier, classifier) or DiffSmooth(...). Returns (runtime, name)."""
    from smoothgen.denoise import DDS, DiffSmooth, DiffusionPurifier
    from smoothgen.engine.runtime import TorchRuntime
    from smoothgen.models import load_classifier

    noise_model, ddpm_name = load_noise_model(args, x)
    purifier = DiffusionPurifier(noise_model, args.sigma)
    classifier, classifier_name = load_base_model(
        args, lambda: load_classifier(args.classifier_sigma), f"embedded:digits_cnn_sigma{float(args.classifier_sigma)}", x
    )
    if isinstance(classifier, TorchRuntime) and isinstance(classifier.model, torch.nn.Module):
        classifier = classifier.model  # a submodule of DDS/DiffSmooth: moved, compiled and exported with it
    if args.denoiser == "dds":
        base = DDS(purifier, classifier)
        name = f"dds({ddpm_name}, t*={purifier.t_star}) -> {classifier_name}"
    else:
        base = DiffSmooth(purifier, classifier, args.local_samples, args.local_sigma, seed=args.seed)
        name = (f"diffsmooth({ddpm_name}, t*={purifier.t_star}, m={args.local_samples}, "
                f"local_sigma={args.local_sigma}) -> {classifier_name}")
    return TorchRuntime(base, device=args.device), name


def classifier_runtime(args: RuntimeSpec, x: np.ndarray):
    """certify's base classifier (--model or the embedded CNN at --sigma, behind --denoiser) on --backend:
    (runtime, name). The --ray workers and `smoothgen serve` build theirs here too, so every front end
    certifies the same runtime."""
    from smoothgen.models import load_classifier

    if getattr(args, "denoiser", None) is None:
        runtime, name = load_base_model(args, lambda: load_classifier(args.sigma), f"embedded:digits_cnn_sigma{args.sigma}", x)
    else:
        runtime, name = load_denoised(args, x)
    return apply_backend(args, runtime, x), name


def certify_unit(args: CertifyJob, smoothed, reseed):
    """The record of one input under the command line's options: compute(idx, x, label) (local loop and --ray workers)."""
    sequential = {}
    if args.target_radius is not None and getattr(args, "sequential", None) == "betting":
        sequential = {"sequential": "betting", "max_samples": args.max_samples, "check_every": args.check_every}

    def compute(idx: int, xi: np.ndarray, label: int | None) -> dict[str, Any]:
        return certify_record(smoothed, xi, idx, label, n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed,
                              target_radius=args.target_radius, looks=args.looks, reseed=reseed, **sequential)

    return compute


def center_runtime(args: RuntimeSpec, x: np.ndarray):
    """center's base model (--model, a pretrained model by name, or the embedded autoencoder) on --backend:
    (runtime, name); also built by the --ray workers and `smoothgen serve`."""
    from smoothgen.models import load_autoencoder

    if pretrained_spec(args) is not None:
        return pretrained_runtime(args, x), args.model
    runtime, name = load_base_model(args, load_autoencoder, "embedded:digits_autoencoder", x)
    return apply_backend(args, runtime, x), name


def check_pretrained_options(args: CenterJob) -> None:
    """A pretrained model runs as it ships: no other --backend, and on the CPU except MTCNN (a torch model)."""
    if args.backend not in ("auto", "eager"):
        raise InvalidParameterError(f"--model {args.model} runs as it ships (--backend auto or eager), got --backend {args.backend}")
    if str(args.device) != "cpu" and args.model != "mtcnn":
        raise InvalidParameterError(f"--model {args.model} runs on the CPU (--device cpu), got --device {args.device}")


def pretrained_runtime(args: CenterJob, x: np.ndarray):
    """A pretrained model by name (smoothgen.pretrained) as a runtime: it runs as it ships (MTCNN and the cascade
    in eager torch / OpenCV, the OCR model in ONNX Runtime inside), so --backend can only be auto or eager."""
    from smoothgen.engine.runtime import Runtime, TorchRuntime

    check_pretrained_options(args)
    model, _ = pretrained_registry().load_pretrained(args.model)
    if isinstance(model, Runtime):  # the OCR recogniser is an ONNX Runtime session of its own
        runtime = model
    else:
        runtime = TorchRuntime(model.to(args.device) if isinstance(model, torch.nn.Module) else model, device=args.device)
    probe(runtime, x[0])
    return runtime


def center_unit(args: CenterJob, runtime, metric, input_shape: tuple[int, ...], run_fields: tuple[str, ...]):
    """The record of one (input, eps_in) pair under the command line's options: compute(idx, x, eps_in), with
    one CenterSmoother per eps_in (local loop and --ray workers)."""
    from smoothgen.center import CenterSmoother

    smoothers: dict[float, CenterSmoother] = {}
    pretrained = pretrained_spec(args)

    def compute(idx: int, xi: np.ndarray, eps: float) -> dict[str, Any]:
        if eps not in smoothers:
            smoothers[eps] = CenterSmoother(runtime, eps / args.h, metric, batch_size=args.batch_size,
                                            n_candidates=args.n_candidates or None, input_shape=input_shape)
        record, cert = center_record(smoothers[eps], xi, idx, eps, n=args.n, m=args.m, delta=args.delta, alpha1=args.alpha1,
                                     alpha2=args.alpha2, seed=args.seed, run_fields=run_fields, return_certificate=True)
        if pretrained is not None:  # the certificate in the output's own words (IoU kept, characters changed)
            clean = runtime.run(torch.from_numpy(xi[None]).to(runtime.device))
            decode = getattr(runtime, "decode", None) or getattr(getattr(runtime, "model", None), "decode", None)
            record.update(pretrained_registry().readable(pretrained.kind, cert, clean[0], decode))
        return record

    return compute


def _served_digest(spec: str | None, embedded: Callable[[], Any]) -> str:
    """The digest documents give a served model (`smoothgen.trust.model_digest`): its file's, or the state
    dict of the factory's module or of the embedded model."""
    from smoothgen.loading import _from_factory
    from smoothgen.trust import model_digest

    if spec is None:
        return model_digest(None, embedded())
    return model_digest(spec, None if Path(spec).is_file() else _from_factory(spec))


def classifier_digest(spec: str | None, sigma: float) -> str:
    """The digest of the classifier of certify/predict (the embedded one is the CNN trained at sigma)."""
    from smoothgen.models import load_classifier

    return _served_digest(spec, lambda: load_classifier(sigma))


def center_digest(spec: str | None) -> str:
    """The digest of the model of /v1/center."""
    from smoothgen.models import load_autoencoder

    return _served_digest(spec, load_autoencoder)
