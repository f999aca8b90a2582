"""The `smoothgen` console script and `python -m smoothgen`: a signal during start-up is one line.

Start-up (importing torch, NumPy, SciPy and the models; building the parser) takes seconds, and until
the command runs there is nothing to keep: SIGINT (Ctrl-C) or SIGTERM then prints one line and exits at
once with 130 or 143 — no KeyboardInterrupt traceback out of whichever import it landed in, and nothing
that an import's `except BaseException` could turn into another error. `smoothgen.cli.main` hands both
signals over to its own handling just before the command runs (a run stops between whole records).

This module imports only `signal` and `smoothgen._signals` (which imports `os` and `signal`). Python
runs the `smoothgen` package's `__init__` before it, so that `__init__` must stay light as well (its exports
are imported on first use).
"""
from __future__ import annotations

import signal

from smoothgen._signals import EXIT_CODES, stop_during_startup  # noqa: F401  (EXIT_CODES: also named here)


def main(argv=None) -> int:
    """Install the start-up handling of SIGINT and SIGTERM, then import and run `smoothgen.cli.main`."""
    previous = {signum: signal.signal(signum, stop_during_startup) for signum in EXIT_CODES}
    try:
        from smoothgen.cli import main as cli_main

        return cli_main(argv)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
