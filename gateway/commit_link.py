"""The commit process's link (``commit_process = true``, gateway/workers.py): the workers hand their
readings' ``store()`` to one process that owns the storage's writer, and await its receipt.

``CommitServer`` runs in the commit process (gateway/committer.py): each request
``("store", id, rows)`` becomes one ``storage.store(rows)`` task, so the storage group-commits
the rows of every worker together (one writer, no lock between processes), and the reply
``("ok", id, result)`` or ``("err", id, message)`` goes back once the commit is durable.

``CommitClient`` is a worker's end: ``store(rows)`` has the storage contract's meaning
(gateway/storage/base.py): it returns only after the rows are committed, and raises
StorageError when they were not, also when the commit process is gone (killed, restarting):
the flusher then closes exactly those connections with 1013, the devices resend after
reconnecting, and (device, seq) keeps the resent rows from being stored twice. The next call
connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from gateway.errors import StorageError
from gateway.ipc import READ_ERRORS, frame, read_frame
from gateway.storage.base import ReadingRow, ReadingWriter

GONE = "the commit process is unavailable (restarting?); the devices resend after reconnecting"


class CommitServer:
    def __init__(self, storage: ReadingWriter, path: str | Path) -> None:
        self.storage = storage
        self.path = Path(path)
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.requests = 0

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                message = await read_frame(reader)
                if message[0] == "store" and len(message) == 3:
                    self.requests += 1
                    task = asyncio.get_running_loop().create_task(self._store(writer, message[1], message[2]))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        except READ_ERRORS:
            pass
        finally:
            writer.close()

    async def _store(self, writer: asyncio.StreamWriter, ident: int, rows: list[ReadingRow]) -> None:
        try:
            result = await self.storage.store(rows)  # the rows it inserted (the storage contract)
        except Exception as err:  # StorageError, OSError, a refused row: the worker closes those devices
            reply: tuple[Any, ...] = ("err", ident, str(err) or type(err).__name__)
        else:
            reply = ("ok", ident, result)
        if not writer.is_closing():
            writer.write(frame(reply))

    async def close(self) -> None:
        """Stop accepting; wait for the stores in flight (their workers get their receipts)."""
        if self._server is not None:
            self._server.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class CommitClient:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._next = 0
        self._lock = asyncio.Lock()
        self.failures = 0  # links lost or refused

    async def _link(self) -> asyncio.StreamWriter:
        async with self._lock:
            if self._writer is None or self._writer.is_closing():
                try:
                    reader, writer = await asyncio.open_unix_connection(str(self.path))
                except OSError as err:
                    self.failures += 1
                    raise StorageError(f"{GONE} ({err.strerror or err})") from None
                self._writer = writer
                self._reader = asyncio.get_running_loop().create_task(self._read(reader, writer))
            return self._writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                kind, ident, payload = await read_frame(reader)
                future = self._waiting.pop(ident, None)
                if future is None or future.done():
                    continue
                if kind == "ok":
                    future.set_result(payload)
                else:
                    future.set_exception(StorageError(str(payload)))
        except READ_ERRORS:
            pass
        finally:
            if self._writer is writer:
                self._writer = None
                self.failures += 1
            writer.close()
            waiting, self._waiting = self._waiting, {}
            for future in waiting.values():
                if not future.done():
                    future.set_exception(StorageError(GONE))

    async def store(self, rows: list[ReadingRow]) -> list[ReadingRow]:
        """``storage.store(rows)`` in the commit process: the rows it inserted (copies, by value)."""
        writer = await self._link()
        self._next += 1
        ident = self._next
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        writer.write(frame(("store", ident, rows)))
        inserted: list[ReadingRow] = await future
        return inserted

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
