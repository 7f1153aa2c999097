"""``python -m v2server``."""

import sys

from v2server.cli import main

sys.exit(main())
