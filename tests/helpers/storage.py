"""Tests on a real storage: open one, run a coroutine with it, close it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from gateway.storage.base import Storage
from gateway.storage.sqlite import SQLiteStorage

S = TypeVar("S", bound=Storage)
T = TypeVar("T")


def with_storage(make: Callable[[], S], body: Callable[[S], Awaitable[T]]) -> T:
    """``body(storage)`` in a fresh event loop, on ``make()`` opened for it and closed after."""

    async def main() -> T:
        storage = make()
        await storage.open()
        try:
            return await body(storage)
        finally:
            await storage.close()

    return asyncio.run(main())


def with_sqlite(path: Path, body: Callable[[SQLiteStorage], Awaitable[T]], **kwargs: Any) -> T:
    """``body(storage)`` in a fresh event loop, on a SQLiteStorage(path, **kwargs) opened for it and closed after."""
    return with_storage(lambda: SQLiteStorage(path, **kwargs), body)
