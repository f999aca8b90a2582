"""SharedLM: concurrent generations' LM calls of the same shape run as one batch, and nothing they compute changes."""
from __future__ import annotations

import threading

import pytest
import torch

from smoothgen.errors import InvalidParameterError
from smoothgen.generation.batching import SharedLM, probe
from smoothgen.generative import SmoothedLM, TokenAblation
from tiny_models import tiny_code_lm


class GatedLM(torch.nn.Module):
    """A CodeLM whose next call after `hold()` waits for `gate`: the calls made meanwhile queue up in the
    SharedLM, so which of them merge is decided by their shapes alone, not by timing. Records each model
    run's batch size from then on."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.holding = False
        self.runs: list[int] = []

    def hold(self) -> None:
        self.runs.clear()
        self.gate.clear()
        self.entered.clear()
        self.holding = True

    def get_input_embeddings(self):
        return self.lm.get_input_embeddings()

    def _wait(self, rows: int) -> None:
        if self.holding:
            self.holding = False
            self.entered.set()
            self.gate.wait(10)
        self.runs.append(rows)

    def forward(self, inputs_embeds, past_key_values=None, use_cache=True):
        self._wait(inputs_embeds.shape[0])
        return self.lm(inputs_embeds=inputs_embeds, past_key_values=past_key_values, use_cache=use_cache)


def _call_in_thread(shared: SharedLM, embeds, past=None) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(shared(inputs_embeds=embeds, past_key_values=past, use_cache=True)))
    thread.start()
    return thread, out


def _wait_queued(shared: SharedLM, count: int) -> None:
    for _ in range(1000):
        with shared._cv:
            if len(shared._queue) >= count:
                return
        threading.Event().wait(0.005)
    raise AssertionError("the calls never queued")


def test_calls_of_one_shape_merge_and_each_gets_exactly_its_own_rows():
    lm = tiny_code_lm(seed=3)
    gated = GatedLM(lm)
    torch.manual_seed(0)
    table = lm.get_input_embeddings().weight.detach()
    a, b = table[torch.randint(0, 256, (20, 5))], table[torch.randint(0, 256, (24, 5))]
    other = table[torch.randint(0, 256, (18, 6))]  # another length: runs alone
    small = table[torch.randint(0, 256, (3, 5))]  # below MIN_ROWS: runs alone
    with torch.no_grad():
        alone = [lm(inputs_embeds=x, use_cache=True) for x in (a, b, other, small)]
    with SharedLM(gated) as shared:
        assert shared.merging  # the probe found every row the same alone and merged
        gated.hold()
        first, _ = _call_in_thread(shared, a[:1])  # holds the model until the gate opens
        assert gated.entered.wait(10)
        calls = [_call_in_thread(shared, x) for x in (a, other, small, b)]
        _wait_queued(shared, 4)
        gated.gate.set()
        for thread, _ in [(first, None), *calls]:
            thread.join(10)
        assert gated.runs == [1, 44, 18, 3]  # a and b (same shape) as one run of 20 + 24 rows; the others alone
        for (_, out), ref in zip(calls, (alone[0], alone[2], alone[3], alone[1])):
            logits, cache = out[0]
            assert torch.equal(logits, ref.logits)  # bit for bit
            assert len(cache) == len(ref.past_key_values)
            for (k, v), (rk, rv) in zip(cache, ref.past_key_values):
                assert torch.equal(k, rk) and torch.equal(v, rv)
        # A cached step: calls with caches of the same length merge too, and match the calls made alone.
        step = table[torch.randint(0, 256, (44, 1))]
        with torch.no_grad():
            ref_a = lm(inputs_embeds=step[:20], past_key_values=alone[0].past_key_values, use_cache=True)
            ref_b = lm(inputs_embeds=step[20:], past_key_values=alone[1].past_key_values, use_cache=True)
        gated.hold()
        first, _ = _call_in_thread(shared, a[:1])
        assert gated.entered.wait(10)
        ta, out_a = _call_in_thread(shared, step[:20], calls[0][1][0][1])
        tb, out_b = _call_in_thread(shared, step[20:], calls[3][1][0][1])
        _wait_queued(shared, 2)
        gated.gate.set()
        for thread in (first, ta, tb):
            thread.join(10)
        assert gated.runs == [1, 44]
        assert torch.equal(out_a[0][0], ref_a.logits) and torch.equal(out_b[0][0], ref_b.logits)


class BatchDependentLM(GatedLM):
    """Rows that depend on the batch around them (a tiny term in the batch size), as a kernel whose sums
    change with the batch would: the probe must refuse to merge its calls."""

    def forward(self, inputs_embeds, past_key_values=None, use_cache=True):
        out = super().forward(inputs_embeds, past_key_values, use_cache)
        out.logits = out.logits + 1e-6 * inputs_embeds.shape[0]
        return out


def test_a_model_whose_rows_depend_on_the_batch_is_never_merged():
    lm = tiny_code_lm(seed=4)
    assert probe(lm) and not probe(BatchDependentLM(lm))
    gated = BatchDependentLM(lm)
    table = lm.get_input_embeddings().weight.detach()
    a = table[torch.randint(0, 256, (20, 5))]
    with SharedLM(gated) as shared:
        assert not shared.merging
        gated.hold()
        first, _ = _call_in_thread(shared, a[:1])
        assert gated.entered.wait(10)
        calls = [_call_in_thread(shared, a), _call_in_thread(shared, a)]
        _wait_queued(shared, 2)
        gated.gate.set()
        for thread, _ in [(first, None), *calls]:
            thread.join(10)
        assert gated.runs == [1, 20, 20] and (shared.calls, shared.batches) == (3, 3)
    with SharedLM(lm, merge=False) as shared:
        assert not shared.merging


def test_concurrent_generations_are_bit_identical_to_generations_alone():
    """Three certified generations at once (two prompts of one length, one of another) through one SharedLM:
    every certificate equals the one computed alone."""
    lm = tiny_code_lm(seed=1, context_length=64)
    prompts = [list(b"def f(x):\n    return x +"), list(b"def g(y):\n    return y *"), list(b"import os\nos.")]

    def certify(model, prompt, seed):
        smoothed = SmoothedLM(model, TokenAblation(keep=4, mask_token_id=0), batch_size=32)
        return smoothed.generate(prompt, 6, n0=40, n=120, alpha=0.01, seed=seed, radius=1)

    alone = [certify(lm, p, i) for i, p in enumerate(prompts)]
    results: list = [None] * len(prompts)
    with SharedLM(lm) as shared:
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, certify(shared, prompts[i], i)))
                   for i in range(len(prompts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert shared.calls >= shared.batches > 0
    assert results == alone


class CacheObject:
    """A KV cache that is not nested tuples (as a Hugging Face Cache object): never taken apart."""

    def __init__(self, tensors):
        self.tensors = tensors


class ObjectCacheLM(GatedLM):
    def forward(self, inputs_embeds, past_key_values=None, use_cache=True):
        self._wait(inputs_embeds.shape[0])
        out = self.lm(inputs_embeds=inputs_embeds, use_cache=True)
        return out.logits, CacheObject(out.past_key_values)


def test_a_cache_that_cannot_be_split_is_never_merged_and_failures_stay_with_their_call():
    lm = tiny_code_lm(seed=2)
    gated = ObjectCacheLM(lm)
    table = lm.get_input_embeddings().weight.detach()
    x = table[torch.randint(0, 256, (20, 4))]
    with SharedLM(gated) as shared:
        assert not shared.merging  # the probe cannot split its cache
        gated.hold()
        first, _ = _call_in_thread(shared, x[:1])
        assert gated.entered.wait(10)
        calls = [_call_in_thread(shared, x), _call_in_thread(shared, x)]
        _wait_queued(shared, 2)
        gated.gate.set()
        for thread, _ in [(first, None), *calls]:
            thread.join(10)
        assert gated.runs == [1, 20, 20]
        for _, out in calls:
            assert isinstance(out[0][1], CacheObject) and out[0][0].shape[0] == 20
    # A call the model refuses raises its own error in its own thread; the SharedLM goes on serving.
    with SharedLM(lm) as shared:
        with pytest.raises(Exception, match="inputs_embeds"):
            shared(inputs_embeds=torch.zeros(2, 3), past_key_values=None, use_cache=True)
        assert shared(inputs_embeds=x, past_key_values=None, use_cache=True)[0].shape == (20, 4, 256)
    with pytest.raises(InvalidParameterError, match="closed"):
        shared(inputs_embeds=x, past_key_values=None, use_cache=True)
    with pytest.raises(InvalidParameterError, match="already a SharedLM"):
        SharedLM(shared)


def test_the_service_decodes_concurrent_generate_requests_together():
    """/v1/generate at generate_concurrency 3: three reproductions sent at once are the records each gets
    alone, and the LM counters are exported."""
    from smoothgen.service import CertificationService, ServiceConfig

    prompts = ["def read_lines(path):\n    with open(path) as f:\n        return f.read",
               "def load_items(path):\n    with open(path) as g:\n        return g.read",
               "import os\nimport s"]
    bodies = [{"prompt": p, "max_new_tokens": 3, "n": 100, "n0": 30, "seed": 5 + i, "request_id": 0,
               "reproduce": True} for i, p in enumerate(prompts)]
    svc = CertificationService(ServiceConfig(backend="eager", endpoints=("generate",), generate_concurrency=3,
                                             generate_batching="on"))
    try:
        described = svc.describe()
        assert described["generate_concurrency"] == 3
        assert described["generate_batching"] == {"lm_ablate": True, "lm_delete": True, "lm_gaussian": True}
        alone = [svc.call("generate", body)["reproduction"] for body in bodies]
        futures = []
        for body in bodies:
            svc.admit("generate")
            futures.append(svc.submit("generate", body)[0])
        together = [f.result(120)["reproduction"] for f in futures]
        for body in bodies:
            svc.release("generate")
        drop = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
        assert [drop(r) for r in together] == [drop(r) for r in alone]
        text = svc.metrics.exposition()[0].decode()
        assert 'smoothgen_lm_calls{lm="ablate:embedded:code_lm_ablate0.1"}' in text
        assert "smoothgen_lm_batches" in text
    finally:
        svc.close()
    with pytest.raises(InvalidParameterError, match="--generate-concurrency"):
        ServiceConfig(generate_concurrency=0).check()
    with pytest.raises(InvalidParameterError, match="--generate-batching"):
        ServiceConfig(generate_batching="yes").check()
    assert not ServiceConfig().merge_generate and ServiceConfig(device="cuda:0").merge_generate
    assert not ServiceConfig(device="cuda", generate_batching="off").merge_generate
