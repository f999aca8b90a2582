"""Dataset certification on a Ray cluster: `smoothgen certify --ray [ADDRESS]` and `smoothgen center --ray`.

The driver (the `smoothgen` process) loads and checks the model and data as in a local run, then sends
one Ray task per unit of work (an input, or an (input, eps_in) pair) and appends each record to the
results file as it arrives: the file is the same resumable JSONL as a local run's, and a run started with
`--ray` can be resumed with or without it. Records equal a local run's apart from `time` and `worker`
(`smoothgen.jobs.TIMING_FIELDS`): each input keeps its own random stream (seed, idx) wherever it runs.

```
driver: cli.cmd_certify -> ResultsFile -> run_on_ray        ray.put(Job) once; <= window tasks in flight
   task _unit(job, idx, x, extra) on a worker process:  _worker(job) (built once per process and run)
        -> jobs.certify_record / jobs.center_record     the same function the local loop calls
   driver: ray.wait -> ResultsFile.append(record)       first record of a unit only; in arrival order
```
Fault tolerance is Ray's: a task lost with its worker or node is retried elsewhere (`MAX_RETRIES`; then
the driver resubmits it, `MAX_RESUBMITS`), and the driver writes the first record of each unit only, so
nothing is lost or written twice. A driver that dies
leaves whole records behind; `--resume` continues from them (Ray ends the dead driver's tasks).

Workers rebuild the runtime from the run's typed job (`smoothgen.job_specs.CertifyJob` / `CenterJob`, built
by the CLI from its options) with the application layer's loaders (`smoothgen.base_models`), once per worker
process and run (a Ray worker process runs one task after another; worker processes are not shared
between runs).
A model or DDPM file given as a path travels through the object store: a worker whose node has the same
file at the same path (a local cluster, a shared file system) loads it there; any other writes the bytes
to a private temporary file, loads it and removes it.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from smoothgen.errors import SmoothgenError, first_line
from smoothgen.job_specs import CenterJob, CertifyJob, RayOptions
from smoothgen.ray_util import check_reachable, init_ray

#: What to install for `--ray` (the extra that also serves `smoothgen serve`).
RAY_EXTRA = "pip install 'smoothgen[serve]'"
#: The value of `--ray` without an address: start a local Ray instance for this run, and stop it after.
LOCAL = "local"
#: Retries of a task whose worker process or node died (Ray's; an error the task raised itself is not retried).
MAX_RETRIES = 3
#: Resubmissions by the driver of a unit whose task Ray gave up on or could not retry (see _result).
MAX_RESUBMITS = 2


class DistributedError(SmoothgenError, RuntimeError):
    """Ray is missing, the cluster cannot be reached or cannot run a worker, or a unit of work was lost
    more often than it may be retried."""


def import_ray():
    """The `ray` module, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError as exc:
        raise DistributedError(f"--ray needs Ray, which is not installed: {RAY_EXTRA}") from exc
    return ray


def check_options(ray: RayOptions | None) -> None:
    """The --ray options, checked before anything is loaded: Ray importable, worker resources possible,
    and a cluster address that answers (so that a wrong one is one line at once, not a hang)."""
    if ray is None:
        return
    import_ray()
    ray.check()
    if ray.address != LOCAL:
        check_reachable(ray.address)


# ---------------------------------------------------------------------------------------------------
# What the driver sends: one Job per run (put in the object store once), one small task per unit.


@dataclass
class ShippedFile:
    """A model file of the driver: its path there, its digest (`smoothgen.trust.file_digest`: its bytes and
    those of the external-data files an ONNX model names), and its bytes in the object store (in a list, so
    that Ray hands the task the references, and a worker fetches the bytes only if it needs them): the file's
    first, then each of `extras` (paths relative to the file's folder, as the model names them)."""

    path: str
    digest: str
    data: list
    extras: list = field(default_factory=list)


@dataclass
class Job:
    """Everything a worker needs to rebuild the driver's runtime and compute one record."""

    token: str
    kind: str  # "certify" or "center"
    spec: CertifyJob | CenterJob  # checked by the driver; its backend = the one the driver resolved
    example: np.ndarray  # the first input, batched [1, ...]: what the loaders check the data against
    threads: int
    files: dict[str, ShippedFile] = field(default_factory=dict)
    num_classes: int | None = None  # certify
    run_fields: tuple[str, ...] = ()  # center: fields the results file adds (left out of the records)


def _digest(path: Path) -> str | None:
    from smoothgen.trust import file_digest

    try:
        return file_digest(path)
    except SmoothgenError:  # not there, or not readable, on this node
        return None


def _ship_files(ray, spec: CertifyJob | CenterJob) -> dict[str, ShippedFile]:
    """The model files named by --model / --ddpm, put in the object store for workers on other nodes, with
    the external-data files an ONNX model names (torch's exporter writes its weights to model.onnx.data)."""
    from smoothgen.trust import file_digest, onnx_external_files

    shipped = {}
    for option in ("model", "ddpm"):
        name = getattr(spec, option, None)
        if name is None or name == "embedded" or name.startswith("diffusers:") or not Path(name).is_file():
            continue  # embedded, a factory (package.module:factory) or a diffusers folder: not a file to send
        path = Path(name)
        extras = onnx_external_files(path) if path.suffix.lower() == ".onnx" else []
        refs = [ray.put(path.read_bytes()), *(ray.put(extra.read_bytes()) for extra in extras)]
        shipped[option] = ShippedFile(name, file_digest(path), refs, [extra.relative_to(path.parent).as_posix() for extra in extras])
    return shipped


# ---------------------------------------------------------------------------------------------------
# The worker side.

_WORKER: dict[str, Callable] = {}  # job token -> compute(idx, x, extra) of this process (one run at a time)


def _worker(job: Job) -> tuple[Callable, bool]:
    """This process's compute function for the job, built on its first unit; and whether it was built now."""
    compute = _WORKER.get(job.token)
    if compute is not None:
        return compute, False
    _WORKER.clear()  # a previous run's runtime: this process now serves another run
    compute = _build(job)
    _WORKER[job.token] = compute
    return compute, True


def _build(job: Job) -> Callable:
    import torch

    from smoothgen import base_models
    from smoothgen.validate import check_device

    torch.set_num_threads(job.threads)
    job = copy.copy(job)
    job.example = np.array(job.example)  # writable (see _unit)
    spec = job.spec
    check_device(spec.device, "--device")  # a worker without the device: one line, not a torch error
    scratch = None
    try:
        for option, shipped in job.files.items():
            if _digest(Path(shipped.path)) != shipped.digest:  # not these files at this path on this node
                import ray

                scratch = scratch or tempfile.mkdtemp(prefix="smoothgen-ray-")
                local = Path(scratch) / option / Path(shipped.path).name  # the suffix tells the loader the format
                local.parent.mkdir()
                local.write_bytes(ray.get(shipped.data[0]))
                for name, ref in zip(shipped.extras, shipped.data[1:]):  # beside it, where the model names them
                    (local.parent / name).parent.mkdir(parents=True, exist_ok=True)
                    (local.parent / name).write_bytes(ray.get(ref))
                spec = dataclasses.replace(spec, **{option: str(local)})
        if job.kind == "certify":
            return _build_certify(job, spec, base_models)
        return _build_center(job, spec, base_models)
    finally:
        if scratch is not None:  # every loader reads the whole file when it loads it
            shutil.rmtree(scratch, ignore_errors=True)


def _build_certify(job: Job, spec: CertifyJob, base_models) -> Callable:
    """The runtime and per-input records of `smoothgen certify`, from the helpers it uses (`base_models`)."""
    from smoothgen.classify import SmoothedClassifier

    x = job.example
    runtime, _ = base_models.classifier_runtime(spec, x)
    smoothed = SmoothedClassifier(runtime, job.num_classes, spec.sigma, batch_size=spec.batch_size, input_shape=x.shape[1:])
    return base_models.certify_unit(spec, smoothed, getattr(getattr(runtime, "model", None), "reseed", None))


def _build_center(job: Job, spec: CenterJob, base_models) -> Callable:
    """The runtime and per-pair records of `smoothgen center`, from the helpers it uses (`base_models`)."""
    from smoothgen.metrics import get_metric

    x = job.example
    runtime, _ = base_models.center_runtime(spec, x)
    return base_models.center_unit(spec, runtime, get_metric(spec.metric), x.shape[1:], job.run_fields)


def worker_name() -> str:
    """Where a record was computed: the Ray node (IP and the first 8 hex digits of its id) and the process."""
    import ray

    context = ray.get_runtime_context()
    return f"{ray.util.get_node_ip_address()}/{context.get_node_id()[:8]}/{os.getpid()}"


def _unit(job: Job, idx: int, x: np.ndarray, extra: Any) -> tuple[dict[str, Any], bool]:
    """One Ray task: the record of one unit of work, and whether this process built its runtime for it."""
    compute, built = _worker(job)
    record = compute(idx, np.array(x), extra)  # a writable copy: Ray hands arrays over read-only (torch warns)
    record["worker"] = worker_name()
    return record, built


# ---------------------------------------------------------------------------------------------------
# The driver side.


@contextlib.contextmanager
def connected(address: str, num_cpus: int | None = None):
    """Ray started (address LOCAL: a local instance, stopped on exit) or joined (disconnected on exit).

    ray.init installs its own SIGTERM handler (exit at once); the CLI's handler (stop between whole
    records) is put back."""
    ray = import_ray()
    local = address == LOCAL
    options: dict[str, Any] = {"logging_level": logging.WARNING}
    if local:
        options.update(address="local", include_dashboard=False, num_cpus=num_cpus)
    else:
        options["address"] = address
    try:
        init_ray(ray, local, **options)
    except Exception as exc:  # noqa: BLE001 - ray.init raises ConnectionError, RuntimeError, ValueError, ...
        what = "start a local Ray instance" if local else f"connect to the Ray cluster at {address}"
        hint = ""
        if not local and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            hint = (" (a cluster with token authentication, the default of `ray start --head`, also needs "
                    "RAY_AUTH_MODE=token here and its token in ~/.ray/auth_token or RAY_AUTH_TOKEN)")
        raise DistributedError(f"cannot {what}: {first_line(exc)}{hint}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()  # a local instance stops; a joined cluster keeps running


class _HeldSignals:
    """SIGINT and SIGTERM held while the driver waits on Ray, then handed to the handler installed before.

    A handler that raises inside `ray.wait` or `ray.get` does not reach the caller as raised: Ray's core
    worker turns any exception of a signal handler into a plain KeyboardInterrupt (so the CLI's SIGTERM,
    exit 143, became Ctrl-C's 130), and a call cut off that way can leave the core worker in a state its
    checks abort on at shutdown. Here a signal is only recorded; `check()`, called between Ray calls,
    puts the previous handlers back and runs the one of the first signal received (the CLI's: raise, so the
    run stops between whole records). Outside the main thread (no handlers there) it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.previous: dict[int, Any] = {}
        self.received: int | None = None

    def __enter__(self) -> "_HeldSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._record)
        return self

    def _record(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum

    def _restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    def check(self) -> None:
        """Deliver a held signal to its previous handler (which may raise), once."""
        if self.received is None or not self.previous:
            return
        signum, handler = self.received, self.previous.get(self.received)
        self._restore()
        if callable(handler):
            handler(signum, None)
        elif signum == signal.SIGINT and handler != signal.SIG_IGN:
            raise KeyboardInterrupt
        elif handler == signal.SIG_DFL:
            os.kill(os.getpid(), signum)  # the default action (terminate), as if never held

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.check()  # a signal after the last check: not lost
        self._restore()


def _worker_slots(ray, cpus: float, gpus: float) -> int:
    """How many workers of (cpus, gpus) the cluster's live nodes can run at once."""
    slots, largest = 0, {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        have = node.get("Resources", {})
        fit = math.floor(have.get("CPU", 0.0) / cpus + 1e-9)
        if gpus > 0:
            fit = min(fit, math.floor(have.get("GPU", 0.0) / gpus + 1e-9))
        slots += fit
        for name in ("CPU", "GPU"):
            largest[name] = max(largest.get(name, 0.0), have.get(name, 0.0))
    if slots == 0:
        need = f"{cpus:g} CPU" + (f" and {gpus:g} GPU" if gpus else "")
        has = ", ".join(f"{v:g} {k}" for k, v in largest.items()) or "no resources"
        raise DistributedError(f"no node of the Ray cluster can run a worker of {need} (the largest node has {has}); "
                               "lower --ray-cpus-per-worker / --ray-gpus-per-worker, or add nodes")
    return slots


def run_on_ray(
    spec: CertifyJob | CenterJob,
    options: RayOptions,
    results,
    kind: str,
    units: Sequence[tuple[int, np.ndarray, Any]],
    example: np.ndarray,
    backend: str,
    num_classes: int | None = None,
    run_fields: Iterable[str] = (),
    progress: bool = True,
) -> dict[str, int]:
    """Compute `units` on Ray and append their records to `results` as they arrive.

    Args:
        spec: the run's checked job (the workers rebuild the runtime from it).
        options: where it runs (the cluster, the workers' count and resources).
        results: the open ResultsFile; units whose key it already holds are never written again.
        kind: "certify" or "center".
        units: (idx, input, label or eps_in) per unit of work still to do.
        example: the first input, batched [1, ...] (the loaders check the data shape on it).
        backend: the runtime backend the driver resolved; the workers use exactly this one.
        num_classes: certify: the model's class count, as the driver read it.
        run_fields: center: the run's fields (the results file adds them to each record).
        progress: whether to show a progress bar on stderr.

    Returns:
        {"records": records written, "workers": distinct workers, "builds": runtimes built on workers}.

    Raises:
        SmoothgenError: the first one a worker raised (the same one-line error as a local run), or a
            DistributedError when the cluster cannot run the job.
    """
    from smoothgen.base_models import progress_bar

    cpus, gpus = float(options.cpus_per_worker), float(options.gpus_per_worker)
    stats = {"records": 0, "workers": 0, "builds": 0}
    if not units:
        return stats
    key = lambda record: tuple(record[name] for name in results.key)  # noqa: E731
    local_cpus = None
    if options.address == LOCAL and options.workers is not None:
        local_cpus = max(1, math.ceil(options.workers * cpus))
    with connected(options.address, num_cpus=local_cpus) as ray:
        slots = _worker_slots(ray, cpus, gpus)
        # "auto" may resolve otherwise on another machine: the records name the driver's backend.
        job = Job(token=uuid.uuid4().hex, kind=kind, spec=dataclasses.replace(spec, backend=backend),
                  example=np.ascontiguousarray(example), threads=max(1, int(cpus)), files=_ship_files(ray, spec),
                  num_classes=num_classes,
                  run_fields=tuple(run_fields))
        job_ref = ray.put(job)
        task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_calls=0, max_retries=MAX_RETRIES, retry_exceptions=False)(_unit)
        done = set(results.done())
        workers: set[str] = set()
        pending: dict[Any, tuple] = {}
        queue = iter(units)
        again: list[tuple] = []  # units whose task was lost in a way Ray does not retry (see _result)
        lost: dict[tuple, int] = {}  # (idx, label or eps_in) -> times resubmitted
        checked = time.monotonic()
        bar = progress_bar(None, not progress, len(units), kind, unit="input" if kind == "certify" else " certificate")
        held = _HeldSignals()
        try:
            with held:
                while True:
                    held.check()  # Ctrl-C or SIGTERM: stop here, between Ray calls and whole records
                    if options.workers is None and time.monotonic() - checked > 15.0:  # nodes come and go
                        with contextlib.suppress(DistributedError):
                            slots = _worker_slots(ray, cpus, gpus)
                        checked = time.monotonic()
                    window = options.workers or 2 * slots  # two per worker: the next one is there when one ends
                    while len(pending) < window:
                        unit = again.pop() if again else next(queue, None)
                        if unit is None:
                            break
                        idx, x, extra = unit
                        pending[task.remote(job_ref, idx, x, extra)] = unit
                    if not pending:
                        break
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)  # a held signal waits <= 1 s
                    for ref in ready:
                        unit = pending.pop(ref)
                        result = _result(ray, ref, unit, lost.get((unit[0], unit[2]), 0))
                        if result is None:
                            lost[unit[0], unit[2]] = lost.get((unit[0], unit[2]), 0) + 1
                            again.append(unit)
                            continue
                        record, built = result
                        stats["builds"] += built
                        if key(record) in done:  # never a second record of a unit
                            continue
                        results.append(record)
                        done.add(key(record))
                        workers.add(record["worker"])
                        stats["records"] += 1
                        bar.update(1)
        finally:
            bar.close()
            for ref in pending:  # stopped early (error, Ctrl-C): no work left behind on a shared cluster
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
    stats["workers"] = len(workers)
    print(f"ray: {stats['records']} records from {stats['workers']} worker processes "
          f"({stats['builds']} runtimes built)", file=sys.stderr)
    return stats


def _result(ray, ref, unit, resubmitted: int) -> tuple[dict[str, Any], bool] | None:
    """A task's result, or None when its unit must be submitted again.

    Ray retries a task whose worker or node died, MAX_RETRIES times. When it gives up (WorkerCrashedError,
    NodeDiedError, ...), or the task could not fetch its arguments (ObjectLostError, OwnerDiedError inside
    a RayTaskError, which Ray does not retry), the driver submits the unit again, up to MAX_RESUBMITS
    times, then fails with one line. A SmoothgenError of the task is raised as the same one-line error
    as a local run's, naming the worker; any other error of the task (a bug) with Ray's traceback."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, SmoothgenError):
            try:  # where it happened: the driver may have passed the same check
                located = type(cause)(f"{cause} (on Ray worker {getattr(exc, 'ip', '?')}, pid {getattr(exc, 'pid', '?')})")
            except Exception:  # noqa: BLE001 - an error type with another constructor: as it is
                located = cause
            raise located from None
        if not isinstance(cause, ray.exceptions.RayError):
            raise  # a bug (not a SmoothgenError): Ray's traceback of the worker says where
        failure = cause
    except ray.exceptions.RayError as exc:
        failure = exc
    if resubmitted < MAX_RESUBMITS:
        return None
    raise DistributedError(f"input {unit[0]} could not be computed on the Ray cluster (lost {resubmitted + 1} times, "
                           f"each after up to {MAX_RETRIES} retries): "
                           f"{first_line(failure)}; whole records are kept, rerun with --resume") from failure
