"""The `smoothgen` console script and `python -m smoothgen`: a signal during start-up is one line.

Start-up (importing torch, NumPy, SciPy and the models; building the parser) takes seconds, and until
the command runs there is nothing to keep: SIGINT (Ctrl-C) or SIGTERM then prints one line and exits at
once with 130 or 143 — no KeyboardInterrupt traceback out of whichever import it landed in, and nothing
that an import's `except BaseException` could turn into another error. `smoothgen.cli.main` hands both
signals over to its own handling just before the command runs (a run stops between whole records).

This module imports only `os`, `signal` and `sys`. Python runs the `smoothgen` package's `__init__`
before it, so that `__init__` must stay light as well (its exports are imported on first use).
"""
from __future__ import annotations

import os
import signal
import sys

#: 128 + the signal's number, as a shell reports a process stopped by it.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def stop_during_startup(signum, frame) -> None:
    """The handler of SIGINT and SIGTERM until the command starts: one line on stderr, exit at once."""
    try:
        os.write(2, b"smoothgen: interrupted\n")  # no Python-level buffering: safe whatever was running
    finally:
        os._exit(EXIT_CODES.get(signum, 128 + signum))


def main(argv=None) -> int:
    """Install the start-up handling of SIGINT and SIGTERM, then import and run `smoothgen.cli.main`."""
    previous = {signum: signal.signal(signum, stop_during_startup) for signum in EXIT_CODES}
    try:
        from smoothgen.cli import main as cli_main

        return cli_main(argv)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
