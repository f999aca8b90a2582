"""Tests of the code LMs fine-tuned for a smoothing distribution (`finetune_lm`, ``load_lm(name)``)."""
from __future__ import annotations

import hashlib

import pytest
import torch

from smoothgen.errors import InvalidParameterError, ModelLoadError
from smoothgen.models import DEFAULT_LM_NAME, WEIGHTS_DIR, CodeLM, lm_names, load_lm, model_info
from smoothgen.models.train_code_lm import (
    ABLATION_MASK_TOKEN,
    DEFAULT_LM_DELETE_PROBS,
    DEFAULT_LM_GAUSS_SIGMAS,
    DEFAULT_LM_KEEP_FRACTIONS,
    LM_KWARGS,
    LM_NAME,
    _delete_prompts,
    _perturb_prompts,
    _texts_sha256,
    ablation_keep,
    finetune_lm,
    finetuned_lm_name,
    line_break_ids,
    lm_heldout_slice,
    lm_smoothed_metrics,
)
from smoothgen.models.train import main

SHIPPED = ([("ablate", f) for f in DEFAULT_LM_KEEP_FRACTIONS] + [("gauss", s) for s in DEFAULT_LM_GAUSS_SIGMAS]
           + [("delete", p) for p in DEFAULT_LM_DELETE_PROBS])
TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "context_length": 48}
TINY_RUN = {"steps": 2, "batch_size": 2, "prompt_lengths": (4, 24), "evaluate": False}


def _tiny(seed: int = 0) -> CodeLM:
    torch.manual_seed(seed)
    return CodeLM(**TINY).eval()


def _records() -> dict:
    return model_info()["models"]


# ------------------------------------------------------------------------------------------ shipped models


def test_names_and_the_mask_token() -> None:
    assert finetuned_lm_name("ablate", 0.25) == "code_lm_ablate0.25"
    assert finetuned_lm_name("gauss", 0.5) == "code_lm_gauss0.5"
    assert finetuned_lm_name("delete", 0.9) == "code_lm_delete0.9"
    bpe = ["code_bpe", finetuned_lm_name("delete", 0.9, "code_bpe")]  # the word-piece LMs (train_code_bpe)
    assert lm_names() == sorted([LM_NAME, *(finetuned_lm_name(n, v) for n, v in SHIPPED), *bpe])
    assert DEFAULT_LM_NAME == LM_NAME == "code_lm" and ABLATION_MASK_TOKEN == 0
    assert ablation_keep(0.25, 64) == 16 and ablation_keep(0.25, 8) == 2 and ablation_keep(0.01, 8) == 1


@pytest.mark.parametrize(("noise", "level"), SHIPPED)
def test_shipped_finetuned_records_files_and_metrics(noise: str, level: float) -> None:
    records = _records()
    record, base = records[finetuned_lm_name(noise, level)], records[LM_NAME]
    assert record["kind"] == "lm" and record["architecture"] == "CodeLM" and record["kwargs"] == LM_KWARGS
    assert record["base_model"] == LM_NAME and record["base_sha256"] == base["sha256"]
    assert record["noise"] == noise and record["noise_level"] == level and record["seed"] == 0
    assert record["mask_token_id"] == (ABLATION_MASK_TOKEN if noise in ("ablate", "delete") else None)
    assert record["steps"] >= 1 and record["train_seconds"] > 0 and record["prompt_lengths"] == [8, 160]
    assert record["file"] == f"{finetuned_lm_name(noise, level)}.safetensors"
    assert hashlib.sha256((WEIGHTS_DIR / record["file"]).read_bytes()).hexdigest() == record["sha256"]
    clean, smoothed = record["heldout_slice"], record["smoothed_heldout_slice"]
    assert clean["sha256"] == base["heldout_slice"]["sha256"]
    assert 0 < clean["accuracy"] < 1 and clean["bits_per_byte"] > 0 and record["heldout"]["bits_per_byte"] > 0
    assert smoothed["noise"] == noise and smoothed["noise_level"] == level and smoothed["copies"] >= 2
    assert smoothed["prompt_length"] == 64 and smoothed["num_prompts"] > 100
    if noise == "ablate":
        assert smoothed["keep"] == ablation_keep(level, 64) and smoothed["mask_token_id"] == 0
    for key in ("model", "base", "model_unsmoothed", "base_unsmoothed"):
        assert smoothed[key]["num_predicted_bytes"] == smoothed["num_prompts"]
    # Training for the smoothing distribution improves the smoothed predictor over the clean code LM's.
    # Under ablation a lot (the clean model has never seen the MASK byte); under sigma = 0.5 the prompt
    # keeps little information (nearest-row decoding of a noisy embedding is right for ~1 byte in 4), so
    # only the likelihood and the confidence of the first step improve, not its argmax accuracy.
    # Under deletion the gain is small: a copy is a shorter run of real bytes, which the clean model reads
    # as text, while under ablation it has never seen the MASK byte (benchmarks/RESULTS.md).
    gain = 0.05 if noise == "delete" else 0.1
    assert smoothed["model"]["bits_per_byte"] < smoothed["base"]["bits_per_byte"] - gain
    assert smoothed["model"]["mean_top_probability"] > smoothed["base"]["mean_top_probability"] + 0.05
    if noise == "delete":
        assert smoothed["model"]["accuracy"] >= smoothed["base"]["accuracy"]
    if noise == "ablate":
        assert smoothed["model"]["accuracy"] > smoothed["base"]["accuracy"] + 0.1
        assert smoothed["model"]["bits_per_byte"] < smoothed["base"]["bits_per_byte"] - 1.0


def test_load_lm_by_name() -> None:
    default, named = load_lm(), load_lm(LM_NAME)
    for key, value in default.state_dict().items():
        assert torch.equal(value, named.state_dict()[key]), key
    for name in lm_names():
        model = load_lm(name)
        assert isinstance(model, CodeLM) and not model.training
        assert sum(p.numel() for p in model.parameters()) == _records()[name]["num_parameters"]
    with pytest.raises(ModelLoadError, match="code_lm_gauss0.5"):  # the message lists the known names
        load_lm("code_lm_gauss9")
    with pytest.raises(ModelLoadError, match="no language model"):
        load_lm("digits_ddpm")  # a model, but not an LM
    with pytest.raises(InvalidParameterError):
        load_lm(0.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("sigma", DEFAULT_LM_GAUSS_SIGMAS)
def test_gauss_model_keeps_code_lm_embedding_exactly(sigma: float) -> None:
    tuned, base = load_lm(finetuned_lm_name("gauss", sigma)), load_lm()
    assert torch.equal(tuned.get_input_embeddings().weight, base.get_input_embeddings().weight)
    assert not torch.equal(tuned.blocks[0].qkv.weight, base.blocks[0].qkv.weight)  # the rest was trained


def test_recorded_unsmoothed_prompt_metrics_reproduce() -> None:
    texts = lm_heldout_slice()
    for noise, level in SHIPPED:
        name = finetuned_lm_name(noise, level)
        recorded = _records()[name]["smoothed_heldout_slice"]
        if _texts_sha256(texts) != _records()[name]["heldout_slice"]["sha256"]:
            pytest.skip("another Python release: the held-out slice differs")
        metrics = lm_smoothed_metrics(load_lm(name), texts, None, prompt_length=recorded["prompt_length"],
                                      stride=recorded["stride"])
        assert metrics["num_predicted_bytes"] == recorded["num_prompts"]
        assert metrics["accuracy"] == pytest.approx(recorded["model_unsmoothed"]["accuracy"], abs=2e-3)
        assert metrics["bits_per_byte"] == pytest.approx(recorded["model_unsmoothed"]["bits_per_byte"], abs=2e-3)


# ---------------------------------------------------------------------------------------------- training


def test_training_perturbations_follow_the_smoothing_distribution() -> None:
    model = _tiny()
    ids = torch.randint(1, 256, (3, 40), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([8, 20, 33])
    table = model.get_input_embeddings().weight
    ablated = _perturb_prompts(model, ids, lengths, "ablate", 0.25, 0, torch.Generator().manual_seed(1))
    for row, length in enumerate(lengths.tolist()):
        masked = (ablated[row] == table[0]).all(dim=1)
        assert int(masked[:length].sum()) == length - ablation_keep(0.25, length)
        assert not masked[length:].any()
        assert torch.equal(ablated[row, ~masked], table[ids[row, ~masked]])
    noisy = _perturb_prompts(model, ids, lengths, "gauss", 0.5, 0, torch.Generator().manual_seed(1))
    changed = (noisy != table[ids]).any(dim=2)
    assert torch.equal(changed, torch.arange(40)[None] < lengths[:, None])
    # Deletion: each prompt byte goes with probability p, the rest closes up in order, the continuation stays
    # whole, the row is padded at its end; a prompt that lost everything is the pad token alone.
    windows = torch.randint(1, 256, (400, 41), generator=torch.Generator().manual_seed(2))
    prompt_lengths = torch.full((400,), 20)
    deleted, kept = _delete_prompts(windows, prompt_lengths, 0.75, 0, torch.Generator().manual_seed(3))
    assert abs(float(kept.double().mean()) - 5.0) < 0.4  # 20 · (1 − 0.75), 400 rows
    for row in range(400):
        k = int(kept[row])
        assert torch.equal(deleted[row, k:k + 21], windows[row, 20:])  # the continuation, whole
        assert (deleted[row, k + 21:] == 0).all()
        prompt = deleted[row, :k].tolist()
        source = iter(windows[row, :20].tolist())
        assert all(any(b == a for a in source) for b in prompt)  # a subsequence of the prompt, in order
    empty, kept = _delete_prompts(windows[:3], torch.full((3,), 2), 0.999999, 0, torch.Generator().manual_seed(0))
    assert kept.tolist() == [1, 1, 1] and (empty[:, 0] == 0).all()


def test_deletion_keeping_the_last_line_perturbs_only_the_lines_before_it() -> None:
    """keep_last_line: a prompt holding a line break before its last token loses tokens only up to and
    including its last such break (smoothgen generate's --perturb context); the last line, the continuation
    and a one-line prompt's treatment (all of it perturbed) are as `perturbed_positions` has them."""
    from smoothgen.text_generation import perturbed_positions

    breaks = line_break_ids(256)
    assert breaks.tolist() == [i == 10 for i in range(256)]
    rng = torch.Generator().manual_seed(5)
    windows = torch.randint(32, 127, (300, 41), generator=rng)  # printable bytes: no line break yet
    windows[:200, 6] = 10
    windows[:100, 13] = 10  # rows 0-99: the last break at 13; rows 100-199: at 6; rows 200-299: none
    windows[:, 19] = 10  # the last prompt byte is a break too: it does not start a line of the prompt
    lengths = torch.full((300,), 20)
    deleted, kept = _delete_prompts(windows, lengths, 0.75, 0, torch.Generator().manual_seed(3), breaks)
    for row in range(300):
        mask, _ = perturbed_positions(windows[row, :20], None, "delete", None)
        fixed = windows[row, :20][~torch.tensor(mask)]
        k = int(kept[row])
        assert fixed.numel() == (6 if row < 100 else 13 if row < 200 else 0)
        assert torch.equal(deleted[row, k - fixed.numel():k], fixed)  # the last line, whole
        assert torch.equal(deleted[row, k:k + 21], windows[row, 20:])  # the continuation, whole
        source = iter(windows[row, :20 - fixed.numel()].tolist())
        assert all(any(b == a for a in source) for b in deleted[row, :k - fixed.numel()].tolist())
    perturbed = (kept - torch.tensor([6] * 100 + [13] * 100 + [0] * 100)).double()
    assert abs(float(perturbed[:100].mean()) - 14 * 0.25) < 0.5 and abs(float(perturbed[200:].mean()) - 5) < 0.6
    with pytest.raises(InvalidParameterError, match="keep_last_line"):
        finetune_lm("ablate", 0.25, base=_tiny(), keep_last_line=True, **TINY_RUN)
    _, record = finetune_lm("delete", 0.75, seed=0, base=_tiny(), keep_last_line=True, **TINY_RUN)
    _, plain = finetune_lm("delete", 0.75, seed=0, base=_tiny(), **TINY_RUN)
    assert "last line kept whole" in record["perturbed"] and "perturbed" not in plain
    assert record["final_train_loss_ema"] != plain["final_train_loss_ema"]


def test_finetune_is_deterministic_and_freezes_the_gauss_embedding() -> None:
    base = _tiny()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    rng_before = torch.random.get_rng_state()
    for noise, level in (("ablate", 0.25), ("gauss", 0.5), ("delete", 0.75)):
        model_a, record_a = finetune_lm(noise, level, seed=0, base=base, **TINY_RUN)
        model_b, record_b = finetune_lm(noise, level, seed=0, base=base, **TINY_RUN)
        for key, value in model_a.state_dict().items():
            assert torch.equal(value, model_b.state_dict()[key]), key
        assert record_a["final_train_loss_ema"] == record_b["final_train_loss_ema"]
        assert record_a["noise"] == noise and record_a["steps"] == 2 and record_a["kwargs"] == TINY
        assert record_a["base_model"] is None  # a model passed in, not an embedded one
        model_c, _ = finetune_lm(noise, level, seed=1, base=base, **TINY_RUN)
        assert not torch.equal(model_a.blocks[0].qkv.weight, model_c.blocks[0].qkv.weight)
        same_table = torch.equal(model_a.get_input_embeddings().weight, base.get_input_embeddings().weight)
        assert same_table == (noise == "gauss")
        assert all(p.requires_grad for p in model_a.parameters())
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    for key, value in base.state_dict().items():  # the caller's model is not changed
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("kwargs", [
    {"noise": "dropout", "level": 0.5}, {"noise": "ablate", "level": 0.0}, {"noise": "ablate", "level": 1.5},
    {"noise": "gauss", "level": -1.0}, {"noise": "gauss", "level": 0.5, "prompt_lengths": (0, 10)},
    {"noise": "delete", "level": 1.0}, {"noise": "delete", "level": 0.0},
    {"noise": "gauss", "level": 0.5, "prompt_lengths": (10, 5)},
    {"noise": "gauss", "level": 0.5, "prompt_lengths": (8, 49)},  # longer than the tiny context (48)
    {"noise": "ablate", "level": 0.5, "mask_token_id": 256}, {"noise": "ablate", "level": 0.5, "steps": 0},
])
def test_finetune_rejects_invalid_parameters(kwargs: dict) -> None:
    with pytest.raises(InvalidParameterError):
        finetune_lm(**{"base": _tiny(), "evaluate": False, **kwargs})


def test_finetune_rejects_an_unknown_base() -> None:
    with pytest.raises(ModelLoadError):
        finetune_lm("ablate", 0.25, steps=1, base="no_such_lm", evaluate=False)
    with pytest.raises(InvalidParameterError):
        finetune_lm("ablate", 0.25, steps=1, base=3, evaluate=False)  # type: ignore[arg-type]


def test_smoothed_metrics_are_deterministic_and_count_the_prompts() -> None:
    model = _tiny()
    texts = ["def f(x):\n    return x + 1\n" * 4, "ab" * 10]  # 112 and 20 bytes
    for noise, level in ((None, 0.0), ("ablate", 0.25), ("gauss", 0.5)):
        metrics = lm_smoothed_metrics(model, texts, noise, level, prompt_length=16, stride=8, copies=4)
        assert metrics["num_predicted_bytes"] == len(range(0, 112 - 16, 8)) + len(range(0, 20 - 16, 8))
        again = lm_smoothed_metrics(model, texts, noise, level, prompt_length=16, stride=8, copies=4, batch_prompts=3)
        assert again == pytest.approx(metrics)
        assert 0 <= metrics["accuracy"] <= 1 and metrics["bits_per_byte"] > 0
        assert ("plugin_threshold" in metrics) == (noise is not None)
    assert lm_smoothed_metrics(model, texts, "ablate", 0.25, prompt_length=16, copies=4)["plugin_threshold"] == 0.75
    with pytest.raises(InvalidParameterError):
        lm_smoothed_metrics(model, ["short"], None, prompt_length=16)


def test_train_command_finetune_usage_errors() -> None:
    for argv in (["lm-ablate", "--sigma", "0.5"], ["lm-gauss", "--keep-fraction", "0.5"],
                 ["lm", "--keep-fraction", "0.2"],
                 ["lm-ablate", "--keep-fraction", "1.5"], ["lm-ablate", "--keep-fraction", "0"],
                 ["lm-gauss", "--sigma", "0"], ["lm-gauss", "--epochs", "3"], ["lm-ablate", "--steps", "0"],
                 ["lm-ablate", "--keep-last-line"], ["all", "--keep-last-line"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2, argv


@pytest.mark.parametrize(("argv", "keep_last_line"), [([], False), (["--keep-last-line"], True)])
def test_lm_delete_keeps_the_last_line_only_when_told(monkeypatch, tmp_path, argv, keep_last_line) -> None:
    """`lm-delete` fine-tunes on whole-prompt deletion, as the shipped code_lm_delete0.9 was trained;
    --keep-last-line deletes only from the lines before the last (smoothgen generate's --perturb context).
    (The fine-tune itself is stopped at its call: it takes minutes.)"""
    import smoothgen.models.train as train

    class Called(Exception):
        pass

    def finetune(*args, **kwargs):
        raise Called(args, kwargs)

    monkeypatch.setattr(train, "finetune_lm", finetune)
    with pytest.raises(Called) as info:
        main(["lm-delete", "--out", str(tmp_path), *argv])
    args, kwargs = info.value.args
    assert args[:2] == ("delete", 0.9) and kwargs["keep_last_line"] is keep_last_line
