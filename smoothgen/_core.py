"""The one place that imports smoothgen's C++ core, `smoothgen._C` (csrc/, built by setup.py with CMake).

`smoothgen.stats` and `smoothgen.center` ask `get()` for the core and fall back to their Python reference
when it returns None: when the extension was not built or cannot load (logged once, as a warning, with
the reason), or when it is switched off (environment variable ``SMOOTHGEN_CORE=0`` at import, or
`set_enabled(False)` / `disabled()` at run time, for comparisons and benchmarks). Both paths compute the
same formulas; tests/csrc checks their parity.

Attributes:
    HAVE_CORE: the extension was imported.
    REASON: why it was not (None when it was).
    CoreError: the exception the core raises for inputs it declines (NaN/Inf values, zero vectors, ...);
        callers catch it and let the reference produce the documented error or result.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator

logger = logging.getLogger(__name__)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

try:
    from smoothgen import _C  # type: ignore[attr-defined]
except ImportError as exc:  # not built on this machine, or built for another Python/ABI
    _C = None
    HAVE_CORE = False
    REASON: str | None = f"smoothgen._C could not be imported ({exc})"

    class CoreError(ValueError):
        """Placeholder: the core is not available, so it never raises."""

else:
    HAVE_CORE = True
    REASON = None
    CoreError = _C.CoreError  # type: ignore[misc,assignment]


def _env_enabled() -> bool:
    return os.environ.get("SMOOTHGEN_CORE", "1").strip().lower() not in ("0", "false", "no", "off")


_enabled = _env_enabled()
_logged = False

#: Returned by `call` when the core did not compute the value (then the caller runs its reference).
NOT_COMPUTED: Any = object()


def _log_once() -> None:
    global _logged
    if _logged:
        return
    _logged = True
    if not HAVE_CORE:
        logger.warning(
            "smoothgen: C++ core unavailable, using the Python reference implementation (same results, slower): %s",
            REASON,
        )
    elif not _enabled:
        logger.info("smoothgen: C++ core disabled (SMOOTHGEN_CORE=0 or set_enabled(False)); using the Python reference")


def enabled() -> bool:
    """True when the core is built and switched on."""
    return HAVE_CORE and _enabled


def set_enabled(flag: bool) -> None:
    """Switch the core on or off for the whole process (it stays off if it was not built)."""
    global _enabled
    _enabled = bool(flag)


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run a block with the Python reference only (process-wide, not thread-local: for tests and benchmarks)."""
    global _enabled
    previous = _enabled
    _enabled = False
    try:
        yield
    finally:
        _enabled = previous


def get() -> Any:
    """The `smoothgen._C` module when it is built and enabled, else None (the reason is logged once)."""
    if _C is not None and _enabled:
        return _C
    _log_once()
    return None


def fits_int64(*values: Any) -> bool:
    """Whether integer arguments can cross into the core (int64) unchanged."""
    return all(_INT64_MIN <= int(v) <= _INT64_MAX for v in values)


def call(name: str, *args: Any) -> Any:
    """``_C.name(*args)``, or `NOT_COMPUTED` when the core is off or declines the arguments (CoreError).

    The caller has already checked its arguments as its reference does; the core declines only what the
    reference handles differently (non-finite values), so that falling back keeps every behaviour.
    """
    core = get()
    if core is None:
        return NOT_COMPUTED
    try:
        return getattr(core, name)(*args)
    except CoreError as exc:
        logger.debug("smoothgen: C++ core declined %s%r (%s); using the Python reference", name, args, exc)
        return NOT_COMPUTED
