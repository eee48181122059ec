"""``python -m edge``: same as the ``edgewire-agent`` console script."""

import sys

from edge.cli import main

sys.exit(main())
