"""`python -m smoothgen` is the `smoothgen` command."""
import sys

from smoothgen.cli import main

sys.exit(main())
