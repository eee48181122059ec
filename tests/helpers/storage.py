"""Tests on a real SQLite storage: open one, run a coroutine with it, close it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from gateway.storage.sqlite import SQLiteStorage

T = TypeVar("T")


def with_sqlite(path: Path, body: Callable[[SQLiteStorage], Awaitable[T]], **kwargs: Any) -> T:
    """``body(storage)`` in a fresh event loop, on a SQLiteStorage(path, **kwargs) opened for it and closed after."""

    async def main() -> T:
        storage = SQLiteStorage(path, **kwargs)
        await storage.open()
        try:
            return await body(storage)
        finally:
            await storage.close()

    return asyncio.run(main())
