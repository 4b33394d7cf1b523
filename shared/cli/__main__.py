"""``python -m shared.cli``: the ``altinn-mottak`` command."""

import sys

from shared.cli import main

if __name__ == "__main__":
    sys.exit(main())
