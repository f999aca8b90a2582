"""CPU benchmarks of smoothgen.kernels' fast paths against their references, same run.

`make bench` times them; `make test` runs each once as a test (--benchmark-disable). The GPU kernels are
timed by benchmarks/gpu_kernels.py on a CUDA machine.
- numba: a user-registered weighted ℓ2 (a plain Python function of two arrays) as the compiled parallel
  loop vs the Python double loop it replaces.
- center selection: the dispatched min-median center (the C++ core on CPU when built) vs the torch reference.
"""
import numpy as np
import pytest
import torch

from smoothgen import kernels, metrics

N_USER, D_USER = 300, 32
N_CENTER, D_CENTER = 1000, 64
WEIGHTS = np.linspace(0.5, 2.0, D_USER)


def weighted_l2(u, v):
    total = 0.0
    for i in range(u.shape[0]):
        diff = u[i] - v[i]
        total += WEIGHTS[i] * diff * diff
    return np.sqrt(total)


@pytest.fixture(scope="module")
def user_outputs():
    return torch.randn(N_USER, D_USER, generator=torch.Generator().manual_seed(0))


WEIGHTS_T = torch.from_numpy(WEIGHTS).float()


def weighted_l2_torch(u, v):
    """The same metric as a user writes it for the plain loop, which passes torch tensors."""
    return float(torch.sqrt((WEIGHTS_T * (u - v) ** 2).sum()))


@pytest.mark.parametrize("jit", [True, False], ids=["numba", "python_loop"])
def test_user_metric_pairwise(benchmark, user_outputs, jit):
    pytest.importorskip("numba")
    fn = weighted_l2 if jit else weighted_l2_torch
    metric = metrics.Metric("bench_weighted_l2", 1.0, metrics._pairwise_from_fn(fn, "tensor", "bench", jit), "tensor")
    x = user_outputs if jit else user_outputs[:20]  # the Python loop on 20 rows only: 6 000 calls
    metric.distances(x, user_outputs)  # compile outside the timing
    d = benchmark.pedantic(lambda: metric.distances(x, user_outputs), rounds=3, warmup_rounds=0)
    assert d.shape == (x.shape[0], N_USER)


@pytest.fixture(scope="module")
def center_samples():
    return torch.randn(N_CENTER, D_CENTER, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("path", ["dispatched", "reference"])
def test_min_median_center(benchmark, center_samples, path):
    fn = kernels.min_median_center if path == "dispatched" else kernels.min_median_center_reference
    best, radius = benchmark.pedantic(lambda: fn(center_samples, "l2"), rounds=3, warmup_rounds=1)
    assert 0 <= best < N_CENTER and radius > 0
