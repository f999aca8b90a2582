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


@pytest.mark.parametrize("source", ["stdlib", "numeric", "humaneval"])
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
        assert int(w["line"]) - 1 >= cc.first_window_line(source, w["file"])


def test_humaneval_windows_complete_canonical_solutions_of_problems_spread_over_the_set(cc):
    """HumanEval's data file as the pinned wheel ships it (164 problems); a window per problem, 40 problems
    evenly spaced, each cut in a line of the canonical solution with the problem statement before it."""
    problems = cc.humaneval_problems()
    assert len(problems) == 164 and problems[0][0] == "HumanEval/0"
    windows = cc.windows(40, 600, "humaneval")
    ids = [int(w["file"].split("/")[1]) for w in windows]
    assert len(set(ids)) == 40 and ids == sorted(ids) and ids[0] == 0 and ids[-1] >= 150
    by_id = {task: (prompt, solution) for task, prompt, solution in problems}
    for w in windows:
        prompt, solution = by_id[w["file"]]
        line = w["prompt"].rsplit("\n", 1)[-1] + w["continuation"].split("\n", 1)[0]
        assert line in solution.split("\n")  # the line being completed is a line of the solution
        assert w["continuation"] and w["continuation"] in solution  # what is to be predicted is solution code
        assert cc.first_window_line("humaneval", w["file"]) == prompt.count("\n")


def test_scores_count_only_the_certified_prefix_that_spells_the_continuation(cc):
    record = {"certified_prefix": 3, "pieces": ["se", "lf", ".x", "y"], "continuation": "self.y = 1"}
    assert cc.scores(record) == {"good_tokens": 2, "good_bytes": 4, "certified": 3, "whitespace_only": False}
    blank = {"certified_prefix": 1, "pieces": ["  ", "x"], "continuation": "  x"}
    assert cc.scores(blank)["whitespace_only"] and cc.scores(blank)["good_tokens"] == 1
    assert cc.scores({**record, "certified_prefix": 0})["good_tokens"] == 0


def test_a_setting_run_at_another_level_is_reported_beside_the_shipped_ones(cc):
    """`run --level` names its setting by the level it ran at; `clean` and `report` find it from the records."""
    shipped = cc.SETTINGS[-1]
    other = cc.replace(shipped, level=0.8)
    assert other.name != shipped.name and other.name.endswith("delete0.8|ctx600")

    def record(setting, window, prefix):
        return {"setting": setting.name, "model": setting.model, "kind": setting.kind, "level": setting.level,
                "context_bytes": setting.context_bytes, "window": window, "n0": 100, "certified_prefix": prefix,
                "pieces": ["se", "lf", ".", "x"], "continuation": "self.x", "seconds": 2.0, "plain_seconds": 0.1,
                "estimation_copies": 300}

    records = [record(shipped, 0, 1), record(other, 0, 4), record(other, 1, 0),
               {"type": "clean", "setting": other.name, "window": 0, "pieces": ["se"], "continuation": "self.x",
                "certified_prefix": 1}]
    assert cc.all_settings(records) == [*cc.SETTINGS, other]
    rows = {row["setting"]: row for row in cc.summarize(records)}
    assert rows[shipped.name]["good4_tokens"] == 0 and rows[shipped.name]["windows"] == 1
    assert rows[other.name]["good4_tokens"] == 0.5 and rows[other.name]["windows"] == 2
    assert rows[other.name]["clean_first_correct"] == 1.0
    with pytest.raises(SystemExit) as info:
        cc.main(["run", "--level", "1"])
    assert info.value.code == 2
