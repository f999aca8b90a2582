"""all-MiniLM-L6-v2 fine-tuned for token ablation (issue 23, item 1): `smoothgen.models.ablation_encoder`.

The data (training and held-out sentences are real and disjoint), the training-time ablation (it keeps
exactly the words `TokenAblation` would, never [CLS], [SEP] or padding), the adapter (merged weights give
what peft's unmerged model gives), the shipped adapter (it brings ablated sentences back to their clean
embedding, which the original model does not), and a short training run end to end.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

pytest.importorskip("sentence_transformers")
peft = pytest.importorskip("peft")

from smoothgen.encoders import SmoothedEncoder  # noqa: E402
from smoothgen.errors import InvalidParameterError, ModelLoadError  # noqa: E402
from smoothgen.generative import TokenAblation  # noqa: E402
from smoothgen.models import ablation_encoder as ae  # noqa: E402
from smoothgen.models import model_info  # noqa: E402
from smoothgen.models.text_digits import load_text_encoder  # noqa: E402


@pytest.fixture(scope="module")
def original():
    return load_text_encoder()


@pytest.fixture(scope="module")
def ablation():
    return ae.load_ablation_encoder()


@pytest.fixture(scope="module")
def heldout():
    return ae.heldout_sentences()


def test_training_and_heldout_sentences_are_real_prose_and_disjoint(heldout):
    train = ae.training_sentences()
    assert len(train) > 5000 and len(heldout) >= 50
    assert not set(train) & set(heldout)
    for sentence in train[:200] + heldout:
        assert sentence[0].isupper() and sentence[-1] in ".?!" and ">>>" not in sentence


def test_the_shipped_record_says_what_it_was_trained_on():
    record = model_info()["models"][ae.ABLATION_ENCODER_NAME]
    assert record["dtype"] == "float16" and record["adapter_parameters"] < 2_000_000
    assert record["corpus"]["heldout_sentences"] == len(ae.heldout_sentences())
    assert record["heldout"]["0.3"]["cosine_distance_to_whole"] < 0.6 * record["heldout_original"]["0.3"]["cosine_distance_to_whole"]
    assert record["teacher"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_ablate_batch_keeps_exactly_k_words_and_never_the_special_tokens():
    rows = [[101, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 102], [101, 20, 21, 22, 102], [101, 30, 102]]
    ids, lengths = ae._pad(rows, pad_id=0)
    generator = torch.Generator().manual_seed(0)
    for fraction in (0.1, 0.3, 0.5, 0.99):
        out = ae.ablate_batch(ids, lengths, torch.full((3,), fraction), 103, generator)
        for b, row in enumerate(rows):
            words = len(row) - 2
            assert out[b, 0] == 101 and out[b, len(row) - 1] == 102 and (out[b, len(row):] == 0).all()
            kept = out[b, 1:len(row) - 1] != 103
            assert int(kept.sum()) == ae.keep_count(fraction, words)
            assert (out[b, 1:len(row) - 1][kept] == ids[b, 1:len(row) - 1][kept]).all()
    whole = ae.ablate_batch(ids, lengths, torch.ones(3), 103, generator)
    assert torch.equal(whole, ids)


def test_keep_count_and_inner_positions():
    assert ae.keep_count(0.3, 10) == 3 and ae.keep_count(0.01, 10) == 1 and ae.keep_count(1.0, 7) == 7
    assert ae.inner_positions(5) == [False, True, True, True, False]
    for bad in (0, -0.1, 1.5, math.nan, True, "0.3"):
        with pytest.raises(InvalidParameterError):
            ae.keep_count(bad, 10)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InvalidParameterError):
            ae.keep_count(0.3, bad)
    for bad in (2, 3.0, True, None):
        with pytest.raises(InvalidParameterError):
            ae.inner_positions(bad)


def test_merging_the_adapter_gives_what_the_unmerged_adapter_gives(original):
    torch.manual_seed(1)
    unmerged = peft.get_peft_model(load_text_encoder()[0].auto_model, ae._lora_config(ae.LORA_KWARGS)).eval()
    with torch.no_grad():
        for name, p in unmerged.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    tensors = {k: v.clone() for k, v in peft.get_peft_model_state_dict(unmerged).items()}
    merged = ae.apply_adapter(load_text_encoder(), tensors, ae.LORA_KWARGS)[0].auto_model.eval()
    rows = original.tokenizer(["The data set contains images.", "A household is a group."])["input_ids"]
    a = ae.embed_ids(unmerged, rows, 0)
    b = ae.embed_ids(merged, rows, 0)
    c = ae.embed_ids(original[0].auto_model, rows, 0)
    assert torch.allclose(a, b, atol=1e-5)
    assert (a - c).norm() > 1e-3  # the adapter did change the model


def test_the_shipped_adapter_brings_ablated_sentences_back_to_their_clean_embedding(original, ablation, heldout):
    tokenizer = original.tokenizer
    rows = tokenizer(heldout[:30])["input_ids"]
    teacher = ae.embed_ids(original[0].auto_model, rows, tokenizer.pad_token_id)
    before = ae.ablation_metrics(original[0].auto_model, teacher, rows, tokenizer, fractions=(0.3,), copies=2)
    after = ae.ablation_metrics(ablation[0].auto_model, teacher, rows, tokenizer, fractions=(0.3,), copies=2)
    # measured on all 83 held-out sentences: 0.869 -> 0.486 (models.json); a third less at the very least
    assert after["0.3"]["cosine_distance_to_whole"] < 0.67 * before["0.3"]["cosine_distance_to_whole"]
    assert after["0.3"]["retrieval"] > before["0.3"]["retrieval"]
    assert after["1"]["cosine_distance_to_whole"] < 0.05  # the clean embedding stays the original's


def test_smoothed_encoder_takes_the_ablation_encoder(ablation, heldout):
    tokenizer = ablation.tokenizer
    ids = torch.tensor(tokenizer(heldout[3])["input_ids"])
    keep = ae.keep_count(0.3, ids.numel() - 2)
    encoder = SmoothedEncoder(ablation, TokenAblation(keep, tokenizer.mask_token_id), mask=ae.inner_positions)
    cert = encoder.center_certify(ids, edits=1, n=200, m=400, seed=0)
    assert cert.eps_in == 1.0 and math.isfinite(cert.p)
    copies = encoder.samples(ids, 4, seed=0)
    assert copies.shape == (4, 384)


def test_a_mismatched_or_missing_adapter_is_a_model_load_error(monkeypatch):
    import smoothgen.models.text_digits as td

    real = td.encoder_record()
    monkeypatch.setattr(td, "encoder_record", lambda: {**real, "weights_sha256": "0" * 64})
    with pytest.raises(ModelLoadError, match="other all-MiniLM-L6-v2 weights"):
        ae.load_ablation_encoder()
    monkeypatch.setattr(td, "encoder_record", lambda: real)
    monkeypatch.setattr(ae, "ABLATION_ENCODER_NAME", "no_such_model")
    with pytest.raises(ModelLoadError, match="train it"):
        ae.load_ablation_encoder()


def test_a_short_training_run_end_to_end(tmp_path):
    from smoothgen.models.train_common import save_tensors

    tensors, record = ae.train_ablation_encoder(steps=2, batch_size=4, max_sentences=32, max_heldout=6)
    assert all(v.dtype == torch.float16 for v in tensors.values())
    assert record["corpus"]["train_sentences"] == 32 and record["steps"] == 2
    assert set(record["heldout"]) == {"1", "0.2", "0.3", "0.5"}
    saved = save_tensors(tensors, tmp_path, "adapter.safetensors", record)
    assert (tmp_path / "adapter.safetensors").exists() and len(saved["sha256"]) == 64
    merged = ae.apply_adapter(load_text_encoder(), tensors, record["lora"])
    z = F.normalize(torch.tensor(merged.encode(["A household is a group of people."])), dim=-1)
    assert torch.isfinite(z).all()
