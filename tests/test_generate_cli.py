"""`smoothgen generate`: the embedded LM (text) and the embedded digits DDPM (--diffusion), end to end."""
from __future__ import annotations

import json

import pytest

from smoothgen.cli import main as cli_main
from smoothgen.generate_cli import CERTIFIED_CLOSE, CERTIFIED_OPEN

TEXT = ["generate", "--samples", "40", "--selection-samples", "10", "--max-new-tokens", "6", "--batch-size", "50"]
DIFFUSION = ["generate", "--diffusion", "--label", "3", "--samples", "16", "--steps", "10"]


def test_text_generation_prints_the_certified_prefix_and_writes_json(tmp_path, capsys):
    out = tmp_path / "g.json"
    assert cli_main([*TEXT, "--prompt", "import os\nimport s", "--sigma", "0.05", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["prompt"] == "import os\nimport s" and len(record["tokens"]) == 6
    assert record["n0"] == 10 and record["n"] == 40 and record["sigma"] == 0.05 and record["alpha"] == 0.001
    k = record["certified_prefix"]
    assert 0 <= k <= 6 and record["certified_text"] == record["text"][: len(record["certified_text"])]
    # The marked text is the prompt, the certified part between the markers, then the rest.
    assert printed.startswith(f"import os\nimport s{CERTIFIED_OPEN}{record['certified_text']}{CERTIFIED_CLOSE}")
    assert record["min_substitution_radius"] > 0
    # Reproducible: the same seed gives the same record (bar the timing).
    assert cli_main([*TEXT, "--prompt", "import os\nimport s", "--sigma", "0.05", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    for key in ("tokens", "step_radius", "p_lower", "certified_prefix"):
        assert again[key] == record[key]


def test_text_generation_perturbing_only_the_last_token(capsys):
    assert cli_main([*TEXT, "--prompt", "def f(x):", "--perturb", "last", "--edits", "0", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["mask"] == [False] * 8 + [True]
    assert cli_main([*TEXT, "--prompt", "def f(x):", "--perturb", "last", "--noise", "delete", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mask"] == [False] * 8 + [True]


def test_settings_that_can_never_certify_an_edit_are_refused_with_the_reason(tmp_path, capsys):
    """--perturb last under ablation keeps the one perturbed position in every copy (keep 1 of 1): every
    edit is seen by every copy (Δ_1 = 1), so no certificate against an edit exists. Refused, not run."""
    out = tmp_path / "g.json"
    for extra in (["--perturb", "last"], ["--prompt", "import os\nimport s", "--keep", "10"]):
        argv = [*TEXT, *(["--prompt", "def f(x):"] if extra[0] == "--perturb" else []), *extra, "--out", str(out)]
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "nothing can be certified against 1 edit" in err, err
        assert not out.exists()


def test_an_interrupted_generation_says_nothing_was_written(monkeypatch, capsys):
    """generate has no --resume: Ctrl-C says what is true (its outputs are written whole at the end)."""
    import smoothgen.generate_cli as generate_cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate_cli, "_generate_text", interrupted)
    assert cli_main([*TEXT, "--prompt", "x = 1"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == "smoothgen generate: interrupted; nothing was written", err


def test_ablation_prints_edits_in_plain_words(tmp_path, capsys):
    out = tmp_path / "a.json"
    assert cli_main([*TEXT, "--noise", "ablate", "--prompt", "import os\nimport s", "--perturb", "all",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["noise"] == "ablation" and record["keep"] == round(0.1 * 18) and record["mask_token"] == 0
    assert record["sigma"] is None and record["edits"] == 1 and record["score"] == "vote"
    assert record["model"] == "embedded:code_lm_ablate0.1" and record["mask"] == [True] * 18
    assert ("robust to any 1 edited token anywhere in the prompt" in printed
            or "not certified against 1 edited token anywhere in the prompt" in printed)
    k = record["certified_prefix"]
    assert all(r >= 1 for r in record["step_radius"][:k]) and (k == 6 or record["step_radius"][k] < 1)


def test_the_default_generation_is_certified_against_an_edited_token(capsys):
    """Issue 11 item 5: `smoothgen generate` with no arguments (the README's first text example) prints a
    non-empty prefix certified against one edited token, on the embedded LM trained for its ablation: the
    default prompt's first two lines may be edited, its last line is held fixed."""
    assert cli_main(["generate", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["noise"] == "ablation" and record["model"] == "embedded:code_lm_ablate0.1"
    assert record["perturb"] == "context" and record["edits"] == 1
    lines = record["prompt"].split("\n")
    assert record["mask"] == [True] * (len(record["prompt"]) - len(lines[-1])) + [False] * len(lines[-1])
    assert record["certified_prefix"] >= 1 and record["step_radius"][0] >= 1
    assert cli_main(["generate"]) == 0
    printed = capsys.readouterr().out
    assert "robust to any 1 edited token in the lines before the last one" in printed


def test_perturb_context_holds_the_last_line_fixed(capsys):
    assert cli_main([*TEXT, "--prompt", "ab\ncd\nef", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["perturb"] == "context" and record["mask"] == [True] * 6 + [False] * 2
    assert cli_main([*TEXT, "--prompt", "abcdef", "--json"]) == 0  # one line: nothing to call context
    assert json.loads(capsys.readouterr().out)["perturb"] == "all"
    assert cli_main([*TEXT, "--prompt", "ab\ncd", "--sigma", "0.05", "--json"]) == 0  # Gaussian: all by default
    assert json.loads(capsys.readouterr().out)["perturb"] == "all"


def steady_byte_lm():
    """A tiny CodeLM whose own logits are scaled to 1 % under a +20 for 'A': it answers 'A' whatever the
    prompt, so the exhaustive check has a certified prefix to test (the CLI's plumbing; the mathematics of
    the check is tested against models that do depend on the prompt in tests/test_ablation.py)."""
    import torch

    from smoothgen.models.lm import CodeLM

    class Steady(CodeLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits.mul_(0.01)[..., ord("A")] += 20.0
            return out

    torch.manual_seed(0)
    return Steady(d_model=16, n_layers=1, n_heads=2, context_length=16).eval()


def test_ablation_exhaustive_check_decodes_every_single_substitution(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    argv = ["generate", "--noise", "ablate", "--model", "test_generate_cli:steady_byte_lm", "--prompt", "abcdef",
            "--samples", "2000", "--selection-samples", "100", "--max-new-tokens", "2", "--keep", "1",
            "--exhaustive", "--json"]
    assert cli_main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    ex = record["exhaustive"]
    assert record["certified_prefix"] == 2 and ex["certified_steps"] == 2
    assert ex["edited_prompts"] == 6 * 255 and ex["changed"] == 0


def test_deletion_prints_edit_distance_in_plain_words(tmp_path, capsys):
    """--noise delete: the embedded LM trained for deletion, the certificate in inserted, deleted or
    substituted tokens of the lines before the last, each step's r the largest with L_t > 3/2 - p^r."""
    from smoothgen.deletion import deletion_radius

    out = tmp_path / "d.json"
    assert cli_main([*TEXT, "--noise", "delete", "--prompt", "import os\nimport s", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["noise"] == "deletion" and record["delete_prob"] == 0.9 and record["keep"] is None
    assert record["model"] == "embedded:code_lm_delete0.9" and record["perturb"] == "context"
    assert record["mask"] == [True] * 10 + [False] * 8 and record["mask_token"] == 0 and record["score"] == "vote"
    assert record["step_radius"] == [deletion_radius(lower, 0.9) for lower in record["p_lower"]]
    assert ("robust to any 1 inserted, deleted or substituted token in the lines before the last one" in printed
            or "not certified against 1 inserted, deleted or substituted token" in printed)
    assert "every prompt with the same last line is covered" in printed
    # 10 perturbed bytes: each selection copy keeps round(0.1 * 10) = 1 of them (docs/theory.md §4j)
    assert record["selection"] == "equal-length" and "selection copies keeping 1 of the 10 positions each" in printed
    k = record["certified_prefix"]
    assert all(r >= 1 for r in record["step_radius"][:k]) and (k == 6 or record["step_radius"][k] < 1)


def test_word_piece_lm_certifies_edits_counted_in_word_pieces(tmp_path, capsys):
    """--model embedded:code_bpe_delete0.9: the BPE code LM with its tokenizer; the record's tokens are word
    pieces, the mask covers the tokens up to the last line break (a token of its own), and the text printed
    decodes them."""
    from smoothgen.models import load_tokenizer

    out = tmp_path / "bpe.json"
    prompt = "def area(width, height):\n    return width"
    assert cli_main([*TEXT, "--noise", "delete", "--model", "embedded:code_bpe_delete0.9", "--prompt", prompt,
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    tok = load_tokenizer("code_bpe_delete0.9")
    ids = tok.encode(prompt).tolist()
    assert record["model"] == "embedded:code_bpe_delete0.9" and record["mask_token"] == 0
    assert record["mask"] == [True] * (ids.index(tok.encode("\n").tolist()[0]) + 1) + [False] * 3  # "    ", " return", " width"
    assert record["text"] == tok.decode(record["tokens"]) and printed.startswith(prompt)
    assert "inserted, deleted or substituted token" in printed
    # A recorded embedded LM is what `verify --recompute` loads again (not the default of the noise).
    from smoothgen.text_generation import load_lm_spec

    model, tokenizer, name = load_lm_spec("embedded:code_bpe_delete0.9", "cpu", "ablate")
    assert name == "embedded:code_bpe_delete0.9" and tokenizer is not None and model.vocab_size == tok.vocab_size


def test_sequential_generation_stops_early_with_the_same_certified_tokens(capsys):
    """--sequential: the estimation stops once the prefix at --edits is decided; the betting bound is the
    certificate's, and on the default prompt it certifies what the fixed-n run certifies."""
    base = ["generate", "--max-new-tokens", "6", "--samples", "1000", "--json"]
    assert cli_main(base) == 0
    fixed = json.loads(capsys.readouterr().out)
    assert cli_main([*base, "--sequential", "--check-every", "50"]) == 0
    seq = json.loads(capsys.readouterr().out)
    assert seq["sequential"] and seq["bound"] == "betting" and seq["max_samples"] == 1000 and seq["n"] < 1000
    assert seq["check_every"] == 50 and fixed["check_every"] is None  # the record carries what reproduces it
    assert seq["tokens"] == fixed["tokens"] and seq["certified_prefix"] == fixed["certified_prefix"] == 6
    assert cli_main([*base[:-1], "--sequential"]) == 0
    assert "(sequential, at most 1000)" in capsys.readouterr().out


def test_selection_samples_zero_certifies_the_models_own_greedy_output(capsys):
    """--selection-samples 0: the model's own greedy decoding of the clean prompt chooses the tokens (what
    plain generation prints), and the estimation copies certify its prefix."""
    from smoothgen.generative import SmoothedLM, TokenAblation
    from smoothgen.models import load_lm

    prompt = "import os\nimport s"
    assert cli_main([*TEXT, "--prompt", prompt, "--selection-samples", "0", "--sequential"]) == 0
    assert "n0=0 (the model's own greedy decoding chose the tokens)" in capsys.readouterr().out
    assert cli_main([*TEXT, "--prompt", prompt, "--selection-samples", "0", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    model = load_lm(record["model"].removeprefix("embedded:"))
    lm = SmoothedLM(model, TokenAblation(1, 0))
    assert record["n0"] == 0 and tuple(record["tokens"]) == lm._greedy(lm.table[lm.prompt_ids(prompt)][None], 6)[0]


@pytest.mark.parametrize(("argv", "message"), [
    (["--selection-samples", "-1"], "--selection-samples must be an integer >= 0"),
    (["--sequential", "--sigma", "0.1"], "--sequential and --check-every apply with --noise ablate or delete"),
    (["--check-every", "10"], "--check-every applies with --sequential"),
    (["--sequential", "--check-every", "0"], "--check-every"),
    (["--noise", "delete", "--keep", "2"], "--delete-prob"),
    (["--noise", "delete", "--delete-prob", "1"], "--delete-prob must be a probability"),
    (["--noise", "delete", "--delete-prob", "0"], "--delete-prob must be a probability"),
    (["--noise", "delete", "--delete-prob", "nan"], "--delete-prob must be a probability"),
    (["--noise", "ablate", "--delete-prob", "0.5"], "--delete-prob applies with --noise delete"),
    (["--noise", "delete", "--exhaustive"], "--exhaustive"),
    (["--noise", "delete", "--sigma", "0.1"], "--edits"),
    (["--diffusion", "--noise", "delete"], "applies to text generation"),
    (["--noise", "ablate", "--sigma", "0.1"], "--edits"),
    (["--noise", "gaussian", "--keep", "3"], "--noise ablate"),
    (["--noise", "gaussian", "--exhaustive"], "--noise ablate"),
    (["--prompt", "def f(x):", "--perturb", "context"], "several lines"),
    (["--prompt", "import os\n" * 5 + "x", "--exhaustive"], "subsets exceed"),
    (["--noise", "ablate", "--keep", "0"], "keep"),
    (["--noise", "ablate", "--edits", "-1"], "--edits"),
    (["--prompt", ""], "empty"),
    (["--prompt", "x" * 300], "context length"),
    (["--sigma", "0"], "--sigma"),
    (["--sigma", "nan"], "--sigma"),
    (["--samples", "0"], "--samples"),
    (["--alpha", "1.5"], "alpha"),
    (["--radius", "-1"], "--radius"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--label", "3"], "only with --diffusion"),
    (["--steps", "10"], "only with --diffusion"),
    (["--guidance", "1"], "only with --diffusion"),
    (["--device", "nope"], "--device"),
    (["--device", ""], "--device"),
    (["--device", "meta"], "--device"),
    (["--model", ":x"], "cannot import"),
    (["--model", "no_such_module:factory"], "cannot import"),
    (["--model", "hf:/no/such/folder"], "not a folder"),
])
def test_text_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "g.json"
    assert cli_main([*TEXT, *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_out_under_a_file_is_one_line_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    assert cli_main([*TEXT, "--out", str(blocker / "g.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a file" in err, err
    assert cli_main([*DIFFUSION, "--png", str(blocker / "g.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a file" in err, err


def test_diffusion_writes_the_grid_and_the_certificates(tmp_path, capsys):
    png, out = tmp_path / "grid.png", tmp_path / "d.json"
    assert cli_main([*DIFFUSION, "--png", str(png), "--out", str(out), "--radius", "2"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(out.read_text())
    mean, tv = record["mean_certificate"], record["sample_tv_bound"]
    assert mean["radius"] == 2.0 and mean["n"] == 16 and mean["sigma"] == 0.5 and mean["label"] == 3
    assert 0 < tv["tv"] < 1 and mean["expectation_bound"] == pytest.approx(2 * 4.0 * tv["tv"])
    assert record["nearest_other_label_distance"] > 2 and tv["covered_labels"] == []
    assert "wrote" in capsys.readouterr().out
    # An existing grid is never replaced without --overwrite, and nothing else is written then.
    out.unlink()
    assert cli_main([*DIFFUSION, "--png", str(png), "--out", str(out)]) == 2
    assert not out.exists()
    assert cli_main([*DIFFUSION, "--png", str(png), "--overwrite", "--json"]) == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["--label", "10"], "label"),
    (["--label", "-1"], "label"),
    (["--steps", "0"], "--steps"),
    (["--guidance", "-1"], "--guidance"),
    (["--prompt", "x"], "--prompt applies to text"),
    (["--max-new-tokens", "4"], "--max-new-tokens applies to text"),
    (["--batch-size", "0"], "--batch-size"),
    (["--device", "cuda:9"], "--device"),
])
def test_diffusion_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    png = tmp_path / "grid.png"
    assert cli_main([*DIFFUSION, *argv, "--png", str(png)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_diffusion_needs_a_label(capsys):
    assert cli_main(["generate", "--diffusion"]) == 2
    assert "--label" in capsys.readouterr().err


def test_text_to_digit_prints_the_certified_content_and_covered_rewordings(tmp_path, capsys):
    """Issue 12 item 4: --text writes the PNG grid and prints the content certificate with the rewordings
    of the prompt it covers and the nearest it does not (measured with the real encoder)."""
    png, out = tmp_path / "t.png", tmp_path / "t.json"
    argv = ["generate", "--text", "a handwritten seven", "--samples", "60", "--selection-samples", "10",
            "--steps", "5", "--png", str(png), "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "Loading weights" not in captured.err  # issue 25: transformers' own bar ignored --no-progress
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(out.read_text())
    cert = record["content_certificate"]
    assert record["model"] == "embedded:text_digits_ddpm" and cert["sigma"] == 0.05 and cert["n"] == 60
    variants = record["variants"]
    assert variants and all(v["covered"] == (cert["prediction"] != -1 and v["distance"] < cert["radius"])
                            for v in variants)
    assert record["covered_variants"] == sum(v["covered"] for v in variants)
    assert "rewordings measured with the real encoder" in printed and "uncovered" in printed


@pytest.mark.parametrize(("argv", "message"), [
    (["--text", "a seven", "--label", "7"], "--text"),
    (["--text", "a seven", "--diffusion"], "--text"),
    (["--text", "  "], "needs a prompt"),
    (["--text", "a seven", "--prompt", "x"], "--prompt applies"),
    (["--text", "a seven", "--sigma", "0"], "--sigma"),
    (["--text", "a seven", "--batch-size", "0"], "--batch-size"),
])
def test_text_to_digit_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    png = tmp_path / "t.png"
    assert cli_main(["generate", *argv, "--png", str(png)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_progress_bars_on_stderr_unless_no_progress(tmp_path, capsys):
    """Issue 16 item 8: `generate` had no progress bar and no --no-progress."""
    assert cli_main([*TEXT, "--prompt", "import os\nimport s", "--json"]) == 0
    err = capsys.readouterr().err
    assert "choose tokens:" in err and "token/s" in err, err
    assert "certify:" in err and "40/40" in err and "copy/s" in err, err
    assert cli_main([*TEXT, "--prompt", "import os\nimport s", "--json", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    png = tmp_path / "g.png"
    assert cli_main([*DIFFUSION, "--png", str(png), "--json"]) == 0
    err = capsys.readouterr().err
    # The mean's 16 samples, 8 shown, and 16 for each of the 10 digits' mean images (the scale).
    assert "sample:" in err and "184/184" in err, err
    assert cli_main([*DIFFUSION, "--png", str(png), "--json", "--overwrite", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_the_mean_image_certificate_is_printed_next_to_its_scale(tmp_path, capsys):
    """Issue 16 item 4: the mean image's l2 bound beside the diameter of [0, 1]^64 (8) and the distance to
    the other digits' mean images, with "VACUOUS" when it reaches either."""
    from smoothgen.conditional import SmoothedConditionalDiffusion
    from smoothgen.generate_cli import SCALE_SAMPLES, _print_mean_image_scale
    from smoothgen.models import load_ddpm

    out = tmp_path / "d.json"
    assert cli_main([*DIFFUSION, "--png", str(tmp_path / "g.png"), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    scale, mean = record["scale"], record["mean_certificate"]
    assert scale["diameter"] == 8.0 and scale["pixels"] == 64 and scale["samples_per_label"] == SCALE_SAMPLES
    # The other digits' mean images, recomputed from the same streams.
    smoothed = SmoothedConditionalDiffusion(load_ddpm(), 0.5, num_steps=10)
    means = [smoothed.samples(j, n=SCALE_SAMPLES, seed=0, request_id=2 + j).double().mean(dim=0) for j in range(10)]
    expected = {str(j): float((means[j] - means[3]).norm()) for j in range(10) if j != 3}
    assert scale["other_label_mean_distances"] == pytest.approx(expected)
    closest = scale["closest_other_label_mean_distance"]
    assert closest == pytest.approx(min(expected.values()))
    assert scale["empirical_bound_vacuous"] == (mean["empirical_bound"] >= min(8.0, closest))
    assert scale["expectation_bound_vacuous"] == (mean["expectation_bound"] >= min(8.0, closest))
    assert "at most 8 apart in l2 (the diameter)" in printed and f"(digit {scale['closest_other_label']}) {closest:.3g}" in printed
    assert printed.count("VACUOUS") == scale["empirical_bound_vacuous"] + scale["expectation_bound_vacuous"]
    # The three verdicts, on chosen numbers.
    args = type("Args", (), {"label": 3})()
    fake = {**scale, "closest_other_label": 5, "closest_other_label_mean_distance": 2.5}
    _print_mean_image_scale(fake, args, {"expectation_bound": 1.0, "empirical_bound": 3.0})
    text = capsys.readouterr().out
    assert "expectation 1 is below the 2.5 to the closest other digit's mean image" in text
    assert "two runs 3 is VACUOUS at this scale: it reaches the mean image of digit 5 (2.5 away)" in text
    _print_mean_image_scale(fake, args, {"expectation_bound": 2.0, "empirical_bound": 9.0})
    assert "9 is VACUOUS: at least the diameter 8, it allows any image" in capsys.readouterr().out
