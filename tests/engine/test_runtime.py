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


# ---------------------------------------------------------------- backends and their selection
import importlib.util

from smoothgen import SmoothedClassifier
from smoothgen.engine.runtime import BACKENDS, CompiledRuntime, create_runtime, export_onnx
from smoothgen.errors import BackendUnavailableError, InvalidParameterError
from smoothgen.models import load_classifier, load_digits_split


def _digits():
    return load_classifier(0.25), torch.from_numpy(load_digits_split().x_test[0])


@pytest.mark.slow
def test_compiled_runtime_matches_eager_and_pads_partial_batches():
    model, x = _digits()
    compiled = create_runtime(model, x, backend="compile", batch_size=256)
    assert isinstance(compiled, CompiledRuntime) and compiled.backend == "compile" and compiled.max_batch == 256
    batch = x + 0.25 * torch.randn(256, *x.shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(batch)
    torch.testing.assert_close(compiled.run(batch), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled.run(batch[:7]), expected[:7], rtol=1e-5, atol=1e-5)  # padded
    eager_cert = SmoothedClassifier(model, 10, 0.25, batch_size=256).certify(x, 100, 1000, 0.001, seed=0)
    compiled_cert = SmoothedClassifier(compiled, 10, 0.25, batch_size=256).certify(x, 100, 1000, 0.001, seed=0)
    assert compiled_cert.prediction == eager_cert.prediction
    assert abs(compiled_cert.count - eager_cert.count) <= 2  # identical up to argmax ties under float reassociation
    with pytest.raises(InvalidParameterError):
        compiled.run(torch.zeros(257, *x.shape))


def test_create_runtime_eager_onnx_and_auto_on_cpu(tmp_path):
    model, x = _digits()
    batch = x + 0.25 * torch.randn(50, *x.shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(batch)
    eager = create_runtime(model, x, backend="eager", device="cpu")
    assert isinstance(eager, TorchRuntime) and eager.backend == "eager"
    onnx = create_runtime(model, x, backend="onnxruntime", device="cpu")
    assert isinstance(onnx, OnnxRuntime) and "CPUExecutionProvider" in onnx.providers
    torch.testing.assert_close(onnx.run(batch), expected, rtol=1e-4, atol=1e-4)
    if not torch.cuda.is_available():
        assert create_runtime(model, x, backend="auto").backend == "onnxruntime"  # verified against eager first
    with pytest.raises(InvalidParameterError):
        create_runtime(model, x, backend="fastest")
    assert set(BACKENDS) == {"auto", "eager", "compile", "onnxruntime", "tensorrt"}


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available(),
                    reason="TensorRT is installed here: the real engine is tested below")
def test_explicit_tensorrt_without_tensorrt_raises():
    model, x = _digits()
    with pytest.raises(BackendUnavailableError, match="tensorrt"):
        create_runtime(model, x, backend="tensorrt")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available(),
                    reason="needs the tensorrt package and a CUDA device (not installable on the project's machines)")
def test_tensorrt_engine_matches_eager():
    model, x = _digits()
    runtime = create_runtime(model, x, backend="tensorrt", batch_size=128, device="cuda")
    batch = (x + 0.25 * torch.randn(100, *x.shape)).cuda()
    with torch.inference_mode():
        expected = model.cuda()(batch)
    torch.testing.assert_close(runtime.run(batch), expected, rtol=1e-3, atol=1e-3)


def test_onnx_missing_provider_raises(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed: the CUDA provider exists here")
    model, x = _digits()
    path = export_onnx(model, x[None], tmp_path / "m.onnx")
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        OnnxRuntime(path, providers=["CUDAExecutionProvider"])


def test_compile_mode_is_checked():
    model, _ = _digits()
    with pytest.raises(InvalidParameterError):
        CompiledRuntime(model, 16, mode="fastest")
