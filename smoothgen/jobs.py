"""One unit of work, one record: the per-input records of `smoothgen certify` and `smoothgen center`.

The CLI's local loop, its Ray workers (`--ray`) and the HTTP service (`smoothgen serve`) all build their
records here, so a record computed anywhere has the same fields and, for the same model, parameters, seed
and request id, the same values (timing fields and the worker's name aside).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from smoothgen.certificates import ABSTAIN

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
) -> dict[str, Any]:
    """The record of one input of `smoothgen certify`: CERTIFY with (n0, n), or CERTIFY-AT `target_radius`.

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
        cert = smoothed.certify_at(_as_tensor(x), target_radius, alpha, n0=n0, looks=tuple(looks), seed=seed, request_id=idx)
        # The selected class is kept whatever the decision: rejected and undecided are not abstentions.
        record = {"radius": cert.certified_radius if cert.certified else 0.0, "decision": cert.decision,
                  "selected": cert.selected, "p_lower": cert.p_lower, "p_upper": cert.p_upper,
                  "count": cert.count, "samples": cert.samples}
    abstained = cert.prediction == ABSTAIN
    return {"idx": idx, "label": label, "predict": cert.prediction,
            "correct": None if label is None else (not abstained and cert.prediction == label),
            "time": time.perf_counter() - t0, **record}


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
) -> dict[str, Any]:
    """The record of one (input, eps_in) pair of `smoothgen center` (the run's own fields left out: the
    results file adds them)."""
    t0 = time.perf_counter()
    cert = smoother.certify(_as_tensor(x), eps_in, n=n, m=m, delta=delta, alpha1=alpha1, alpha2=alpha2,
                            seed=seed, request_id=idx)
    record = cert.to_record()
    for name in run_fields:
        record.pop(name, None)
    return {"idx": idx, **record, "time": time.perf_counter() - t0}


def without_timing(record: dict[str, Any]) -> dict[str, Any]:
    """A record without the fields that legitimately differ between runs (for comparisons)."""
    return {k: v for k, v in record.items() if k not in TIMING_FIELDS}
