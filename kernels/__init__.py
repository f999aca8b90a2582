"""smoothgen.kernels: one file per op, each with a plain-torch reference in `reference.py`.

Only the reference implementations exist so far; the fused Triton kernels, the C++ core path and the
dispatch between them arrive with the kernels issue. `gaussian_noise` below is the reference, named
as such: nothing here is a fused kernel yet.
"""
from smoothgen.kernels.reference import gaussian_noise_reference

gaussian_noise = gaussian_noise_reference

__all__ = ["gaussian_noise", "gaussian_noise_reference"]
