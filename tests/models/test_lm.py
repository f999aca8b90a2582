"""Tests of the embedded code LM: tokenizer, CodeLM (HF-style API, KV cache), shipped weights, training script."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

import smoothgen.models as models
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelLoadError
from smoothgen.models import VOCAB_SIZE, WEIGHTS_DIR, CodeLM, decode, encode, load_lm, model_info
from smoothgen.models.lm import CodeLMOutput, expand_cache
from smoothgen.models.train_code_lm import (
    LM_EXCLUDED_DIRS,
    LM_KWARGS,
    LM_NAME,
    LM_SLICE_CHARS,
    _texts_sha256,
    heldout_texts,
    is_heldout_file,
    lm_corpus_files,
    lm_heldout_slice,
    lm_metrics,
    train_lm,
    unigram_metrics,
)
from smoothgen.models.train import main

# Floors for the shipped model on the held-out slice (its recorded values are better; see models.json).
MAX_SLICE_BITS_PER_BYTE = 2.6
MIN_SLICE_ACCURACY = 0.55
MAX_LM_WEIGHTS_BYTES = 6_000_000
TINY = {"d_model": 32, "n_layers": 2, "n_heads": 4, "context_length": 64}


def _tiny(seed: int = 0) -> CodeLM:
    torch.manual_seed(seed)
    return CodeLM(**TINY).eval()


def _record() -> dict:
    return model_info()["models"][LM_NAME]


@pytest.fixture(scope="module")
def lm() -> CodeLM:
    return load_lm()


# ------------------------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("text", ["", "def f(x):\n    return x + 1\n", "héllo → ∑ 😀 naïve 中文", "\x00\x7f"])
def test_tokenizer_round_trip(text: str) -> None:
    ids = encode(text)
    assert ids.dtype == torch.int64 and ids.ndim == 1
    assert ids.tolist() == list(text.encode("utf-8"))
    assert decode(ids) == text
    assert decode(ids.tolist()) == text


def test_tokenizer_errors_and_replacement() -> None:
    assert decode([0xC3]) == "\ufffd"  # a truncated UTF-8 sequence is replaced, not an exception
    assert decode(torch.tensor([104, 0xFF, 105], dtype=torch.uint8)) == "h\ufffdi"
    for bad in (b"bytes", 3, None, ["a"]):
        with pytest.raises(InvalidInputError):
            encode(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        encode("\ud800")  # lone surrogate
    for bad in ([256], [-1], torch.tensor([[1, 2]]), torch.tensor([1.0]), "abc", [[1], [2]]):
        with pytest.raises(InvalidInputError):
            decode(bad)


# ----------------------------------------------------------------------------------------- architecture


def test_shapes_config_and_cache_layout() -> None:
    model = _tiny()
    ids = torch.randint(VOCAB_SIZE, (3, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(input_ids=ids)
        cached = model(input_ids=ids, use_cache=True)
    assert isinstance(out, CodeLMOutput) and out.logits.shape == (3, 10, VOCAB_SIZE)
    assert out.past_key_values is None
    assert len(cached.past_key_values) == TINY["n_layers"]
    for k, v in cached.past_key_values:
        assert k.shape == v.shape == (3, TINY["n_heads"], 10, TINY["d_model"] // TINY["n_heads"])
    assert model.get_input_embeddings() is model.token_embedding
    assert isinstance(model.get_input_embeddings(), torch.nn.Embedding)
    assert model.get_input_embeddings().weight.shape == (VOCAB_SIZE, TINY["d_model"])
    assert (model.vocab_size, model.context_length, model.d_model) == (VOCAB_SIZE, 64, 32)
    assert model.config.hidden_size == 32 and model.config.max_position_embeddings == 64
    with pytest.raises(ValueError):
        CodeLM(d_model=30, n_heads=4)
    with pytest.raises(ValueError):
        CodeLM(vocab_size=1)
    # A sub-word vocabulary (the BPE code LM): ids up to vocab_size - 1, refused from vocab_size on.
    sub_word = CodeLM(**TINY, vocab_size=300).eval()
    assert sub_word(input_ids=torch.tensor([[299, 0, 5]])).logits.shape == (1, 3, 300)
    with pytest.raises(InvalidInputError, match=r"\[0, 300\)"):
        sub_word(input_ids=torch.tensor([[300]]))


def test_causal_masking() -> None:
    model = _tiny()
    ids = torch.randint(VOCAB_SIZE, (2, 20), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[:, 12] = (changed[:, 12] + 1) % VOCAB_SIZE
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=changed).logits
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=1e-6)
    assert (a[:, 12:] - b[:, 12:]).abs().amax(dim=-1).min() > 1e-4  # every later position sees the change


def test_inputs_embeds_equals_input_ids_and_carries_gradients() -> None:
    model = _tiny()
    ids = torch.randint(VOCAB_SIZE, (2, 15), generator=torch.Generator().manual_seed(2))
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    by_embeds = model(inputs_embeds=embeds).logits
    with torch.no_grad():
        by_ids = model(input_ids=ids).logits
    torch.testing.assert_close(by_embeds.detach(), by_ids, rtol=0, atol=0)
    by_embeds[:, -1].logsumexp(-1).sum().backward()  # an embedding-space attack needs this gradient
    assert embeds.grad is not None and bool(torch.isfinite(embeds.grad).all()) and embeds.grad.abs().sum() > 0


def _greedy(model: CodeLM, prompt: torch.Tensor, steps: int, cached: bool) -> tuple[list[int], torch.Tensor]:
    tokens, logits_per_step = prompt.clone(), []
    with torch.no_grad():
        if cached:
            out = model(input_ids=prompt, use_cache=True)
        for _ in range(steps):
            if not cached:
                out = model(input_ids=tokens)
            last = out.logits[:, -1]
            logits_per_step.append(last)
            nxt = last.argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, nxt], dim=1)
            if cached:
                out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
    return tokens[0, prompt.shape[1]:].tolist(), torch.stack(logits_per_step)


def test_kv_cached_greedy_decoding_equals_recomputation(lm: CodeLM) -> None:
    prompt = encode("import os\n\ndef read_config(path):\n    ").unsqueeze(0)
    tokens_full, logits_full = _greedy(lm, prompt, 20, cached=False)
    tokens_cached, logits_cached = _greedy(lm, prompt, 20, cached=True)
    assert tokens_cached == tokens_full
    # Logits reach |20|: float32 rounding of the differently ordered sums stays below 1e-4 (measured 5e-5).
    torch.testing.assert_close(logits_cached, logits_full, rtol=0, atol=1e-4)
    assert len(set(tokens_full)) > 3  # a real continuation, not one repeated byte


def test_chunked_prefill_and_explicit_position_offset_match_the_full_pass() -> None:
    model = _tiny()
    ids = torch.randint(VOCAB_SIZE, (2, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        first = model(input_ids=ids[:, :11], use_cache=True)
        # Several new tokens on top of a cache: the causal mask must be offset by the cache length.
        second = model(input_ids=ids[:, 11:], past_key_values=first.past_key_values, use_cache=True)
        explicit = model(input_ids=ids[:, 11:], past_key_values=first.past_key_values, position_offset=11)
        wrong = model(input_ids=ids[:, 11:], past_key_values=first.past_key_values, position_offset=0)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), full, rtol=0, atol=1e-5)
    torch.testing.assert_close(explicit.logits, second.logits, rtol=0, atol=0)
    assert not torch.allclose(wrong.logits, second.logits, atol=1e-4)
    assert second.past_key_values[0][0].shape[2] == 30


def test_expand_cache_continues_every_copy() -> None:
    model = _tiny()
    ids = torch.randint(VOCAB_SIZE, (2, 8), generator=torch.Generator().manual_seed(4))
    nxt = torch.randint(VOCAB_SIZE, (6, 1), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        prefix = model(input_ids=ids, use_cache=True).past_key_values
        expanded = model(input_ids=nxt, past_key_values=expand_cache(prefix, 3)).logits
        direct = model(input_ids=torch.cat([ids.repeat_interleave(3, 0), nxt], 1)).logits[:, -1:]
    torch.testing.assert_close(expanded, direct, rtol=0, atol=1e-5)
    with pytest.raises(InvalidInputError):
        expand_cache(prefix, 0)


def test_invalid_inputs_raise_clear_errors() -> None:
    model = _tiny()
    ids = torch.zeros(1, 5, dtype=torch.int64)
    embeds = torch.zeros(1, 5, TINY["d_model"])
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
    cases = [
        ({}, "exactly one"),
        ({"input_ids": ids, "inputs_embeds": embeds}, "exactly one"),
        ({"input_ids": torch.zeros(1, 65, dtype=torch.int64)}, "context length 64"),
        ({"input_ids": torch.zeros(1, 60, dtype=torch.int64), "past_key_values": cache}, "context length 64"),
        ({"input_ids": ids, "position_offset": 60}, "context length"),
        ({"input_ids": ids, "position_offset": -1}, "position_offset"),
        ({"input_ids": torch.tensor([[1, 256]])}, r"\[0, 256\)"),
        ({"input_ids": torch.tensor([[-1, 2]])}, r"\[0, 256\)"),
        ({"input_ids": torch.tensor([[1.0, 2.0]])}, "integer"),
        ({"input_ids": torch.tensor([1, 2])}, r"\[batch, length\]"),
        ({"input_ids": torch.zeros(1, 0, dtype=torch.int64)}, "empty"),
        ({"inputs_embeds": torch.zeros(1, 5, 7)}, "d_model"),
        ({"inputs_embeds": torch.zeros(5, TINY["d_model"])}, "inputs_embeds"),
        ({"inputs_embeds": torch.zeros(1, 5, TINY["d_model"], dtype=torch.int64)}, "floating"),
        ({"inputs_embeds": torch.zeros(1, 5, TINY["d_model"], dtype=torch.float64)}, "dtype"),
        ({"input_ids": ids, "past_key_values": cache[:1]}, "past_key_values"),
        ({"input_ids": torch.zeros(2, 5, dtype=torch.int64), "past_key_values": cache}, "cache tensor"),
        ({"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 0, 1, 1]])}, "padding"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InvalidInputError, match=message):
            model(**kwargs)
    model(input_ids=ids, attention_mask=torch.ones(1, 5))  # all-ones masks (HF callers) are accepted


# ----------------------------------------------------------------------------------------- shipped model


def test_shipped_lm_loads_with_its_record(lm: CodeLM) -> None:
    record = _record()
    assert isinstance(lm, CodeLM) and not lm.training
    assert record["kind"] == "lm" and record["kwargs"] == LM_KWARGS and record["seed"] == 0
    assert sum(p.numel() for p in lm.parameters()) == record["num_parameters"]
    path = WEIGHTS_DIR / record["file"]
    assert path.stat().st_size < MAX_LM_WEIGHTS_BYTES
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"]
    assert load_lm() is not lm  # a fresh model each call
    heldout, unigram = record["heldout"], record["heldout_unigram_baseline"]
    assert heldout["bits_per_byte"] < unigram["bits_per_byte"] - 1.5
    assert heldout["accuracy"] > unigram["accuracy"] + 0.25
    assert record["corpus"]["heldout_files"] == len(record["corpus"]["heldout_file_list"]) > 0


def test_shipped_lm_reaches_its_recorded_heldout_metrics(lm: CodeLM) -> None:
    recorded = _record()["heldout_slice"]
    texts = lm_heldout_slice()
    metrics = lm_metrics(lm, texts)
    if _texts_sha256(texts) == recorded["sha256"]:
        # The same bytes as at training time: only float summation order may differ.
        assert metrics["num_predicted_bytes"] == recorded["num_predicted_bytes"]
        assert metrics["accuracy"] == pytest.approx(recorded["accuracy"], abs=2e-3)
        assert metrics["bits_per_byte"] == pytest.approx(recorded["bits_per_byte"], abs=2e-3)
    else:  # another Python patch release: slightly different files, similar quality
        assert metrics["accuracy"] == pytest.approx(recorded["accuracy"], abs=0.05)
        assert metrics["bits_per_byte"] == pytest.approx(recorded["bits_per_byte"], abs=0.25)
    assert metrics["bits_per_byte"] < MAX_SLICE_BITS_PER_BYTE and metrics["accuracy"] > MIN_SLICE_ACCURACY
    # Even the unigram fitted on the evaluation bytes themselves is far behind.
    unigram = unigram_metrics(texts, texts)
    assert metrics["bits_per_byte"] < unigram["bits_per_byte"] - 1.5
    assert metrics["accuracy"] > unigram["accuracy"] + 0.25
    assert metrics["perplexity"] == pytest.approx(2.0 ** metrics["bits_per_byte"])


def test_load_lm_reports_missing_and_corrupt_weights(tmp_path, monkeypatch) -> None:
    record = _record()
    (tmp_path / "models.json").write_text(json.dumps({"models": {LM_NAME: record}}), encoding="utf-8")
    monkeypatch.setattr(models, "WEIGHTS_DIR", tmp_path)
    models._metadata.cache_clear()
    try:
        with pytest.raises(ModelLoadError, match="CodeLM"):
            load_lm()  # missing file
        (tmp_path / record["file"]).write_bytes(b"not a safetensors file")
        with pytest.raises(ModelLoadError, match="CodeLM"):
            load_lm()
        shutil.copy(WEIGHTS_DIR / record["file"], tmp_path / record["file"])
        assert isinstance(load_lm(), CodeLM)
        (tmp_path / "models.json").write_text(json.dumps({"models": {}}), encoding="utf-8")
        models._metadata.cache_clear()
        with pytest.raises(ModelLoadError, match="no language model"):
            load_lm()
    finally:
        models._metadata.cache_clear()


# ---------------------------------------------------------------------------------- corpus and training


def test_corpus_split_is_deterministic_and_disjoint() -> None:
    train, heldout = lm_corpus_files()
    assert train == sorted(train) and heldout == sorted(heldout) and not set(train) & set(heldout)
    assert 0.02 < len(heldout) / (len(train) + len(heldout)) < 0.10
    assert all(is_heldout_file(name) for name in heldout) and not any(is_heldout_file(name) for name in train)
    assert not any(set(name.split("/")[:-1]) & LM_EXCLUDED_DIRS for name in train + heldout)
    assert "functools.py" in heldout and "os.py" in train  # the rule depends on the path only
    assert all(is_heldout_file(name) for name in _record()["corpus"]["heldout_file_list"])
    texts = heldout_texts(max_files=3, max_chars=100)
    assert len(texts) == 3 and all(0 < len(t) <= 100 for t in texts)
    assert [len(t) for t in lm_heldout_slice()] == [min(LM_SLICE_CHARS, len(t)) for t in heldout_texts()]


def test_lm_metrics_counts_every_byte_but_the_first() -> None:
    model = _tiny()
    texts = ["a" * 200, "xyz", b"\x00\x01"]  # 200 bytes span several 64-byte windows
    metrics = lm_metrics(model, texts, batch_size=2)
    assert metrics["num_predicted_bytes"] == 199 + 2 + 1
    assert metrics == pytest.approx(lm_metrics(model, texts, batch_size=7))
    with pytest.raises(InvalidParameterError):
        lm_metrics(model, ["a"])
    unigram = unigram_metrics(["aab"], ["aaaa"])
    assert unigram["accuracy"] == 1.0 and unigram["num_predicted_bytes"] == 3


def test_lm_training_is_deterministic_and_leaves_global_state_alone() -> None:
    tiny = {"d_model": 16, "n_layers": 1, "n_heads": 2, "context_length": 32}
    rng_before = torch.random.get_rng_state()
    model_a, record_a = train_lm(steps=2, seed=0, batch_size=2, evaluate=False, **tiny)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    model_b, record_b = train_lm(steps=2, seed=0, batch_size=2, evaluate=False, **tiny)
    for key, value in model_a.state_dict().items():
        assert torch.equal(value, model_b.state_dict()[key]), key
    assert record_a["final_train_loss_ema"] == record_b["final_train_loss_ema"]
    assert record_a["kwargs"] == {**LM_KWARGS, **tiny} and record_a["steps"] == 2
    model_c, _ = train_lm(steps=2, seed=1, batch_size=2, evaluate=False, **tiny)
    assert any(not torch.equal(v, model_c.state_dict()[k]) for k, v in model_a.state_dict().items())


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"seed": -1}, {"learning_rate": 0.0}, {"width": 3}])
def test_lm_training_rejects_invalid_parameters(kwargs: dict) -> None:
    with pytest.raises(InvalidParameterError):
        train_lm(**kwargs)


def test_train_command_lm_usage_errors() -> None:
    for argv in (["lm", "--epochs", "3"], ["lm", "--sigma", "0.5"], ["classifier", "--steps", "3"], ["lm", "--steps", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
