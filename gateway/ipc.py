"""Framing between the processes of one gateway host (gateway/workers.py): a 4-byte big-endian
length, then a pickle. Only the gateway's own processes speak it, over Unix sockets in the data
directory's private ``run/`` folder (mode 0700, same user), so a pickle carries no foreign input."""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import struct
import sys
from typing import Any

HEADER = struct.Struct(">I")
MAX_MESSAGE = 64 * 1024 * 1024  # a presence snapshot of a very large fleet, a large batch of rows
READ_ERRORS = (asyncio.IncompleteReadError, ConnectionError, OSError, pickle.PickleError, EOFError)


def frame(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> tuple[Any, ...]:
    """The next message; ConnectionResetError for one that is too large or not a tuple."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if size > MAX_MESSAGE:
        raise ConnectionResetError(f"message of {size} bytes is over the {MAX_MESSAGE} limit")
    message = pickle.loads(await reader.readexactly(size))
    if not isinstance(message, tuple) or not message:
        raise ConnectionResetError("malformed message")
    return message


async def stdin_closed() -> None:
    """Return once this process's stdin ends: the host process that started it is gone (however it
    ended), so a worker or the commit process stops as on SIGTERM."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    with contextlib.suppress(Exception):
        await reader.read()
