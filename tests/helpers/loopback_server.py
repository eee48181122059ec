"""A websockets server on loopback in its own thread and event loop: the base of the tests' scripted
gateways (tests/conformance/scripted_gateway.py, tests/firmware/ota_gateway.py), which add what they
answer (``_handler``) and their server options (``serve_options``)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Self

from websockets.asyncio.server import ServerConnection, serve


class LoopbackServer:
    def __init__(self) -> None:
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/device"

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for websockets' ``serve`` besides the handler and the address."""
        return {"compression": None, "ping_interval": None}

    async def _handler(self, ws: ServerConnection) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        assert self._ready.wait(10), "scripted gateway did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0, **self.serve_options()) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()
