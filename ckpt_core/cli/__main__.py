"""`python -m ckpt_core.cli`: the `ckpt` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
