"""`python -m smoothgen` is the `smoothgen` command (the same entry point as the console script)."""
import sys

from smoothgen._entry import main

sys.exit(main())
