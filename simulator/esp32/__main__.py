"""`python -m simulator.esp32 ...` is `python -m simulator esp32 ...`."""

import sys

from simulator.esp32.cli import main

sys.exit(main())
