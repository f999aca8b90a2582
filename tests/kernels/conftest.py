"""Run the Triton kernels on CPU tensors under Triton's interpreter when no GPU is present.

triton 3.x decides at decoration time whether ``@triton.jit`` builds a compiled or an interpreted
function, and decorates its own library (``tl.randn4x``, ...) when it is imported; so
``TRITON_INTERPRET=1`` must be in the environment before triton is first imported. This conftest is
imported at collection, before any test runs; smoothgen imports triton only when a Triton path is
first taken. With a GPU the variable is left alone and the same tests run compiled on CUDA (the
``device`` fixture).
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

if not HAS_CUDA:
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise pytest.UsageError(
            "triton was imported before tests/kernels/conftest.py could set TRITON_INTERPRET=1; run "
            "the kernel tests with TRITON_INTERPRET=1 in the environment"
        )
    os.environ["TRITON_INTERPRET"] = "1"

try:
    from smoothgen.kernels import _triton as triton_support

    INTERPRETED = triton_support.INTERPRETED
    TRITON_MISSING = None
except ImportError as exc:  # triton missing or unverified: the Triton tests fail loudly through the fixture below
    triton_support = None
    INTERPRETED = False
    TRITON_MISSING = str(exc)

DEVICES = [
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(
            HAS_CUDA, reason="CUDA present: the interpreter is off and the kernels run compiled (the cuda cases)"
        ),
    ),
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device on this machine")),
]


@pytest.fixture(params=DEVICES)
def device(request):
    """The device the Triton kernels run on: CPU tensors under the interpreter, or CUDA."""
    if triton_support is None:
        pytest.fail(f"triton cannot be used ({TRITON_MISSING}): pip install -c constraints.txt triton (see kernels/README.md)")
    if request.param == "cpu":
        assert INTERPRETED, "TRITON_INTERPRET=1 did not take effect (triton imported too early?)"
    return torch.device(request.param)


@pytest.fixture
def kernels_env(monkeypatch):
    """A clean SMOOTHGEN_KERNELS and a fresh once-only log for dispatch tests."""
    from smoothgen.kernels import dispatch

    monkeypatch.delenv("SMOOTHGEN_KERNELS", raising=False)
    monkeypatch.setattr(dispatch, "_logged", set())
    return monkeypatch


@pytest.fixture
def assert_noise_matches():
    """out equals ref bit for bit under the interpreter (which computes log/sqrt/cos/sin with NumPy
    exactly as the reference does), within two output ulps on a GPU (whose float32 functions may
    differ in the last bits)."""

    def check(out: torch.Tensor, ref: torch.Tensor) -> None:
        assert out.dtype == ref.dtype and out.shape == ref.shape
        ref = ref.to(out.device)
        if out.device.type == "cpu":
            assert torch.equal(out, ref), f"max difference {(out.float() - ref.float()).abs().max().item()}"
            return
        eps = torch.finfo(out.dtype).eps
        torch.testing.assert_close(out.float(), ref.float(), rtol=2 * eps, atol=1e-5)

    return check
