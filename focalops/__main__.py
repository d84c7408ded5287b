"""``python -m focalops``: the command-line interface (see focalops.cli)."""

import sys

from focalops.cli import main

sys.exit(main())
