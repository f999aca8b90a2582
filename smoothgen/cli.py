"""The `smoothgen` command line: `smoothgen certify` (classification), `smoothgen center` (metric outputs)
and `smoothgen generate` (smoothed generators, in `smoothgen.generate_cli`).

Any error smoothgen raises on purpose (`SmoothgenError`) becomes a one-line message on stderr and exit
code 2; results files only ever hold whole records.
"""
from __future__ import annotations

import argparse
import math
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from smoothgen import __version__
from smoothgen._lazy import lazy_module
from smoothgen._signals import stop_during_startup
from smoothgen.cli_help import DefaultsFormatter
from smoothgen.base_models import (
    center_runtime,
    center_unit,
    certify_unit,
    check_model_spec,
    check_pretrained_options,
    classifier_runtime,
    default_classifier_sigma,
    dtype_name,
    pretrained_registry,
    pretrained_spec,
    probe,
    progress_bar,
)
from smoothgen.certificates import ABSTAIN
from smoothgen.job_specs import (
    DEFAULT_EPS_IN,
    DEFAULT_LOCAL_SAMPLES,
    DEFAULT_LOCAL_SIGMA,
    DEFAULT_SEQUENTIAL,
    CenterJob,
    CertifyJob,
    RayOptions,
)
from smoothgen.jobs import certify_run
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError, ResultsFileError, SmoothgenError
from smoothgen.results import ResultsFile, write_cohen_tsv

# Imported on first use: `smoothgen --help` and argument errors need neither (main imports them before a run).
np = lazy_module("numpy")
torch = lazy_module("torch")
#: Modules a run needs, imported by `main` after parsing and before the command takes over Ctrl-C.
RUN_IMPORTS = ("numpy", "torch", "tqdm")

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
# The runs' defaults (center's radii: from 0.2 on the certified ball of the digits autoencoder reaches another
# input's output; 20 of 25 certificates at 0.1..0.5 were vacuous at that scale, 0 of 10 at 0.05, 0.1;
# benchmarks/RESULTS.md) are the typed jobs' (smoothgen.job_specs): the options below show them.


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, like every other error of the command (argparse prints its
    whole usage block first: 10 to 14 lines for `certify`), and exit code 2 as before."""

    def error(self, message: str):
        message = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Explicit(argparse.Action):
    """Store the value and remember that the option was given: some options apply only with another one."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.explicit_options = getattr(namespace, "explicit_options", set()) | {self.option_strings[0]}


class _Refused(argparse.Action):
    """An option a command does not take but users reach for: a one-line error that says what to use
    instead (argparse alone says only "unrecognized arguments")."""

    def __init__(self, option_strings, dest, reason: str, **kwargs):
        self.reason = reason
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: {self.reason}")


_NUM_HELP = {"results/center.jsonl": "number of inputs to process (default: 5; a pretrained --model's own, see --eps-in)"}
#: What `center` adds to --model's and --data's help: the pretrained models and data sets it knows by name
#: (smoothgen.pretrained), keyed by the command's default results file.
_PRETRAINED_HELP = {"results/center.jsonl": "; or a pretrained model by name: mtcnn (facenet-pytorch's face detector, "
                    "its largest face as a box), opencv-haar (OpenCV's Haar face cascade), rapidocr (PP-OCRv4 text-line "
                    "recogniser); each takes images [b, C, H, W] in [0, 1] and brings its own --metric and --data"}
_DATASETS_HELP = {"results/center.jsonl": "; or a data set by name: faces (100 real LFW face crops from scikit-image, "
                  "upscaled to 100x100 gray), text-lines (real scanned lines of scikit-image's page.png and lines "
                  "rendered with a real font, 48 px high)"}


def _common(parser: argparse.ArgumentParser, default_num: int, default_out: str) -> None:
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--model", help="TorchScript file, torch.export program (.pt2), ONNX file, or package.module:factory; "
                    "it takes a batch [b, *input_shape] of --data's inputs (default: the embedded digits model, which "
                    "takes [b, 1, 8, 8] with pixels in [0, 1])" + _PRETRAINED_HELP.get(default_out, ""))
    io.add_argument("--data", help=".npy of inputs, or .npz with 'x' (inputs) and optional 'y' (integer labels): an array "
                    "[N, *input_shape] of N inputs in the shape --model takes, float (default: the 450-image digits test "
                    "split, [450, 1, 8, 8] in [0, 1])" + _DATASETS_HELP.get(default_out, ""))
    io.add_argument("--input-range", default=None, metavar="LO,HI",
                    help="the values --data's inputs must lie in, refused in one line otherwise (default: 0,1 for the "
                    "embedded digits models, trained on pixels in [0, 1]; unchecked for a --model of your own unless "
                    "given)")
    io.add_argument("--start", type=int, default=0, help="index of the first input to process (default: 0)")
    io.add_argument("--num", type=int, default=default_num,
                    help=_NUM_HELP.get(default_out, f"number of inputs to process (default: {default_num})"))
    io.add_argument("--out", default=default_out, help="results file, one JSON record per line")
    existing = io.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="continue an interrupted run from --out")
    existing.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    run = parser.add_argument_group("execution")
    run.add_argument("--batch-size", type=int, default=1000, help="noisy copies per model call (default: 1000)")
    run.add_argument("--seed", type=int, default=0, help="seed of the random streams; input i uses stream (seed, i) (default: 0)")
    run.add_argument("--device", default="cpu", help="torch device for torch models, e.g. cpu or cuda (default: cpu)")
    run.add_argument("--backend", default="auto", choices=["auto", "eager", "compile", "onnxruntime", "tensorrt"],
                     help="runtime for torch models: auto = the fastest one that reproduces eager on a probe batch of "
                     "noisy inputs: ONNX Runtime, then torch.compile, then eager on CPU; TensorRT, ONNX Runtime's GPU "
                     "providers, torch.compile with CUDA graphs, then eager on CUDA (a candidate that cannot run or "
                     "differs from eager is skipped with a logged reason; one named explicitly must work) (default: auto)")
    run.add_argument("--no-progress", action="store_true",
                     help="no progress bar on stderr, and no estimate of a long run's duration (printed once the first "
                     "input is done, when the whole run will take over 2 minutes)")
    dist = parser.add_argument_group(
        "distributed (Ray; needs pip install 'smoothgen[serve]'; README: Scaling out)",
        "With --ray the inputs are sharded over Ray workers, one task per input, each worker process building the "
        "runtime once; this process checks the model on --device first, then writes the same resumable --out as a "
        "local run (records equal apart from time and worker; a task lost with its node is retried elsewhere). "
        "A --model/--ddpm file is sent to the workers through Ray; a package.module:factory must be importable and a "
        "diffusers folder must exist on every node.",
    )
    dist.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                      help="run on Ray: alone, a local Ray instance started for this run and stopped after it; "
                      "HOST:PORT (a cluster's head, from `ray start --head`), auto (the cluster this machine belongs "
                      "to, or $RAY_ADDRESS) or ray://HOST:PORT (Ray Client): join that cluster, and only disconnect after")
    dist.add_argument("--ray-workers", action=_Explicit, type=int,
                      help="at most this many inputs at once (default: every worker the cluster has room for; "
                      "a local instance then gets this many worker slots)")
    dist.add_argument("--ray-cpus-per-worker", action=_Explicit, type=float, default=1.0,
                      help="CPUs a worker reserves (and its torch threads)")
    dist.add_argument("--ray-gpus-per-worker", action=_Explicit, type=float, default=0.0,
                      help="GPUs a worker reserves: with --device cuda, e.g. 1, or 0.5 for two workers per GPU")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="smoothgen",
        description="Certify the robustness of ML models with randomized smoothing. Every certificate holds "
        "with probability at least 1 - alpha over the sampling.",
        epilog="The certificates, their formulas, assumptions and sources: docs/theory.md in smoothgen's repository "
        "(the sections the options cite, e.g. section 6); the architecture: docs/design.md.",
    )
    parser.add_argument("--version", action="version", version=f"smoothgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cert = sub.add_parser(
        "certify",
        help="certified l2 radii of a smoothed classifier (Cohen et al. 2019)",
        description="Certify a Gaussian-smoothed classifier on each input: the predicted class and an l2 radius "
        "within which the smoothed prediction provably does not change (or ABSTAIN). With no arguments: the "
        "embedded digits CNN trained at sigma=0.25, n0=100, n=10000, alpha=0.001 on the first 100 digits test images "
        "(under a minute on 2 CPU cores). The certificate: docs/theory.md section 1.",
        formatter_class=DefaultsFormatter,
    )
    cert.add_argument("--sigma", type=float, default=CertifyJob.sigma, help="noise standard deviation")
    cert.add_argument("--n0", type=int, default=CertifyJob.n0, help="selection samples (choose the class)")
    cert.add_argument("--n", type=int, default=CertifyJob.n, help="estimation samples (bound its probability)")
    cert.add_argument("--alpha", type=float, default=CertifyJob.alpha, help="failure probability of each certificate")
    cert.add_argument("--num-classes", type=int, help="classes of the base model (default: read from its output)")
    cert.add_argument("--radii", type=_floats, default=list(DEFAULT_RADII), help="radii of the certified-accuracy summary")
    cert.add_argument("--tsv", help="also write Cohen et al.'s TSV (idx label predict radius correct time) here; an input without "
                      "a label gets - as label and correct")
    seq = cert.add_argument_group(
        "sequential certification at one radius (docs/theory.md section 6)",
        "With --target-radius r, each input answers 'is the smoothed classifier certified at radius r?' and stops "
        "sampling as soon as the answer is known: one estimation sample is tested at --looks with Clopper-Pearson at "
        "alpha/K per look (--sequential looks), or after every --check-every samples with an anytime-valid betting "
        "confidence sequence (--sequential betting). --n is not used then.",
    )
    seq.add_argument("--target-radius", type=float, help="the l2 radius to certify each input at")
    seq.add_argument("--sequential", choices=["looks", "betting"],
                     help="the sequential test: 'betting' checks a betting confidence sequence (Waudby-Smith & Ramdas) "
                     "after every --check-every samples up to --max-samples, valid whenever it stops (Ville's "
                     f"inequality); 'looks' tests at --looks with Clopper-Pearson at alpha/K (default: {DEFAULT_SEQUENTIAL}, "
                     "or looks when --looks is given)")
    seq.add_argument("--looks", action=_Explicit, type=_ints, default=list(CertifyJob.looks),
                     help="cumulative sample counts at which the test looks (default: "
                     f"{','.join(str(k) for k in CertifyJob.looks)})")
    seq.add_argument("--max-samples", action=_Explicit, type=int, default=CertifyJob.max_samples,
                     help="most estimation samples of --sequential betting")
    seq.add_argument("--check-every", action=_Explicit, type=int, default=CertifyJob.check_every,
                     help="estimation samples between two checks of --sequential betting")
    den = cert.add_argument_group(
        "diffusion purification (DDS, DiffSmooth; docs/theory.md section 3)",
        "A one-shot DDPM purifier in front of the classifier makes a randomized base classifier; CERTIFY runs on "
        "top of it unchanged, at --sigma. The classifier is --model, or the embedded one trained at "
        "--classifier-sigma (default: the clean classifier for dds; for diffsmooth the one trained at "
        "--local-sigma when one is embedded, else the clean one).",
    )
    den.add_argument("--denoiser", choices=["none", "dds", "diffsmooth"], default="none",
                     help="none: plain smoothing of the classifier; dds: purify, then classify (Carlini et al. 2023); diffsmooth: purify, then average the "
                     "classifier's softmax over --local-samples noisy copies at --local-sigma (Zhang et al. 2023)")
    den.add_argument("--ddpm", action=_Explicit, default=CertifyJob.ddpm,
                     help="noise-prediction model eps(x_t, t) with a `betas` attribute: package.module:factory or a "
                     "TorchScript file; or diffusers:FOLDER (a diffusers DDPM pipeline folder; needs the optional "
                     "diffusers package; untested); embedded = the digits DDPM, used unconditionally")
    den.add_argument("--local-samples", action=_Explicit, type=int, default=DEFAULT_LOCAL_SAMPLES,
                     help="DiffSmooth: local noisy copies m per purified input")
    den.add_argument("--local-sigma", action=_Explicit, type=float, default=DEFAULT_LOCAL_SIGMA,
                     help="DiffSmooth: local noise sigma'")
    den.add_argument("--classifier-sigma", action=_Explicit, type=float, default=None,
                     help="training noise of the embedded classifier behind the purifier (0 = the clean classifier; "
                     "default: 0 for dds, --local-sigma for diffsmooth when a classifier trained at it is embedded, "
                     "since its local copies are noisy at sigma')")
    _common(cert, default_num=100, default_out="results/certify.jsonl")
    cert.set_defaults(func=cmd_certify)

    cen = sub.add_parser(
        "center",
        help="center-smoothing certificates for models with metric-space outputs (Kumar & Goldstein 2021)",
        description="For each input and each eps_in, smooth the model with sigma = eps_in / h and certify eps_out: "
        "the smoothed output moves by at most eps_out (in the output metric) for any l2 input perturbation of size "
        "eps_in, with probability at least 1 - alpha1 - alpha2 - (1/2 - delta)^k for k = --n-candidates (each record's "
        "failure_probability; the last term is about 4e-11 at k = 30). With no arguments: the embedded digits autoencoder "
        "under total-variation distance on the first 5 digits test images, n=10000, m=20000, 30 candidate centers "
        "(under a minute on 2 CPU cores). The certificate: docs/theory.md section 2.",
        formatter_class=DefaultsFormatter,
    )
    cen.add_argument("--eps-in", type=_floats, help="input radii to certify (comma-separated) (default: "
                     f"{','.join(f'{e:g}' for e in DEFAULT_EPS_IN)} at --h {CenterJob.h:g}; a pretrained --model has its "
                     "own defaults, sized to finish in minutes on 2 CPU cores: "
                     + _pretrained_defaults_help() + ")")
    cen.add_argument("--h", type=float, help=f"eps_in / sigma (default: {CenterJob.h:g}; a pretrained --model's own, see --eps-in)")
    cen.add_argument("--sigma", action=_Refused, reason="center takes no sigma: each --eps-in is certified with sigma = "
                     "eps_in / --h (the paper's h), so set --eps-in and --h")
    cen.add_argument("--metric", help="output metric: l2, l1, cosine, angular, tv1d, tv2d, jaccard, jaccard-match, levenshtein, "
                     f"w1 (default: the pretrained --model's own metric, else {CenterJob.metric})")
    cen.add_argument("--n", type=int, help="samples to choose the center, and again (fresh) for its check "
                     f"(default: {CenterJob.n})")
    cen.add_argument("--m", type=int, help=f"fresh samples for the certified radius (the paper uses 10^6) (default: {CenterJob.m})")
    cen.add_argument("--delta", type=float, help=f"tolerance Delta in (0, 1/2) (default: {CenterJob.delta:g}; a pretrained "
                     "--model's own, see --eps-in)")
    cen.add_argument("--alpha1", type=float, default=CenterJob.alpha1, help="failure probability of the smoothing step")
    cen.add_argument("--alpha2", type=float, default=CenterJob.alpha2, help="failure probability of the radius step")
    cen.add_argument("--n-candidates", type=int, default=CenterJob.n_candidates,
                     help="choose the center among this many of the n samples (the paper's high-dimensional variant, "
                     "O(n_c*n) distances); 0 = among all n samples (O(n^2))")
    cen.add_argument("--png", help="with a pretrained detector or recogniser: draw each input with its clean and "
                     "smoothed box (or the clean and smoothed strings under the line) and its certificate at the "
                     "first --eps-in into this PNG file")
    _common(cen, default_num=None, default_out="results/center.jsonl")  # 5 inputs × 2 radii: ~1 min on 2 shared cores
    cen.set_defaults(func=cmd_center)

    from smoothgen import generate_cli

    generate_cli.add_parser(sub)
    from smoothgen import serve_cli, verify_cli

    serve_cli.add_parser(sub)
    verify_cli.add_parser(sub)
    return parser


def _check_common(args: argparse.Namespace) -> None:
    """The options every command shares, checked before anything is loaded or computed."""
    from smoothgen.validate import check_count, check_device

    check_count(args.batch_size, "--batch-size")
    check_device(args.device, "--device")
    from smoothgen.distributed import check_options

    if getattr(args, "ray", None) is None:
        for option in ("--ray-workers", "--ray-cpus-per-worker", "--ray-gpus-per-worker"):
            if option in getattr(args, "explicit_options", set()):
                raise InvalidParameterError(f"{option} applies only with --ray")
    check_options(_ray_options(args))  # --ray: Ray installed, the cluster reachable (before anything is loaded)
    for option in ("model", "ddpm"):
        spec = getattr(args, option, None)
        if option == "model" and getattr(args, "command", None) == "center" and spec in pretrained_registry().MODELS:
            continue
        if spec is not None and spec != "embedded" and not spec.startswith("diffusers:"):
            check_model_spec(spec, f"--{option}")


def _ray_options(args: argparse.Namespace) -> RayOptions | None:
    """--ray and its worker options as the driver takes them (None: a local run)."""
    if getattr(args, "ray", None) is None:
        return None
    return RayOptions(args.ray, args.ray_workers, args.ray_cpus_per_worker, args.ray_gpus_per_worker)


def _pretrained_defaults_help() -> str:
    """The pretrained models' own `center` defaults, as --eps-in's help states them (from smoothgen.pretrained,
    which imports nothing heavy)."""
    parts = []
    for name, spec in pretrained_registry().MODELS.items():
        d = spec.defaults
        unit = ("face" if spec.kind == "boxes" else "line") + ("s" if d["num"] != 1 else "")
        parts.append(f"{name}: {d['num']} {unit} at eps_in {','.join(f'{e:g}' for e in d['eps_in'])}, h {d['h']:g}, "
                     f"n {d['n']}, m {d['m']}, delta {d['delta']:g}")
    return "; ".join(parts)


def _check_output_file(path: str, option: str, results: str, replace: bool = False) -> None:
    """A second output file (--tsv) is checked before the run, not after hours of certification; like the
    results file, an existing one is replaced only with --overwrite (or --resume, which continues its run)."""
    target = Path(path)
    if target.is_dir():
        raise InvalidParameterError(f"{option} {path} is a directory")
    if target.exists() and not replace:
        raise ResultsFileError(f"{option} {path} exists; pass --overwrite to replace it (or --resume to continue its run)")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InvalidParameterError(f"{option} {path}: {parent} is a file, not a directory")
            break
    if target.resolve() == Path(results).resolve():
        raise InvalidParameterError(f"{option} {path} is the results file --out: it would replace the records")


def _load_inputs(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The selected slice of inputs and labels, and a name of the data for the records."""
    if args.data is None:
        from smoothgen.models import load_digits_split

        split = load_digits_split()
        x, y, name = split.x_test, split.y_test, "digits-test"
    elif getattr(args, "command", None) == "center" and args.data in pretrained_registry().DATASETS:
        x, _ = pretrained_registry().load_dataset(args.data)
        y, name = None, args.data
    else:
        from smoothgen.loading import load_data

        x, y = load_data(args.data)
        name = str(Path(args.data).resolve())
    if args.start < 0 or args.num < 1:
        raise InvalidParameterError(f"--start must be >= 0 and --num >= 1, got {args.start} and {args.num}")
    if args.start >= len(x):
        raise InvalidParameterError(f"--start {args.start} is past the end of the data ({len(x)} inputs)")
    stop = min(len(x), args.start + args.num)
    return x[args.start : stop], (None if y is None else y[args.start : stop]), name


def _check_labels(y: np.ndarray | None, num_classes: int) -> None:
    """Labels are classes of the model: one outside [0, num_classes) would make every figure wrong (a label
    of −1 would even count abstentions as correct)."""
    if y is None or len(y) == 0:
        return
    bad = (y < 0) | (y >= num_classes)
    if bool(bad.any()):
        i = int(np.flatnonzero(bad)[0])
        raise InvalidInputError(f"label {int(y[i])} of input {i} (of the selected inputs) is not a class of the model: "
                                f"labels must lie in [0, {num_classes}); {int(bad.sum())} labels are outside")


#: A run whose estimated duration exceeds this many seconds says so on stderr once its first items are done.
ESTIMATE_THRESHOLD_S = 120.0


def _estimate_seconds(durations: list[float], total: int) -> float:
    """The whole run's duration from the items done: the first item as it took (it pays the warm-up: model
    loading, compilation, runtime selection) plus the running median of the later ones for every other item."""
    if len(durations) < 2:
        return durations[0] * total if durations else 0.0
    return durations[0] + statistics.median(durations[1:]) * (total - 1)


def _estimate_message(durations: list[float], total: int, unit: str, revised: bool = False) -> str | None:
    """The line announcing a long run, or None when the run is short or (almost) done."""
    if total <= len(durations):
        return None
    estimate = _estimate_seconds(durations, total)
    if estimate <= ESTIMATE_THRESHOLD_S:
        return None
    span = f"~{estimate / 60:.0f} min" if estimate < 90 * 60 else f"~{estimate / 3600:.1f} h"
    per_item = statistics.median(durations[1:]) if len(durations) > 1 else durations[0]
    return (f"{'revised estimate' if revised else 'estimated time'}: {span} for {total} {unit}s (median {per_item:.1f} s "
            f"per {unit} after the first, which took {durations[0]:.1f} s; whole records are kept if you stop it, "
            "--resume continues)")


def _with_estimate(items, args, total: int, unit: str, clock=time.perf_counter):
    """Yield the items of a progress bar; once two are done, print how long all of them will take when that is
    over ESTIMATE_THRESHOLD_S (`_estimate_seconds`: the first item's time, then the running median), and print a
    revised estimate when, at 4, 8, 16, ... items, the running median moves it by more than a factor of 2 (on
    stderr, not with --no-progress)."""
    durations: list[float] = []
    printed: float | None = None
    last = None
    for k, item in enumerate(items):
        now = clock()
        if last is not None:
            durations.append(now - last)
        last = now
        if not args.no_progress and k >= 2 and k & (k - 1) == 0:  # 2, 4, 8, ... items done
            estimate = _estimate_seconds(durations, total)
            if printed is None or not printed / 2 <= estimate <= printed * 2:
                message = _estimate_message(durations, total, unit, revised=printed is not None)
                if message is not None:
                    from tqdm import tqdm

                    tqdm.write(message, file=sys.stderr)
                    printed = estimate
        yield item


def _check_denoiser_options(args: argparse.Namespace) -> None:
    """Options of the purifier only make sense with the --denoiser that uses them."""
    from smoothgen.validate import check_count, check_positive

    if args.denoiser == "none":
        args.denoiser = None
    given = getattr(args, "explicit_options", set())
    used_with = {"--ddpm": ("dds", "diffsmooth"), "--classifier-sigma": ("dds", "diffsmooth"),
                 "--local-samples": ("diffsmooth",), "--local-sigma": ("diffsmooth",)}
    for option, denoisers in used_with.items():
        if option in given and args.denoiser not in denoisers:
            raise InvalidParameterError(f"{option} applies only with --denoiser {' or '.join(denoisers)}")
    if args.denoiser == "diffsmooth":
        check_count(args.local_samples, "--local-samples")
        check_positive(args.local_sigma, "--local-sigma")
        # DiffSmooth draws its local noise from its own seeded stream, reseeded per input; a compiled or
        # exported graph would not keep that stream (an ONNX export would freeze one noise draw).
        if getattr(args, "backend", "auto") not in ("auto", "eager"):
            raise InvalidParameterError(f"--denoiser diffsmooth runs on --backend eager only, got --backend {args.backend}")
        args.backend = "eager"
    if args.classifier_sigma is None:
        args.classifier_sigma = default_classifier_sigma(args)
    check_positive(args.classifier_sigma, "--classifier-sigma", allow_zero=True)
    if args.model is not None and "--classifier-sigma" in given:
        raise InvalidParameterError("--classifier-sigma picks an embedded classifier; it cannot be combined with --model")


def cmd_certify(args: argparse.Namespace) -> int:
    from smoothgen.classify import SmoothedClassifier
    from smoothgen.validate import check_alpha, check_count, check_sigma

    _check_common(args)
    check_sigma(args.sigma)
    check_alpha(args.alpha)
    check_count(args.n0, "--n0")
    check_count(args.n, "--n")
    if args.num_classes is not None:
        check_count(args.num_classes, "--num-classes", minimum=2)
    if not args.radii or not all(math.isfinite(r) and r >= 0 for r in args.radii):
        raise InvalidParameterError(f"--radii must be one or more finite radii >= 0, got {args.radii}")
    if args.tsv is not None:
        _check_output_file(args.tsv, "--tsv", args.out, replace=args.overwrite or args.resume)
    explicit = getattr(args, "explicit_options", set())
    for option in ("--looks", "--max-samples", "--check-every"):
        if option in explicit and args.target_radius is None:
            raise InvalidParameterError(f"{option} applies only with --target-radius")
    if args.sequential is not None and args.target_radius is None:
        raise InvalidParameterError("--sequential applies only with --target-radius")
    if args.sequential is None:
        args.sequential = "looks" if "--looks" in explicit else DEFAULT_SEQUENTIAL
    if args.sequential == "betting" and "--looks" in explicit:
        raise InvalidParameterError("--looks applies only with --sequential looks (betting checks every --check-every samples)")
    if args.sequential == "looks" and explicit & {"--max-samples", "--check-every"}:
        raise InvalidParameterError("--max-samples and --check-every apply only with --sequential betting")
    _check_denoiser_options(args)
    if args.target_radius is not None:
        from smoothgen.validate import check_positive

        check_positive(args.target_radius, "--target-radius")
        if not args.looks or any(k < 1 for k in args.looks) or any(b <= a for a, b in zip(args.looks, args.looks[1:])):
            raise InvalidParameterError(f"--looks must be increasing positive integers, got {args.looks}")
        check_count(args.max_samples, "--max-samples")
        check_count(args.check_every, "--check-every")
    job = CertifyJob.from_options(args)  # checked above: what the runtime, the records and --ray's workers take
    x, y, data_name = _load_inputs(args)
    runtime, model_name = classifier_runtime(job, x)
    logits = probe(runtime, x[0])
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != 1:
        raise ModelOutputError(f"a classifier must return logits [batch, classes]; got {getattr(logits, 'shape', type(logits).__name__)} for a batch of 1")
    num_classes = args.num_classes or int(logits.shape[1])
    if logits.shape[1] != num_classes:
        raise ModelOutputError(f"model returns {logits.shape[1]} logits, --num-classes is {num_classes}")
    if not bool(torch.isfinite(logits).all()):
        raise ModelOutputError("model returned NaN or Inf logits on a clean input")
    _check_labels(y, num_classes)
    smoothed = SmoothedClassifier(runtime, num_classes, job.sigma, batch_size=job.batch_size, input_shape=x.shape[1:])

    run = certify_run(sigma=job.sigma, n0=job.n0, n=job.n, alpha=job.alpha, seed=job.seed, model=model_name,
                      data=data_name, backend=runtime.backend, dtype=dtype_name(runtime), target_radius=job.target_radius,
                      sequential=job.sequential, looks=job.looks, max_samples=job.max_samples, check_every=job.check_every)
    if args.denoiser is not None:
        run["denoiser"] = args.denoiser
        if args.denoiser == "diffsmooth":
            run.update(local_samples=args.local_samples, local_sigma=args.local_sigma)
    reseed = getattr(getattr(runtime, "model", None), "reseed", None)  # DiffSmooth's local-noise stream
    with ResultsFile(args.out, run, key=("idx",), resume=args.resume, overwrite=args.overwrite) as results:
        return _certify_inputs(args, job, smoothed, results, x, y, reseed)


def _certify_inputs(args, job: CertifyJob, smoothed, results, x, y, reseed) -> int:
    done = results.done()
    todo = [i for i in range(len(x)) if (args.start + i,) not in done]
    if args.ray is not None:  # the same records, computed by Ray workers (smoothgen.distributed)
        from smoothgen.distributed import run_on_ray

        run_on_ray(job, _ray_options(args), results, "certify",
                   [(args.start + i, x[i], None if y is None else int(y[i])) for i in todo], x[:1], smoothed.runtime.backend,
                   num_classes=smoothed.num_classes, progress=not args.no_progress)
    else:
        compute = certify_unit(job, smoothed, reseed)
        for i in _with_estimate(progress_bar(todo, args.no_progress, len(todo), "certify"), args, len(todo), "input"):
            results.append(compute(args.start + i, x[i], None if y is None else int(y[i])))
    records = sorted(results.records, key=lambda r: r["idx"])
    _print_certify_summary(records, args.radii if args.target_radius is None else [args.target_radius])
    print(f"mean estimation samples per input: {statistics.fmean(r['samples'] for r in records):.0f}")
    if args.tsv:
        try:
            write_cohen_tsv(records, args.tsv)
        except OSError as exc:
            raise ResultsFileError(f"cannot write --tsv {args.tsv}: {exc.strerror or exc} (the records are in {args.out})") from exc
    print(f"wrote {len(records)} records to {args.out}" + (f" and {args.tsv}" if args.tsv else ""))
    return 0


def _print_certify_summary(records: list[dict[str, Any]], radii: Sequence[float]) -> None:
    n = len(records)
    labelled = [r for r in records if r["correct"] is not None]
    mean_time = statistics.fmean(r["time"] for r in records)
    if any("decision" in r for r in records):  # sequential: three outcomes, none of them an abstention
        shares = {d: sum(r.get("decision") == d for r in records) / n for d in ("certified", "rejected", "undecided")}
        print(f"inputs: {n}   certified: {shares['certified']:.1%}   rejected (proved not certifiable at the radius): "
              f"{shares['rejected']:.1%}   undecided: {shares['undecided']:.1%}   time per input: {mean_time:.3f} s")
    else:
        abstain = sum(r["predict"] == ABSTAIN for r in records) / n
        print(f"inputs: {n}   abstained: {abstain:.1%}   time per input: {mean_time:.3f} s")
    if labelled:
        print("radius  certified accuracy")
        for radius in radii:
            acc = sum(bool(r["correct"]) and r["radius"] >= radius for r in labelled) / len(labelled)
            print(f"{radius:6.2f}  {acc:.3f}")
    else:
        print("no labels: certified accuracy not computed")


def cmd_center(args: argparse.Namespace) -> int:
    from smoothgen.metrics import get_metric
    from smoothgen.validate import check_alpha, check_count, check_positive

    pretrained = pretrained_spec(args)
    if pretrained is not None:
        check_pretrained_options(args)
    # Options left out take the pretrained model's defaults (sized for minutes on 2 CPU cores), else center's own.
    own = dict(num=5, eps_in=list(CenterJob.eps_in), h=CenterJob.h, n=CenterJob.n, m=CenterJob.m, delta=CenterJob.delta)
    for option, value in {**own, **(pretrained.defaults if pretrained is not None else {})}.items():
        if getattr(args, option) is None:
            setattr(args, option, value)
    _check_common(args)
    if pretrained is not None and args.data is None:
        args.data = pretrained.data
    if args.metric is None:
        args.metric = pretrained.metric if pretrained is not None else CenterJob.metric
    if args.png is not None:
        if pretrained is None:
            raise InvalidParameterError("--png draws boxes or strings: it needs a pretrained --model (mtcnn, opencv-haar, rapidocr)")
        if not args.png.lower().endswith(".png"):
            raise InvalidParameterError(f"--png must name a .png file, got {args.png!r}")
        _check_output_file(args.png, "--png", args.out, replace=args.overwrite or args.resume)
    metric = get_metric(args.metric)
    args.metric = metric.name  # the --ray workers look it up again
    check_positive(args.h, "--h")
    if not args.eps_in:
        raise InvalidParameterError("--eps-in needs at least one radius")
    for eps in args.eps_in:
        check_positive(eps, "--eps-in")
    check_count(args.n, "--n")
    check_count(args.m, "--m")
    check_count(args.n_candidates, "--n-candidates", minimum=0)
    n_candidates = args.n_candidates or None
    check_alpha(args.alpha1, "--alpha1")
    check_alpha(args.alpha2, "--alpha2")
    if args.alpha1 + args.alpha2 >= 1:
        raise InvalidParameterError(f"--alpha1 + --alpha2 must be < 1 (a certificate holds with probability "
                                    f"1 - alpha1 - alpha2 - ...), got {args.alpha1} + {args.alpha2}")
    if not (0 < args.delta < 0.5):
        raise InvalidParameterError(f"--delta must lie strictly between 0 and 1/2, got {args.delta}")
    job = CenterJob.from_options(args)  # checked above: what the runtime, the records and --ray's workers take
    x, _, data_name = _load_inputs(args)
    runtime, model_name = center_runtime(job, x)
    clean = probe(runtime, x[0])
    metric.distances(clean, clean)  # a metric that cannot handle these outputs fails here, before any record

    run = {"backend": runtime.backend, "dtype": dtype_name(runtime), "metric": metric.name, "h": args.h, "n": args.n, "m": args.m, "delta": args.delta, "alpha1": args.alpha1,
           "alpha2": args.alpha2, "n_candidates": n_candidates, "seed": args.seed, "model": model_name, "data": data_name}
    with ResultsFile(args.out, run, key=("idx", "eps_in"), resume=args.resume, overwrite=args.overwrite) as results:
        return _center_inputs(args, job, results, x, runtime, metric, run)


def _center_inputs(args, job: CenterJob, results, x, runtime, metric, run) -> int:
    done = results.done()
    todo = [(i, eps) for i in range(len(x)) for eps in args.eps_in if (args.start + i, eps) not in done]
    if args.ray is not None:  # the same records, computed by Ray workers (smoothgen.distributed)
        from smoothgen.distributed import run_on_ray

        run_on_ray(job, _ray_options(args), results, "center", [(args.start + i, x[i], eps) for i, eps in todo], x[:1],
                   runtime.backend, run_fields=tuple(run), progress=not args.no_progress)
    else:
        compute = center_unit(job, runtime, metric, x.shape[1:], tuple(run))
        bar = progress_bar(todo, args.no_progress, len(todo), "center", unit=" certificate")
        for i, eps in _with_estimate(bar, args, len(todo), "certificate"):  # (input, eps_in) pairs
            results.append(compute(args.start + i, x[i], eps))
    _print_center_summary(results.records, args.eps_in)
    pretrained = pretrained_spec(args)
    if pretrained is not None:  # the certificates in the output's own words, and the picture of them
        from smoothgen import center_report

        center_report.print_readable(results.records, pretrained.kind)
        if args.png is not None:
            center_report.write_png(args.png, results.records, x, args.start, pretrained.kind, args.eps_in[0])
    # The embedded autoencoder ends in a sigmoid: its outputs lie in [0, 1], which bounds most metrics' diameter.
    _print_center_scale(results.records, runtime, metric, x, output_range=(0.0, 1.0) if args.model is None else None)
    print(f"wrote {len(results.records)} records to {args.out}" + (f" and {args.png}" if args.png else ""))
    return 0


def _print_center_scale(records: list[dict[str, Any]], runtime, metric, x: np.ndarray, most: int = 100,
                        output_range: tuple[float, float] | None = None) -> None:
    """What an eps_out means here: the metric's diameter on this output space (when the outputs are known to
    lie in `output_range`, or the metric is bounded anyway), the distances between the clean outputs of
    different inputs (the first `most`), and how many certificates are vacuous: eps_out at least the
    diameter (it says nothing at all) or at least the closest pair (the ball reaches another input's output)."""
    from smoothgen.metrics import diameter

    ok = [r for r in records if not r["abstained"]]
    with torch.no_grad():
        outputs = runtime.run(torch.from_numpy(x[:most]).to(runtime.device))
    shape = tuple(outputs.shape[1:]) if isinstance(outputs, torch.Tensor) else None
    size = None if shape is None else diameter(metric, shape, output_range)
    if size is not None:
        where = f"two outputs in [{output_range[0]:g}, {output_range[1]:g}]^{tuple(shape)}" if output_range else "any two outputs"
        reach = sum(r["eps_out"] >= size for r in ok)
        print(f"scale: the largest possible {metric.name} distance between {where} is {size:.4g} (the diameter); "
              f"{reach} of {len(ok)} certificates reach it" + (" (vacuous: they allow any output)" if reach else ""))
    if len(x) < 2:
        return
    distances = metric.distances(outputs, outputs)
    distances = distances.detach().cpu().double() if isinstance(distances, torch.Tensor) else torch.as_tensor(distances, dtype=torch.float64)
    count = distances.shape[0]
    pairs = distances[~torch.eye(count, dtype=torch.bool)]
    typical, closest = float(pairs.median()), float(pairs.min())
    vacuous = sum(r["eps_out"] >= closest for r in ok)
    print(f"scale: the clean outputs of {count} different inputs lie {typical:.4g} apart (median; closest pair "
          f"{closest:.4g}) in {metric.name}; {vacuous} of {len(ok)} certificates are vacuous at that scale "
          f"(eps_out >= {closest:.4g}: the certified ball reaches another input's output)")


def _print_center_summary(records: list[dict[str, Any]], eps_values: Sequence[float]) -> None:
    print("eps_in  sigma   certified  median eps_out  median smoothing error")
    for eps in eps_values:
        rows = [r for r in records if r["eps_in"] == eps]
        if not rows:
            continue
        ok = [r for r in rows if not r["abstained"]]
        eps_out = f"{statistics.median(r['eps_out'] for r in ok):14.4f}" if ok else f"{'-':>14}"
        err = statistics.median(r["smoothing_error"] for r in rows)
        print(f"{eps:6.2f}  {rows[0]['sigma']:.3f}  {len(ok):4d}/{len(rows):<4d}  {eps_out}  {err:22.4f}")
    failure = max((r.get("failure_probability", r["alpha1"] + r["alpha2"]) for r in records), default=None)
    if failure is not None:
        print(f"each certificate holds with probability >= {1.0 - failure:.6g} (alpha1 + alpha2 + candidate miss)")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run stops between whole records."""


#: Set by the SIGTERM handler: the exit code is 143 even where a library re-raised the interruption as a
#: plain KeyboardInterrupt (Ray's core worker does, for an exception raised in a handler during its calls).
_sigterm_received = threading.Event()


def _on_sigterm(signum, frame) -> None:
    _sigterm_received.set()
    raise _Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for module in getattr(args, "run_imports", RUN_IMPORTS):  # still start-up: a Ctrl-C in these imports is one line (smoothgen._entry)
        __import__(module)  # as an import statement does (-X importtime reports it; importlib.import_module is not)
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        _sigterm_received.clear()
    previous: dict[int, Any] = {}
    try:
        if in_main_thread:
            # From here on a signal stops the run between whole records. Until here (imports, parsing)
            # the console script's start-up handler (smoothgen._entry) exits at once with one line.
            if signal.getsignal(signal.SIGINT) is stop_during_startup:
                previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
            previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _on_sigterm)
        return args.func(args)
    except SmoothgenError as exc:
        print(f"smoothgen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if hasattr(args, "resume"):  # certify, center: results files of whole records
            print(f"smoothgen {args.command}: interrupted; whole records are kept, rerun with --resume", file=sys.stderr)
        elif args.command == "generate":  # its JSON and PNG are written whole at the end, or not at all
            print("smoothgen generate: interrupted; nothing was written", file=sys.stderr)
        else:  # serve (while it starts), verify: no results file to resume
            print(f"smoothgen {args.command}: interrupted", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) or _sigterm_received.is_set() else 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
