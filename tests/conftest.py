"""Shared fixtures."""
import os
import tempfile

import pytest
import torch

from oracles import LinearBinary


def pytest_configure(config):
    # `smoothgen serve` keeps its keys and audit log in a state folder (default under ~/.local/state):
    # the tests' servers use a folder of their own, never a user's.
    os.environ.setdefault("SMOOTHGEN_STATE_DIR", tempfile.mkdtemp(prefix="smoothgen-test-state-"))
    # A smoother given a plain torch module runs it on the verified auto runtime by default (an ONNX export
    # and a probe per model): the unit tests' many small modules take the cheap eager path instead, and
    # tests/test_classify.py checks the default itself with the variable removed.
    os.environ.setdefault("SMOOTHGEN_BACKEND", "eager")


@pytest.fixture
def linear_binary():
    return LinearBinary(torch.tensor([3.0, -4.0]), 0.5)
