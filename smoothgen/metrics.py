"""Output metrics for center smoothing: pairwise distances and relaxed-triangle constants.

Center smoothing (Kumar & Goldstein, 2021) certifies a model whose outputs live in a metric space. It
needs, for each metric, the pairwise distances between sampled outputs and the constant ``gamma`` of
the relaxed triangle inequality

    d(a, c) <= gamma * (d(a, b) + d(b, c)),

which enters the certified radius. ``gamma = 1`` for a true metric or pseudometric; ``gamma = 2`` for
squared-Euclidean-type distances such as the cosine distance ``1 - cos``.

Every metric is a `Metric`; the algorithms call only `Metric.distances`, which runs the metric's
pairwise function and then `check_distances`, so that a negative or non-finite distance (from a
broken user metric, or NaN model outputs) raises `MetricError` instead of silently producing a
certificate.

Built-in metrics (see `available_metrics`):

==============  =====  ========  =============================================================
name            gamma  kind      distance between two outputs
==============  =====  ========  =============================================================
``l2``          1      tensor    Euclidean distance of the flattened outputs
``l1``          1      tensor    l1 distance of the flattened outputs
``cosine``      2      tensor    ``1 - cos(a, b)`` of the flattened outputs
``angular``     1      tensor    ``arccos(cos(a, b)) / pi``
``tv1d``        1      tensor    total variation of ``a - b`` along the last axis
``tv2d``        1      tensor    anisotropic total variation of ``a - b`` over ``[C, H, W]``
``jaccard``     1      tensor    ``1 - IoU`` of boxes ``(x1, y1, x2, y2)``
``jaccard-match`` 1    tensor    sets of K ≤ 6 boxes: least mean ``1 - IoU`` over the pairings of slots
``w1``          1      tensor    1-Wasserstein distance of histograms on unit-spaced bins
``levenshtein`` 1      sequence  edit distance of integer token sequences
==============  =====  ========  =============================================================

Outputs of a "tensor" metric are batched as one tensor ``[n, *shape]``; outputs of a "sequence"
metric are a list of 1-D integer sequences (lists, tuples, 1-D integer tensors or arrays) of any
lengths, or a 2-D integer tensor / array holding ``n`` sequences of equal length.

Memory: built-in tensor metrics fill the ``[n_a, n_b]`` result block by block, each block sized so
that no intermediate exceeds `_CHUNK_BYTES` (64 MiB); apart from the result itself, memory is that
of the inputs plus one block.
"""
from __future__ import annotations

import itertools
import math
import os
import threading
from dataclasses import dataclass
from numbers import Real
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch

from smoothgen.errors import InvalidInputError, InvalidParameterError, MetricError, short

__all__ = [
    "Metric",
    "Outputs",
    "available_metrics",
    "check_distances",
    "get_metric",
    "register_metric",
]

#: A batch of model outputs: a tensor ``[n, *shape]`` (kind "tensor") or ``n`` integer sequences
#: (kind "sequence").
Outputs = Union[torch.Tensor, Sequence[Any]]

#: Largest intermediate (in bytes) a built-in metric allocates per block of output pairs.
_CHUNK_BYTES = 64 * 2**20

_KINDS = ("tensor", "sequence")


# --------------------------------------------------------------------------------------------------
# Metric objects and the registry
# --------------------------------------------------------------------------------------------------


def _check_gamma(gamma: Any) -> float:
    """Return gamma as a float after checking it is a finite number >= 1."""
    ok = isinstance(gamma, Real) and not isinstance(gamma, bool)
    if not ok or not math.isfinite(float(gamma)) or float(gamma) < 1.0:
        raise InvalidParameterError(
            f"gamma (the relaxed-triangle constant) must be a finite number >= 1, got {gamma!r}"
        )
    return float(gamma)


@dataclass(frozen=True)
class Metric:
    """A distance on model outputs, with its relaxed-triangle constant.

    Attributes:
        name: The name the metric is registered under.
        gamma: The relaxed-triangle constant: ``d(a, c) <= gamma * (d(a, b) + d(b, c))``; >= 1.
        pairwise: ``pairwise(a, b)`` returns the ``[n_a, n_b]`` distances between the ``n_a``
            outputs ``a`` and the ``n_b`` outputs ``b``. It is not checked; call `distances`.
        kind: ``"tensor"`` (outputs batched as a tensor ``[n, *shape]``) or ``"sequence"``
            (a list of 1-D integer sequences).
        description: One line for listings.
    """

    name: str
    gamma: float
    pairwise: Callable[[Outputs, Outputs], torch.Tensor]
    kind: str
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name != self.name.strip():
            raise InvalidParameterError(
                f"metric name must be a non-empty string without surrounding blanks, got {self.name!r}"
            )
        # Normalised here so that a Metric built by hand is held to the same rules as a registered one.
        object.__setattr__(self, "gamma", _check_gamma(self.gamma))
        if self.kind not in _KINDS:
            raise InvalidParameterError(f"metric kind must be one of {_KINDS}, got {self.kind!r}")
        if not callable(self.pairwise):
            raise InvalidParameterError(
                f"pairwise of metric {self.name!r} must be callable, got {type(self.pairwise).__name__}"
            )
        if not isinstance(self.description, str):
            raise InvalidParameterError(f"description must be a string, got {type(self.description).__name__}")

    def distances(self, a: Outputs, b: Outputs) -> torch.Tensor:
        """Checked pairwise distances: the only entry point the algorithms use.

        Args:
            a: ``n_a`` outputs (a tensor ``[n_a, *shape]`` or ``n_a`` sequences, per `kind`).
            b: ``n_b`` outputs of the same kind (and, for tensors, the same ``shape``).

        Returns:
            The distances ``d(a_i, b_j)``, a floating tensor ``[n_a, n_b]``; for tensor outputs, on
            ``a``'s device.

        Raises:
            InvalidInputError: outputs of the wrong kind or of mismatched shapes.
            MetricError: the metric returned something other than an ``[n_a, n_b]`` tensor of
                non-negative finite numbers.

        Shapes:
            a: ``[n_a, *shape]`` or a length-``n_a`` list; b: ``[n_b, *shape]`` or a length-``n_b``
            list; result: ``[n_a, n_b]``.
        """
        if self.kind == "tensor":
            a, b = _check_tensor_outputs(a, b, self.name)
            n_a, n_b = a.shape[0], b.shape[0]
        else:
            n_a, n_b = _sequence_count(a, self.name), _sequence_count(b, self.name)
        d = self.pairwise(a, b)
        if not isinstance(d, torch.Tensor):
            raise MetricError(f"metric {self.name!r} returned {type(d).__name__}, expected a torch.Tensor")
        if tuple(d.shape) != (n_a, n_b):
            raise MetricError(
                f"metric {self.name!r} returned distances of shape {tuple(d.shape)}, expected {(n_a, n_b)}"
            )
        if d.is_complex():
            raise MetricError(f"metric {self.name!r} returned complex distances")
        if not torch.is_floating_point(d):
            d = d.to(torch.float64)
        return check_distances(d, self.name)


def check_distances(d: torch.Tensor, name: str) -> torch.Tensor:
    """Raise `MetricError` unless every distance is a non-negative finite number.

    One reduction (``aminmax``, which propagates NaN) and one host synchronisation cover the whole
    tensor, so the check costs little next to computing the distances.

    Args:
        d: Distances, any shape.
        name: The metric's name, for the message.

    Returns:
        ``d`` itself.

    Raises:
        MetricError: ``d`` is not a real tensor, or holds a negative, NaN or infinite value.
    """
    if not isinstance(d, torch.Tensor):
        raise MetricError(f"metric {name!r} returned {type(d).__name__}, expected a torch.Tensor")
    if d.is_complex():
        raise MetricError(f"metric {name!r} returned complex distances")
    if d.numel() == 0 or d.dtype == torch.bool:
        return d
    lo, hi = torch.aminmax(d)
    lo, hi = torch.stack([lo, hi]).tolist()
    if lo >= 0 and hi < math.inf:  # NaN fails both comparisons
        return d
    # Failure path only: say what went wrong and where, so the broken metric can be found.
    flat = d.detach().reshape(-1)
    bad = torch.isnan(flat) | torch.isinf(flat) | (flat < 0)
    first = int(torch.nonzero(bad)[0, 0])
    index = tuple(int(i) for i in np.unravel_index(first, tuple(d.shape)))
    counts = (
        f"{int(torch.isnan(flat).sum())} NaN, {int(torch.isinf(flat).sum())} infinite, "
        f"{int((flat < 0).sum())} negative"
    )
    raise MetricError(
        f"metric {name!r} returned invalid distances ({counts}); first at index {index}: "
        f"{flat[first].item()!r}. Distances must be non-negative and finite."
    )


_REGISTRY: dict[str, Metric] = {}
_REGISTRY_LOCK = threading.Lock()


def available_metrics() -> list[str]:
    """Return the names of all registered metrics, sorted."""
    with _REGISTRY_LOCK:
        return sorted(_REGISTRY)


def get_metric(metric: str | Metric) -> Metric:
    """Look a metric up by name (a `Metric` is returned as it is).

    Args:
        metric: A registered name or a `Metric`.

    Returns:
        The `Metric`.

    Raises:
        InvalidParameterError: an unknown name, or neither a string nor a `Metric`.
    """
    if isinstance(metric, Metric):
        return metric
    if not isinstance(metric, str):
        raise InvalidParameterError(f"metric must be a name or a Metric, got {type(metric).__name__}")
    with _REGISTRY_LOCK:
        found = _REGISTRY.get(metric)
    if found is None:
        raise InvalidParameterError(f"unknown metric {short(metric)}; available: {', '.join(available_metrics())}")
    return found


def register_metric(
    name: str,
    fn: Callable[[Any, Any], float] | None = None,
    *,
    gamma: float,
    pairwise: Callable[[Outputs, Outputs], torch.Tensor] | None = None,
    kind: str = "tensor",
    description: str = "",
    overwrite: bool = False,
    jit: bool | None = None,
) -> Metric:
    """Register a metric under a name, from a distance of two outputs or a vectorised pairwise.

    Args:
        name: The name to register under.
        fn: ``fn(a_single, b_single) -> float``, the distance of two single outputs (for tensors,
            ``a[i]`` and ``b[j]``; for sequences, the items as given). It is called once per pair,
            so it suits small numbers of samples. Give either ``fn`` or ``pairwise``.
        gamma: The relaxed-triangle constant, a finite number >= 1. It must be correct: the
            certificate is only as sound as this constant.
        pairwise: ``pairwise(a, b) -> [n_a, n_b]`` tensor, a vectorised distance.
        kind: ``"tensor"`` or ``"sequence"``.
        description: One line describing the metric.
        overwrite: Replace a metric already registered under ``name`` instead of raising.
        jit: How ``fn`` is evaluated (smoothgen.kernels.numba_metrics). None (default): compiled by
            numba into a parallel pairwise loop when it compiles for the outputs (``fn`` then gets
            NumPy arrays: float64 for floating outputs, int64 for integer outputs and token
            sequences), else the plain double loop with the reason logged once. True: numba or a
            `MetricError`. False: always the plain double loop (``fn`` gets the items as given).
            ``SMOOTHGEN_KERNELS=reference`` turns the numba path off unless ``jit=True``.

    Returns:
        The registered `Metric`.

    Raises:
        InvalidParameterError: a bad name, gamma, kind or jit; both or neither of ``fn`` and
            ``pairwise``; ``jit`` given with ``pairwise``; or ``name`` already registered and
            ``overwrite`` is false.
    """
    if (fn is None) == (pairwise is None):
        raise InvalidParameterError(
            "give exactly one of fn (a distance of two outputs) and pairwise (a vectorised distance)"
        )
    if fn is not None and not callable(fn):
        raise InvalidParameterError(f"fn must be callable, got {type(fn).__name__}")
    if kind not in _KINDS:
        raise InvalidParameterError(f"metric kind must be one of {_KINDS}, got {kind!r}")
    if jit is not None and (not isinstance(jit, bool) or fn is None):
        raise InvalidParameterError(f"jit must be None, True or False and applies to fn metrics only, got {jit!r}")
    if fn is not None:
        pairwise = _pairwise_from_fn(fn, kind, name, jit)
    metric = Metric(name=name, gamma=gamma, pairwise=pairwise, kind=kind, description=description)
    with _REGISTRY_LOCK:
        if name in _REGISTRY and not overwrite:
            raise InvalidParameterError(
                f"a metric named {name!r} is already registered; pass overwrite=True to replace it"
            )
        _REGISTRY[name] = metric
    return metric


def _pairwise_from_fn(
    fn: Callable[[Any, Any], float], kind: str, name: str, jit: bool | None = None
) -> Callable[[Outputs, Outputs], torch.Tensor]:
    """Wrap a distance of two single outputs into a pairwise distance: numba's parallel loop when it
    compiles (see `register_metric`'s ``jit``), else a plain double loop."""
    from smoothgen.kernels import numba_metrics

    compiled = None if jit is False else numba_metrics.NumbaPairwise(fn, kind, name)

    def pairwise(a: Outputs, b: Outputs) -> torch.Tensor:
        device = torch.device("cpu")
        if kind == "tensor":
            a, b = _check_tensor_outputs(a, b, name)
            device = a.device
        if compiled is not None and (jit or os.environ.get("SMOOTHGEN_KERNELS", "").strip().lower() != "reference"):
            try:
                return compiled(a, b).to(device)
            except numba_metrics.NumbaUnavailable as exc:
                if jit:
                    raise MetricError(f"metric {name!r} was registered with jit=True, but {exc}") from exc
                numba_metrics.log_fallback(name, str(exc))
        rows = [[_to_float(fn(x, y), name) for y in b] for x in a]
        return torch.tensor(rows, dtype=torch.float64, device=device).reshape(len(a), len(b))

    return pairwise


def _to_float(value: Any, name: str) -> float:
    """One distance returned by a user metric, as a float (its sign and finiteness are checked later)."""
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: a tensor of several values
        raise MetricError(f"metric {name!r} returned {value!r}, which is not a single number") from exc


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _check_tensor_outputs(a: Any, b: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check two batches of tensor outputs and bring ``b`` to ``a``'s device.

    Shapes:
        a: ``[n_a, *shape]``; b: ``[n_b, *shape]``.
    """
    for label, x in (("a", a), ("b", b)):
        if not isinstance(x, torch.Tensor):
            raise InvalidInputError(
                f"metric {name!r} takes outputs batched as a tensor [n, *shape]; {label} is a {type(x).__name__}"
            )
        if x.dim() < 1:
            raise InvalidInputError(f"metric {name!r} takes outputs batched as [n, *shape]; {label} is a 0-d tensor")
    if a.shape[1:] != b.shape[1:]:
        raise InvalidInputError(
            f"metric {name!r}: outputs have different shapes, {tuple(a.shape[1:])} in a and {tuple(b.shape[1:])} in b"
        )
    return a, b.to(a.device)


def _float_outputs(
    a: Any, b: Any, name: str, min_dims: int = 0, max_dims: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked tensor outputs as finite floating tensors of one dtype on one device, detached.

    Integer inputs become float64 (exact for integers below 2**53); half precision is computed in
    float32, whose rounding stays well below the distances between nearby outputs.

    Args:
        a: ``[n_a, *shape]`` outputs.
        b: ``[n_b, *shape]`` outputs.
        name: The metric's name, for messages.
        min_dims: Fewest dimensions of one output (``len(shape)``).
        max_dims: Most dimensions of one output, or None for no limit.
    """
    a, b = _check_tensor_outputs(a, b, name)
    dims = a.dim() - 1
    if dims < min_dims or (max_dims is not None and dims > max_dims):
        most = "any" if max_dims is None else str(max_dims)
        wanted = f"{min_dims}" if max_dims == min_dims else f"{min_dims} to {most}"
        raise InvalidInputError(
            f"metric {name!r} takes outputs with {wanted} dimensions, got shape {tuple(a.shape[1:])}"
        )
    if math.prod(a.shape[1:]) == 0:
        raise InvalidInputError(f"metric {name!r}: outputs are empty (shape {tuple(a.shape[1:])})")
    if a.is_complex() or b.is_complex():
        raise InvalidInputError(f"metric {name!r} takes real outputs, got {a.dtype} and {b.dtype}")
    if torch.float64 in (a.dtype, b.dtype) or not (torch.is_floating_point(a) or torch.is_floating_point(b)):
        dtype = torch.float64
    else:
        dtype = torch.float32
    a = a.detach().to(dtype)
    b = b.detach().to(dtype)
    for label, x in (("a", a), ("b", b)):
        if x.numel() and not bool(torch.isfinite(x).all()):
            raise InvalidInputError(f"metric {name!r}: outputs {label} contain NaN or Inf")
    return a, b


def _sequence_count(x: Any, name: str) -> int:
    """Number of sequences in a batch of sequence outputs (a light check; items are checked later)."""
    if isinstance(x, np.ndarray) and x.dtype == object and x.ndim == 1:
        return len(x)  # a ragged batch of sequences
    if isinstance(x, (torch.Tensor, np.ndarray)):
        if x.ndim != 2:
            raise InvalidInputError(
                f"metric {name!r} takes a list of 1-D sequences or a 2-D array [n, length]; got {x.ndim}-d"
            )
        return int(x.shape[0])
    if isinstance(x, (str, bytes)) or not isinstance(x, Sequence):
        raise InvalidInputError(f"metric {name!r} takes a list of 1-D integer sequences, got {type(x).__name__}")
    return len(x)


_INT64_MAX = np.iinfo(np.int64).max


def _token_array(item: Any, name: str) -> np.ndarray:
    """One integer sequence as a 1-D int64 array."""
    if isinstance(item, (str, bytes)):
        raise InvalidInputError(
            f"metric {name!r} compares integer token sequences; got a {type(item).__name__}, encode it first"
        )
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    arr = np.asarray(item)
    if arr.ndim != 1:
        raise InvalidInputError(f"metric {name!r}: each output must be a 1-D sequence, got {arr.ndim}-d")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise InvalidInputError(
            f"metric {name!r}: token sequences must hold integers (within int64), got dtype {arr.dtype}"
        )
    if arr.dtype.kind == "u" and arr.dtype.itemsize >= 8 and int(arr.max()) > _INT64_MAX:
        raise InvalidInputError(f"metric {name!r}: token {int(arr.max())} does not fit in int64")
    return arr.astype(np.int64, copy=False)


def _token_sequences(x: Any, name: str) -> list[np.ndarray]:
    """A batch of sequence outputs as a list of 1-D int64 arrays."""
    _sequence_count(x, name)
    return [_token_array(item, name) for item in x]


# --------------------------------------------------------------------------------------------------
# Blocked evaluation
# --------------------------------------------------------------------------------------------------


def _block_shape(n_a: int, n_b: int, bytes_per_pair: int) -> tuple[int, int]:
    """Rows and columns of a block of pairs whose intermediates fit in `_CHUNK_BYTES`.

    Whole rows of ``b`` are preferred (fewer, larger kernel calls); columns are split only when a
    single row of pairs is already over budget.
    """
    budget = max(1, _CHUNK_BYTES // max(1, bytes_per_pair))  # pairs per block
    cols = max(1, min(n_b, budget))
    rows = max(1, min(n_a, budget // cols))
    return rows, cols


def _fill_blockwise(
    out: torch.Tensor, bytes_per_pair: int, block: Callable[[slice, slice], torch.Tensor]
) -> torch.Tensor:
    """Fill ``out[i, j]`` block by block with ``block(rows, cols)``.

    Args:
        out: The preallocated ``[n_a, n_b]`` result.
        bytes_per_pair: Bytes of intermediates ``block`` allocates per pair of outputs.
        block: Returns the distances for a slice of rows of ``a`` and a slice of rows of ``b``.

    Returns:
        ``out``.
    """
    n_a, n_b = out.shape
    rows, cols = _block_shape(n_a, n_b, bytes_per_pair)
    for i in range(0, n_a, rows):
        for j in range(0, n_b, cols):
            r, c = slice(i, min(i + rows, n_a)), slice(j, min(j + cols, n_b))
            out[r, c] = block(r, c)
    return out


def _cdist(x: torch.Tensor, y: torch.Tensor, p: float) -> torch.Tensor:
    """Blocked ``torch.cdist`` of feature rows, without the matrix-product shortcut.

    The shortcut ``|x|^2 + |y|^2 - 2 x.y`` loses everything to cancellation when outputs are close
    relative to their norms, which is exactly the regime of center smoothing (many noisy outputs
    near one center); the direct form is about 3x slower but gives ``d(x, x) == 0`` exactly.

    Shapes:
        x: ``[n_a, F]``; y: ``[n_b, F]``; result: ``[n_a, n_b]``.
    """
    out = torch.empty(x.shape[0], y.shape[0], dtype=x.dtype, device=x.device)
    if x.shape[1] == 0:  # nothing varies (e.g. the total variation of length-1 signals)
        return out.zero_()
    x, y = x.contiguous(), y.contiguous()

    def block(r: slice, c: slice) -> torch.Tensor:
        return torch.cdist(x[r], y[c], p=p, compute_mode="donot_use_mm_for_euclid_dist")

    # The block result is the only intermediate; twice its size leaves room for kernel scratch.
    return _fill_blockwise(out, 2 * x.element_size(), block)


# --------------------------------------------------------------------------------------------------
# Built-in metrics
# --------------------------------------------------------------------------------------------------


def _rows(x: torch.Tensor) -> torch.Tensor:
    """Outputs ``[n, *shape]`` flattened to ``[n, prod(shape)]`` (also for n = 0 and scalar outputs)."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def _l2(a: Outputs, b: Outputs) -> torch.Tensor:
    """Euclidean distance of flattened outputs. Shapes: ``[n_a, *s]``, ``[n_b, *s]`` -> ``[n_a, n_b]``."""
    a, b = _float_outputs(a, b, "l2")
    return _cdist(_rows(a), _rows(b), p=2.0)


def _l1(a: Outputs, b: Outputs) -> torch.Tensor:
    """l1 distance of flattened outputs. Shapes: ``[n_a, *s]``, ``[n_b, *s]`` -> ``[n_a, n_b]``."""
    a, b = _float_outputs(a, b, "l1")
    return _cdist(_rows(a), _rows(b), p=1.0)


def _unit_rows(x: torch.Tensor, name: str, label: str) -> torch.Tensor:
    """Flattened outputs scaled to unit Euclidean norm; a zero output has no direction."""
    flat = _rows(x)
    # Dividing by the largest entry first keeps the norm from overflowing (or underflowing to a false
    # "zero vector") for outputs of extreme scale; the direction is unchanged.
    scale = flat.abs().amax(dim=1, keepdim=True)
    if flat.shape[0] and not bool((scale > 0).all()):
        i = int(torch.nonzero(scale[:, 0] <= 0)[0, 0])
        raise InvalidInputError(f"metric {name!r}: output {i} of {label} is the zero vector, whose angle is undefined")
    flat = flat / scale
    return flat / torch.linalg.vector_norm(flat, dim=1, keepdim=True)


def _chord(a: Outputs, b: Outputs, name: str) -> torch.Tensor:
    """Euclidean distance between the directions of the outputs, in [0, 2].

    Both cosine metrics derive from it rather than from ``a.b / (|a| |b|)``: ``1 - cos`` and
    ``arccos`` of a rounded cosine lose all precision for nearly parallel outputs (``arccos(1 - 1e-7)``
    is already ``4.5e-4``), while the chord is exact there and zero for identical outputs.
    """
    a, b = _float_outputs(a, b, name)
    return _cdist(_unit_rows(a, name, "a"), _unit_rows(b, name, "b"), p=2.0).clamp_(0.0, 2.0)


def _cosine(a: Outputs, b: Outputs) -> torch.Tensor:
    """``1 - cos(a, b)`` of flattened outputs, in [0, 2]: half the squared chord, so gamma = 2."""
    chord = _chord(a, b, "cosine")
    return chord.square_().mul_(0.5).clamp_(0.0, 2.0)


def _angular(a: Outputs, b: Outputs) -> torch.Tensor:
    """Angle between flattened outputs divided by pi, in [0, 1]: the geodesic metric on the sphere."""
    chord = _chord(a, b, "angular")
    return chord.mul_(0.5).clamp_(0.0, 1.0).asin_().mul_(2.0 / math.pi).clamp_(0.0, 1.0)


def _tv1d(a: Outputs, b: Outputs) -> torch.Tensor:
    """Total variation of ``a - b`` along the last axis, summed over leading axes.

    ``TV(a - b) = sum_i |(a_{i+1} - a_i) - (b_{i+1} - b_i)|`` is the l1 distance of the finite
    differences, so the differences are taken once per output instead of once per pair.

    Shapes:
        a: ``[n_a, *lead, L]``; b: ``[n_b, *lead, L]``; result: ``[n_a, n_b]``.
    """
    a, b = _float_outputs(a, b, "tv1d", min_dims=1)
    return _cdist(torch.diff(a, dim=-1).flatten(1), torch.diff(b, dim=-1).flatten(1), p=1.0)


def _grad_features(x: torch.Tensor) -> torch.Tensor:
    """Vertical and horizontal finite differences of ``[n, C, H, W]`` images, flattened per image."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).flatten(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).flatten(1)
    return torch.cat([dh, dw], dim=1)


def _tv2d(a: Outputs, b: Outputs) -> torch.Tensor:
    """Anisotropic total variation of ``a - b`` over images, l1 across channels.

    As for `_tv1d`, it is the l1 distance of the stacked vertical and horizontal differences.

    Shapes:
        a: ``[n_a, C, H, W]`` or ``[n_a, H, W]``; b: likewise; result: ``[n_a, n_b]``.
    """
    a, b = _float_outputs(a, b, "tv2d", min_dims=2, max_dims=3)
    return _cdist(_grad_features(a), _grad_features(b), p=1.0)


def _boxes(a: Outputs, b: Outputs, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Box outputs ``[n, *slots, 4]`` as float ``[n, K, 4]`` (K = the number of slots)."""
    a, b = _float_outputs(a, b, name, min_dims=1)
    if a.shape[-1] != 4:
        raise InvalidInputError(
            f"metric {name!r} takes boxes [..., 4] = (x1, y1, x2, y2), got last dimension {a.shape[-1]}"
        )
    slots = math.prod(a.shape[1:-1])
    return a.reshape(a.shape[0], slots, 4), b.reshape(b.shape[0], slots, 4)


def _box_area(x: torch.Tensor) -> torch.Tensor:
    w, h = x[..., 2] - x[..., 0], x[..., 3] - x[..., 1]
    # The same expression as the intersection in _box_distances, so that IoU(box, box) is exactly 1.
    return torch.where((w > 0) & (h > 0), w * h, torch.zeros_like(w))


def _box_distances(p: torch.Tensor, q: torch.Tensor, area_p: torch.Tensor, area_q: torch.Tensor) -> torch.Tensor:
    """1 − IoU of boxes p and q broadcast against each other (areas broadcast alike); an empty box (x2 <= x1
    or y2 <= y1) is the empty set: 1 against a box, 0 against another empty one."""
    # Either box empty makes one side of the overlap <= 0, so the intersection is 0.
    iw = (torch.minimum(p[..., 2], q[..., 2]) - torch.maximum(p[..., 0], q[..., 0])).clamp_(min=0)
    ih = (torch.minimum(p[..., 3], q[..., 3]) - torch.maximum(p[..., 1], q[..., 1])).clamp_(min=0)
    inter = iw.mul_(ih)
    union = area_p + area_q - inter
    iou = torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.ones_like(union))
    return (1.0 - iou).clamp_(0.0, 1.0)


def _jaccard(a: Outputs, b: Outputs) -> torch.Tensor:
    """``1 - IoU`` of boxes ``(x1, y1, x2, y2)``, averaged over box slots.

    A box with ``x2 <= x1`` or ``y2 <= y1`` is "no box", the empty set: no box against a box is at
    distance 1, no box against no box at 0. This is the Jaccard distance of sets, a metric; the mean
    over the slots of outputs ``[*slots, 4]`` (slot k compared with slot k) is a metric too.

    Shapes:
        a: ``[n_a, *slots, 4]``; b: ``[n_b, *slots, 4]``; result: ``[n_a, n_b]``.
    """
    a, b = _boxes(a, b, "jaccard")
    area_a, area_b = _box_area(a), _box_area(b)
    out = torch.empty(a.shape[0], b.shape[0], dtype=a.dtype, device=a.device)

    def block(r: slice, c: slice) -> torch.Tensor:  # [r, 1, K, 4] against [1, c, K, 4]
        return _box_distances(a[r, None], b[None, c], area_a[r, None], area_b[None, c]).mean(dim=-1)

    # About eight [r, c, K] temporaries are alive at once.
    return _fill_blockwise(out, 8 * a.shape[1] * a.element_size(), block)


#: The most box slots `jaccard-match` pairs (it tries all K! pairings).
MAX_MATCH_SLOTS = 6


def _jaccard_match(a: Outputs, b: Outputs) -> torch.Tensor:
    """Sets of up to K boxes: the least mean Jaccard distance over the K! ways to pair the slots of a with those of b.

    Each output is K box slots ``(x1, y1, x2, y2)``, empty slots (x2 <= x1 or y2 <= y1) standing for "no box";
    unlike ``jaccard`` the slots are not compared in order, so the result does not depend on how a detector
    orders its boxes. This is the 1-Wasserstein distance between the uniform measures on the K slot sets
    with the Jaccard metric as ground metric (an optimal plan between two uniform K-point measures is a
    permutation, Birkhoff–von Neumann), so a metric on multisets of K sets: gamma = 1 (docs/theory.md §2.3).

    Shapes:
        a: ``[n_a, K, 4]`` (or ``[n_a, *slots, 4]``, flattened to K slots); b: ``[n_b, K, 4]``; K ≤ 6;
        result: ``[n_a, n_b]``.
    """
    a, b = _boxes(a, b, "jaccard-match")
    k = a.shape[1]
    if k == 0:
        raise InvalidInputError("metric 'jaccard-match' needs at least one box slot, got outputs with none")
    if k > MAX_MATCH_SLOTS:
        raise InvalidInputError(f"metric 'jaccard-match' pairs at most {MAX_MATCH_SLOTS} box slots (it tries all K! pairings), got {k}")
    perms = torch.tensor(list(itertools.permutations(range(k))), dtype=torch.long, device=a.device).reshape(-1, k)
    slot = torch.arange(k, device=a.device)
    area_a, area_b = _box_area(a), _box_area(b)
    out = torch.empty(a.shape[0], b.shape[0], dtype=a.dtype, device=a.device)

    def block(r: slice, c: slice) -> torch.Tensor:
        # [r, 1, K, 1, 4] against [1, c, 1, K, 4]: every slot of a against every slot of b.
        d = _box_distances(a[r, None, :, None], b[None, c, None, :], area_a[r, None, :, None], area_b[None, c, None, :])
        # cost of pairing perm: sum over slots s of d[s, perm[s]]  -> [r, c, K!]
        cost = d[:, :, slot[None, :], perms].sum(dim=-1)
        return cost.min(dim=-1).values / k

    # Per pair: about eight [K, K] temporaries and the [K!, K] gathered costs.
    return _fill_blockwise(out, (8 * k * k + 2 * perms.numel()) * a.element_size(), block)


def _cdf_rows(x: torch.Tensor, name: str, label: str) -> torch.Tensor:
    """Cumulative distributions of histograms ``[n, B]``, without the last bin (always 1)."""
    if x.numel() and bool((x < 0).any()):
        raise InvalidInputError(f"metric {name!r}: histograms {label} have negative weights")
    # float64 keeps the running sum of many small bins accurate whatever the output dtype.
    x64 = x.to(torch.float64)
    mass = x64.sum(dim=1, keepdim=True)
    if x.shape[0] and not bool((mass > 0).all()):
        i = int(torch.nonzero(mass[:, 0] <= 0)[0, 0])
        raise InvalidInputError(f"metric {name!r}: histogram {i} of {label} has zero mass")
    return torch.cumsum(x64 / mass, dim=1)[:, :-1].to(x.dtype)


def _w1(a: Outputs, b: Outputs) -> torch.Tensor:
    """1-Wasserstein distance of histograms on bins ``0, 1, ..., B - 1``.

    Each row is normalised to mass 1; ``W1 = sum_k |CDF_a(k) - CDF_b(k)|`` (bin width 1), the l1
    distance of the cumulative distributions.

    Shapes:
        a: ``[n_a, B]`` non-negative weights; b: ``[n_b, B]``; result: ``[n_a, n_b]``.
    """
    a, b = _float_outputs(a, b, "w1", min_dims=1, max_dims=1)
    return _cdist(_cdf_rows(a, "w1", "a"), _cdf_rows(b, "w1", "b"), p=1.0)


def _levenshtein(a: Outputs, b: Outputs) -> torch.Tensor:
    """Edit distance of integer token sequences (rapidfuzz), as float64.

    Tokens are first renumbered densely: rapidfuzz compares Python ints by their hash, and
    ``hash(0) == hash(2**61 - 1)``, so large token ids could otherwise compare equal.

    Shapes:
        a: ``n_a`` sequences; b: ``n_b`` sequences; result: ``[n_a, n_b]`` (on ``a``'s device when
        ``a`` holds tensors, else on the CPU).
    """
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    seq_a, seq_b = _token_sequences(a, "levenshtein"), _token_sequences(b, "levenshtein")
    device = torch.device("cpu")
    first = a if isinstance(a, torch.Tensor) else (a[0] if len(a) and isinstance(a[0], torch.Tensor) else None)
    if first is not None:
        device = first.device
    n_a, n_b = len(seq_a), len(seq_b)
    out = torch.zeros(n_a, n_b, dtype=torch.float64)
    if n_a == 0 or n_b == 0:
        return out.to(device)
    lengths = [len(s) for s in seq_a + seq_b]
    tokens = np.concatenate(seq_a + seq_b) if sum(lengths) else np.zeros(0, dtype=np.int64)
    _, dense = np.unique(tokens, return_inverse=True)
    bounds = np.cumsum([0] + lengths)
    dense_lists = [dense[bounds[k]:bounds[k + 1]].tolist() for k in range(len(lengths))]
    qa, qb = dense_lists[:n_a], dense_lists[n_a:]

    def block(r: slice, c: slice) -> torch.Tensor:
        d = process.cdist(qa[r], qb[c], scorer=Levenshtein.distance, dtype=np.int32, workers=-1)
        return torch.from_numpy(d)

    # rapidfuzz returns int32, converted once into the float64 result.
    return _fill_blockwise(out, 8, block).to(device)


_BUILTINS = (
    ("l2", 1.0, _l2, "tensor", "Euclidean distance of the flattened outputs"),
    ("l1", 1.0, _l1, "tensor", "l1 distance of the flattened outputs"),
    ("cosine", 2.0, _cosine, "tensor", "1 - cos(a, b) of the flattened outputs (squared-chord type, gamma 2)"),
    ("angular", 1.0, _angular, "tensor", "angle between the flattened outputs divided by pi"),
    ("tv1d", 1.0, _tv1d, "tensor", "total variation of a - b along the last axis"),
    ("tv2d", 1.0, _tv2d, "tensor", "anisotropic total variation of a - b over [C, H, W] or [H, W]"),
    ("jaccard", 1.0, _jaccard, "tensor", "1 - IoU of boxes (x1, y1, x2, y2); x2 <= x1 or y2 <= y1 is no box"),
    ("jaccard-match", 1.0, _jaccard_match, "tensor", "sets of up to 6 boxes [K, 4]: least mean 1 - IoU over the pairings of their slots"),
    ("w1", 1.0, _w1, "tensor", "1-Wasserstein distance of histograms [B] on unit-spaced bins"),
    ("levenshtein", 1.0, _levenshtein, "sequence", "edit distance of integer token sequences"),
)

for _name, _gamma, _fn, _kind, _description in _BUILTINS:
    register_metric(_name, gamma=_gamma, pairwise=_fn, kind=_kind, description=_description)
del _name, _gamma, _fn, _kind, _description


def diameter(metric: str | Metric, output_shape: Sequence[int], output_range: tuple[float, float] | None = None) -> float | None:
    """The largest distance a built-in metric can give between two outputs of one shape, or None if unknown.

    What a certified output radius is to be compared with: a radius at or above the diameter says nothing.
    Some metrics are bounded whatever the outputs: cosine (2; 1 for non-negative outputs), angular (1; 1/2
    for non-negative outputs), jaccard and jaccard-match (1) and w1 on B bins (B − 1). The others need outputs bounded
    coordinate-wise, in `output_range` = (lo, hi) with w = hi − lo:
    l2 w·sqrt(k) and l1 w·k for k coordinates; tv1d 2w per pair of neighbours along the last axis and tv2d
    2w per pair of vertical or horizontal neighbours (a checkerboard against its negative attains both).
    Levenshtein and user metrics: None.

    Args:
        metric: a metric name or `Metric`.
        output_shape: the shape of ONE output (no batch dimension).
        output_range: (lo, hi) bounds of every output coordinate, when known (e.g. (0, 1) after a sigmoid).
    """
    name = get_metric(metric).name
    shape = tuple(int(v) for v in output_shape)
    nonnegative = output_range is not None and float(output_range[0]) >= 0.0  # cos(a, b) >= 0 then
    if name == "cosine":
        return 1.0 if nonnegative else 2.0
    if name == "angular":
        return 0.5 if nonnegative else 1.0
    if name in ("jaccard", "jaccard-match"):
        return 1.0
    if name == "w1":
        return float(max(shape[-1] - 1, 0)) if len(shape) == 1 else None
    if output_range is None or name not in ("l2", "l1", "tv1d", "tv2d"):
        return None
    lo, hi = (float(v) for v in output_range)
    width, size = hi - lo, math.prod(shape)
    if not (math.isfinite(width) and width >= 0):
        raise InvalidParameterError(f"output_range must be (lo, hi) with lo <= hi, got {output_range!r}")
    if name == "l2":
        return width * math.sqrt(size)
    if name == "l1":
        return width * size
    if name == "tv1d":
        return 2.0 * width * (size // shape[-1]) * max(shape[-1] - 1, 0) if shape else 0.0
    if len(shape) not in (2, 3):
        return None
    channels, height, width_px = (1, *shape) if len(shape) == 2 else shape
    return 2.0 * width * channels * ((height - 1) * width_px + height * (width_px - 1))
