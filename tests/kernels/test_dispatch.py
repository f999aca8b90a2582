"""smoothgen.kernels dispatch: which backend runs, SMOOTHGEN_KERNELS overrides, fallbacks, parity."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from smoothgen import _core, kernels
from smoothgen.errors import InvalidInputError, InvalidParameterError
from smoothgen.kernels import dispatch
from smoothgen.kernels.reference import (
    median_distances_reference,
    min_median_center_reference,
    pairwise_distances_reference,
    philox_normal_reference,
)

needs_core = pytest.mark.skipif(not _core.HAVE_CORE, reason=f"C++ core not built: {_core.REASON}")


def cpu_backend(op):
    return dispatch.select_backend(op, torch.device("cpu"), dtypes=(torch.float32,))


# --------------------------------------------------------------------------------------------------
# Automatic choice
# --------------------------------------------------------------------------------------------------


def test_package_import_does_not_import_triton_or_numba():
    import subprocess
    import sys

    code = "import sys, smoothgen, smoothgen.kernels; print('triton' in sys.modules, 'numba' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_cpu_automatic_choice(kernels_env):
    assert cpu_backend("gaussian_noise") == "reference"
    assert cpu_backend("noisy_embedding") == "reference"
    expected = "core" if _core.enabled() else "reference"
    for op in ("pairwise_distances", "median_distances", "min_median_center"):
        assert cpu_backend(op) == expected
    with _core.disabled():
        assert cpu_backend("median_distances") == "reference"
    # float64 stays on the reference (the core computes in float32).
    assert dispatch.select_backend("median_distances", torch.device("cpu"), dtypes=(torch.float64,)) == "reference"


def test_generator_noise_on_cpu_is_what_the_sampler_always_drew(kernels_env):
    x = torch.randn(3, 4, 5)
    got = kernels.gaussian_noise(x, 7, 0.25, torch.Generator().manual_seed(3))
    historical = torch.randn((7, 3, 4, 5), generator=torch.Generator().manual_seed(3)).mul_(0.25).add_(x)
    assert torch.equal(got, historical)


def test_counter_noise_on_cpu_is_the_philox_reference(kernels_env):
    x = torch.zeros(2, 6)
    got = kernels.gaussian_noise(x, 3, 1.0, seed=99, offset=2)
    # The CPU runs the numba build of the same function: Philox words bit for bit, float32 log/sin/cos
    # from another libm (last bits).
    assert torch.allclose(got.reshape(3, 12), philox_normal_reference(99, 2, 3, 12), rtol=0, atol=1e-5)


def test_counter_noise_refuses_a_wrapping_counter(kernels_env):
    """Two copies would share Philox counters if (offset + N)·⌈d/2⌉ reached 2⁶⁴: refused, never wrapped."""
    with pytest.raises(InvalidParameterError):
        kernels.gaussian_noise(torch.zeros(4), 2, 1.0, seed=1, offset=(1 << 63) - 1)


def test_numba_noise_matches_the_numpy_reference():
    from smoothgen.kernels.numba_noise import philox_normal_numba

    got = philox_normal_numba(2**64 - 5, 1000, 37, 11)
    if got is None:
        pytest.skip("numba is not installed (the CPU then runs the NumPy reference itself)")
    expected = philox_normal_reference(2**64 - 5, 1000, 37, 11).numpy()
    assert got.shape == expected.shape and np.allclose(got, expected, rtol=0, atol=1e-5)
    assert np.array_equal(got[:, ::2] == 0, expected[:, ::2] == 0)


def test_automatic_cuda_choice_falls_back_with_one_log(kernels_env, caplog, monkeypatch):
    monkeypatch.setattr(dispatch, "_triton_state", (None, "triton could not be imported (test)"))
    cuda = torch.device("cuda")
    with caplog.at_level(logging.WARNING, logger="smoothgen.kernels"):
        assert dispatch.select_backend("gaussian_noise", cuda) == "reference"
        assert dispatch.select_backend("gaussian_noise", cuda) == "reference"
    records = [r for r in caplog.records if "gaussian_noise falls back" in r.getMessage()]
    assert len(records) == 1 and "triton could not be imported (test)" in records[0].getMessage()


def test_automatic_choice_never_picks_the_interpreter(kernels_env):
    from smoothgen.kernels import _triton

    if _triton.INTERPRETED:
        assert dispatch.select_backend("gaussian_noise", torch.device("cuda")) == "reference"
    else:
        assert dispatch._triton_reason(torch.device("cpu"), explicit=False) is not None


def test_a_failing_fast_path_falls_back_when_automatic_and_raises_when_explicit(kernels_env, caplog):
    def broken():
        raise RuntimeError("kernel exploded")

    with caplog.at_level(logging.WARNING, logger="smoothgen.kernels"):
        assert dispatch._run("op", "triton", broken, lambda: "reference result") == "reference result"
    assert any("kernel exploded" in r.getMessage() for r in caplog.records)
    kernels_env.setenv("SMOOTHGEN_KERNELS", "triton")
    with pytest.raises(RuntimeError, match="exploded"):
        dispatch._run("op", "triton", broken, lambda: "reference result")
    # The caller's own mistakes are never hidden by a fallback.
    kernels_env.delenv("SMOOTHGEN_KERNELS")

    def bad_input():
        raise InvalidInputError("bad")

    with pytest.raises(InvalidInputError):
        dispatch._run("op", "triton", bad_input, lambda: "reference result")


# --------------------------------------------------------------------------------------------------
# SMOOTHGEN_KERNELS
# --------------------------------------------------------------------------------------------------


def test_reference_override(kernels_env):
    kernels_env.setenv("SMOOTHGEN_KERNELS", "reference")
    for op in ("gaussian_noise", "pairwise_distances", "min_median_center"):
        assert cpu_backend(op) == "reference"
        assert dispatch.select_backend(op, torch.device("cuda")) == "reference"


def test_unknown_override_is_an_error(kernels_env):
    kernels_env.setenv("SMOOTHGEN_KERNELS", "cuda")
    with pytest.raises(dispatch.KernelBackendError, match="reference, triton, core"):
        cpu_backend("gaussian_noise")
    kernels_env.setenv("SMOOTHGEN_KERNELS", " Auto ")
    assert cpu_backend("gaussian_noise") == "reference"


def test_explicit_triton_that_cannot_run_raises(kernels_env, monkeypatch):
    kernels_env.setenv("SMOOTHGEN_KERNELS", "triton")
    with pytest.raises(dispatch.KernelBackendError, match="Generator"):
        kernels.gaussian_noise(torch.zeros(3), 2, 1.0, torch.Generator())
    with pytest.raises(dispatch.KernelBackendError, match="float64"):
        kernels.gaussian_noise(torch.zeros(3, dtype=torch.float64), 2, 1.0, seed=1)
    monkeypatch.setattr(dispatch, "_triton_state", (None, "triton could not be imported (test)"))
    with pytest.raises(dispatch.KernelBackendError, match="could not be imported"):
        kernels.noisy_embedding(torch.zeros(1, 2, dtype=torch.long), torch.zeros(3, 4), 1.0, 2)


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="CUDA present: the interpreter is off, so CPU tensors cannot run Triton kernels"
)
def test_explicit_triton_runs_the_kernels_under_the_interpreter(kernels_env):
    kernels_env.setenv("SMOOTHGEN_KERNELS", "triton")
    x = torch.rand(3, 5)
    eps = torch.randn(4, 3, 5)
    assert torch.equal(kernels.gaussian_noise(x, 4, 0.5, eps=eps), kernels.gaussian_noise_reference(x, 4, 0.5, eps=eps))
    a = torch.randn(9, 6)
    torch.testing.assert_close(kernels.pairwise_distances(a, a, "l1"), pairwise_distances_reference(a, a, "l1"))


def test_explicit_core(kernels_env):
    kernels_env.setenv("SMOOTHGEN_KERNELS", "core")
    assert cpu_backend("gaussian_noise") == "reference"  # the core has no noise op
    if not _core.HAVE_CORE:
        with pytest.raises(dispatch.KernelBackendError, match="not available"):
            cpu_backend("median_distances")
        return
    assert cpu_backend("median_distances") == "core"
    with _core.disabled(), pytest.raises(dispatch.KernelBackendError, match="disabled"):
        cpu_backend("median_distances")
    with pytest.raises(dispatch.KernelBackendError, match="float32"):
        dispatch.select_backend("median_distances", torch.device("cpu"), dtypes=(torch.float64,))
    with pytest.raises(dispatch.KernelBackendError, match="CPU"):
        dispatch.select_backend("median_distances", torch.device("cuda"), dtypes=(torch.float32,))


# --------------------------------------------------------------------------------------------------
# Dispatched pairwise ops: parity of every CPU backend
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "reference", pytest.param("core", marks=needs_core)])
@pytest.mark.parametrize("metric", ["l2", "l1", "cosine"])
def test_dispatched_pairwise_ops_agree(kernels_env, backend, metric):
    if backend != "auto":
        kernels_env.setenv("SMOOTHGEN_KERNELS", backend)
    g = torch.Generator().manual_seed(5)
    samples = torch.randn(57, 3, 7, generator=g) + 2.0
    d = kernels.pairwise_distances(samples[:5], samples, metric)
    torch.testing.assert_close(d, pairwise_distances_reference(samples[:5], samples, metric), rtol=1e-5, atol=1e-5)
    medians = kernels.median_distances(samples[:9], samples, metric)
    torch.testing.assert_close(medians, median_distances_reference(samples[:9], samples, metric), rtol=1e-5, atol=1e-5)
    assert kernels.min_median_center(samples, metric) == pytest.approx(min_median_center_reference(samples, metric), rel=1e-5)
    assert kernels.min_median_center(samples, metric, 10) == pytest.approx(
        min_median_center_reference(samples, metric, 10), rel=1e-5
    )


def test_dispatched_pairwise_errors(kernels_env):
    x = torch.randn(4, 3)
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        kernels.median_distances(bad, x)
    zero = x.clone()
    zero[0] = 0.0
    with pytest.raises(InvalidInputError, match="zero vector"):  # the core declines, the reference explains
        kernels.pairwise_distances(zero, x, "cosine")
    with pytest.raises(InvalidInputError, match="no samples"):
        kernels.min_median_center(x[:0])
    # float64 inputs run the reference in float64.
    assert kernels.pairwise_distances(x.double(), x.double()).dtype == torch.float64


def test_kernel_modules_do_not_shadow_the_dispatched_functions():
    import importlib

    module = importlib.import_module("smoothgen.kernels.gaussian_noise")
    assert callable(kernels.gaussian_noise) and kernels.gaussian_noise is dispatch.gaussian_noise
    assert kernels.noisy_embedding is dispatch.noisy_embedding
    assert module.gaussian_noise is not dispatch.gaussian_noise  # the module still has its launcher
