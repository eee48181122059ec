"""What the gateway's CLI commands share: expected failures as one ``error:`` line (exit status 2),
a reader that stops early (``export ... | head``) as a quiet end, and times shown to the second."""

from __future__ import annotations

import os
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


def quiet_broken_pipe() -> int:
    """stdout's reader went away (``... | head -3``): end quietly, with the status of a SIGPIPE death
    (128 + 13) as other Unix tools do. Later writes and the flush at exit go to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


def run_cli(run: Callable[[], int]) -> int:
    """A CLI's exit status from ``run()``: a GatewayError is one ``error:`` line and 2, a reader that
    closed stdout early is a quiet 141, Ctrl-C is 130; never a traceback for any of them."""
    try:
        return one_line_errors(run)
    except BrokenPipeError:
        return quiet_broken_pipe()
    except KeyboardInterrupt:
        return 130


def iso_seconds(ms: int | None) -> str:
    """``2025-11-25T14:13:20Z`` (UTC), or ``-`` for 0 or None (never set)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000)) if ms else "-"


def use_uvloop(enabled: bool) -> None:
    """Run on uvloop's event loop when ``enabled`` (the ``uvloop`` setting) and it is installed."""
    if enabled:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass  # asyncio's own loop; install the "fast" extra for uvloop
