"""Exception types raised by smoothgen's public API.

Every error a user can cause has its own type, so that callers (and the CLI, which turns any
`SmoothgenError` into a one-line message and exit code 2) can tell them apart. They also derive from
the matching built-in (`ValueError`, `RuntimeError`, ...) so that generic handlers still work.
"""
from __future__ import annotations

import reprlib


class SmoothgenError(Exception):
    """Base class of every error smoothgen raises on purpose."""


class InvalidParameterError(SmoothgenError, ValueError):
    """An impossible parameter: sigma <= 0, alpha outside (0, 1), n < 1, an unknown metric, ..."""


class InvalidInputError(SmoothgenError, ValueError):
    """An input that cannot be certified: NaN/Inf values, a wrong shape or dtype, an unreadable data file."""


class ModelOutputError(SmoothgenError, RuntimeError):
    """The base model returned something unusable: a wrong shape, NaN/Inf, a wrong type."""


class MetricError(SmoothgenError, ValueError):
    """A metric returned a negative or non-finite distance, or was registered incorrectly."""


class ModelLoadError(SmoothgenError, OSError):
    """A model file or factory could not be loaded."""


class ResultsFileError(SmoothgenError, OSError):
    """A results file cannot be resumed: it belongs to another run or holds a corrupt record."""


class BackendUnavailableError(SmoothgenError, RuntimeError):
    """A requested runtime backend (torch.compile, ONNX Runtime provider, TensorRT) cannot run here."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty): what a
    one-line error message quotes of a third-party failure."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _Short(reprlib.Repr):
    def repr_int(self, x, level):  # repr() of an int of more than 4300 digits raises ValueError
        if x.bit_length() > 256:
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_SHORT = _Short()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlong = 40
_SHORT.maxlist = _SHORT.maxtuple = 6
_SHORT.maxdict = 4
_SHORT.maxlevel = 3


def short(value: object) -> str:
    """repr(value) cut to a short prefix (reprlib): what an error message quotes of a bad value, so that a
    10⁶-element list or a megabyte string given where a number belongs makes a one-line message, not a
    copy of the value."""
    return _SHORT.repr(value)
