"""create_runtime keeps its exported files in a private folder that goes away with the runtime."""
from __future__ import annotations

import gc
import tempfile
from pathlib import Path

import pytest
import torch

from smoothgen.engine.runtime import create_runtime
from smoothgen.errors import BackendUnavailableError


def _folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("smoothgen-runtime-*"))


@pytest.mark.parametrize("backend", ["eager", "onnxruntime"])
def test_the_runtime_folder_is_removed_with_the_runtime(backend):
    pytest.importorskip("onnxruntime")
    before = _folders()
    runtime = create_runtime(torch.nn.Linear(4, 2), torch.zeros(4), backend=backend, batch_size=8, device="cpu")
    assert runtime.run(torch.zeros(3, 4)).shape == (3, 2)
    created = _folders() - before
    assert len(created) == 1
    del runtime
    gc.collect()
    assert not (created & _folders())


def test_no_folder_is_left_when_no_backend_runs():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("broken model")

    before = _folders()
    with pytest.raises(BackendUnavailableError):
        create_runtime(Broken(), torch.zeros(4), backend="eager", batch_size=8, device="cpu")
    assert _folders() - before == set()
