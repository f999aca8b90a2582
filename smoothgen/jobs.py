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


# ------------------------------------------------------------------------------------------ served requests
# What one request to `smoothgen serve` computes, given its parameters with every default filled in (the
# `params` of a served document, docs/theory.md §8). The service calls these, and `smoothgen verify`
# calls them again on the signed parameters to recompute a certificate bit for bit.

def served_certify(runtime, num_classes: int, shape, x: Any, params: dict[str, Any], *, seed: int, request_id: int,
                   model: dict[str, Any], sampler=None, batch_size: int = 1000) -> dict[str, Any]:
    """/v1/certify: CERTIFY (n0, n), or CERTIFY-AT target_radius with the sequential test."""
    from smoothgen.classify import SmoothedClassifier

    p = params
    smoothed = SmoothedClassifier(runtime, num_classes, p["sigma"], input_shape=tuple(shape), sampler=sampler,
                                  batch_size=batch_size)
    betting = ({"max_samples": p["max_samples"], "check_every": p["check_every"]}
               if p["sequential"] == "betting" else {})
    record = certify_record(smoothed, x, request_id, p["label"], n0=p["n0"], n=p["n"], alpha=p["alpha"], seed=seed,
                            target_radius=p["target_radius"], looks=p["looks"], sequential=p["sequential"] or "looks",
                            **betting)
    run = certify_run(sigma=p["sigma"], n0=p["n0"], n=p["n"], alpha=p["alpha"], seed=seed, model=model["name"],
                      data="http", backend=model["backend"], dtype=model["dtype"], target_radius=p["target_radius"],
                      sequential=p["sequential"] or "looks", looks=p["looks"], **betting)
    return {**record, **run}


def served_predict(runtime, num_classes: int, shape, x: Any, params: dict[str, Any], *, seed: int, request_id: int,
                   model: dict[str, Any], sampler=None, batch_size: int = 1000) -> dict[str, Any]:
    """/v1/predict: PREDICT, the smoothed class or ABSTAIN (−1), wrong with probability at most alpha."""
    from smoothgen.classify import SmoothedClassifier

    smoothed = SmoothedClassifier(runtime, num_classes, params["sigma"], input_shape=tuple(shape), sampler=sampler,
                                  batch_size=batch_size)
    t0 = time.perf_counter()
    prediction = smoothed.predict(_as_tensor(x), params["n"], params["alpha"], seed=seed, request_id=request_id)
    return {"idx": request_id, **prediction.to_record(), "model": model["name"], "data": "http",
            "backend": model["backend"], "dtype": model["dtype"], "time": time.perf_counter() - t0}


def served_center(runtime, shape, x: Any, params: dict[str, Any], *, seed: int, request_id: int,
                  model: dict[str, Any], sampler=None, batch_size: int = 1000) -> tuple[dict[str, Any], Any]:
    """/v1/center: center smoothing at one eps_in (σ = eps_in / h); (record, the smoothed output)."""
    from smoothgen.center import CenterSmoother
    from smoothgen.metrics import get_metric

    p = params
    metric = get_metric(p["metric"])
    smoother = CenterSmoother(runtime, p["eps_in"] / p["h"], metric, n_candidates=p["n_candidates"],
                              input_shape=tuple(shape), sampler=sampler, batch_size=batch_size)
    run = {"backend": model["backend"], "dtype": model["dtype"], "metric": metric.name, "h": p["h"], "n": p["n"],
           "m": p["m"], "delta": p["delta"], "alpha1": p["alpha1"], "alpha2": p["alpha2"],
           "n_candidates": p["n_candidates"], "seed": seed, "model": model["name"], "data": "http"}
    record, cert = center_record(smoother, x, request_id, p["eps_in"], n=p["n"], m=p["m"], delta=p["delta"],
                                 alpha1=p["alpha1"], alpha2=p["alpha2"], seed=seed, run_fields=tuple(run),
                                 return_certificate=True)
    center = cert.center.detach().cpu().tolist() if isinstance(cert.center, torch.Tensor) else cert.center
    return {**record, **run}, center


def served_generate(lm, tokenizer, name: str, prompt: str, params: dict[str, Any], *, seed: int, request_id: int,
                    batch_size: int, progress=None) -> dict[str, Any]:
    """/v1/generate: SmoothedLM's certified prefix, the record `smoothgen generate --json` prints."""
    from smoothgen.job_specs import GenerateJob
    from smoothgen.text_generation import certified_generation

    p = params
    if p["noise"] == "ablate":
        options = {"keep": p["keep"], "mask_token": p["mask_token"], "edits": p["edits"]}
    elif p["noise"] == "delete":
        # Documents from before equal-length selection copies have no selection: theirs were deletion copies.
        options = {"delete_prob": p["delete_prob"], "mask_token": p["mask_token"], "edits": p["edits"],
                   "selection": p.get("selection", "noise")}
    else:
        options = {"sigma": p["sigma"], "radius": p["radius"]}
    if p.get("sequential"):  # documents from before sequential estimation have no such field
        # Documents from before the earliest first look have no first_check: theirs came after check_every.
        options.update(sequential=True, check_every=p["check_every"], first_check=p.get("first_check", "check_every"))
    job = GenerateJob(prompt=prompt, noise=p["noise"], max_new_tokens=p["max_new_tokens"], n0=p["n0"], n=p["n"],
                      alpha=p["alpha"], seed=seed, request_id=request_id, perturb=p["perturb"], batch_size=batch_size,
                      **options)
    record, _, _ = certified_generation(lm, tokenizer, name, **job.kwargs(), progress=progress)
    return record


def failure_probability(endpoint: str, params: dict[str, Any], shape=None) -> float:
    """The chance that a served answer's claim is false (docs/theory.md §8): alpha, or for center smoothing
    alpha1 + alpha2 + the candidate-miss term of §2 (with τ of an input of `shape`)."""
    if endpoint != "center":
        return float(params["alpha"])
    from smoothgen.engine import noise_tv
    from smoothgen.stats import center_candidate_miss

    tau = noise_tv(int(np.prod(shape))) if shape is not None else 0.0
    miss = center_candidate_miss(params["delta"], params["n_candidates"], params["n"], tau)
    return min(1.0, params["alpha1"] + params["alpha2"] + miss)
