"""Parameter and input checks shared by the algorithms (raise the specific errors of `errors.py`)."""
from __future__ import annotations

import math
from numbers import Integral, Real

from smoothgen._lazy import lazy_module
from smoothgen.errors import InvalidInputError, InvalidParameterError, first_line, short

# Imported on first use: the checks of plain numbers (sigma, alpha, counts) are used where torch is not
# loaded (the `smoothgen serve` command's own process).
torch = lazy_module("torch")


def finite_real(value) -> bool:
    """True for a real number (not a bool) that is finite as a float; False for an int beyond float range
    (10**400, as JSON may carry), where math.isfinite would raise OverflowError."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_sigma(sigma: float) -> float:
    """Return sigma as a float after checking 0 < sigma < inf."""
    if not finite_real(sigma) or sigma <= 0:
        raise InvalidParameterError(f"sigma must be a finite number > 0, got {short(sigma)}")
    return float(sigma)


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """Return alpha as a float after checking 0 < alpha < 1."""
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not (0.0 < alpha < 1.0):
        raise InvalidParameterError(f"{name} must lie strictly between 0 and 1, got {short(alpha)}")
    return float(alpha)


def check_count(n: int, name: str = "n", minimum: int = 1) -> int:
    """Return n as an int after checking it is an integer >= minimum."""
    if isinstance(n, bool) or not isinstance(n, Integral) or n < minimum:
        raise InvalidParameterError(f"{name} must be an integer >= {minimum}, got {short(n)}")
    return int(n)


def check_positive(value: float, name: str, allow_zero: bool = False) -> float:
    """Return value as a float after checking it is finite and > 0 (or >= 0)."""
    ok = finite_real(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidParameterError(f"{name} must be a finite number {bound}, got {short(value)}")
    return float(value)


def check_input(x: torch.Tensor, expected_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Check one input tensor: a floating tensor, finite, and of the expected shape when one is given.

    Shapes:
        x: any shape (one input, no batch dimension).
    """
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.layout != torch.strided:
        raise InvalidInputError(f"input must be a dense tensor, got layout {x.layout} (call .to_dense())")
    if x.device.type == "meta":
        raise InvalidInputError("input is on the meta device: it has no values")
    if not torch.is_floating_point(x):
        raise InvalidInputError(f"input must have a floating dtype, got {x.dtype}")
    if x.numel() == 0:
        raise InvalidInputError("input is empty")
    if expected_shape is not None and tuple(x.shape) != tuple(expected_shape):
        raise InvalidInputError(f"input has shape {tuple(x.shape)}, expected {tuple(expected_shape)}")
    if not bool(torch.isfinite(x).all()):
        raise InvalidInputError("input contains NaN or Inf")
    return x.detach()


def check_image_batch(images, name: str = "images", items: str = "images") -> torch.Tensor:
    """A batch of images [b, C, H, W] as a float32 torch tensor on its own device: floating pixels (a NumPy
    array is wrapped), C = 1 (gray) or 3 (RGB), H, W >= 1, and no NaN or Inf once in float32 (a float64
    pixel beyond float32's range is refused, not turned into Inf); else InvalidInputError naming `name`.
    What the detectors (smoothgen.detection) and the OCR recogniser (smoothgen.ocr) take."""
    import numpy as np

    if isinstance(images, np.ndarray):
        if images.dtype.kind != "f":
            raise InvalidInputError(f"{name} must hold floating pixels in [0, 1], got {images.dtype} (divide uint8 images by 255)")
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise InvalidInputError(f"{name} must be a torch tensor or NumPy array [b, C, H, W], got {type(images).__name__}")
    if not torch.is_floating_point(images):
        raise InvalidInputError(f"{name} must hold floating pixels in [0, 1], got {images.dtype} (divide uint8 images by 255)")
    if images.dim() != 4:
        raise InvalidInputError(f"{name} must be a batch of {items} [b, C, H, W], got shape {tuple(images.shape)} ({images.dim()}-d)")
    b, c, h, w = images.shape
    if c not in (1, 3):
        raise InvalidInputError(f"{name} must have 1 (gray) or 3 (RGB) channels, got {c} (shape {tuple(images.shape)})")
    if h < 1 or w < 1:
        raise InvalidInputError(f"{name}: {items} must be at least 1×1 pixels, got {h}×{w}")
    images = images.detach().to(dtype=torch.float32)
    if b and not bool(torch.isfinite(images).all()):
        raise InvalidInputError(f"NaN or Inf pixels in {name}")
    return images


def as_model_dtype(x: torch.Tensor, dtype: torch.dtype | None, strict: bool = True) -> torch.Tensor:
    """x in the dtype the model computes in (None: unchanged): converted only when the conversion is exact
    (float16 → float32, or a float64 input whose values float32 holds) — a certificate is for the input
    it was asked about, never for a silently rounded one. Otherwise InvalidInputError, or with
    strict=False x unchanged (the model may cast it itself; if it cannot, its error says so)."""
    if dtype is None or x.dtype == dtype:
        return x
    converted = x.to(dtype)
    if torch.equal(converted.to(x.dtype), x):
        return converted
    if not strict:
        return x
    raise InvalidInputError(f"this model computes in {dtype}; the {x.dtype} input does not convert to it exactly")


def check_shape(shape, name: str = "input_shape") -> tuple[int, ...] | None:
    """None, or a shape: a sequence of integers >= 1."""
    if shape is None:
        return None
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise InvalidParameterError(f"{name} must be a sequence of integers, got {short(shape)}")
    dims = tuple(shape)
    if not all(isinstance(d, Integral) and not isinstance(d, bool) and d >= 1 for d in dims):
        raise InvalidParameterError(f"{name} must be a sequence of integers >= 1, got {short(shape)}")
    return tuple(int(d) for d in dims)


def parse_value_range(text: str, option: str) -> tuple[float, float]:
    """LO,HI from the command line: two finite numbers, LO < HI (the values a model's inputs must lie in).

    Raises:
        InvalidParameterError: anything else, in one line naming the option.
    """
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise InvalidParameterError(f"{option} must be LO,HI (two numbers), got {str(text)[:60]!r}") from None
    if len(values) != 2 or not all(math.isfinite(v) for v in values) or not values[0] < values[1]:
        raise InvalidParameterError(f"{option} must be LO,HI with finite LO < HI, got {str(text)[:60]!r}")
    return values  # type: ignore[return-value]


def check_value_range(x, value_range: tuple[float, float], what: str, hint: str) -> None:
    """Refuse inputs with values outside [lo, hi] (a model trained on pixels in [0, 1] given 0-255 values
    runs, and certifies, nonsense: σ is then no noise at all), in one line with the range found and `hint`.

    Raises:
        InvalidInputError: some value lies outside.
    """
    lo, hi = value_range
    low, high = float(x.min()), float(x.max())
    if low < lo or high > hi:
        raise InvalidInputError(f"{what} holds values in [{low:g}, {high:g}], outside [{lo:g}, {hi:g}]{hint}")


def check_device(device, name: str = "device") -> torch.device:
    """A torch device this machine has and can compute on; torch's own errors for a bad one are a
    RuntimeError ("nope", ""), an AssertionError (CUDA on a CPU-only build), or a NotImplementedError
    later, when values are read back from "meta"."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InvalidParameterError(f"{name} {short(device)} is not a torch device: {first_line(exc)}") from exc
    if parsed.type == "meta":
        raise InvalidParameterError(f"{name} meta holds no values: nothing can run there")
    try:
        torch.empty(1, device=parsed)
    except Exception as exc:  # noqa: BLE001 - see above: the error types of an absent device vary
        raise InvalidParameterError(f"{name} {device} cannot be used on this machine: {first_line(exc)}") from exc
    return parsed


#: The first bytes of a NumPy .npy file and of a zip archive (a .npz file).
NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"


def load_numpy(source, what: str, *, npz: bool = True):
    """`numpy.load` of a file path or bytes that never unpickles, with errors that name the formats.

    NumPy reads a file it cannot parse as pickled data and then advises loading it unsafely; here a file
    that does not start with NumPy's .npy header (or a zip archive's, for .npz) is refused as such, and a
    real .npy of Python objects is refused because loading it could run code.

    Raises:
        InvalidInputError: "<what> ..." with the reason, in one line.
    """
    import io
    import zipfile

    np = lazy_module("numpy")
    formats = "a NumPy .npy or .npz file" if npz else "a NumPy .npy file"
    if isinstance(source, (bytes, bytearray)):
        head, handle = bytes(source[:6]), io.BytesIO(source)
    else:
        try:
            with open(source, "rb") as f:
                head = f.read(6)
        except OSError as exc:
            raise InvalidInputError(f"{what}: {first_line(exc)}") from exc
        handle = source
    if not (head.startswith(NPY_MAGIC) or (npz and head.startswith(ZIP_MAGIC))):
        raise InvalidInputError(f"{what} is not {formats} (it does not start with NumPy's header; save arrays with "
                                f"numpy.save{' or numpy.savez' if npz else ''})")
    try:
        return np.load(handle, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):
            raise InvalidInputError(f"{what} holds Python objects (an object array), which smoothgen never loads "
                                    "(unpickling can run code): save an array of numbers") from exc
        raise InvalidInputError(f"{what} cannot be read: {first_line(exc)}") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidInputError(f"{what} cannot be read: {first_line(exc)}") from exc
