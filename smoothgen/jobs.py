"""One unit of work, one record: the per-input records of `smoothgen certify` and `smoothgen center`.

The CLI's local loop, its Ray workers (`--ray`) and the HTTP service (`smoothgen serve`) all build their
records here, so a record computed anywhere has the same fields and, for the same model, parameters, seed
and request id, the same values (timing fields and the worker's name aside).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from smoothgen._lazy import lazy_module
from smoothgen.certificates import ABSTAIN

# Imported on first use, so that the CLI, which imports this module, parses `--help` without torch.
np = lazy_module("numpy")
torch = lazy_module("torch")

# Fields that differ between two computations of the same certificate (wall time, where it ran).
TIMING_FIELDS = ("time", "worker")


def _as_tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def certify_record(
    smoothed,
    x: Any,
    idx: int,
    label: int | None,
    *,
    n0: int,
    n: int | None,
    alpha: float,
    seed: int,
    target_radius: float | None = None,
    looks: Sequence[int] | None = None,
    reseed: Callable[[int, int], None] | None = None,
    sequential: str = "looks",
    max_samples: int | None = None,
    check_every: int | None = None,
) -> dict[str, Any]:
    """The record of one input of `smoothgen certify`: CERTIFY with (n0, n), or CERTIFY-AT `target_radius`
    with the sequential test `sequential` ("looks" at `looks`, or "betting" checked after every
    `check_every` samples up to `max_samples`; docs/theory.md §6).

    The input's random stream is (seed, idx); `reseed` (DiffSmooth's local-noise stream) is reseeded with
    (seed, idx) too, so a record does not depend on what ran before it or where.
    """
    if reseed is not None:
        reseed(seed, idx)
    t0 = time.perf_counter()
    if target_radius is None:
        cert = smoothed.certify(_as_tensor(x), n0, n, alpha, seed=seed, request_id=idx)
        record = {"radius": cert.radius, "p_lower": cert.p_lower, "count": cert.count, "samples": cert.samples}
    else:
        looks = None if looks is None or sequential == "betting" else tuple(looks)  # "betting" has no looks
        cert = smoothed.certify_at(_as_tensor(x), target_radius, alpha, n0=n0, looks=looks, seed=seed, request_id=idx,
                                   method=sequential, max_samples=max_samples, check_every=check_every)
        # The selected class is kept whatever the decision: rejected and undecided are not abstentions.
        record = {"radius": cert.certified_radius if cert.certified else 0.0, "decision": cert.decision,
                  "selected": cert.selected, "p_lower": cert.p_lower, "p_upper": cert.p_upper,
                  "count": cert.count, "samples": cert.samples, "sequential": cert.method}
    abstained = cert.prediction == ABSTAIN
    return {"idx": idx, "label": label, "predict": cert.prediction,
            "correct": None if label is None else (not abstained and cert.prediction == label),
            "time": time.perf_counter() - t0, **record}


def certify_run(
    *,
    sigma: float,
    n0: int,
    n: int | None,
    alpha: float,
    seed: int,
    model: str,
    data: str,
    backend: str,
    dtype: str | None,
    target_radius: float | None = None,
    sequential: str = "looks",
    looks: Sequence[int] | None = None,
    max_samples: int | None = None,
    check_every: int | None = None,
) -> dict[str, Any]:
    """The run fields every record of `smoothgen certify` carries (and /v1/certify's records): the parameters
    that produced it, with those of the sequential test when there is a target radius (n is then None)."""
    run = {"sigma": sigma, "n0": n0, "n": n if target_radius is None else None, "alpha": alpha, "seed": seed,
           "model": model, "data": data, "backend": backend, "dtype": dtype}
    if target_radius is not None:
        run["target_radius"] = target_radius
        if sequential == "betting":
            run.update(sequential="betting", max_samples=max_samples, check_every=check_every)
        else:
            run["looks"] = list(looks)
    return run


def center_record(
    smoother,
    x: Any,
    idx: int,
    eps_in: float,
    *,
    n: int,
    m: int,
    delta: float,
    alpha1: float,
    alpha2: float,
    seed: int,
    run_fields: Sequence[str] = (),
    return_certificate: bool = False,
) -> dict[str, Any] | tuple[dict[str, Any], Any]:
    """The record of one (input, eps_in) pair of `smoothgen center` (the run's own fields left out: the
    results file adds them); with return_certificate, (record, CenterCertificate) — the certificate holds
    the smoothed output itself, which records leave out."""
    t0 = time.perf_counter()
    cert = smoother.certify(_as_tensor(x), eps_in, n=n, m=m, delta=delta, alpha1=alpha1, alpha2=alpha2,
                            seed=seed, request_id=idx)
    record = cert.to_record()
    for name in run_fields:
        record.pop(name, None)
    record = {"idx": idx, **record, "time": time.perf_counter() - t0}
    return (record, cert) if return_certificate else record


def without_timing(record: dict[str, Any]) -> dict[str, Any]:
    """A record without the fields that legitimately differ between runs (for comparisons)."""
    return {k: v for k, v in record.items() if k not in TIMING_FIELDS}
