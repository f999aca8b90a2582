"""Public API arguments that escaped as generic exceptions (issue 13, items 5 and 6): each now gives a
SmoothgenError, or a result where the input is valid."""
from __future__ import annotations

import re
from fractions import Fraction

import numpy as np
import pytest
import torch

from smoothgen import CenterSmoother, SmoothedClassifier
from smoothgen.errors import InvalidInputError, InvalidParameterError, ModelOutputError, SmoothgenError
from smoothgen.models import load_classifier, load_digits_split


@pytest.fixture(scope="module")
def model():
    return load_classifier(0.25)


@pytest.fixture(scope="module")
def digit():
    return torch.from_numpy(load_digits_split().x_test[0])


@pytest.mark.parametrize(("make", "error"), [
    (lambda m: SmoothedClassifier(None, 10, 0.25), InvalidParameterError),
    (lambda m: SmoothedClassifier(m, 10, 0.25, input_shape=5), InvalidParameterError),
    (lambda m: SmoothedClassifier(m, 10, 0.25, input_shape=(1, 0, 8)), InvalidParameterError),
    (lambda m: CenterSmoother(m, 0.25, input_shape="1x8x8"), InvalidParameterError),
])
def test_constructor_arguments(model, make, error):
    with pytest.raises(error):
        make(model)


@pytest.mark.parametrize(("x", "error"), [
    (torch.zeros(1, 8, 8, device="meta"), InvalidInputError),
    (torch.zeros(1, 8, 8).to_sparse(), InvalidInputError),
    (torch.zeros(1, 8, 8, dtype=torch.int64), InvalidInputError),
    (torch.full((1, 8, 8), 0.1, dtype=torch.float64), ModelOutputError),  # not exact in float32: the model's own error
    (torch.zeros(64), InvalidInputError),  # the shape the model takes is named (test_wrong_shapes_name_the_model_s_shape)
])
def test_bad_inputs_are_smoothgen_errors(model, x, error):
    with pytest.raises(error):
        SmoothedClassifier(model, 10, 0.25).certify(x, 10, 100, 0.01, seed=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_exact_dtypes_are_converted(model, digit, dtype):
    x = digit.to(dtype)  # digits are multiples of 1/16: exact in every float dtype
    got = SmoothedClassifier(model, 10, 0.25).certify(x, 100, 500, 0.001, seed=0)
    want = SmoothedClassifier(model, 10, 0.25).certify(digit, 100, 500, 0.001, seed=0)
    assert got.to_record() == want.to_record()


def test_an_input_that_requires_grad(model, digit):
    """Straight out of a PGD attack: it failed as soon as n > 100."""
    x = digit.clone().requires_grad_()
    got = SmoothedClassifier(model, 10, 0.25).certify(x, 100, 1000, 0.001, seed=0)
    assert got.to_record() == SmoothedClassifier(model, 10, 0.25).certify(digit, 100, 1000, 0.001, seed=0).to_record()


@pytest.mark.parametrize("seed", [-1, 1.5, "0", float("nan"), 2**64])
def test_bad_seeds_and_request_ids(model, digit, seed):
    smoothed = SmoothedClassifier(model, 10, 0.25)
    with pytest.raises(InvalidParameterError):
        smoothed.certify(digit, 10, 100, 0.01, seed=seed)
    with pytest.raises(InvalidParameterError):
        smoothed.certify(digit, 10, 100, 0.01, seed=0, request_id=seed)


def test_looks_must_be_a_sequence(model, digit):
    with pytest.raises(InvalidParameterError):
        SmoothedClassifier(model, 10, 0.25).certify_at(digit, 0.5, 0.001, looks=100)


@pytest.mark.parametrize("delta", [np.float32(0.25), Fraction(1, 4), 0.25])
def test_delta_of_any_real_type(model, digit, delta):
    result = CenterSmoother(model, 0.25).smooth(digit, n=300, delta=delta, seed=0)
    assert result.delta == 0.25 and isinstance(result.delta, float)
    with pytest.raises(SmoothgenError):
        CenterSmoother(model, 0.25).smooth(digit, n=300, delta=True, seed=0)


# ---------------------------------------------------------------- a wrong shape when input_shape was not given
class _Flat(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


def _shape_error(model, x, smoother=False):
    with pytest.raises(SmoothgenError) as info:
        if smoother:
            CenterSmoother(model, 0.25).certify(x, 0.5, n=20, m=20, seed=0)
        else:
            SmoothedClassifier(model, 10, 0.25).certify(x, 10, 20, 0.01, seed=0)
    return info.value


@pytest.mark.parametrize(("make", "x", "named"), [
    (lambda m: m, torch.zeros(64), r"inputs of shape \(1, H, W\).*features\.0 is a Conv2d with in_channels=1"),
    (lambda m: m, torch.zeros(8, 8), r"\(1, H, W\)"),
    (lambda m: m, torch.zeros(3, 8, 8), r"\(1, H, W\)"),
    (lambda m: torch.jit.script(m), torch.zeros(64), r"\(1, H, W\)"),  # TorchScript: no hooks, its registered layers
    (lambda m: torch.jit.trace(m, torch.zeros(2, 1, 8, 8)), torch.zeros(64), r"\(1, H, W\)"),
    (lambda m: torch.export.export(m, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("b")},)).module(),
     torch.zeros(1, 7, 7), r"inputs of shape \(1, 8, 8\) \(the input its exported program was traced with\)"),
    (lambda m: _Flat(), torch.zeros(1, 7, 7), r"inputs of 64 values in all"),
    (lambda m: torch.nn.Linear(5, 10), torch.zeros(4), r"\(\.\.\., 5\).*in_features=5"),
])
@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_wrong_shapes_name_the_model_s_shape(model, make, x, named):
    """Issue 13 item 5: without input_shape, a wrong shape was the model's bare torch error (e.g.
    "Expected 3D (unbatched) or 4D (batched) input to conv2d"); now it names the shape the model takes,
    learned from the model itself, as an InvalidInputError (still a ModelOutputError, as it was)."""
    error = _shape_error(make(model), x)
    assert isinstance(error, InvalidInputError) and isinstance(error, ModelOutputError)
    assert re.search(named, str(error)), str(error)
    assert f"input of shape {tuple(x.shape)}" in str(error)
    assert "TorchScript interpreter" not in str(error) and "\n" not in str(error)


def test_wrong_shape_after_a_right_one_names_the_shape_it_ran_on(model, digit):
    smoothed = SmoothedClassifier(model, 10, 0.25)
    smoothed.certify(digit, 10, 20, 0.01, seed=0)
    with pytest.raises(InvalidInputError, match=r"takes inputs of shape \(1, 8, 8\) \(the shape it last ran on\)"):
        smoothed.certify(torch.zeros(1, 7, 7), 10, 20, 0.01, seed=0)


def test_wrong_shape_names_the_onnx_model_s_declared_input(model, tmp_path):
    pytest.importorskip("onnxruntime")
    from smoothgen.engine.runtime import OnnxRuntime
    from smoothgen.engine.runtime.export import export_onnx

    runtime = OnnxRuntime(export_onnx(model, torch.zeros(2, 1, 8, 8), tmp_path / "model.onnx"))
    error = _shape_error(runtime, torch.zeros(64))
    assert isinstance(error, InvalidInputError)
    assert "takes inputs of shape (1, 8, 8) (the ONNX model's declared input)" in str(error)


def test_a_shape_that_fits_the_first_layer_names_the_layer_that_failed(model):
    """(1, 7, 7) suits the first Conv2d: the failure comes later, in a Linear layer. Not provably the
    input's fault, so a ModelOutputError, which says which layer failed on what."""
    error = _shape_error(model, torch.zeros(1, 7, 7))
    assert type(error) is ModelOutputError
    assert "its layer classifier.1 (Linear, in_features=512) failed on a tensor of shape (1, 288)" in str(error)
    assert "(1, H, W)" in str(error)
    # Issue 25: the model's own exception text is kept in the one line, after the layer.
    assert "mat1 and mat2 shapes cannot be multiplied" in str(error) and "\n" not in str(error)


def test_a_user_model_s_own_words_are_kept_in_the_error():
    """A model that raises its own error (here: it refuses pixels outside [0, 1]) is quoted, not replaced."""
    from smoothgen import SmoothedClassifier

    class Strict(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.abs().max() > 50:
                raise ValueError("expects pixels scaled to [0, 1], got raw 0-255 values\n(see the model card)")
            return self.fc(x.flatten(1))

    smoothed = SmoothedClassifier(Strict(), 10, 0.25)
    with pytest.raises(SmoothgenError) as info:
        smoothed.certify(torch.full((1, 8, 8), 255.0), 10, 20, 0.01, seed=0)
    assert "expects pixels scaled to [0, 1], got raw 0-255 values" in str(info.value)
    assert "model card" not in str(info.value)  # one line: the first line of the model's message


def test_center_smoother_names_the_shape_too():
    from smoothgen.models import load_autoencoder

    error = _shape_error(load_autoencoder(), torch.zeros(64), smoother=True)
    assert isinstance(error, InvalidInputError) and "(1, H, W)" in str(error)


def test_a_callable_that_raises_keeps_its_own_message():
    """Nothing to learn from a plain function: its own first line, as a ModelOutputError."""
    error = _shape_error(lambda x: x @ torch.ones(5, 10), torch.zeros(64))
    assert type(error) is ModelOutputError and "mat1 and mat2" in str(error)


@pytest.mark.parametrize("call", [
    lambda s, x: s.certify(x, 10, 2**63, 0.01, seed=0),
    lambda s, x: s.certify(x, 2**64, 10, 0.01, seed=0),
    lambda s, x: s.certify_at(x, 0.5, 0.01, n0=10, looks=(100, 2**63), seed=0),
])
def test_counts_past_the_noise_stream_are_refused_before_sampling(call):
    """n copies of a 4-element input need n·2 Philox counters: from n = 2^63 they would wrap. Such a count
    was accepted and sampled (for years) until the counter ran out; now it is refused before any model call."""
    calls = []

    def model(batch):
        calls.append(batch.shape[0])
        if len(calls) > 3:
            raise RuntimeError("still sampling")
        return torch.stack([-batch[:, 0], batch[:, 0]], dim=1)

    with pytest.raises(InvalidParameterError, match="2\\^64"):
        call(SmoothedClassifier(model, 2, 0.5), torch.zeros(4))
    assert len(calls) <= 1  # at most the selection step of certify (n0 = 10), never the estimation


@pytest.mark.parametrize("device", ["nope", "", "meta", "cuda:99", 3, None])
def test_check_device_refuses_devices_this_machine_cannot_use(device):
    """validate.check_device (the CLI's --device): torch's errors for these were RuntimeError,
    AssertionError (no CUDA) or, for "meta", a NotImplementedError when values are read back."""
    from smoothgen.validate import check_device

    with pytest.raises(InvalidParameterError):
        check_device(device, "--device")
    assert check_device("cpu") == torch.device("cpu")


def test_center_certify_refuses_error_probabilities_that_add_up_to_one():
    from smoothgen import CenterSmoother
    from smoothgen.errors import InvalidParameterError

    smoother = CenterSmoother(lambda x: x, sigma=0.5, metric="l2")
    with pytest.raises(InvalidParameterError, match="add up"):
        smoother.certify(torch.zeros(3), 0.1, n=10, m=10, alpha1=0.6, alpha2=0.4)
