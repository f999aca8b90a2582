"""benchmarks/edit_certificates.py: the translation of Gaussian radii into edited tokens, and the summary."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import edit_certificates as ec  # noqa: E402


def test_worst_case_edit_counts_needs_every_set_of_r_substitutions_inside():
    table = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    prompt = torch.tensor([0, 1])
    # worst single moves: position 0 (token 0): max(3, 4) = 4; position 1 (token 1): max(3, 5) = 5
    assert ec.worst_case_edit_counts(table, prompt, 5.0) == 0  # the move of 5 is not strictly inside
    assert ec.worst_case_edit_counts(table, prompt, 5.0001) == 1
    assert ec.worst_case_edit_counts(table, prompt, (25 + 16) ** 0.5 + 1e-9) == 2
    assert ec.worst_case_edit_counts(table, prompt, 0.5) == 0


def test_summary_counts_prefixes_at_each_number_of_edits():
    setting = ec.SETTINGS[1]
    base = {"type": "certificate", "setting": setting.name, "keep": 6, "perturbed": 64}
    records = [
        {**base, "edits": [2, 1, 1, 0], "seconds": 1.0},
        {**base, "edits": [-1, 3, 3, 3], "seconds": 3.0},
        {"type": "certificate", "setting": "another", "keep": 6, "perturbed": 64, "edits": [9, 9, 9, 9], "seconds": 1.0},
        {"type": "quality", "setting": setting.name, "accuracy": 0.3},
        {"type": "quality", "setting": "clean code_lm", "accuracy": 0.6},
    ]
    (row,) = ec.summarize(records)
    assert row["setting"] == setting and row["prompts"] == 2
    assert row["first_r0"] == 0.5 and row["first_r1"] == 0.5 and row["first_r2"] == 0.5
    assert row["first_r4"] == 0.0 and row["four_r1"] == 0.0
    assert row["mean_prefix_r1"] == pytest.approx(1.5) and row["seconds"] == pytest.approx(2.0)
    assert row["accuracy"] == 0.3 and row["retention"] == pytest.approx(0.5)


def test_context_settings_hold_the_last_bytes_fixed():
    all_, context = ec.SETTINGS[0], ec.SETTINGS[-2]
    assert ec.perturbed_mask(all_, 8, 3) == [True] * 8
    assert ec.perturbed_mask(context, 8, 3) == [True] * 5 + [False] * 3
