"""Ctrl-C (or SIGTERM) at any moment of the `smoothgen` command's start-up: one line on stderr and exit
130 (143), never a KeyboardInterrupt traceback (issue 13, item 4).

Each case starts the command exactly as the console script does (the entry point named in pyproject.toml)
and sends the signal when start-up reaches a given phase. The phase is recognised from the child's own
`-X importtime` lines, which Python writes as each import completes, so the signal lands in the same
phase on any machine however slow or loaded — nothing here depends on a sleep or a measured duration.
"""
from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_init_imports_nothing_heavy():
    """Python runs a package's __init__ before any of its modules, so before the entry point can install
    its handler: smoothgen/__init__.py must import its exports on first use (a signal during an eager
    import of torch there would be a traceback whatever the entry point does)."""
    tree = ast.parse((ROOT / "smoothgen" / "__init__.py").read_text(encoding="utf-8"))
    eager = [node.module for node in tree.body if isinstance(node, ast.ImportFrom)
             and (node.module or "").startswith("smoothgen.")]
    assert eager == [], eager


#: Seconds a single case may take before it is killed and failed (start-up is ~2 s on a 2-core CPU).
CASE_TIMEOUT = 180


def _console_script() -> str:
    """What pip's generated `smoothgen` script runs: the [project.scripts] entry point of pyproject.toml."""
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["smoothgen"]
    module, _, attr = spec.partition(":")
    return f"import sys; from {module} import {attr}; sys.exit({attr}())"


def _interrupt(launcher: list[str], phase: str, signum: int, tmp_path: Path) -> tuple[int, list[str]]:
    """Run `smoothgen certify` (long enough never to finish first), send `signum` once the import `phase`
    has completed in the child, and return (exit code, stderr lines other than -X importtime's)."""
    out = tmp_path / "certify.jsonl"
    command = [sys.executable, "-X", "importtime", *launcher, "certify", "--num", "2", "--n", "1000000",
               "--no-progress", "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(CASE_TIMEOUT, proc.kill)
    watchdog.start()
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() == phase:
                proc.send_signal(signum)
                break
        else:
            pytest.fail(f"the child never imported {phase!r} (exit {proc.wait()}): {''.join(seen)[-2000:]}")
        _, rest = proc.communicate()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [ln for ln in "".join(seen).splitlines() + rest.splitlines()
             if ln.strip() and not ln.startswith("import time:")]
    return proc.returncode, lines


# Phases: inside the first imports (NumPy), inside torch's import, while the parser is built (after the
# CLI module finished importing), and after the command has started (the embedded models' import).
@pytest.mark.slow
@pytest.mark.parametrize("phase", [
    "numpy",
    "torch",
    "smoothgen.cli",
    "smoothgen.models",
])
def test_sigint_during_startup_is_one_line_and_130(phase, tmp_path):
    code, lines = _interrupt(["-c", _console_script()], phase, signal.SIGINT, tmp_path)
    assert not any("Traceback" in ln for ln in lines), "\n".join(lines)
    assert code == 130, "\n".join(lines)
    assert len(lines) == 1 and "interrupted" in lines[0], lines
    assert not (tmp_path / "certify.jsonl").exists() or (tmp_path / "certify.jsonl").read_text() == ""


@pytest.mark.slow
def test_sigterm_during_startup_is_one_line_and_143(tmp_path):
    code, lines = _interrupt(["-c", _console_script()], "torch", signal.SIGTERM, tmp_path)
    assert not any("Traceback" in ln for ln in lines), "\n".join(lines)
    assert code == 143 and len(lines) == 1 and "interrupted" in lines[0], (code, lines)


@pytest.mark.slow
def test_python_dash_m_smoothgen_too(tmp_path):
    code, lines = _interrupt(["-m", "smoothgen"], "torch", signal.SIGINT, tmp_path)
    assert not any("Traceback" in ln for ln in lines), "\n".join(lines)
    assert code == 130 and len(lines) == 1 and "interrupted" in lines[0], (code, lines)


def test_importing_the_package_is_light():
    """`import smoothgen` runs before any handler the entry point can install (Python imports a
    package's __init__ before its submodules): it must not import torch, or a Ctrl-C during those
    seconds is a traceback again."""
    probe = "import sys, smoothgen, smoothgen._entry; print(sorted(m for m in ('torch', 'numpy', 'scipy') if m in sys.modules))"
    got = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=CASE_TIMEOUT, check=True)
    assert got.stdout.strip() == "[]", got.stdout + got.stderr


@pytest.mark.parametrize("argv", [["--help"], ["certify", "--help"], ["center", "--help"], ["generate", "--help"],
                                  ["serve", "--help"], ["certify", "--sigma", "x"]])
def test_help_and_argument_errors_import_neither_torch_nor_numpy(argv):
    """Issue 16 item 8: `smoothgen certify --help` took 5 s importing torch. Parsing needs neither torch nor
    NumPy (the CLI imports them after parsing): checked on the real command's own -X importtime lines, so
    nothing here depends on how fast the machine is."""
    got = subprocess.run([sys.executable, "-X", "importtime", "-m", "smoothgen", *argv], capture_output=True,
                         text=True, timeout=CASE_TIMEOUT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert got.returncode in (0, 2), got.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in got.stderr.splitlines() if line.startswith("import time:")}
    assert "smoothgen.cli" in imported, "the probe must see the CLI's imports"
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "numpy", "scipy", "ray", "fastapi"))
    assert heavy == [], heavy[:10]
