"""Triton is pinned to the releases whose 64-bit Philox counter handling was checked (issue 21, item 4d).

The noise kernels pass a 64-bit counter to ``tl.randint4x``; only from Triton 3.4 on does it split the
counter into two 32-bit words, and only 3.7.1 was checked against kernels/reference.py. The install
requirement, the pinned version and the run-time guard of kernels/_triton.py must say the same.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _triton_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    return [r for r in reqs if r.name == "triton"]


def test_the_install_requirement_admits_only_the_verified_range():
    reqs = _triton_requirements()
    assert len(reqs) == 2  # the kernels and test extras
    pinned = re.search(r"^triton==(\S+)$", (ROOT / "constraints.txt").read_text(encoding="utf-8"), re.M).group(1)
    for req in reqs:
        assert req.specifier.contains(pinned)
        for unchecked in ("3.2.0", "3.3.1", "3.4.0", "3.6.0", "3.8.0", "4.0.0"):
            assert not req.specifier.contains(unchecked), (str(req), unchecked)


def test_the_run_time_guard_matches_the_requirement():
    from smoothgen.kernels import _triton  # raises ImportError for an installed release outside the range

    low, high = _triton.VERIFIED_TRITON
    low_text, high_text = ".".join(map(str, low)), ".".join(map(str, high))
    for req in _triton_requirements():
        assert req.specifier.contains(low_text) and not req.specifier.contains(high_text)
        assert req.specifier.contains(".".join(map(str, (high[0], high[1] - 1, 99))))  # the last release below high
    assert low <= _triton.triton_version(_triton.triton.__version__) < high
    assert _triton.triton_version("3.7.1+git1a2b") == (3, 7, 1) and _triton.triton_version("3.8") == (3, 8, 0)
