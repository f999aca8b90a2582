"""Tests of the BPE code LM: its tokenizer (word pieces, line breaks, the mask token), training through the
shared LM loop, and the shipped code_bpe models."""
from __future__ import annotations

import functools
import hashlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelLoadError
from smoothgen.generative import SmoothedLM, TokenAblation
from smoothgen.models import WEIGHTS_DIR, CodeLM, load_lm, load_tokenizer, model_info
from smoothgen.models.bpe import MASK_TOKEN, CodeTokenizer, train_code_tokenizer
from smoothgen.models.train_code_lm import finetune_lm, heldout_texts, lm_metrics, train_lm
from smoothgen.models.train_code_bpe import BPE_LM_NAME, BPE_VOCAB_SIZE, main

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 4, "context_length": 64}


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer() -> CodeTokenizer:
    return train_code_tokenizer(heldout_texts(max_files=3), 400)


@pytest.mark.parametrize("text", ["", "def f(x):\n    return x + 1\n", "héllo → ∑ 😀 naïve 中文", "\x00\x7f\r\n\t",
                                  "a<mask>b", "\n\n\n    \n"])
def test_tokenizer_round_trip_and_byte_lengths(text: str) -> None:
    tok = _tiny_tokenizer()
    ids = tok.encode(text)
    assert ids.dtype == torch.int64 and ids.ndim == 1
    assert tok.decode(ids) == text
    assert sum(tok.byte_length(i) for i in ids.tolist()) == len(text.encode("utf-8"))
    assert 0 not in ids.tolist()  # "<mask>" written in text is text, never the mask token


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_tokenizer_round_trips_any_text_and_isolates_line_breaks(text: str) -> None:
    tok = _tiny_tokenizer()
    ids = tok.encode(text).tolist()
    assert tok.decode(ids) == text
    # A line break is a token of its own: the tokens after the last one spell exactly the last line, so
    # edits of earlier lines never change them (the CLI's "context" threat model).
    assert [i for i in ids if "\n" in tok.piece(i)] == [i for i in ids if tok.piece(i) == "\n"]
    if "\n" in text:
        last = max(j for j, i in enumerate(ids) if tok.piece(i) == "\n")
        assert tok.decode(ids[last + 1:]) == text.rsplit("\n", 1)[1]
        assert ids[last + 1:] == tok.encode(text.rsplit("\n", 1)[1]).tolist()


def test_tokenizer_word_pieces_and_refusals() -> None:
    tok = _tiny_tokenizer()
    assert tok.mask_token_id == 0 and tok.piece(0) == "" and tok.vocab_size == 400
    pieces = [tok.piece(i) for i in tok.encode("    return self\n").tolist()]
    assert "".join(pieces) == "    return self\n" and len(pieces) < 8  # merged pieces, not bytes
    with pytest.raises(InvalidInputError):
        tok.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        tok.encode("\ud800")
    for bad in ([400], [-1], [[1, 2]], "text", [0.5]):
        with pytest.raises(InvalidInputError):
            tok.decode(bad)


def test_tokenizer_file_round_trip_and_bad_files(tmp_path) -> None:
    tok = _tiny_tokenizer()
    tok.save(tmp_path / "t.json")
    again = CodeTokenizer.from_file(tmp_path / "t.json")
    text = "class A:\n    def f(self):\n        pass\n"
    assert again.encode(text).tolist() == tok.encode(text).tolist()
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ModelLoadError):
        CodeTokenizer.from_file(tmp_path / "bad.json")
    with pytest.raises(ModelLoadError):
        CodeTokenizer.from_file(tmp_path / "missing.json")


def test_training_and_finetuning_run_on_sub_word_tokens(tmp_path) -> None:
    from smoothgen.models.train_code_lm import stdlib_root

    for name in ("abc.py", "bisect.py", "chunk.py"):  # chunk.py is a held-out file
        (tmp_path / name).write_bytes((stdlib_root() / name).read_bytes())
    tok = _tiny_tokenizer()
    model, record = train_lm(2, 0, batch_size=2, evaluate=False, tokenizer=tok, stored_dtype=torch.float16,
                             root=tmp_path, **TINY)
    assert model.vocab_size == 400 and record["kwargs"]["vocab_size"] == 400
    assert record["stored_dtype"] == "float16" and "BPE" in record["tokenizer"]
    assert record["corpus"]["train_tokens"] < record["corpus"]["train_bytes"]
    # The weights are what float16 stores: rounding them again changes nothing.
    for p in model.parameters():
        assert torch.equal(p, p.half().float())
    tuned, tuned_record = finetune_lm("delete", 0.9, 2, 0, base=model, batch_size=2, evaluate=False, tokenizer=tok,
                                      prompt_lengths=(4, 40), root=tmp_path)
    assert tuned.vocab_size == 400 and tuned_record["loss"].startswith("next-token")
    # Without its tokenizer the stream would be bytes, ids that mean other tokens to this model: refused.
    with pytest.raises(InvalidParameterError, match="needs its tokenizer"):
        finetune_lm("delete", 0.9, 1, 0, base=model, batch_size=2, evaluate=False, root=tmp_path)
    metrics = lm_metrics(model, ["def f(x):\n    return x\n" * 3], tokenizer=tok)
    assert metrics["num_predicted_bytes"] == len(("def f(x):\n    return x\n" * 3).encode()) - tok.byte_length(
        tok.encode("def").tolist()[0])
    assert metrics["bits_per_byte"] == pytest.approx(
        metrics["nll_nats_per_token"] * metrics["num_predicted_tokens"] / metrics["num_predicted_bytes"] / 0.6931471805599453)


def test_sub_word_codelm_refuses_string_prompts_without_its_tokenizer() -> None:
    torch.manual_seed(0)
    model = CodeLM(**TINY, vocab_size=400).eval()
    with pytest.raises(InvalidInputError, match="tokenizer"):
        SmoothedLM(model, TokenAblation(1, 0)).generate("def f(", 1, n0=2, n=2, seed=0)
    cert = SmoothedLM(model, TokenAblation(1, 0), tokenizer=_tiny_tokenizer()).generate("def f(", 1, n0=2, n=2, seed=0)
    assert len(cert.tokens) == 1


@pytest.mark.parametrize(("argv", "keep_last_line"), [([], True), (["--whole-prompt"], False)])
def test_the_deletion_fine_tune_keeps_the_last_line_unless_told(monkeypatch, tmp_path, argv, keep_last_line) -> None:
    """`delete` fine-tunes on smoothgen generate's default threat model (the last line whole); --whole-prompt
    deletes from the whole prompt. (The fine-tune itself is stopped at its call: it takes ten minutes.)"""
    import smoothgen.models.train_code_bpe as train_code_bpe

    class Called(Exception):
        pass

    def finetune(*args, **kwargs):
        raise Called(kwargs)

    monkeypatch.setattr(train_code_bpe, "finetune_lm", finetune)
    with pytest.raises(Called) as info:
        main(["delete", "--out", str(tmp_path), *argv])
    assert info.value.args[0]["keep_last_line"] is keep_last_line


def test_train_command_usage_errors() -> None:
    for argv in (["base", "--steps", "0"], ["delete", "--delete-prob", "1"], ["nothing"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2


# ------------------------------------------------------------------------------------- shipped models


@pytest.mark.parametrize("name", [BPE_LM_NAME, f"{BPE_LM_NAME}_delete0.9"])
def test_shipped_bpe_lms_load_with_their_tokenizer(name: str) -> None:
    record = model_info()["models"][name]
    tok = load_tokenizer(name)
    assert isinstance(tok, CodeTokenizer) and tok.vocab_size == BPE_VOCAB_SIZE
    path = WEIGHTS_DIR / record["tokenizer_file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["tokenizer_sha256"]
    model = load_lm(name)
    assert model.vocab_size == BPE_VOCAB_SIZE and record["stored_dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert tok.piece(0) == "" and tok._tokenizer.id_to_token(0) == MASK_TOKEN  # noqa: SLF001
    if record.get("noise") == "delete":  # trained on generate's default threat model: the last line kept whole
        assert "last line kept whole" in record["perturbed"]
    assert load_tokenizer("code_lm") is None


def test_shipped_bpe_lm_reproduces_its_recorded_slice_metrics_and_beats_code_lm() -> None:
    from smoothgen.models.train_code_lm import lm_heldout_slice

    record = model_info()["models"][BPE_LM_NAME]
    model, tok = load_lm(BPE_LM_NAME), load_tokenizer(BPE_LM_NAME)
    measured = lm_metrics(model, lm_heldout_slice(), tokenizer=tok)
    recorded = record["heldout_slice"]
    assert measured["num_predicted_tokens"] == recorded["num_predicted_tokens"]
    assert measured["accuracy"] == pytest.approx(recorded["accuracy"], abs=1e-3)
    assert measured["bits_per_byte"] == pytest.approx(recorded["bits_per_byte"], rel=1e-3)
    # Fewer bits per byte than the byte-level code_lm on the same held-out files: the comparable measure.
    assert record["heldout"]["bits_per_byte"] < model_info()["models"]["code_lm"]["heldout"]["bits_per_byte"]


def test_tampered_tokenizer_is_refused(tmp_path, monkeypatch) -> None:
    import smoothgen.models as models

    record = model_info()["models"][BPE_LM_NAME]
    copy = tmp_path / record["tokenizer_file"]
    copy.write_bytes((WEIGHTS_DIR / record["tokenizer_file"]).read_bytes().replace(b'"merges"', b'"merges" ', 1))
    monkeypatch.setattr(models, "WEIGHTS_DIR", tmp_path)
    models._load_tokenizer_file.cache_clear()  # noqa: SLF001
    try:
        with pytest.raises(ModelLoadError, match="SHA-256"):
            load_tokenizer(BPE_LM_NAME)
    finally:
        models._load_tokenizer_file.cache_clear()  # noqa: SLF001
