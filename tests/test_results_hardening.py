"""Results files under a hostile user (issue 13, items 3 and 4): one writer per file, one-line errors,
and a file that stays consistent."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smoothgen.cli import main as cli_main
from smoothgen.errors import ResultsFileError
from smoothgen.results import ResultsFile

FAST = ["--num", "3", "--n0", "10", "--n", "100", "--no-progress"]
SLOW = ["--num", "450", "--n0", "100", "--n", "20000", "--no-progress"]
RUN = {"sigma": 0.25}


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_second_writer_is_refused_and_the_first_keeps_its_file(tmp_path):
    path = tmp_path / "r.jsonl"
    first = ResultsFile(path, RUN, ("idx",))
    first.append({"idx": 0})
    with pytest.raises(ResultsFileError, match="another smoothgen run is writing"):
        ResultsFile(path, RUN, ("idx",), resume=True)
    with pytest.raises(ResultsFileError, match="another smoothgen run is writing"):
        ResultsFile(path, RUN, ("idx",), overwrite=True)  # refused before it truncates
    first.append({"idx": 1})
    first.close()
    assert [json.loads(line)["idx"] for line in path.read_text().splitlines()] == [0, 1]
    with ResultsFile(path, RUN, ("idx",), resume=True) as again:  # the lock went with close()
        assert again.done() == {(0,), (1,)}


def test_two_cli_processes_on_one_out(tmp_path):
    """The review's reproduction: two `smoothgen certify --out R.jsonl` at once both succeeded and wrote
    every record twice. The second is refused with one line and exit 2."""
    out = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "smoothgen.cli", "certify", *SLOW, "--out", str(out)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not out.exists() and time.time() < deadline:
            time.sleep(0.1)
        second = subprocess.run([*cmd[:-2], "--out", str(out), "--overwrite"], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [f"smoothgen certify: error: another smoothgen run is writing {out}; use another --out or wait for it"]
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    assert first.returncode == 143  # SIGTERM: the interrupted line and its own exit code


def test_sigterm_prints_the_interrupted_line(tmp_path):
    out = tmp_path / "r.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "smoothgen.cli", "certify", *SLOW, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while (not out.exists() or out.stat().st_size == 0) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1] == "smoothgen certify: interrupted; whole records are kept, rerun with --resume"
    lines = out.read_text().splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)


def test_resume_refuses_a_file_written_twice(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert cli_main(["certify", *FAST, "--out", str(out)]) == 0
    capsys.readouterr()
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines + lines[:1]) + "\n")
    assert cli_main(["certify", *FAST, "--out", str(out), "--resume"]) == 2
    assert "a second record" in _err(capsys)


@pytest.mark.parametrize("content", [b"[1, 2]\n", b"42\n", b'{"idx": 0, "sigma": 0.25}\n\xff\xfe\n'])
def test_resume_refuses_non_object_and_non_utf8_lines(tmp_path, content):
    path = tmp_path / "r.jsonl"
    path.write_bytes(content)
    with pytest.raises(ResultsFileError, match="not resuming"):
        ResultsFile(path, RUN, ("idx",), resume=True)
    assert path.read_bytes() == content  # left as it was


def test_out_that_is_a_directory_or_under_a_file(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    for flags in ([], ["--overwrite"], ["--resume"]):
        assert cli_main(["certify", *FAST, "--out", str(folder), *flags]) == 2
        assert "is a directory" in _err(capsys)
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert cli_main(["certify", *FAST, "--out", str(plain / "r.jsonl")]) == 2
    assert "is a file, not a directory" in _err(capsys)
    assert plain.read_text() == "x"


def test_a_failed_write_keeps_the_file_whole(tmp_path, monkeypatch):
    """Disk full while appending (ENOSPC): a ResultsFileError, and the file cut back to its whole records."""
    path = tmp_path / "r.jsonl"
    results = ResultsFile(path, RUN, ("idx",))
    results.append({"idx": 0})
    real_fsync = os.fsync

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ResultsFileError, match="No space left on device"):
        results.append({"idx": 1})
    monkeypatch.setattr(os, "fsync", real_fsync)
    results.close()
    assert [json.loads(line)["idx"] for line in path.read_text().splitlines()] == [0]


def test_a_run_that_fails_before_its_first_record_leaves_no_file(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert cli_main(["certify", *FAST, "--seed", "-1", "--out", str(out)]) == 2
    assert "seed" in _err(capsys)
    assert not out.exists()
