"""``python -m devtools.localhost --app function_app:app --port 7071``: run an app until Ctrl-C."""

import sys

from .cli import main

sys.exit(main())
