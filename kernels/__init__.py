"""smoothgen.kernels: one file per op (Triton on GPU), each with a plain-torch reference.

The names exported here are the dispatched entry points (kernels/dispatch.py): Triton on CUDA, the C++
core on CPU for the pairwise ops, the torch reference elsewhere, overridable with
``SMOOTHGEN_KERNELS=reference|triton|core``.

==========================  ===============================  ======================================
op                          kernel file                      reference (kernels/reference.py)
==========================  ===============================  ======================================
`gaussian_noise`            gaussian_noise.py                `gaussian_noise_reference`
`noisy_embedding`           noisy_embedding.py               `noisy_embedding_reference`
`pairwise_distances`        pairwise.py                      `pairwise_distances_reference`
`median_distances`          pairwise.py                      `median_distances_reference`
`min_median_center`         pairwise.py                      `min_median_center_reference`
user metrics (numba)        numba_metrics.py                 smoothgen.metrics' Python double loop
==========================  ===============================  ======================================

Importing this package imports neither triton nor numba; the kernel files import triton when a Triton
path is first taken.

Names: ``smoothgen.kernels.gaussian_noise`` is always the dispatched function, even after the kernel
module of the same name was imported (Python would otherwise rebind the package attribute to the
submodule). Reach a kernel file's launcher with ``from smoothgen.kernels.gaussian_noise import
gaussian_noise`` (or ``importlib.import_module``), not with ``import smoothgen.kernels.gaussian_noise as m``.
"""
import sys as _sys
import types as _types

from smoothgen.kernels.dispatch import (
    KernelBackendError,
    gaussian_noise,
    median_distances,
    min_median_center,
    noisy_embedding,
    pairwise_distances,
    select_backend,
)
from smoothgen.kernels.reference import (
    gaussian_noise_reference,
    median_distances_reference,
    min_median_center_reference,
    noisy_embedding_reference,
    pairwise_distances_reference,
    philox_normal_reference,
    philox_permutations,
    philox_uint64_reference,
)

__all__ = [
    "KernelBackendError",
    "gaussian_noise",
    "gaussian_noise_reference",
    "median_distances",
    "median_distances_reference",
    "min_median_center",
    "min_median_center_reference",
    "noisy_embedding",
    "noisy_embedding_reference",
    "pairwise_distances",
    "pairwise_distances_reference",
    "philox_normal_reference",
    "philox_permutations",
    "philox_uint64_reference",
    "select_backend",
]


class _Package(_types.ModuleType):
    """Keeps the dispatched functions bound when a kernel submodule of the same name is imported."""

    def __setattr__(self, name: str, value) -> None:
        if name in ("gaussian_noise", "noisy_embedding") and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
