"""Public API arguments that escaped as generic exceptions (issue 13, items 5 and 6): each now gives a
SmoothgenError, or a result where the input is valid."""
from __future__ import annotations

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
    (torch.zeros(64), ModelOutputError),  # the model says which shape it wants
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
