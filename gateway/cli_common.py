"""What the gateway's storage CLI commands share (``export``, ``tokens``, ``forward``, ``devices``):
expected failures as one ``error:`` line, and times shown to the second."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from gateway.errors import GatewayError


def one_line_errors(run: Callable[[], int]) -> int:
    """``run()``'s exit code, or 2 with one ``error: ...`` line on stderr for a GatewayError (never a traceback)."""
    try:
        return run()
    except GatewayError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def iso_seconds(ms: int | None) -> str:
    """``2025-11-25T14:13:20Z`` (UTC), or ``-`` for 0 or None (never set)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000)) if ms else "-"
