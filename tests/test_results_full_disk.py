"""A results file stays whole records when the disk fills up in the middle of a record (issue 13, item 4).

The disk is filled for real, without root: RLIMIT_FSIZE caps the file's size, so the kernel writes part of
the record that crosses the cap and then refuses the rest (EFBIG, with SIGXFSZ ignored) — the same partial
write as ENOSPC on a full disk. Runs in a subprocess, so that the limit binds nothing else.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, resource, signal, sys
from smoothgen.errors import ResultsFileError
from smoothgen.results import ResultsFile

path, cap = sys.argv[1], int(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (cap, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
results = ResultsFile(path, {"sigma": 0.25}, ("idx",))
written = 0
try:
    for idx in range(1000):
        results.append({"idx": idx, "note": "x" * 40})
        written += 1
except ResultsFileError as exc:
    print(json.dumps({"written": written, "error": str(exc)}))
finally:
    results.close()
"""


@pytest.mark.parametrize("cap", [1000, 1537, 4096 + 70])
def test_a_record_cut_by_a_full_disk_leaves_whole_records(cap, tmp_path):
    path = tmp_path / "r.jsonl"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(cap)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert "whole records are kept" in report["error"]
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and len(raw) <= cap
    records = [json.loads(line) for line in raw.decode().splitlines()]  # every line a whole record
    assert [r["idx"] for r in records] == list(range(report["written"]))
