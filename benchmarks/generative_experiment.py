"""SmoothedLM on the embedded code LM: empirical robustness, quality versus σ, and cost (issue 7).

    python benchmarks/generative_experiment.py geometry                 # embedding-row norms and distances
    python benchmarks/generative_experiment.py quality --sigmas 0.005,0.01,0.02,0.05,0.1,0.25,0.5
    python benchmarks/generative_experiment.py quality --sigmas 0.01,0.05 --quality-n 128
    python benchmarks/generative_experiment.py robustness --sigmas 0.01 --time-budget 420   # repeat to resume
    python benchmarks/generative_experiment.py cost
    python benchmarks/generative_experiment.py report                   # tables (Markdown) and the PNG plot

(`--model random` runs everything on a randomly initialised CodeLM, for development.)

Every command appends one JSON line per finished unit to --out (default generative_experiment.jsonl)
and skips the units already there, so an interrupted run resumes where it stopped. A unit's key holds
the model's fingerprint and every setting that changes its result; `report` uses the newest record of
each key. Prompts and texts come from the code LM's held-out standard-library files
(`smoothgen.models.train_code_lm.lm_heldout_slice`: 1 024 characters from the middle of each held-out file).

geometry    norms of the token embedding rows, nearest-neighbour row distances (the smallest embedding
            move of a one-byte substitution), and the noise norm σ·√D of one row, the scales σ and a
            certified radius are read against.
quality     next-byte accuracy and perplexity of p̄ (the mean softmax of N noisy copies, noise on every
            context row) on --windows-per-file windows of --window bytes of each held-out slice, for each σ,
            and of the base LM (σ = 0) on the same predictions. Finite N: the log of an N-sample mean is
            biased low (Jensen), so the reported perplexity of p̄ is pessimistic.
robustness  for each prompt (--prompt-length bytes, the start of a line in each held-out slice) and σ:
            the certificate of `SmoothedLM.generate` (T = --max-new-tokens, n0, n, α), then at each radius
            R of --radii an ℓ2 PGD attack (EOT over the noise, `smoothgen.attacks.pgd_embedding_attack`)
            on the first generated token of the smoothed decoder (success: the argmax of p̄, from --n-eval
            fresh copies, changes) and on the base LM (σ = 0; success: its argmax changes). An attack at
            R < R_0 (the certified radius of the first token) that changes the certified token is a
            VIOLATION, as is any change of the certified prefix by `attack_certified_prefix` at 0.99·(the
            radius of the whole prefix certified at radius 0). Each violation is re-estimated with
            --n-confirm copies (Hoeffding upper bound on p̄ of the certified token; < 1/2 confirms it).
cost        latency of p̄ (one next token) with N copies against one base forward pass; smoothed greedy
            decoding of T tokens with N copies against base greedy decoding; certified decoding (n0 + n
            = 100 copies) with KV caches against recomputing every copy's sequence at every step
            (use_cache=False), interleaved in the same run, tokens/s and their ratio.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "generative_experiment.jsonl"
DEFAULT_PLOT = HERE / "generative_experiment.png"

COMMANDS = ("geometry", "quality", "robustness", "cost", "report")


# --------------------------------------------------------------------------------------------------
# Records (JSON lines, resumable)
# --------------------------------------------------------------------------------------------------


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file (a torn last line, from an interrupted write, is skipped)."""
    if not Path(path).exists():
        return []
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def latest_by_key(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        if "key" in r:
            out[r["key"]] = r
    return out


def append_record(path: Path, record: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torn = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with path.open("a", encoding="utf-8") as f:
        f.write(("\n" if torn else "") + json.dumps(record, allow_nan=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _key(kind: str, **fields: Any) -> str:
    return kind + "|" + "|".join(f"{k}={fields[k]}" for k in sorted(fields))


def machine() -> str:
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() and torch.cuda.is_initialized() else ""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}{gpu}")


# --------------------------------------------------------------------------------------------------
# Model, texts, prompts
# --------------------------------------------------------------------------------------------------


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 (first 12 hex digits) of the model's parameters: records of different weights never mix."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def load_model(kind: str = "trained", seed: int = 0, **kwargs: Any) -> torch.nn.Module:
    """The trained embedded CodeLM ("trained"), or a randomly initialised one ("random", for development)."""
    if kind == "trained":
        from smoothgen.models import load_lm

        return load_lm().eval()
    from smoothgen.models.lm import DEFAULT_LM_KWARGS, CodeLM

    torch.manual_seed(seed)
    return CodeLM(**{**DEFAULT_LM_KWARGS, **kwargs}).eval()


def heldout_slices() -> list[str]:
    from smoothgen.models.train_code_lm import lm_heldout_slice

    return lm_heldout_slice()


def text_windows(texts: Sequence[str], width: int, per_file: int) -> list[torch.Tensor]:
    """Up to per_file consecutive windows of `width` bytes from each text (UTF-8 bytes as token ids)."""
    out = []
    for text in texts:
        data = text.encode("utf-8")
        for i in range(per_file):
            chunk = data[i * width:(i + 1) * width]
            if len(chunk) < width:
                break
            out.append(torch.tensor(list(chunk), dtype=torch.long))
    return out


def line_prompts(texts: Sequence[str], length: int, count: int) -> list[torch.Tensor]:
    """One prompt per text: `length` bytes from the start of its second line (the slices start mid-line)."""
    out = []
    for text in texts:
        data = text.encode("utf-8")
        start = data.find(b"\n") + 1
        chunk = data[start:start + length]
        if len(chunk) == length:
            out.append(torch.tensor(list(chunk), dtype=torch.long))
        if len(out) == count:
            break
    return out


# --------------------------------------------------------------------------------------------------
# Geometry: what σ and a radius mean in this embedding
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def embedding_geometry(model: torch.nn.Module, prompts: Sequence[torch.Tensor] = ()) -> dict[str, Any]:
    """Row norms and nearest-neighbour distances of the token embedding (text bytes and all 256 bytes)."""
    from smoothgen.generative import nearest_neighbor_distances
    from smoothgen.models.train_code_lm import LM_TEXT_BYTES

    table = model.get_input_embeddings().weight.detach().double()
    vocab, dim = table.shape
    text = list(LM_TEXT_BYTES)

    def summary(values: torch.Tensor) -> dict[str, float]:
        v = values.double()
        return {"min": float(v.min()), "median": float(v.median()), "mean": float(v.mean()), "max": float(v.max())}

    rows = table[text]
    within = torch.cdist(rows, rows)
    within.fill_diagonal_(math.inf)
    nn_all = nearest_neighbor_distances(table, text)  # nearest among all 256 rows
    off = torch.cdist(rows, rows)[~torch.eye(len(text), dtype=torch.bool)]
    out: dict[str, Any] = {
        "dim": dim,
        "vocab": vocab,
        "text_bytes": len(text),
        "row_norm_text_bytes": summary(rows.norm(dim=1)),
        "row_norm_other_bytes": summary(table[[v for v in range(vocab) if v not in set(text)]].norm(dim=1)),
        "nn_distance_text_bytes_among_all": summary(nn_all),
        "nn_distance_text_bytes_among_text": summary(within.min(dim=1).values),
        "pairwise_distance_text_bytes": summary(off),
        "sqrt_dim": math.sqrt(dim),
    }
    if prompts:
        per = torch.stack([nearest_neighbor_distances(table, p).median() for p in prompts])
        out["prompt_position_nn_distance_median"] = summary(per)
    return out


@torch.no_grad()
def substitutions_within(table: torch.Tensor, prompt: torch.Tensor, radius: float) -> dict[str, int]:
    """What a certified radius R covers (strictly) in byte substitutions of this prompt.

    single: the number of (position, byte) substitutions whose row move is < R;
    simultaneous: the largest m such that some m positions can be substituted at once (each by its
    nearest other byte) with root-sum-of-squares move < R.
    """
    rows = table.detach().double()
    d = torch.cdist(rows[prompt], rows)  # [L, V]
    d[torch.arange(prompt.numel()), prompt] = math.inf
    single = int((d < radius).sum())
    nearest = torch.sort(d.min(dim=1).values).values
    cumulative = torch.cumsum(nearest.pow(2), 0)
    simultaneous = int((cumulative < radius * radius).sum())
    return {"single": single, "simultaneous": simultaneous}


# --------------------------------------------------------------------------------------------------
# Quality of p̄ versus the base LM
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def window_probabilities(smoothed: Any, window: torch.Tensor, n: int, seed: int, request_id: int) -> torch.Tensor:
    """p̄ at every position of a window: mean over n noisy copies (noise on every row) of the softmax.

    Because the LM is causal, position i of one forward pass of the noisy window is the prediction from
    the prompt window[:i + 1] with all its rows perturbed; the last position equals
    ``smoothed.next_token_distribution(window, n, seed, request_id=request_id)`` (same noise stream).

    Shapes:
        window: [W] -> [W, V] float64
    """
    from smoothgen.engine import Purpose, RandomStream
    from smoothgen.generative import forward_lm

    ids = window.to(smoothed.device)
    mask = torch.ones(ids.numel(), dtype=torch.bool, device=smoothed.device)
    key = RandomStream(seed, request_id).key(Purpose.PREDICT)
    total = torch.zeros(ids.numel(), smoothed.vocab_size, dtype=torch.float64)
    for start in range(0, n, smoothed.batch_size):
        count = min(smoothed.batch_size, n - start)
        logits, _ = forward_lm(smoothed.model, smoothed.noisy_prompts(ids, mask, key, start, count))
        total += torch.softmax(logits.float(), dim=-1).double().sum(0).cpu()
    return total / n


@torch.no_grad()
def base_probabilities(model: torch.nn.Module, window: torch.Tensor) -> torch.Tensor:
    from smoothgen.generative import forward_lm

    table = model.get_input_embeddings().weight
    logits, _ = forward_lm(model, table[window][None])
    return torch.softmax(logits[0].double(), dim=-1).cpu()


def quality(model: torch.nn.Module, windows: Sequence[torch.Tensor], sigma: float, n: int, seed: int = 0,
            batch_size: int = 100, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Next-byte accuracy, NLL and perplexity of p̄ (σ > 0, n copies) or of the base LM (σ = 0).

    Every byte of a window but its first is predicted from the bytes before it in the window. Also
    returned: the agreement of p̄'s argmax with the base LM's argmax.
    """
    from smoothgen.generative import SmoothedLM

    smoothed = SmoothedLM(model, sigma, batch_size=batch_size) if sigma > 0 else None
    nll, correct, agree, count = 0.0, 0, 0, 0
    for i, window in enumerate(windows):
        base = base_probabilities(model, window)
        p = base if smoothed is None else window_probabilities(smoothed, window, n, seed, i)
        target = window[1:]
        pred = p[:-1]
        nll -= float(torch.log(pred.gather(1, target[:, None]).clamp_min(1e-300)).sum())
        correct += int((pred.argmax(-1) == target).sum())
        agree += int((pred.argmax(-1) == base[:-1].argmax(-1)).sum())
        count += target.numel()
        if progress is not None:
            progress(1)
    mean = nll / count
    return {"sigma": sigma, "n": n if sigma > 0 else 1, "predicted_bytes": count, "accuracy": correct / count,
            "nll_nats_per_byte": mean, "bits_per_byte": mean / math.log(2), "perplexity": math.exp(mean),
            "argmax_agreement_with_base": agree / count}


# --------------------------------------------------------------------------------------------------
# Robustness: attacks against the smoothed decoder and the base LM, and the soundness check
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def base_next_token(model: torch.nn.Module, prompt: torch.Tensor, delta: torch.Tensor | None = None) -> int:
    from smoothgen.generative import forward_lm

    emb = model.get_input_embeddings().weight[prompt]
    if delta is not None:
        emb = emb + delta.to(emb.dtype)
    logits, _ = forward_lm(model, emb[None])
    return int(logits[0, -1].argmax())


@torch.no_grad()
def teacher_forced_probability(smoothed: Any, cert: Any, step: int, delta: torch.Tensor, n: int, seed: int) -> float:
    """Estimate p̄_step(x + Δ; tokens[:step]) of the certified token tokens[step] with n fresh copies."""
    prompt = list(cert.prompt) + list(cert.tokens[:step])
    mask = list(cert.mask) + [False] * step
    full = torch.zeros(len(prompt), delta.shape[1], dtype=delta.dtype)
    full[:len(cert.prompt)] = delta
    p = smoothed.next_token_distribution(prompt, n, seed, request_id=10_000 + step, mask=mask, delta=full)
    return float(p[cert.tokens[step]])


def confirm(smoothed: Any, cert: Any, step: int, delta: torch.Tensor, n: int, seed: int, alpha: float = 0.001) -> dict[str, Any]:
    """Re-estimate a suspected violation: is p̄ of the certified token under Δ really below 1/2?"""
    from smoothgen import stats

    p = teacher_forced_probability(smoothed, cert, step, delta, n, seed)
    upper = stats.hoeffding_upper(p, n, alpha)
    return {"step": step, "p_hat": p, "n": n, "upper": upper, "confirmed": upper < 0.5}


def attack_prompt(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    sigma: float,
    radii: Sequence[float],
    *,
    max_new_tokens: int = 4,
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.001,
    n_eval: int = 500,
    n_confirm: int = 4000,
    iterations: int = 20,
    eot_samples: int = 16,
    seed: int = 0,
    batch_size: int = 100,
    prefix_attack: bool = True,
    certificate: Any = None,
) -> dict[str, Any]:
    """Certificate, attacks at every radius on the first token (smoothed and base), soundness check.

    `certificate` replaces the one `generate` would compute (the test injects an unsound one to show
    that the check can fail).
    """
    from smoothgen.attacks import attack_certified_prefix, pgd_embedding_attack
    from smoothgen.generative import SmoothedLM, nearest_neighbor_distances

    smoothed = SmoothedLM(model, sigma, batch_size=batch_size)
    table = smoothed.table
    t0 = time.perf_counter()
    cert = certificate if certificate is not None else smoothed.generate(
        prompt, max_new_tokens, n0=n0, n=n, alpha=alpha, seed=seed)
    certify_seconds = time.perf_counter() - t0
    eval_seed = seed + 777
    clean_p = smoothed.next_token_distribution(prompt, n_eval, eval_seed)
    reference = int(clean_p.argmax())
    base_token = base_next_token(model, prompt)
    r0 = cert.step_radius[0]
    rows: list[dict[str, Any]] = []
    violations: list[dict[str, Any]] = []
    if r0 > 0 and reference != cert.tokens[0]:  # certified at every R < R_0, including R = 0
        violations.append({"where": "clean", "radius": 0.0, "attacked_token": reference,
                           **confirm(smoothed, cert, 0, torch.zeros(prompt.numel(), smoothed.dim), n_confirm, seed + 29)})
    for j, radius in enumerate(radii):
        # the attack pushes down what the smoothed decoder outputs on the clean prompt
        attack = pgd_embedding_attack(model, prompt, [reference], 0, radius, sigma, iterations=iterations,
                                      eot_samples=eot_samples, seed=seed * 1000 + j)
        p = smoothed.next_token_distribution(prompt, n_eval, eval_seed, delta=attack.delta)
        attacked = int(p.argmax())
        base_attack = pgd_embedding_attack(model, prompt, [base_token], 0, radius, 0.0, iterations=iterations,
                                           seed=seed * 1000 + j)
        base_attacked = base_next_token(model, prompt, base_attack.delta)
        certified = radius < r0
        row = {
            "radius": radius,
            "certified_first_token": certified,
            "certified_prefix": cert.prefix_at(radius),
            "smoothed_success": attacked != reference,
            "smoothed_attacked_token": attacked,
            "smoothed_p_certified_token_attacked": float(p[cert.tokens[0]]),
            "smoothed_attack_norm": attack.norm,
            "base_success": base_attacked != base_token,
            "base_attack_norm": base_attack.norm,
        }
        if certified and attacked != cert.tokens[0]:
            v = {"where": "first_token", "radius": radius, "attacked_token": attacked,
                 **confirm(smoothed, cert, 0, attack.delta, n_confirm, seed + 31)}
            violations.append(v)
            row["violation"] = v
        rows.append(row)
    prefix_check = None
    k0 = cert.prefix_at(0.0)
    if prefix_attack and k0 >= 1:
        r_attack = 0.99 * cert.prefix_radius(k0)
        report = attack_certified_prefix(smoothed, cert, r_attack, n_eval=n_eval, eval_seed=eval_seed,
                                         iterations=iterations, eot_samples=eot_samples, seed=seed * 1000 + 500)
        prefix_check = {"radius": r_attack, "prefix": report.prefix, "broken": report.broken,
                        "decoded": [list(d) for d in report.decoded],
                        "attack_norms": [a.norm for a in report.attacks]}
        if report.broken:
            for attack, decoded in zip(report.attacks, report.decoded):
                if tuple(decoded) != tuple(cert.tokens[:report.prefix]):
                    first = next(i for i, (a, b) in enumerate(zip(decoded, cert.tokens)) if a != b)
                    violations.append({"where": "prefix", "radius": r_attack, "attacked_step": attack.step,
                                       "decoded": list(decoded),
                                       **confirm(smoothed, cert, first, attack.delta, n_confirm, seed + 37)})
    # what the certified radius of the first token, and of the prefix, mean in byte substitutions
    k_sub = substitutions_within(table, prompt, r0) if r0 > 0 else {"single": 0, "simultaneous": 0}
    return {
        "prompt": [int(v) for v in prompt],
        "tokens": list(cert.tokens),
        "step_radius": list(cert.step_radius),
        "p_lower": list(cert.p_lower),
        "p_mean": list(cert.p_mean),
        "prefix_at_0": k0,
        "certify_seconds": certify_seconds,
        "smoothed_clean_token": reference,
        "base_clean_token": base_token,
        "smoothed_equals_base_first_token": reference == base_token,
        "clean_disagrees_with_certificate": reference != cert.tokens[0],
        "substitutions_within_r0": k_sub,
        "prompt_nn_distance_min": float(nearest_neighbor_distances(table, prompt).min()),
        "attacks": rows,
        "prefix_check": prefix_check,
        "violations": violations,
    }


# --------------------------------------------------------------------------------------------------
# Cost
# --------------------------------------------------------------------------------------------------


def _sync() -> None:
    """Wait for queued CUDA work, so that wall-clock timings cover it (a no-op on CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    _sync()
    t = time.perf_counter()
    out = fn()
    _sync()
    return time.perf_counter() - t, out


@torch.no_grad()
def base_greedy(model: torch.nn.Module, prompt: torch.Tensor, steps: int) -> list[int]:
    """Greedy decoding of the base LM with its KV cache (one copy)."""
    from smoothgen.generative import forward_lm

    table = model.get_input_embeddings().weight
    logits, past = forward_lm(model, table[prompt][None])
    out = []
    for t in range(steps):
        a = int(logits[0, -1].argmax())
        out.append(a)
        if t < steps - 1:
            logits, past = forward_lm(model, table[a][None, None], past)
    return out


def cost(model: torch.nn.Module, prompt: torch.Tensor, *, ns: Sequence[int] = (1, 10, 100), steps: int = 32,
         n0: int = 20, n: int = 80, rounds: int = 3, sigma: float = 0.1, batch_size: int = 100,
         decode_cost: bool = True) -> dict[str, Any]:
    """Latencies (median over rounds, interleaved) of base vs smoothed computation; see the module docstring."""
    from smoothgen.generative import SmoothedLM

    smoothed = SmoothedLM(model, sigma, batch_size=batch_size)
    table = smoothed.table
    prompt = prompt.to(table.device)
    times: dict[str, list[float]] = {}

    def record(name: str, fn: Callable[[], Any]) -> Any:
        seconds, out = _timed(fn)
        times.setdefault(name, []).append(seconds)
        return out

    with torch.no_grad():  # warm-up
        model(inputs_embeds=table[prompt][None])
        smoothed.generate(prompt, 2, n0=n0, n=n, seed=0)
    same_tokens = True
    for r in range(rounds):
        record("base_forward", lambda: model(inputs_embeds=table[prompt][None]))
        for N in ns:
            record(f"pbar_N{N}", lambda N=N: smoothed.next_token_distribution(prompt, N, r))
        if decode_cost:
            record("base_greedy", lambda: base_greedy(model, prompt, steps))
            for N in ns:
                record(f"decode_N{N}", lambda N=N: smoothed.decode(prompt, steps, N, r))
        cached = record("generate_cached", lambda: smoothed.generate(prompt, steps, n0=n0, n=n, seed=r))
        recomputed = record("generate_recompute",
                            lambda: smoothed.generate(prompt, steps, n0=n0, n=n, seed=r, use_cache=False))
        same_tokens = same_tokens and cached.tokens == recomputed.tokens
    med = {k: statistics.median(v) for k, v in times.items()}
    out: dict[str, Any] = {
        "prompt_length": prompt.numel(), "steps": steps, "n0": n0, "n": n, "rounds": rounds, "sigma": sigma,
        "batch_size": batch_size, "median_seconds": med, "all_seconds": times,
        "pbar_overhead": {str(N): med[f"pbar_N{N}"] / med["base_forward"] for N in ns},
        "cached_tokens_per_second": steps / med["generate_cached"],
        "recompute_tokens_per_second": steps / med["generate_recompute"],
        "cache_speedup": med["generate_recompute"] / med["generate_cached"],
        "cache_speedup_per_round": [b / a for a, b in zip(times["generate_cached"], times["generate_recompute"])],
        "cached_equals_recomputed_tokens": same_tokens,
    }
    if decode_cost:
        out["decode_overhead"] = {str(N): med[f"decode_N{N}"] / med["base_greedy"] for N in ns}
    return out


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, dynamic_ncols=True)


class Runner:
    """Shared state of one invocation: model, its fingerprint, the records already written."""

    def __init__(self, args: argparse.Namespace, argv: Sequence[str]):
        self.args = args
        torch.set_num_threads(args.threads)
        self.model = load_model(args.model, args.model_seed).to(args.device)
        self.fp = ("random-" if args.model == "random" else "") + fingerprint(self.model)
        self.done = latest_by_key(read_records(args.out)) if not args.fresh else {}
        self.command = "python benchmarks/generative_experiment.py " + " ".join(argv)
        self._texts: list[str] | None = None

    @property
    def texts(self) -> list[str]:
        if self._texts is None:
            self._texts = heldout_slices()
        return self._texts

    def emit(self, key: str, kind: str, result: dict[str, Any]) -> dict[str, Any]:
        record = {"key": key, "kind": kind, "model": self.fp, "date": datetime.datetime.now().isoformat(timespec="seconds"),
                  "machine": machine(), "command": self.command, **result}
        append_record(self.args.out, record)
        self.done[key] = record
        return record


def cmd_geometry(run: Runner) -> None:
    a = run.args
    key = _key("geometry", model=run.fp, prompt_length=a.prompt_length, prompts=a.num_prompts)
    if key in run.done:
        print("geometry: already recorded", file=sys.stderr)
        return
    prompts = line_prompts(run.texts, a.prompt_length, a.num_prompts)
    geo = embedding_geometry(run.model, prompts)
    run.emit(key, "geometry", geo)
    print(json.dumps(geo, indent=1), file=sys.stderr)


def cmd_quality(run: Runner) -> None:
    a = run.args
    windows = text_windows(run.texts, a.window, a.windows_per_file)
    sigmas = sorted(set([0.0] + list(a.sigmas)))
    bar = _progress(len(windows) * len(sigmas), "quality", not a.quiet)
    for sigma in sigmas:
        key = _key("quality", model=run.fp, sigma=sigma, n=a.quality_n if sigma > 0 else 1, window=a.window,
                   per_file=a.windows_per_file, seed=a.seed)
        if key in run.done:
            bar.update(len(windows))
            continue
        t0 = time.perf_counter()
        result = quality(run.model, windows, sigma, a.quality_n, a.seed, a.batch_size, progress=bar.update)
        result.update({"windows": len(windows), "window": a.window, "seconds": time.perf_counter() - t0})
        run.emit(key, "quality", result)
        bar.write(f"sigma {sigma}: accuracy {result['accuracy']:.4f}, {result['bits_per_byte']:.3f} bits/byte")
    bar.close()


def cmd_robustness(run: Runner) -> None:
    a = run.args
    prompts = line_prompts(run.texts, a.prompt_length, a.num_prompts)
    units = [(s, i) for s in a.sigmas if s > 0 for i in range(len(prompts))]
    bar = _progress(len(units), "robustness", not a.quiet)
    start = time.perf_counter()
    for sigma, i in units:
        if a.time_budget and time.perf_counter() - start > a.time_budget:
            bar.write(f"time budget of {a.time_budget:g} s spent: stopping; run the same command again to resume")
            break
        key = _key("robustness", model=run.fp, sigma=sigma, prompt=i, L=a.prompt_length, T=a.max_new_tokens,
                   n0=a.n0, n=a.n, alpha=a.alpha, radii=",".join(map(str, a.radii)), n_eval=a.n_eval,
                   iters=a.iterations, eot=a.eot_samples, seed=a.seed)
        if key not in run.done:
            t0 = time.perf_counter()
            result = attack_prompt(run.model, prompts[i], sigma, a.radii, max_new_tokens=a.max_new_tokens, n0=a.n0,
                                   n=a.n, alpha=a.alpha, n_eval=a.n_eval, n_confirm=a.n_confirm,
                                   iterations=a.iterations, eot_samples=a.eot_samples, seed=a.seed + i,
                                   batch_size=a.batch_size)
            result.update({"sigma": sigma, "prompt_index": i, "seconds": time.perf_counter() - t0,
                           "settings": {"T": a.max_new_tokens, "n0": a.n0, "n": a.n, "alpha": a.alpha,
                                        "n_eval": a.n_eval, "iterations": a.iterations, "eot": a.eot_samples}})
            run.emit(key, "robustness", result)
            if result["violations"]:
                bar.write(f"!!! SOUNDNESS VIOLATION sigma {sigma} prompt {i}: {result['violations']}")
        bar.update(1)
    bar.close()


def cmd_cost(run: Runner) -> None:
    a = run.args
    data = b"".join(t.encode("utf-8") for t in run.texts)
    for length in a.cost_lengths:
        key = _key("cost", model=run.fp, L=length, T=a.cost_steps, ns=",".join(map(str, a.cost_ns)),
                   n0=a.cost_n0, n=a.cost_n, rounds=a.rounds, threads=a.threads,
                   **({} if a.device == "cpu" else {"device": a.device}))
        if key in run.done:
            continue
        prompt = torch.tensor(list(data[:length]), dtype=torch.long)
        result = cost(run.model, prompt, ns=a.cost_ns, steps=a.cost_steps, n0=a.cost_n0, n=a.cost_n,
                      rounds=a.rounds, sigma=a.cost_sigma, batch_size=a.batch_size)
        run.emit(key, "cost", result)
        print(f"L={length}: cached {result['cached_tokens_per_second']:.1f} tok/s, recompute "
              f"{result['recompute_tokens_per_second']:.1f} tok/s, speed-up {result['cache_speedup']:.1f}x; "
              f"p̄ overhead {result['pbar_overhead']}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# Report: Markdown tables and the plot
# --------------------------------------------------------------------------------------------------


def summarize(records: Iterable[dict[str, Any]], model: str | None = None) -> dict[str, Any]:
    """Aggregate the newest record of each key (of one model: the newest record's, by default)."""
    latest = list(latest_by_key(records).values())
    if model is None and latest:
        model = max(latest, key=lambda r: r.get("date", ""))["model"]
    latest = [r for r in latest if r.get("model") == model]
    out: dict[str, Any] = {"model": model, "geometry": None, "quality": [], "robustness": {}, "cost": []}
    for r in latest:
        if r["kind"] == "geometry":
            out["geometry"] = r
        elif r["kind"] == "quality":
            out["quality"].append(r)
        elif r["kind"] == "cost":
            out["cost"].append(r)
    out["quality"].sort(key=lambda r: (r["sigma"], r["n"]))
    base = next((q for q in out["quality"] if q["sigma"] == 0), None)
    if base:
        for q in out["quality"]:
            q["accuracy_retention"] = q["accuracy"] / base["accuracy"]
            q["bits_per_byte_ratio"] = q["bits_per_byte"] / base["bits_per_byte"]
    by_sigma: dict[float, list[dict[str, Any]]] = {}
    for r in latest:
        if r["kind"] == "robustness":
            by_sigma.setdefault(r["sigma"], []).append(r)
    for sigma, rs in sorted(by_sigma.items()):
        radii = sorted({row["radius"] for r in rs for row in r["attacks"]})
        curve = []
        for radius in radii:
            rows = [row for r in rs for row in r["attacks"] if row["radius"] == radius]
            curve.append({
                "radius": radius,
                "prompts": len(rows),
                "certified_first_token": sum(row["certified_first_token"] for row in rows) / len(rows),
                "mean_certified_prefix": sum(row["certified_prefix"] for row in rows) / len(rows),
                "smoothed_success": sum(row["smoothed_success"] for row in rows) / len(rows),
                "base_success": sum(row["base_success"] for row in rows) / len(rows),
                "attacks_within_certified_radius": sum(row["certified_first_token"] for row in rows),
            })
        r0 = sorted(r["step_radius"][0] for r in rs)
        prefix_checks = [r["prefix_check"] for r in rs if r["prefix_check"]]
        out["robustness"][sigma] = {
            "prompts": len(rs),
            "settings": rs[0].get("settings"),
            "curve": curve,
            "r0_quantiles": {q: r0[min(len(r0) - 1, int(q * len(r0)))] for q in (0.0, 0.25, 0.5, 0.75)} | {1.0: r0[-1]},
            "prefix_at_0_mean": sum(r["prefix_at_0"] for r in rs) / len(rs),
            "prefix_at_0": [r["prefix_at_0"] for r in rs],
            "T": len(rs[0]["tokens"]),
            "prefix_checks": len(prefix_checks),
            "prefix_checks_attacked_steps": sum(p["prefix"] for p in prefix_checks),
            "violations": sum(len(r["violations"]) for r in rs),
            "confirmed_violations": sum(v.get("confirmed", False) for r in rs for v in r["violations"]),
            "violation_details": [dict(v, prompt_index=r["prompt_index"]) for r in rs for v in r["violations"]],
            "smoothed_equals_base_first_token": sum(r["smoothed_equals_base_first_token"] for r in rs) / len(rs),
            "single_substitutions_within_r0_median": statistics.median(r["substitutions_within_r0"]["single"] for r in rs),
            "simultaneous_substitutions_within_r0_max": max(r["substitutions_within_r0"]["simultaneous"] for r in rs),
            "prompts_with_a_substitution_certified": sum(r["substitutions_within_r0"]["single"] > 0 for r in rs),
            "certify_seconds_median": statistics.median(r["certify_seconds"] for r in rs),
        }
    return out


def markdown(summary: dict[str, Any]) -> str:
    lines = []
    g = summary["geometry"]
    if g:
        lines += [
            f"Embedding geometry (D = {g['dim']}, √D = {g['sqrt_dim']:.2f}; {g['text_bytes']} text bytes): "
            f"row norm median {g['row_norm_text_bytes']['median']:.3f} (min {g['row_norm_text_bytes']['min']:.3f}, "
            f"max {g['row_norm_text_bytes']['max']:.3f}); nearest-neighbour row distance of a text byte "
            f"(among all 256) median {g['nn_distance_text_bytes_among_all']['median']:.3f}, min "
            f"{g['nn_distance_text_bytes_among_all']['min']:.3f}, max {g['nn_distance_text_bytes_among_all']['max']:.3f}; "
            f"pairwise distance median {g['pairwise_distance_text_bytes']['median']:.3f}"
            + (f"; per-prompt median of the positions' NN distances: median "
               f"{g['prompt_position_nn_distance_median']['median']:.3f}" if "prompt_position_nn_distance_median" in g else "")
            + ".",
            "",
        ]
    if summary["quality"]:
        nn = g["nn_distance_text_bytes_among_all"]["median"] if g else None
        norm = g["row_norm_text_bytes"]["median"] if g else None
        lines += ["| σ | σ / NN dist. | noise norm σ√D / row norm | N | accuracy | retention | bits/byte | perplexity | argmax = base |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for q in summary["quality"]:
            s = q["sigma"]
            rel = f"{s / nn:.3f}" if nn and s else "–"
            noise = f"{s * g['sqrt_dim'] / norm:.2f}" if norm and s else "–"
            lines.append(f"| {s:g}{' (base)' if s == 0 else ''} | {rel} | {noise} | {q['n']} | {q['accuracy']:.4f} | "
                         f"{q.get('accuracy_retention', float('nan')):.1%} | {q['bits_per_byte']:.3f} | "
                         f"{q['perplexity']:.3f} | {q['argmax_agreement_with_base']:.1%} |")
        lines.append(f"\n({summary['quality'][0]['predicted_bytes']} predicted bytes per row.)\n")
    for sigma, rob in summary["robustness"].items():
        st = rob["settings"] or {}
        lines += [f"Robustness, σ = {sigma:g}: {rob['prompts']} prompts, T = {rob['T']}, n0 = {st.get('n0')}, "
                  f"n = {st.get('n')}, α = {st.get('alpha')}; PGD {st.get('iterations')} iterations, EOT "
                  f"{st.get('eot')}; smoothed decoder evaluated with n_eval = {st.get('n_eval')} copies.",
                  "",
                  "| R | certified (1st token) | mean certified prefix | attack success, smoothed | attack success, base LM |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        for c in rob["curve"]:
            lines.append(f"| {c['radius']:g} | {c['certified_first_token']:.0%} | {c['mean_certified_prefix']:.2f} | "
                         f"{c['smoothed_success']:.0%} | {c['base_success']:.0%} |")
        q = rob["r0_quantiles"]
        lines += ["",
                  "R_0 (first token) quantiles 0/25/50/75/100 %: " + ", ".join(f"{v:.3f}" for v in q.values())
                  + f"; certified prefix at radius 0: mean {rob['prefix_at_0_mean']:.2f} of {rob['T']} "
                  f"(per prompt {rob['prefix_at_0']}); first token of the smoothed decoder = base LM's on "
                  f"{rob['smoothed_equals_base_first_token']:.0%} of prompts.",
                  f"Soundness: {sum(c['attacks_within_certified_radius'] for c in rob['curve'])} first-token attacks "
                  f"within the certified radius + {rob['prefix_checks_attacked_steps']} step attacks on "
                  f"{rob['prefix_checks']} whole certified prefixes at 0.99× their radius: "
                  f"**{rob['violations']} violations** ({rob['confirmed_violations']} confirmed).",
                  f"Substitutions within R_0: median {rob['single_substitutions_within_r0_median']} single-byte "
                  f"substitutions; prompts with at least one: {rob['prompts_with_a_substitution_certified']}/"
                  f"{rob['prompts']}; most simultaneous: {rob['simultaneous_substitutions_within_r0_max']}.",
                  ""]
    for c in summary["cost"]:
        m = c["median_seconds"]
        lines += [f"Cost, prompt L = {c['prompt_length']}, T = {c['steps']}, σ = {c['sigma']}, median of "
                  f"{c['rounds']} interleaved rounds:", "",
                  "| N | p̄ latency | × base forward | smoothed greedy T tokens | × base greedy |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        lines.append(f"| base | {m['base_forward'] * 1e3:.1f} ms | 1 | "
                     f"{m.get('base_greedy', float('nan')) * 1e3:.0f} ms | 1 |")
        for N, over in c["pbar_overhead"].items():
            lines.append(f"| {N} | {m[f'pbar_N{N}'] * 1e3:.1f} ms | {over:.1f} | "
                         f"{m.get(f'decode_N{N}', float('nan')) * 1e3:.0f} ms | "
                         f"{c.get('decode_overhead', {}).get(N, float('nan')):.1f} |")
        lines += ["",
                  f"Certified decoding, n0 + n = {c['n0']} + {c['n']} copies: KV cache {m['generate_cached']:.2f} s "
                  f"({c['cached_tokens_per_second']:.1f} tokens/s), recompute {m['generate_recompute']:.2f} s "
                  f"({c['recompute_tokens_per_second']:.2f} tokens/s): **{c['cache_speedup']:.1f}×** "
                  f"(per round {', '.join(f'{v:.1f}' for v in c['cache_speedup_per_round'])}); same tokens: "
                  f"{c['cached_equals_recomputed_tokens']}.", ""]
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for i, (sigma, rob) in enumerate(summary["robustness"].items()):
        r = [c["radius"] for c in rob["curve"]]
        ax.plot(r, [c["smoothed_success"] for c in rob["curve"]], "o-", color=f"C{i}",
                label=f"attack success, smoothed σ={sigma:g}")
        ax.plot(r, [c["certified_first_token"] for c in rob["curve"]], "s--", color=f"C{i}", alpha=0.6,
                label=f"certified (1st token), σ={sigma:g}")
    base: dict[float, list[bool]] = {}
    for rob in summary["robustness"].values():
        for c in rob["curve"]:
            base.setdefault(c["radius"], []).append(c["base_success"])
    if base:
        ax.plot(sorted(base), [sum(base[k]) / len(base[k]) for k in sorted(base)], "k^-", label="attack success, base LM")
    g = summary["geometry"]
    if g:
        ax.axvline(g["nn_distance_text_bytes_among_all"]["median"], color="gray", lw=0.8, ls=":",
                   label="median NN row distance")
    ax.set_xscale("log")
    ax.set_xlabel("ℓ2 radius R on the prompt's embedding rows")
    ax.set_ylabel("fraction of prompts")
    ax.set_title("first generated byte: attack vs certificate")
    ax.legend(fontsize=7)
    ax = axes[1]
    qs = [q for q in summary["quality"] if q["sigma"] > 0]
    if qs:  # one curve: the N most σ were measured with
        ns = [q["n"] for q in qs]
        main_n = max(set(ns), key=ns.count)
        qs = [q for q in qs if q["n"] == main_n]
        ax.plot([q["sigma"] for q in qs], [q["accuracy"] for q in qs], "o-", label=f"accuracy of p̄ (N = {main_n})")
        base_q = next((q for q in summary["quality"] if q["sigma"] == 0), None)
        if base_q:
            ax.axhline(base_q["accuracy"], color="k", ls="--", label="base accuracy")
            ax.axhline(0.95 * base_q["accuracy"], color="gray", ls=":", label="95 % of base")
        ax.set_xscale("log")
        ax.set_xlabel("σ")
        ax.set_ylabel("next-byte accuracy (held out)")
        ax2 = ax.twinx()
        ax2.plot([q["sigma"] for q in qs], [q["bits_per_byte"] for q in qs], "r.-", label="bits/byte of p̄")
        if base_q:
            ax2.axhline(base_q["bits_per_byte"], color="r", ls="--", lw=0.8)
        ax2.set_ylabel("bits per byte", color="r")
        ax.legend(fontsize=7, loc="lower left")
        ax.set_title("quality of p̄ versus σ")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_report(args: argparse.Namespace) -> None:
    summary = summarize(read_records(args.out), args.report_model)
    print(markdown(summary))
    if args.plot:
        plot(summary, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    total = sum(r["violations"] for r in summary["robustness"].values())
    if total:
        print(f"!!! {total} SOUNDNESS VIOLATIONS: see violation_details in the robustness records", file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=COMMANDS + ("all",), help="what to run (all: geometry, quality, robustness, cost)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSONL records, appended (default {DEFAULT_OUT.name})")
    parser.add_argument("--fresh", action="store_true", help="recompute units already in --out (appends new records)")
    parser.add_argument("--model", choices=("trained", "random"), default="trained",
                        help="the trained embedded CodeLM, or a randomly initialised one (development)")
    parser.add_argument("--model-seed", type=int, default=0, help="seed of --model random")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="torch device of the model, e.g. cuda (default cpu)")
    parser.add_argument("--batch-size", type=int, default=100, help="noisy copies per model call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--time-budget", type=float, default=0.0,
                        help="robustness: start no new unit after this many seconds (0: no limit); rerun to resume")
    parser.add_argument("--sigmas", type=_floats, default=[0.05, 0.1, 0.25, 0.5],
                        help="noise levels in embedding units (quality: all; robustness: each)")
    g = parser.add_argument_group("quality")
    g.add_argument("--quality-n", type=int, default=32, help="noisy copies N behind p̄ (default 32)")
    g.add_argument("--window", type=int, default=128, help="bytes per evaluation window (default 128)")
    g.add_argument("--windows-per-file", type=int, default=4, help="windows per held-out slice (default 4)")
    g = parser.add_argument_group("robustness")
    g.add_argument("--num-prompts", type=int, default=10)
    g.add_argument("--prompt-length", type=int, default=32)
    g.add_argument("--max-new-tokens", type=int, default=4, help="T (α is split across the T steps)")
    g.add_argument("--n0", type=int, default=100)
    g.add_argument("--n", type=int, default=1000)
    g.add_argument("--alpha", type=float, default=0.001)
    g.add_argument("--radii", type=_floats, default=[0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
                   help="attack radii (ℓ2 over the prompt rows; default 0.001,0.003,0.01,0.03,0.1,0.3,1)")
    g.add_argument("--n-eval", type=int, default=500, help="fresh copies behind the attacked smoothed decoder")
    g.add_argument("--n-confirm", type=int, default=4000, help="copies to re-estimate a suspected violation")
    g.add_argument("--iterations", type=int, default=20, help="PGD iterations")
    g.add_argument("--eot-samples", type=int, default=16, help="noise draws per PGD iteration")
    g = parser.add_argument_group("cost")
    g.add_argument("--cost-lengths", type=_ints, default=[32, 128], help="prompt lengths L")
    g.add_argument("--cost-steps", type=int, default=32, help="generated tokens T")
    g.add_argument("--cost-ns", type=_ints, default=[1, 10, 100], help="copies N for the latency rows")
    g.add_argument("--cost-n0", type=int, default=20)
    g.add_argument("--cost-n", type=int, default=80)
    g.add_argument("--cost-sigma", type=float, default=0.1)
    g.add_argument("--rounds", type=int, default=3)
    g = parser.add_argument_group("report")
    g.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help=f"PNG (default {DEFAULT_PLOT.name}; '' for none)")
    g.add_argument("--report-model", default=None, help="model fingerprint to report (default: the newest record's)")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if str(args.plot) in ("", "."):
        args.plot = None
    for name in ("quality_n", "window", "windows_per_file", "num_prompts", "prompt_length", "max_new_tokens",
                 "n0", "n", "n_eval", "n_confirm", "iterations", "eot_samples", "rounds", "threads", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if any(s < 0 for s in args.sigmas) or any(r < 0 for r in args.radii):
        parser.error("sigmas and radii must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.command == "report":
        cmd_report(args)
        return 0
    run = Runner(args, argv)
    todo = ("geometry", "quality", "robustness", "cost") if args.command == "all" else (args.command,)
    for name in todo:
        {"geometry": cmd_geometry, "quality": cmd_quality, "robustness": cmd_robustness, "cost": cmd_cost}[name](run)
    print(f"records in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
