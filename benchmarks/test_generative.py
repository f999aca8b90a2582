"""Certified smoothed decoding (SmoothedLM.generate): KV caches per noisy copy vs recomputing every step.

N = 100 noisy copies of the prompt (n0 = 20 selection + n = 80 estimation) decode T tokens with the
embedded CodeLM's architecture (random weights: only the cost matters). "cached" keeps one KV cache per
chunk of copies (prefill once, one token per step; estimation teacher-forced on the decoded tokens);
"recompute" runs every copy's whole sequence again at every step. The summary prints tokens/s of each
and their ratio. `make bench` runs them for real; under --benchmark-disable (`make test`, CI) each runs
once at tiny sizes.
"""
from __future__ import annotations

import pytest
import torch

from smoothgen.generative import SmoothedLM
from smoothgen.models.lm import DEFAULT_LM_KWARGS, CodeLM

from bench_record import MINIMA, line, record

N0, N = 20, 80
PROMPT_LENGTH = 32


def _setup(benchmark):
    tiny = benchmark.disabled
    torch.manual_seed(0)
    model = CodeLM(**(dict(DEFAULT_LM_KWARGS, d_model=32, n_layers=1, n_heads=2) if tiny else DEFAULT_LM_KWARGS)).eval()
    steps = 3 if tiny else 32
    prompt = list(range(65, 65 + (8 if tiny else PROMPT_LENGTH)))
    return SmoothedLM(model, 0.1, batch_size=100), prompt, steps


@pytest.mark.parametrize("mode", ["cached", "recompute"])
def test_certified_decoding(benchmark, mode):
    lm, prompt, steps = _setup(benchmark)
    use_cache = mode == "cached"

    def run():
        return lm.generate(prompt, steps, n0=N0, n=N, alpha=0.001, seed=0, use_cache=use_cache)

    cert = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1) if not benchmark.disabled else benchmark(run)
    assert len(cert.tokens) == steps
    record(benchmark, f"decode-{mode}", steps)  # "samples" = generated tokens: the summary prints tokens/s
    if "decode-cached" in MINIMA and "decode-recompute" in MINIMA:
        ratio = MINIMA["decode-recompute"] / MINIMA["decode-cached"]
        line(f"certified decoding, N={N0 + N} copies, T={steps}, L={len(prompt)}: KV cache / recompute speed-up {ratio:.1f}x")
