"""create_runtime keeps its exported files in a private folder, removed as soon as the runtime is built."""
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


@pytest.mark.parametrize("backend", ["eager", "onnxruntime", "auto"])
def test_no_runtime_folder_outlives_the_build(backend):
    """Issue 25: the folder used to go with the runtime (garbage collection or interpreter exit), so Ray
    workers, killed at shutdown, left smoothgen-runtime-* folders; now it is gone once the runtime exists,
    and the runtime still runs (ONNX Runtime holds the model in memory)."""
    pytest.importorskip("onnxruntime")
    before = _folders()
    runtime = create_runtime(torch.nn.Linear(4, 2), torch.zeros(4), backend=backend, batch_size=8, device="cpu")
    assert _folders() - before == set()
    assert runtime.run(torch.zeros(3, 4)).shape == (3, 2)
    del runtime
    gc.collect()
    assert _folders() - before == set()


def test_no_folder_is_left_when_no_backend_runs():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("broken model")

    before = _folders()
    with pytest.raises(BackendUnavailableError):
        create_runtime(Broken(), torch.zeros(4), backend="eager", batch_size=8, device="cpu")
    assert _folders() - before == set()
