"""`python -m smoothgen` is the `smoothgen` command (the same entry point as the console script)."""
import sys

from smoothgen._entry import main

if __name__ == "__main__":  # not when a spawned child process re-imports the main module
    sys.exit(main())
