"""Plain-torch reference implementations of smoothgen's ops.

Each fused kernel of this package takes the same arguments as its `*_reference` twin here and is
tested against it (tests/kernels). The references are also what `smoothgen.kernels` runs where no
faster path applies (CPU without the C++ core, float64 inputs, an explicit ``SMOOTHGEN_KERNELS=reference``).

Counter-based noise (the ``seed=`` / ``offset=`` arguments). The fused kernels draw ε in-kernel from
Philox4x32-10 (Salmon et al. 2011, as ``triton.language.randint4x``), so no noise tensor ever exists in
memory. Noise is defined as a matrix ``[rows, cols]`` (see each op for what its rows and columns are):
element ``(r, c)`` is lane ``c % 2`` of one Box–Muller pair made from the four 32-bit words
``w0..w3`` of Philox4x32-10 with key ``(seed mod 2³², seed >> 32)`` and counter
``(t mod 2³², t >> 32, 0, 0)``, where the 64-bit counter is

    t = r * ceil(cols / 2) + c // 2

so distinct elements pairs of one key never share a counter (the launchers refuse (offset + rows) ·
ceil(cols / 2) ≥ 2⁶⁴). In float32:

    u1 = w0 · 2⁻³² + w1 · 2⁻⁶⁴ + 2⁻⁶⁵      (a 64-bit uniform in (0, 1]: never 0, no clamp needed)
    θ  = 2π · (w2 · 2⁻³²)
    lane 0 = sqrt(−2 ln u1) · cos θ,  lane 1 = sqrt(−2 ln u1) · sin θ          (w3 is not used)

In exact arithmetic, with u1 uniform on [2⁻⁶⁵, 1], this is the Box–Muller transform truncated at
u1 ≥ 2⁻⁶⁵, i.e. at radius sqrt(130 ln 2) ≈ 9.49: per pair it is within total variation 2⁻⁶⁵ ≤ 2⁻⁶⁴ of
N(0, I₂), and a copy of ``cols`` elements within ⌈cols/2⌉·2⁻⁶⁴ of N(0, I)
(`smoothgen.engine.noise.noise_tv`, charged to every certificate). u1 is formed in float32 (w0 and w1
rounded to 24-bit significands, the sum rounded again: above 2⁻⁸ the low word has no effect), so it is a
rounding of the 64-bit uniform; that rounding, the discreteness of θ and the float32 rounding of
log/sqrt/cos/sin remain assumptions (docs/theory.md §6, README "Soundness"). `philox_normal_reference` computes the same numbers in NumPy: the Philox words are
identical bit for bit, the normals equal to float32 rounding of log/sqrt/cos/sin (the Triton
interpreter matches exactly; a GPU's transcendental functions may differ in the last bits).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from smoothgen.errors import InvalidInputError, InvalidParameterError

__all__ = [
    "PAIRWISE_METRICS",
    "check_counter_range",
    "check_seed_offset",
    "counter_normal",
    "gaussian_noise_reference",
    "median_distances_reference",
    "min_median_center_reference",
    "noisy_embedding_reference",
    "pairwise_distances_reference",
    "philox_normal_reference",
    "philox_permutations",
    "philox_uint64_reference",
]

#: Metrics of the pairwise ops (the same formulas as smoothgen.metrics' l2, l1 and cosine).
PAIRWISE_METRICS = ("l2", "l1", "cosine")

#: Distance entries a row block may hold while computing medians (16 M float32 = 64 MiB): the same
#: budget as smoothgen.center, so n = 10⁴ never materialises the full n×n matrix.
ROW_BLOCK_ENTRIES = 1 << 24

_M32 = np.uint64(0xFFFFFFFF)
_PHILOX_KEY_A = np.uint64(0x9E3779B9)
_PHILOX_KEY_B = np.uint64(0xBB67AE85)
_PHILOX_ROUND_A = np.uint64(0xD2511F53)
_PHILOX_ROUND_B = np.uint64(0xCD9E8D57)


# --------------------------------------------------------------------------------------------------
# Argument checks shared by the references and the Triton launchers
# --------------------------------------------------------------------------------------------------


def check_seed_offset(seed, offset) -> tuple[int, int]:
    """Validate a counter-based RNG key: seed in [0, 2⁶⁴), offset in [0, 2⁶³)."""
    for name, value, bound in (("seed", seed, 1 << 64), ("offset", offset, 1 << 63)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) < bound:
            raise InvalidParameterError(f"{name} must be an integer in [0, 2^{bound.bit_length() - 1}), got {value!r}")
    return int(seed), int(offset)


def check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise InvalidParameterError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_sigma(sigma, rows: int | None = None, device: torch.device | None = None):
    """σ as a float, or (when `rows` is given and σ is a tensor) a float32 tensor [rows] on `device`."""
    if isinstance(sigma, torch.Tensor) and sigma.dim() > 0:
        if rows is None:
            raise InvalidParameterError("sigma must be a number for this op")
        if sigma.shape != (rows,):
            raise InvalidParameterError(f"sigma per sample must have shape ({rows},), got {tuple(sigma.shape)}")
        if not torch.is_floating_point(sigma):
            raise InvalidParameterError(f"sigma must be a floating tensor, got {sigma.dtype}")
        s = sigma.detach().to(device=device, dtype=torch.float32).contiguous()
        if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
            raise InvalidParameterError("sigma must be finite and >= 0 for every sample")
        return s
    if isinstance(sigma, torch.Tensor):
        sigma = float(sigma)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating, np.integer)):
        raise InvalidParameterError(f"sigma must be a number, got {type(sigma).__name__}")
    if not math.isfinite(float(sigma)) or float(sigma) < 0:
        raise InvalidParameterError(f"sigma must be finite and >= 0, got {sigma!r}")
    return float(sigma)


def check_noise_options(x: torch.Tensor, clamp, mean, std):
    """Validate gaussian_noise's clamp and per-channel normalisation; returns (lo, hi, mean, std) with
    mean/std as float32 tensors [C] on x's device (or None)."""
    lo = hi = None
    if clamp is not None:
        if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
            raise InvalidParameterError(f"clamp must be a pair (lo, hi), got {clamp!r}")
        lo, hi = (None if v is None else float(v) for v in clamp)
        if (lo is not None and math.isnan(lo)) or (hi is not None and math.isnan(hi)):
            raise InvalidParameterError("clamp bounds must not be NaN")
        if lo is not None and hi is not None and lo > hi:
            raise InvalidParameterError(f"clamp needs lo <= hi, got ({lo}, {hi})")
    if (mean is None) != (std is None):
        raise InvalidParameterError("give both mean and std (per-channel normalisation) or neither")
    if mean is not None:
        if x.dim() < 1:
            raise InvalidInputError("per-channel normalisation needs x with a channel axis 0")
        c = x.shape[0]
        mean_t = torch.as_tensor(mean, dtype=torch.float32).to(x.device).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).to(x.device).reshape(-1)
        if mean_t.numel() == 1:
            mean_t = mean_t.expand(c)
        if std_t.numel() == 1:
            std_t = std_t.expand(c)
        if mean_t.shape != (c,) or std_t.shape != (c,):
            raise InvalidParameterError(
                f"mean and std need one value per channel (x.shape[0] = {c}), got {tuple(mean_t.shape)} and {tuple(std_t.shape)}"
            )
        if not bool(torch.isfinite(mean_t).all()) or not bool((std_t > 0).all()) or not bool(torch.isfinite(std_t).all()):
            raise InvalidParameterError("mean must be finite and std finite and > 0")
        return lo, hi, mean_t.contiguous(), std_t.contiguous()
    return lo, hi, None, None


def _noise_dtype(x: torch.Tensor) -> None:
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise InvalidInputError(f"noise is added to floating inputs (float32/16, bfloat16, float64), got {x.dtype}")


def check_out(out, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    if out is None:
        return None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(shape) or out.dtype != dtype:
        raise InvalidParameterError(
            f"out must be a {dtype} tensor of shape {tuple(shape)}, got "
            + (f"{out.dtype} {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__)
        )
    if out.device != device or not out.is_contiguous():
        raise InvalidParameterError(f"out must be contiguous on {device}")
    return out


# --------------------------------------------------------------------------------------------------
# Counter-based noise
# --------------------------------------------------------------------------------------------------


def _umulhi(a: np.uint64, b: np.ndarray) -> np.ndarray:
    return (a * b) >> np.uint64(32)


def _philox4x32_10(seed: int, counters: np.ndarray) -> tuple[np.ndarray, ...]:
    """The four 32-bit words of Philox4x32-10 (triton.language.philox) for 64-bit counters, as uint64."""
    with np.errstate(over="ignore"):
        c0 = counters & _M32
        c1 = counters >> np.uint64(32)
        c2 = np.zeros_like(c0)
        c3 = np.zeros_like(c0)
        k0 = np.uint64(seed & 0xFFFFFFFF)
        k1 = np.uint64((seed >> 32) & 0xFFFFFFFF)
        for _ in range(10):
            _c0, _c2 = c0, c2
            c0 = _umulhi(_PHILOX_ROUND_B, _c2) ^ c1 ^ k0
            c2 = _umulhi(_PHILOX_ROUND_A, _c0) ^ c3 ^ k1
            c1 = (_PHILOX_ROUND_B * _c2) & _M32
            c3 = (_PHILOX_ROUND_A * _c0) & _M32
            k0 = (k0 + _PHILOX_KEY_A) & _M32
            k1 = (k1 + _PHILOX_KEY_B) & _M32
    return c0, c1, c2, c3


#: 2⁻³², 2⁻⁶⁴ and 2⁻⁶⁵ as float32 (exact powers of two).
_TWO_M32 = np.float32(2.0**-32)
_TWO_M64 = np.float32(2.0**-64)
_TWO_M65 = np.float32(2.0**-65)
_TWO_PI = np.float32(6.283185307179586)


def _pair_normal(w0: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box–Muller of u1 = w0·2⁻³² + w1·2⁻⁶⁴ + 2⁻⁶⁵ ∈ [2⁻⁶⁵, 1] and θ = 2π·w2·2⁻³², in float32 (module docstring)."""
    u1 = w0.astype(np.float32) * _TWO_M32 + w1.astype(np.float32) * _TWO_M64 + _TWO_M65
    r = np.sqrt(np.float32(-2.0) * np.log(u1))
    th = _TWO_PI * (w2.astype(np.float32) * _TWO_M32)
    return r * np.cos(th), r * np.sin(th)


def check_counter_range(offset: int, rows: int, cols: int) -> None:
    """Refuse a matrix whose 64-bit Philox counters would wrap around (two copies would then coincide)."""
    if (int(offset) + int(rows)) * -(-int(cols) // 2) >= 1 << 64:
        raise InvalidParameterError(
            f"counter-based noise addresses at most 2^64 pairs per key: rows {offset}..{offset + rows} of "
            f"{cols} elements exceed it"
        )


def philox_normal_reference(seed: int, row_offset: int, rows: int, cols: int, device=None) -> torch.Tensor:
    """The counter-based noise matrix of the fused kernels (see the module docstring).

    Args:
        seed: the 64-bit Philox key.
        row_offset: index of the first row (rows are numbered ``row_offset + r``).
        rows, cols: the matrix shape.
        device: where the result goes (computed in NumPy on the CPU).

    Returns:
        float32 tensor [rows, cols].

    Shapes:
        -> [rows, cols]
    """
    seed, row_offset = check_seed_offset(seed, row_offset)
    check_counter_range(row_offset, rows, cols)
    c2 = -(-cols // 2)
    r = np.arange(row_offset, row_offset + rows, dtype=np.uint64)[:, None]
    counters = r * np.uint64(c2) + np.arange(c2, dtype=np.uint64)[None, :]
    w0, w1, w2, _ = _philox4x32_10(seed, counters)
    n0, n1 = _pair_normal(w0, w1, w2)
    lanes = np.stack([n0, n1], axis=-1).reshape(rows, 2 * c2)[:, :cols]
    return torch.from_numpy(np.ascontiguousarray(lanes, dtype=np.float32)).to(device)


def philox_uint64_reference(seed: int, row_offset: int, rows: int, cols: int) -> np.ndarray:
    """A matrix of 64-bit random words: element (r, c) = w0·2³² + w1 of Philox4x32-10 with key `seed` at
    counter (row_offset + r)·cols + c (the counter layout of the noise, one counter per element). Used
    for random subsets (token ablation: keep the k positions with the smallest words).

    Shapes:
        -> [rows, cols] uint64 (NumPy)
    """
    seed, row_offset = check_seed_offset(seed, row_offset)
    if (int(row_offset) + int(rows)) * int(cols) >= 1 << 64:
        raise InvalidParameterError(f"rows {row_offset}..{row_offset + rows} of {cols} words exceed 2^64 counters")
    r = np.arange(row_offset, row_offset + rows, dtype=np.uint64)[:, None]
    counters = r * np.uint64(cols) + np.arange(cols, dtype=np.uint64)[None, :]
    w0, w1, _, _ = _philox4x32_10(seed, counters)
    return (w0 << np.uint64(32)) | w1


def philox_permutations(seed: int, row_offset: int, rows: int, cols: int) -> np.ndarray:
    """Each row a random permutation of 0 .. cols − 1: the columns in increasing order of their
    `philox_uint64_reference` words (stable: equal words keep column order). Its first k entries are a
    uniformly random k-subset (equal words aside), which is how token ablation and the selection copies of
    token deletion choose the positions they keep.

    Shapes:
        -> [rows, cols] int64 (NumPy)
    """
    return np.argsort(philox_uint64_reference(seed, row_offset, rows, cols), axis=1, kind="stable").astype(np.int64)


def counter_normal(seed: int, row_offset: int, rows: int, cols: int, device=None) -> torch.Tensor:
    """`philox_normal_reference`'s matrix as the CPU computes it for real work (smoothgen.kernels'
    dispatch): compiled by numba (kernels/numba_noise.py) when available, else the NumPy reference.

    Shapes:
        -> [rows, cols] float32
    """
    seed, row_offset = check_seed_offset(seed, row_offset)
    check_counter_range(row_offset, rows, cols)
    from smoothgen.kernels.numba_noise import philox_normal_numba

    values = philox_normal_numba(seed, row_offset, rows, cols)
    if values is None:
        return philox_normal_reference(seed, row_offset, rows, cols, device)
    return torch.from_numpy(values).to(device)


# --------------------------------------------------------------------------------------------------
# gaussian_noise
# --------------------------------------------------------------------------------------------------


def gaussian_noise_reference(
    x: torch.Tensor,
    num_copies: int,
    sigma: float,
    generator: torch.Generator | None = None,
    *,
    seed: int | None = None,
    offset: int = 0,
    eps: torch.Tensor | None = None,
    clamp: tuple[float | None, float | None] | None = None,
    mean=None,
    std=None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """num_copies noisy copies x + σ·ε, ε ~ N(0, I), optionally clamped and normalised per channel.

    The noise comes from exactly one source:
    - ``generator`` (or nothing: torch's default generator): torch.randn in x's dtype, as smoothgen
      always did; with no clamp/normalisation this is bit for bit the historical
      ``randn(...).mul_(σ).add_(x)``.
    - ``seed`` / ``offset``: the counter-based noise of the fused kernel (module docstring), with
      rows = copies and cols = x.numel(); copy j uses row ``offset + j``, so copy i of a stream gets
      the same noise however the copies are cut into calls.
    - ``eps``: explicit noise [num_copies, *x.shape] (tests: bit for bit against the kernel).
    With seed or eps the arithmetic is in float32 (float64 for float64 x): y = x + σ·ε, then
    clamp(y, lo, hi), then (y − mean[c]) / std[c] with c the index along x's axis 0; the result is
    cast to x's dtype once.

    Args:
        x: one input, any shape.
        num_copies: number of copies N.
        sigma: noise standard deviation (a number >= 0).
        generator: a torch.Generator on x's device.
        seed, offset: the counter-based key (seed in [0, 2⁶⁴)) and the index of the first copy.
        eps: explicit standard-normal noise.
        clamp: (lo, hi), either may be None; applied to x + σ·ε.
        mean, std: per-channel normalisation (sequences or tensors of x.shape[0] values, or scalars).
        out: optional preallocated result (contiguous, x's dtype and device).

    Returns:
        A tensor [N, *x.shape] of x's dtype on x's device.

    Shapes:
        x: [*S] -> [N, *S]; eps: [N, *S]; mean, std: [S[0]]
    """
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"x must be a tensor, got {type(x).__name__}")
    _noise_dtype(x)
    n = check_count(num_copies, "num_copies")
    sigma = check_sigma(sigma)
    sources = (generator is not None) + (seed is not None) + (eps is not None)
    if sources > 1:
        raise InvalidParameterError("give at most one noise source: generator, seed (with offset) or eps")
    lo, hi, mean_t, std_t = check_noise_options(x, clamp, mean, std)
    out = check_out(out, (n, *x.shape), x.dtype, x.device)
    if seed is None and eps is None:
        if offset:
            raise InvalidParameterError("offset applies to counter-based noise: give seed too")
        noise = torch.randn((n, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
        # In place: one temporary ([b, *S]) instead of two.
        y = noise.mul_(sigma).add_(x)
        if lo is not None or hi is not None or mean_t is not None:
            y = _post(y.to(_compute_dtype(x)), lo, hi, mean_t, std_t, x).to(x.dtype)
        if out is not None:
            out.copy_(y)
            return out
        return y
    cdt = _compute_dtype(x)
    if eps is not None:
        if not isinstance(eps, torch.Tensor) or tuple(eps.shape) != (n, *x.shape):
            raise InvalidInputError(f"eps must be a tensor of shape {(n, *x.shape)}")
        e = eps.to(device=x.device, dtype=cdt, copy=True)  # never scale the caller's tensor in place
    else:
        seed, offset = check_seed_offset(seed, offset)
        e = philox_normal_reference(seed, offset, n, x.numel(), x.device).reshape(n, *x.shape).to(cdt)
    y = e.mul_(sigma).add_(x.to(cdt))
    y = _post(y, lo, hi, mean_t, std_t, x).to(x.dtype)
    if out is not None:
        out.copy_(y)
        return out
    return y


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _post(y: torch.Tensor, lo, hi, mean_t, std_t, x: torch.Tensor) -> torch.Tensor:
    """clamp then per-channel (y − mean[c]) / std[c], c along x's axis 0 (y is [N, *x.shape])."""
    if lo is not None or hi is not None:
        y = y.clamp_(lo, hi)
    if mean_t is not None:
        view = (1, x.shape[0]) + (1,) * (x.dim() - 1)
        y = y.sub_(mean_t.to(y.dtype).reshape(view)).div_(std_t.to(y.dtype).reshape(view))
    return y


# --------------------------------------------------------------------------------------------------
# noisy_embedding
# --------------------------------------------------------------------------------------------------


def check_embedding_args(ids, table, num_samples, mask):
    """Shapes and dtypes of noisy_embedding's arguments; returns (B, L, V, D, N, mask [B, L] bool or None)."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int32, torch.int64):
        raise InvalidInputError(
            "ids must be an int32/int64 tensor [B, L], got "
            + (f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__)
        )
    if not isinstance(table, torch.Tensor) or table.dim() != 2:
        raise InvalidInputError("table must be a tensor [V, D]")
    if table.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise InvalidInputError(f"table must be float32, float16 or bfloat16, got {table.dtype}")
    if ids.device != table.device:
        raise InvalidInputError(f"ids ({ids.device}) and table ({table.device}) must be on one device")
    b, l = ids.shape
    v, d = table.shape
    n = check_count(num_samples, "num_samples")
    if b == 0 or l == 0 or d == 0:
        raise InvalidInputError(f"empty input: ids {tuple(ids.shape)}, table {tuple(table.shape)}")
    if ids.numel():
        lo, hi = torch.aminmax(ids)
        if int(lo) < 0 or int(hi) >= v:
            raise InvalidInputError(f"token ids must lie in [0, {v}), got values in [{int(lo)}, {int(hi)}]")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise InvalidInputError("mask must be a bool tensor [B, L] or [L] (True = perturb)")
        if mask.shape == (l,):
            mask = mask.expand(b, l)
        if mask.shape != (b, l):
            raise InvalidInputError(f"mask must have shape ({b}, {l}) or ({l},), got {tuple(mask.shape)}")
        mask = mask.to(ids.device).contiguous()
    return b, l, v, d, n, mask


def noisy_embedding_reference(
    ids: torch.Tensor,
    table: torch.Tensor,
    sigma,
    num_samples: int,
    mask: torch.Tensor | None = None,
    seed: int = 0,
    offset: int = 0,
    *,
    eps: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """N noisy embeddings of each prompt: table[ids] + σ·ε at the perturbed positions, table[ids] elsewhere.

    Row ``b·N + j`` of the result is sample j of prompt b. Noise is computed in float32 and the sum is
    rounded once to the table's dtype; unperturbed positions are the table rows exactly. Counter-based
    noise (module docstring) has rows = (sample, position) pairs: the noise of sample s (s = b·N + j)
    at position l is row ``(offset + s)·L + l`` with cols = D, so `offset` counts samples.

    Args:
        ids: token ids [B, L] (int32/int64, each in [0, V)).
        table: embedding table [V, D] (float32, float16 or bfloat16).
        sigma: a number, or a tensor [B·N] with one σ per sample.
        num_samples: N noisy samples per prompt.
        mask: bool [B, L] or [L]; True = add noise there (e.g. False for special tokens). None: all.
        seed, offset: the counter-based key and the index of the first sample.
        eps: explicit standard-normal noise [B·N, L, D] instead of the counter-based noise.
        out: optional preallocated result (contiguous, table dtype and device).

    Returns:
        [B·N, L, D] in the table's dtype.

    Shapes:
        ids: [B, L], table: [V, D], sigma: [] or [B·N], mask: [B, L] or [L] -> [B·N, L, D]
    """
    b, l, v, d, n, mask = check_embedding_args(ids, table, num_samples, mask)
    sigma = check_sigma(sigma, rows=b * n, device=table.device)
    out = check_out(out, (b * n, l, d), table.dtype, table.device)
    clean = table[ids.long()].float()  # [B, L, D]
    if eps is not None:
        if not isinstance(eps, torch.Tensor) or tuple(eps.shape) != (b * n, l, d):
            raise InvalidInputError(f"eps must be a tensor of shape {(b * n, l, d)}")
        e = eps.to(device=table.device, dtype=torch.float32, copy=True)  # never scale the caller's tensor in place
    else:
        seed, offset = check_seed_offset(seed, offset)
        e = philox_normal_reference(seed, offset * l, b * n * l, d, table.device).reshape(b * n, l, d)
    s = sigma.reshape(-1, 1, 1) if isinstance(sigma, torch.Tensor) else sigma
    noisy = clean.repeat_interleave(n, dim=0).add_(e.mul_(s))  # x + σ·ε (same rounding as the kernel)
    result = noisy.to(table.dtype)
    if mask is not None:
        keep = ~mask.repeat_interleave(n, dim=0)  # [B·N, L]
        result = torch.where(keep[..., None], table[ids.long()].repeat_interleave(n, dim=0), result)
    if out is not None:
        out.copy_(result)
        return out
    return result


# --------------------------------------------------------------------------------------------------
# pairwise distances, medians, min-median center
# --------------------------------------------------------------------------------------------------


def check_metric(metric) -> str:
    if metric not in PAIRWISE_METRICS:
        raise InvalidParameterError(f"pairwise ops support metrics {PAIRWISE_METRICS}, got {metric!r}")
    return metric


def as_rows(x, label: str) -> torch.Tensor:
    """Outputs [n, *shape] flattened to [n, d]; float64 stays float64, other floats become float32."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise InvalidInputError(f"{label} must be a tensor [n, *shape]")
    if not torch.is_floating_point(x):
        raise InvalidInputError(f"{label} must be floating, got {x.dtype}")
    rows = x.detach().reshape(x.shape[0], math.prod(x.shape[1:]))
    if rows.shape[1] == 0:
        raise InvalidInputError(f"{label} has empty outputs (shape {tuple(x.shape)})")
    return rows


def check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise InvalidInputError(f"outputs have different sizes: {a.shape[1]} and {b.shape[1]} values")
    if a.device != b.device:
        raise InvalidInputError(f"outputs on different devices: {a.device} and {b.device}")


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit ℓ2 norm the way smoothgen.metrics does (by the largest entry first)."""
    scale = x.abs().amax(dim=1, keepdim=True)
    if x.shape[0] and not bool((scale > 0).all()):
        raise InvalidInputError("cosine distance: an output is the zero vector, whose angle is undefined")
    x = x / scale
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True)


def pairwise_distances_reference(a: torch.Tensor, b: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """Distances d(a_i, b_j): "l2", "l1" or "cosine" (1 − cos), as smoothgen.metrics computes them.

    Direct differences (no |a|² + |b|² − 2a·b shortcut), so d(x, x) = 0 exactly. Computed in float32
    (float64 when an input is float64).

    Args:
        a, b: outputs [n_a, *shape] and [n_b, *shape] (flattened per output).
        metric: "l2", "l1" or "cosine".

    Returns:
        [n_a, n_b] float32 (float64 for float64 inputs).

    Shapes:
        a: [n_a, *S], b: [n_b, *S] -> [n_a, n_b]
    """
    metric = check_metric(metric)
    a, b = as_rows(a, "a"), as_rows(b, "b")
    check_pair(a, b)
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    a, b = a.to(dtype), b.to(dtype)
    if metric == "cosine":
        chord = torch.cdist(unit_rows(a), unit_rows(b), p=2.0, compute_mode="donot_use_mm_for_euclid_dist")
        return chord.clamp_(0.0, 2.0).square_().mul_(0.5).clamp_(0.0, 2.0)
    p = 2.0 if metric == "l2" else 1.0
    return torch.cdist(a.contiguous(), b.contiguous(), p=p, compute_mode="donot_use_mm_for_euclid_dist")


def median_distances_reference(
    candidates: torch.Tensor, samples: torch.Tensor, metric: str = "l2", *, block_entries: int | None = None
) -> torch.Tensor:
    """For each candidate, the ⌈n/2⌉-th smallest of its distances to the n samples (k = (n + 1) // 2).

    Row blocks of at most `block_entries` distances (default `ROW_BLOCK_ENTRIES`), then torch.kthvalue:
    the n_c × n matrix never exists when it does not fit.

    Args:
        candidates: [n_c, *S] outputs.
        samples: [n, *S] outputs.
        metric: "l2", "l1" or "cosine".
        block_entries: distance entries per row block.

    Returns:
        [n_c] medians (float32, float64 for float64 inputs).

    Shapes:
        candidates: [n_c, *S], samples: [n, *S] -> [n_c]
    """
    c, s = as_rows(candidates, "candidates"), as_rows(samples, "samples")
    check_pair(c, s)
    n = s.shape[0]
    if n == 0:
        raise InvalidInputError("median of distances to no samples")
    k = (n + 1) // 2
    rows = _block_rows(n, block_entries)
    parts = [
        torch.kthvalue(pairwise_distances_reference(c[i : i + rows], s, metric), k, dim=1).values
        for i in range(0, c.shape[0], rows)
    ]
    if not parts:
        return torch.empty(0, dtype=torch.float32, device=c.device)
    return torch.cat(parts)


def _block_rows(n: int, block_entries: int | None) -> int:
    budget = ROW_BLOCK_ENTRIES if block_entries is None else check_count(block_entries, "block_entries")
    return max(1, budget // max(n, 1))


def check_candidates(n: int, n_candidates) -> int:
    if n_candidates is None:
        return n
    return min(check_count(n_candidates, "n_candidates"), n)


def min_median_center_reference(
    samples: torch.Tensor, metric: str = "l2", n_candidates: int | None = None, *, block_entries: int | None = None
) -> tuple[int, float]:
    """The min-median center: argmin over candidates of the median distance to all samples.

    Candidates are all samples (None) or the first n_candidates (the high-dimensional variant). Ties go
    to the first index (torch.argmin), as in smoothgen.center.

    Args:
        samples: [n, *S] outputs.
        metric: "l2", "l1" or "cosine".
        n_candidates: None or the number of leading samples that are candidates.
        block_entries: distance entries per row block.

    Returns:
        (index of the center among the samples, its median distance r̂).

    Shapes:
        samples: [n, *S] -> (int, float)
    """
    s = as_rows(samples, "samples")
    n_c = check_candidates(s.shape[0], n_candidates)
    medians = median_distances_reference(s[:n_c], s, metric, block_entries=block_entries)
    best = int(torch.argmin(medians))
    return best, float(medians[best])
