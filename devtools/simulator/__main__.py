"""``python -m devtools.simulator --port 8070``: run a simulator by hand until Ctrl-C."""

import sys

from .cli import main

sys.exit(main())
