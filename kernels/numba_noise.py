"""The counter-based Gaussian noise of kernels/reference.py, compiled by numba for the CPU.

`philox_normal_reference` computes the noise matrix in NumPy with uint64 arrays: about 30× slower than
torch.randn on the CPU, too slow to be the CPU's noise. This is the same function as one compiled
loop: Philox4x32-10 words bit for bit, the Box–Muller transform in float32 with the same operations
in the same order (log/sqrt/cos/sin from LLVM's libm instead of NumPy's, so values may differ from the
reference in the last bits). `counter_normal` runs it, or the NumPy reference when numba is missing.
Cost against torch.randn: benchmarks/test_noise.py (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import numpy as np

from smoothgen.kernels.numba_metrics import numba_module

_kernel = None


def _compile():
    """The compiled fill loop, or None when numba cannot be imported."""
    global _kernel
    if _kernel is not None:
        return _kernel
    numba, _ = numba_module()
    if numba is None:
        return None

    m32 = np.uint64(0xFFFFFFFF)
    s32 = np.uint64(32)
    key_a, key_b = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
    round_a, round_b = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
    two_m32, two_m64, two_m65 = np.float32(2.0**-32), np.float32(2.0**-64), np.float32(2.0**-65)
    minus_two, two_pi = np.float32(-2.0), np.float32(6.283185307179586)

    @numba.njit(cache=True, nogil=True)
    def fill(seed_lo, seed_hi, row_offset, cols, x, sigma, noisy, out):  # pragma: no cover - compiled
        # noisy: out = x + σ·ε (float32: the product rounded, then the sum, as torch's mul_ then add_);
        # else out = ε.
        rows = out.shape[0]
        pairs = (cols + 1) // 2
        for r in range(rows):
            base = np.uint64(row_offset + r) * np.uint64(pairs)
            for q in range(pairs):
                t = base + np.uint64(q)
                c0 = t & m32
                c1 = t >> s32
                c2 = np.uint64(0)
                c3 = np.uint64(0)
                k0 = seed_lo
                k1 = seed_hi
                for _ in range(10):
                    p0 = c0
                    p2 = c2
                    c0 = ((round_b * p2) >> s32) ^ c1 ^ k0
                    c2 = ((round_a * p0) >> s32) ^ c3 ^ k1
                    c1 = (round_b * p2) & m32
                    c3 = (round_a * p0) & m32
                    k0 = (k0 + key_a) & m32
                    k1 = (k1 + key_b) & m32
                u1 = np.float32(c0) * two_m32 + np.float32(c1) * two_m64 + two_m65
                radius = np.sqrt(minus_two * np.log(u1))
                theta = two_pi * (np.float32(c2) * two_m32)
                e0 = radius * np.cos(theta)
                e1 = radius * np.sin(theta)
                if noisy:
                    e0 = x[2 * q] + sigma * e0
                    if 2 * q + 1 < cols:
                        e1 = x[2 * q + 1] + sigma * e1
                out[r, 2 * q] = e0
                if 2 * q + 1 < cols:
                    out[r, 2 * q + 1] = e1

    _kernel = fill
    return _kernel


def philox_normal_numba(seed: int, row_offset: int, rows: int, cols: int) -> np.ndarray | None:
    """The noise matrix of `philox_normal_reference` as float32 NumPy [rows, cols], or None without numba.

    Arguments are assumed checked (`check_seed_offset`, `check_counter_range`).
    """
    kernel = _compile()
    if kernel is None:
        return None
    out = np.empty((rows, cols), dtype=np.float32)
    kernel(np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32), np.int64(row_offset), np.int64(cols),
           out[0], np.float32(0.0), False, out)
    return out


def noisy_copies_numba(x: np.ndarray, sigma: float, seed: int, row_offset: int, out: np.ndarray) -> bool:
    """out[r] = x + σ·ε_r (float32) for the counter-based ε of rows row_offset + r, in one pass; the
    arithmetic of `gaussian_noise_reference` (float32 product, then sum). False without numba.

    Shapes:
        x: [cols] float32 contiguous; out: [rows, cols] float32 C-contiguous (written in place)
    """
    kernel = _compile()
    if kernel is None:
        return False
    kernel(np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32), np.int64(row_offset), np.int64(x.shape[0]),
           x, np.float32(sigma), True, out)
    return True


__all__ = ["noisy_copies_numba", "philox_normal_numba"]
