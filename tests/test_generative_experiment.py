"""benchmarks/generative_experiment.py at tiny sizes: its measurements compute what they claim, its
soundness check can fail, and its command line resumes."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import pathlib
import sys

import pytest
import torch

from smoothgen import kernels
from smoothgen.engine import Purpose, RandomStream
from smoothgen.generative import SmoothedLM
from smoothgen.models.lm import CodeLM

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "generative_experiment.py"


def load_script():
    spec = importlib.util.spec_from_file_location("generative_experiment_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ge = load_script()


def tiny_lm(seed: int = 0, scale: float = 20.0) -> CodeLM:
    """A random CodeLM with scaled-up weights, so that its next-byte distributions are peaked."""
    torch.manual_seed(seed)
    model = CodeLM(d_model=32, n_layers=2, n_heads=2, context_length=48)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model.eval()


PROMPT = torch.tensor(list(b"def f(x):\n    "), dtype=torch.long)


def test_window_probabilities_are_the_mean_softmax_of_the_noisy_copies():
    model = tiny_lm(scale=3.0)
    lm = SmoothedLM(model, 0.3, batch_size=3)  # 7 copies in chunks of 3
    p = ge.window_probabilities(lm, PROMPT, 7, seed=5, request_id=2)
    assert p.shape == (PROMPT.numel(), 256)
    torch.testing.assert_close(p.sum(1), torch.ones(PROMPT.numel(), dtype=torch.float64))
    # the last position is next_token_distribution of the whole window (the same PREDICT stream)
    torch.testing.assert_close(p[-1], lm.next_token_distribution(PROMPT, 7, 5, request_id=2), atol=1e-6, rtol=0)
    # position i: the same noisy copies, cut after row i (the model is causal)
    key = RandomStream(5, 2).key(Purpose.PREDICT)
    noisy = kernels.noisy_embedding(PROMPT[None], lm.table, 0.3, 7, None, seed=key.key, offset=0)
    for i in (0, 4, 9):
        with torch.no_grad():
            direct = torch.softmax(model(inputs_embeds=noisy[:, : i + 1]).logits[:, -1].double(), -1).mean(0)
        torch.testing.assert_close(p[i], direct, atol=1e-6, rtol=0)


def test_quality_of_the_base_and_of_p_bar():
    model = tiny_lm(scale=3.0)
    windows = [PROMPT, torch.tensor(list(b"return x + 1\n  #"), dtype=torch.long)]
    base = ge.quality(model, windows, 0.0, 1)
    nll, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for w in windows:
            logp = torch.log_softmax(model(input_ids=w[None]).logits[0].double(), -1)[:-1]
            nll -= float(logp.gather(1, w[1:, None]).sum())
            correct += int((logp.argmax(-1) == w[1:]).sum())
            count += w.numel() - 1
    assert base["predicted_bytes"] == count
    assert base["accuracy"] == pytest.approx(correct / count)
    assert base["nll_nats_per_byte"] == pytest.approx(nll / count, rel=1e-6)
    assert base["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-6)
    assert base["argmax_agreement_with_base"] == 1.0
    tiny = ge.quality(model, windows, 1e-5, 4)  # negligible noise: p̄ is the base distribution
    assert tiny["accuracy"] == base["accuracy"]
    assert tiny["nll_nats_per_byte"] == pytest.approx(base["nll_nats_per_byte"], rel=1e-3)
    huge = ge.quality(model, windows, 50.0, 4)  # the noise drowns the prompt
    assert huge["argmax_agreement_with_base"] < 0.9
    assert huge["nll_nats_per_byte"] != pytest.approx(base["nll_nats_per_byte"], rel=1e-2)


def test_substitutions_within_a_radius():
    table = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    prompt = torch.tensor([0, 2])
    # distances: token 0 -> 5, 1, 2; token 2 -> 1, sqrt(20), sqrt(5)
    assert ge.substitutions_within(table, prompt, 0.5) == {"single": 0, "simultaneous": 0}
    assert ge.substitutions_within(table, prompt, 1.01) == {"single": 2, "simultaneous": 1}
    assert ge.substitutions_within(table, prompt, 1.5) == {"single": 2, "simultaneous": 2}  # sqrt(2) < 1.5
    assert ge.substitutions_within(table, prompt, 2.3) == {"single": 4, "simultaneous": 2}


def test_attacks_respect_a_real_certificate_and_refute_an_inflated_one():
    model, sigma = tiny_lm(seed=1, scale=40.0), 0.1
    prompt = torch.tensor(list(b"Hello"))  # a confident first byte: p̄ ≈ 0.95
    kwargs = dict(max_new_tokens=2, n0=30, n=200, alpha=0.05, n_eval=200, n_confirm=400, iterations=8,
                  eot_samples=8, seed=0, prefix_attack=True)
    lm = SmoothedLM(model, sigma)
    cert = lm.generate(prompt, 2, n0=30, n=200, alpha=0.05, seed=0)
    r0 = cert.step_radius[0]
    assert r0 > 0  # the check below is not vacuous
    honest = ge.attack_prompt(model, prompt, sigma, [0.5 * r0, 0.99 * r0, 30.0], **kwargs)
    assert honest["tokens"] == list(cert.tokens) and honest["step_radius"] == list(cert.step_radius)
    assert [row["certified_first_token"] for row in honest["attacks"]] == [True, True, False]
    assert honest["violations"] == []
    assert honest["prefix_check"] is not None and not honest["prefix_check"]["broken"]
    assert honest["attacks"][-1]["smoothed_success"] and honest["attacks"][-1]["base_success"]  # R = 30 wins
    # A certificate that claims far more than it may: the same attack at R = 30 is now "within" it.
    inflated = dataclasses.replace(cert, step_radius=(1e9,) * len(cert.tokens))
    caught = ge.attack_prompt(model, prompt, sigma, [30.0], certificate=inflated, **dict(kwargs, prefix_attack=False))
    assert caught["attacks"][0]["certified_first_token"]
    assert len(caught["violations"]) == 1 and caught["violations"][0]["confirmed"]
    summary = ge.summarize([{"key": "a", "kind": "robustness", "model": "m", "sigma": sigma, "prompt_index": 0, **caught}])
    assert summary["robustness"][sigma]["violations"] == 1


def test_cost_measures_cached_and_recomputed_decoding():
    out = ge.cost(tiny_lm(scale=3.0), PROMPT[:6], ns=(1, 3), steps=3, n0=4, n=6, rounds=1, sigma=0.2)
    assert out["cached_equals_recomputed_tokens"]
    assert set(out["pbar_overhead"]) == {"1", "3"} and set(out["decode_overhead"]) == {"1", "3"}
    assert out["cache_speedup"] > 0 and out["cached_tokens_per_second"] > 0
    assert out["cache_speedup"] == pytest.approx(out["median_seconds"]["generate_recompute"]
                                                 / out["median_seconds"]["generate_cached"])


def test_text_windows_and_prompts():
    texts = ["abc\n" + "x" * 40, "short", "zz\n" + "y" * 10]
    windows = ge.text_windows(texts, 8, 3)
    assert [bytes(w.tolist()) for w in windows] == [b"abc\nxxxx", b"xxxxxxxx", b"xxxxxxxx", b"zz\nyyyyy"]
    prompts = ge.line_prompts(texts, 6, 5)
    assert [bytes(p.tolist()) for p in prompts] == [b"xxxxxx", b"yyyyyy"]


def test_command_line_help_and_resume(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exc:
        ge.main(["--help"])
    assert exc.value.code == 0 and "--out" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        ge.parse_args(["quality", "--quality-n", "0"])
    monkeypatch.setattr(ge, "heldout_slices", lambda: ["0123456789abcdef" * 3, "def g():\n    return 1\n" * 2])
    monkeypatch.setattr(ge, "load_model", lambda kind, seed: tiny_lm(scale=3.0))
    out = tmp_path / "records.jsonl"
    argv = ["quality", "--out", str(out), "--sigmas", "0.2", "--quality-n", "3", "--window", "12",
            "--windows-per-file", "2", "--quiet"]
    assert ge.main(argv) == 0
    first = ge.read_records(out)
    assert sorted(r["sigma"] for r in first) == [0.0, 0.2]
    assert ge.main(argv) == 0  # everything is done: nothing is recomputed
    assert ge.read_records(out) == first
    with out.open("a") as f:
        f.write('{"key": "torn')  # an interrupted write
    assert ge.main(argv + ["--sigmas", "0.2,0.4"]) == 0
    records = ge.read_records(out)
    assert len(records) == 3 and records[-1]["sigma"] == 0.4
    summary = ge.summarize(records)
    assert [q["sigma"] for q in summary["quality"]] == [0.0, 0.2, 0.4]
    assert summary["quality"][0]["accuracy_retention"] == 1.0
    text = ge.markdown(summary)
    assert "| 0.4 |" in text
    json.dumps(summary)
