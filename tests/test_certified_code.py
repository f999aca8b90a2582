"""benchmarks/certified_code.py: how the certified-and-correct windows are cut and scored (issue 24)."""
from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "certified_code.py"


@pytest.fixture(scope="module")
def cc():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("certified_code_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("source", ["stdlib", "numeric"])
def test_windows_are_whole_lines_then_the_cut_line_and_its_true_continuation(cc, source):
    names, texts = cc.source_files(source)
    assert len(names) == len(texts) >= 20 and all(texts)
    windows = cc.windows(40, 200, source)
    assert len(windows) == 40 and len({w["file"] for w in windows}) >= 20
    for w in windows:
        text = texts[names.index(w["file"])]
        lines = text.split("\n")
        line = lines[int(w["line"]) - 1]
        head = w["prompt"].rsplit("\n", 1)[-1]
        assert line.startswith(head) and line[len(head):] == w["continuation"].split("\n", 1)[0]
        assert len(w["prompt"].encode()) - len(head.encode()) <= 200  # the whole lines before it fit the context
        assert w["prompt"] + w["continuation"] in text  # the true continuation follows the prompt in the file


def test_scores_count_only_the_certified_prefix_that_spells_the_continuation(cc):
    record = {"certified_prefix": 3, "pieces": ["se", "lf", ".x", "y"], "continuation": "self.y = 1"}
    assert cc.scores(record) == {"good_tokens": 2, "good_bytes": 4, "certified": 3, "whitespace_only": False}
    blank = {"certified_prefix": 1, "pieces": ["  ", "x"], "continuation": "  x"}
    assert cc.scores(blank)["whitespace_only"] and cc.scores(blank)["good_tokens"] == 1
    assert cc.scores({**record, "certified_prefix": 0})["good_tokens"] == 0
