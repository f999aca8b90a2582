"""benchmarks/gpu_kernels.py: its command line works on a machine without a GPU (it measures only on one)."""
from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import pytest
import torch

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_kernels.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_kernels_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_help_runs_without_a_gpu():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--out" in result.stdout and "--only" in result.stdout


def test_arguments():
    script = load_script()
    args = script.parse_args(["--only", "pairwise", "--pairwise-d", "64", "--out", "x.md"])
    assert args.only == ["pairwise"] and args.pairwise_d == [64] and args.out == "x.md"
    assert script.parse_args([]).pairwise_d == [64, 4096, 49152]
    with pytest.raises(SystemExit):
        script.parse_args(["--only", "everything"])
    with pytest.raises(SystemExit):
        script.parse_args(["--pairwise-n", "1"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, main() would run the whole benchmark")
def test_without_cuda_it_says_so_and_exits_2(capsys):
    assert load_script().main(["--only", "gaussian_noise"]) == 2
    assert "CUDA" in capsys.readouterr().err


def test_markdown_report():
    script = load_script()
    report = script.Report()
    report.row("op", "size", "1.0", "2.0", "2.00x", "100", "50%", "target")
    report.check("a check", True)
    report.check("another", False, "detail")
    text = script.markdown(report, ["## title"])
    assert "| op | size | 1.0 |" in text
    assert "1 of 2 checks passed" in text and "FAILED another detail" in text
