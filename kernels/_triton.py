"""What every Triton launcher needs to know: can a kernel run on this tensor's device?

Triton compiles for CUDA devices. On CPU tensors a kernel runs only under Triton's interpreter, which
must be switched on (``TRITON_INTERPRET=1``) before ``triton`` is first imported: triton 3.x decides
at decoration time whether ``@triton.jit`` builds a compiled or an interpreted function, and its own
library functions (``tl.randn4x``, ...) are decorated when triton is imported. The tests do this in
tests/kernels/conftest.py. This module is imported only by the kernel files, never at package import.
"""
from __future__ import annotations

import re

import torch
import triton
import triton.language as tl

from smoothgen.errors import InvalidInputError

#: The Triton releases the kernels are verified with, [low, high): the same range as pyproject.toml's
#: requirement (constraints.txt pins 3.7.1, the version torch 2.13.0's CUDA wheel requires). The noise
#: takes a 64-bit Philox counter through ``tl.randint4x``, which splits an int64 offset into two 32-bit
#: counter words only since Triton 3.4 (triton-lang/triton PR 6832); before, it ran Philox4x64, whose
#: 64-bit words are not kernels/reference.py's (u1 > 1: NaN noise). Releases outside the range were
#: never checked against the reference, so the Triton path refuses them and the dispatch falls back to
#: the reference (same noise, computed on the host).
VERIFIED_TRITON = ((3, 7, 1), (3, 8, 0))


def triton_version(text: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a version string such as "3.7.1" or "3.7.1+git1a2b3c" (missing parts: 0)."""
    parts = [int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3]]
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


if not VERIFIED_TRITON[0] <= triton_version(triton.__version__) < VERIFIED_TRITON[1]:
    raise ImportError(
        f"triton {triton.__version__} is outside the range the kernels were verified with "
        f"(>= {'.'.join(map(str, VERIFIED_TRITON[0]))}, < {'.'.join(map(str, VERIFIED_TRITON[1]))}): its 64-bit "
        "Philox counter handling was never checked against kernels/reference.py"
    )

#: True when triton's own library functions were built by the interpreter (TRITON_INTERPRET=1 was set
#: before triton was imported). Then every kernel runs interpreted (NumPy on the host), on any device.
INTERPRETED: bool = type(tl.randn4x).__name__ == "InterpretedFunction"


#: The interpreter casts float32 to bfloat16 by truncation (triton 3.7.1), the GPU rounds to nearest even.
#: Kernels cast through `to_bf16_rne` when interpreted so that both give the GPU's (and torch's) result.
EXACT_BF16_CAST: bool = INTERPRETED


@triton.jit
def to_bf16_rne(x):
    """float32 -> bfloat16, round to nearest even, in integer arithmetic (finite and infinite values)."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def pair_normal(seed, counter):
    """Two standard normals per 64-bit Philox counter (the scheme of kernels/reference.py): Box–Muller of
    u1 = w0·2⁻³² + w1·2⁻⁶⁴ + 2⁻⁶⁵ ∈ [2⁻⁶⁵, 1] (never 0: no clamp; formed in float32, so a rounding of the
    64-bit uniform, docs/theory.md §6) and θ = 2π·w2·2⁻³²."""
    w0, w1, w2, w3 = tl.randint4x(seed, counter)
    u1 = w0.to(tl.float32) * 2.3283064365386963e-10 + w1.to(tl.float32) * 5.421010862427522e-20 + 2.710505431213761e-20
    r = tl.sqrt(-2.0 * tl.log(u1))
    th = 6.283185307179586 * (w2.to(tl.float32) * 2.3283064365386963e-10)
    return r * tl.cos(th), r * tl.sin(th)


def check_device(*tensors: torch.Tensor) -> torch.device:
    """The one device of `tensors`, after checking a Triton kernel can run there."""
    device = tensors[0].device
    for t in tensors[1:]:
        if t is not None and t.device != device:
            raise InvalidInputError(f"tensors on different devices: {device} and {t.device}")
    if INTERPRETED or device.type == "cuda":
        return device
    raise InvalidInputError(
        f"Triton kernels run on CUDA tensors (or on CPU tensors under TRITON_INTERPRET=1, set before "
        f"triton is imported); got a tensor on {device}. Use the smoothgen.kernels dispatch or the *_reference op."
    )


def launch_options(**gpu_options) -> dict:
    """Keyword arguments of a launch: GPU tuning options, and fp fusion off so that x + σ·ε rounds
    exactly as torch's separate multiply and add do (explicit-noise results are then bit for bit
    those of the reference). The interpreter ignores them."""
    return {"enable_fp_fusion": False, **gpu_options}


__all__ = ["EXACT_BF16_CAST", "INTERPRETED", "VERIFIED_TRITON", "triton_version", "pair_normal", "to_bf16_rne", "check_device", "launch_options", "tl", "triton"]
