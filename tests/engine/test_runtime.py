"""Runtimes: eager torch and ONNX Runtime (CPU provider) give the same outputs."""
import pytest
import torch

from smoothgen.engine import OnnxRuntime, Runtime, TorchRuntime, as_runtime
from smoothgen.errors import ModelLoadError


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


def test_as_runtime_wraps_modules_and_passes_runtimes():
    model = _model()
    runtime = as_runtime(model)
    assert isinstance(runtime, TorchRuntime) and runtime.device == torch.device("cpu")
    assert as_runtime(runtime) is runtime
    assert not model.training


def test_onnx_runtime_matches_eager(tmp_path):
    pytest.importorskip("onnxruntime")
    model = _model().eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.zeros(2, 1, 8, 8),), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    runtime = OnnxRuntime(path)
    assert isinstance(runtime, Runtime) and runtime.max_batch is None
    x = torch.randn(37, 1, 8, 8)
    torch.testing.assert_close(runtime.run(x), model(x).detach(), rtol=1e-5, atol=1e-5)


def test_onnx_runtime_bad_file(tmp_path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"not an onnx model")
    with pytest.raises(ModelLoadError):
        OnnxRuntime(path)


def test_torch_runtime_rejects_non_callables():
    with pytest.raises(TypeError):
        TorchRuntime(42)
