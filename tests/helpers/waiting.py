"""Wait on an event (a frame seen, a counter reached), never a fixed sleep."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def until(predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0,
                what: str = "the condition", poll: float = 0.02) -> None:
    """Poll ``predicate`` (a plain or an async function) until it is true; AssertionError naming
    ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(poll)


def until_sync(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "the condition",
               poll: float = 0.05) -> None:
    """``until`` for synchronous tests (e.g. a /metrics value read over HTTP)."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)
