"""backend="auto": the fastest runtime that reproduced eager on a probe batch of noisy inputs (issue 15)."""
from __future__ import annotations

import logging

import pytest
import torch

from smoothgen.engine import runtime as runtimes
from smoothgen.engine.runtime import create_runtime

pytest.importorskip("onnxruntime")

DEFAULT_ORDERS = dict(runtimes.AUTO_CANDIDATES)  # before the fixture below narrows the CPU order


def _cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 8 * 8, 10)).eval()


class RowBranch(torch.nn.Module):
    """Data-dependent control flow per row: rows far from the origin go through one head, the others
    through another. A trace (the ONNX export) records one batch's path only."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.near, self.far = torch.nn.Linear(16, 5), torch.nn.Linear(16, 5)

    def forward(self, x):
        return torch.stack([self.far(row) if row.norm() > 2.0 else self.near(row) for row in x])


class BatchBranch(torch.nn.Module):
    """Data-dependent control flow per batch (`if x.abs().sum() > t`): the export at batch 1 traces the small-sum
    branch, while a probe batch of hundreds of rows takes the other one in eager."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.small, self.large = torch.nn.Linear(16, 5), torch.nn.Linear(16, 5)

    def forward(self, x):
        if x.abs().sum() > 100.0:
            return self.large(x)
        return self.small(x)


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    monkeypatch.setattr(runtimes, "_AUTO_CACHE", {})
    # torch.compile's first compile takes tens of seconds on CPU: these tests check ONNX Runtime -> eager.
    monkeypatch.setitem(runtimes.AUTO_CANDIDATES, "cpu", ("onnxruntime", "eager"))


def test_a_plain_cnn_gets_onnxruntime_on_cpu():
    model, x = _cnn(), torch.rand(1, 8, 8)
    runtime = create_runtime(model, x, backend="auto", batch_size=128, device="cpu", sigma=0.25)
    assert runtime.backend == "onnxruntime"
    batch = x + 0.25 * torch.randn(40, *x.shape, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.testing.assert_close(runtime.run(batch), model(batch), rtol=1e-4, atol=1e-4)


def test_the_default_orders():
    assert DEFAULT_ORDERS["cpu"] == ("onnxruntime", "compile", "eager")
    assert DEFAULT_ORDERS["cuda"] == ("tensorrt", "onnxruntime", "compile", "eager")


@pytest.mark.parametrize("model_cls", [RowBranch, BatchBranch])
def test_a_trace_of_data_dependent_control_flow_is_rejected(model_cls, caplog):
    model, x = model_cls().eval(), torch.zeros(16)
    with caplog.at_level(logging.WARNING, logger="smoothgen.engine"):
        runtime = create_runtime(model, x, backend="auto", batch_size=512, device="cpu", sigma=1.0)
    assert runtime.backend == "eager"
    reasons = [r.getMessage() for r in caplog.records if "'onnxruntime' does not reproduce eager" in r.getMessage()]
    assert len(reasons) == 1, [r.getMessage() for r in caplog.records]
    assert any(why in reasons[0] for why in ("argmax differs", "output shape", "differ from eager's", "fails on the probe"))
    # ... and the runtime chosen reproduces eager on fresh noisy inputs.
    batch = x + torch.randn(64, 16, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        torch.testing.assert_close(runtime.run(batch), model(batch))


def test_the_choice_is_cached_per_model_and_weights(monkeypatch):
    model, x = _cnn(), torch.rand(1, 8, 8)
    before = runtimes.EXPORTS["count"]
    first = create_runtime(model, x, backend="auto", batch_size=128, device="cpu")
    assert runtimes.EXPORTS["count"] == before + 1
    second = create_runtime(model, x, backend="auto", batch_size=128, device="cpu")
    assert second is first and runtimes.EXPORTS["count"] == before + 1
    # Another batch size, or weights changed in place, is another entry: exported and probed again.
    create_runtime(model, x, backend="auto", batch_size=64, device="cpu")
    assert runtimes.EXPORTS["count"] == before + 2
    with torch.no_grad():
        model[0].weight.add_(1.0)
    third = create_runtime(model, x, backend="auto", batch_size=128, device="cpu")
    assert third is not first and runtimes.EXPORTS["count"] == before + 3
    # An explicit backend is built as asked, every time (no cache).
    create_runtime(model, x, backend="onnxruntime", batch_size=128, device="cpu")
    assert runtimes.EXPORTS["count"] == before + 4


def test_models_whose_outputs_cannot_be_compared_get_eager():
    class Listy(torch.nn.Module):
        def forward(self, x):
            return [row.sum() for row in x]

    runtime = create_runtime(Listy(), torch.zeros(4), backend="auto", batch_size=8, device="cpu")
    assert runtime.backend == "eager"
