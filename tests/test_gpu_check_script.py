"""benchmarks/gpu_check.py (`make gpu-check`): its command line, its choice of CUDA tests, and a toy run of
its engine steps on the CPU, so that the script a GPU session runs once works when it gets there."""
import importlib.util
import json
import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_arguments():
    script = load_script()
    args = script.parse_args(["out", "--skip", "setup,kernels", "--quick"])
    assert args.out == "out" and args.skip == {"setup", "kernels"} and args.quick
    with pytest.raises(SystemExit):
        script.parse_args(["out", "--skip", "everything"])
    with pytest.raises(SystemExit):
        script.parse_args([])


def test_the_cuda_tests_it_runs_are_the_suites_cuda_tests():
    files = load_script().cuda_test_files()
    for expected in ("tests/engine/test_sampler.py", "tests/test_center.py", "tests/engine/test_runtime.py"):
        assert expected in files
    assert "tests/test_stats.py" not in files  # no CUDA there
    assert all((ROOT / f).is_file() for f in files)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, main() runs the real check")
def test_without_cuda_it_says_so_and_exits_2(tmp_path, capsys):
    assert load_script().main([str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_a_toy_cpu_run_writes_both_reports(tmp_path):
    torch.set_num_threads(1)
    script = load_script()
    assert script.main([str(tmp_path), "--device", "cpu", "--quick"]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = report["steps"]
    assert [steps[s]["status"] for s in ("setup", "cuda-tests", "kernels")] == ["skipped"] * 3
    assert [steps[s]["status"] for s in ("certify-forward", "imagenet", "dds", "lm")] == ["passed"] * 4
    assert {r["dtype"] for r in steps["certify-forward"]["rows"]} == {"float32", "bfloat16"}
    assert all(r["ratio"] > 0 for r in steps["certify-forward"]["rows"])
    assert all(r["tokens"] == 4 for r in steps["lm"]["rows"])
    batching = steps["lm"]["batching"]
    assert batching["probe"] and batching["merging"] and batching["identical"] and batching["calls"] >= batching["runs"]
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "## GPU check" in markdown and "certify ÷ forward ≥ 0.95" in markdown and "torch" in markdown


def test_a_failing_step_is_reported_and_the_others_run(tmp_path, monkeypatch):
    script = load_script()

    def broken(args, result):
        raise RuntimeError("this step broke")

    monkeypatch.setitem(script.RUNNERS, "dds", broken)
    assert script.main([str(tmp_path), "--device", "cpu", "--quick", "--skip", "certify-forward,imagenet"]) == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["steps"]["dds"]["status"] == "FAILED" and "this step broke" in report["steps"]["dds"]["error"]
    assert report["steps"]["lm"]["status"] == "passed"
