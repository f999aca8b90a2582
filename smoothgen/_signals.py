"""What a signal during the `smoothgen` command's start-up does (`smoothgen._entry`): one line, exit at once.

Apart from `_entry` so that `smoothgen.cli`, which checks whether this handler is still installed, does not
import the module that imports it. Imports only `os` and `signal`.
"""
from __future__ import annotations

import os
import signal

#: 128 + the signal's number, as a shell reports a process stopped by it.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def stop_during_startup(signum, frame) -> None:
    """The handler of SIGINT and SIGTERM until the command starts: one line on stderr, exit at once."""
    try:
        os.write(2, b"smoothgen: interrupted\n")  # no Python-level buffering: safe whatever was running
    finally:
        os._exit(EXIT_CODES.get(signum, 128 + signum))
