"""A scripted gateway speaking the OTA contract (docs/ota.md, docs/protocol.md) on loopback,
for the emulated board's update tests: auth -> welcome, data -> ack, the ``ota`` offer as a
command, ``ota_get`` -> ``ota_chunk`` from the releases it holds, and every ``ota`` state frame
recorded. Faults on request: one chunk corrupted, the welcome held back, a hook on each request
(to cut the board's power mid-download). The real gateway side (gateway/ota) is tested on its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from tests.helpers.loopback_server import LoopbackServer


class OtaGateway(LoopbackServer):
    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.releases: dict[str, dict[str, bytes]] = {}  # release id -> file name -> bytes
        self.states: list[dict[str, Any]] = []  # every ota state frame, in order
        self.results: dict[str, dict[str, Any]] = {}
        self.gets: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.welcomes = 0
        self.last_seq = 0
        self.ota_bytes = 0  # bytes of every OTA frame both ways (offer, result, gets, chunks, states)
        self.corrupt: tuple[str, int] | None = None  # (file, offset) of the one chunk to corrupt
        self.hold_welcome = threading.Event()  # set: new connections wait for release_welcome
        self.hold_after: str | None = None  # an ota state that sets hold_welcome when it arrives
        self.release_welcome = threading.Event()
        self.on_get: Callable[[dict[str, Any]], None] | None = None
        self._ws: ServerConnection | None = None
        self._ids = 0
        super().__init__()

    def online(self) -> bool:
        return self._ws is not None

    def offer(self, args: dict[str, str], timeout: float = 30) -> dict[str, Any]:
        """Send the ``ota`` command to the connected device; return its result frame."""
        return self.command("ota", args, timeout)

    def command(self, name: str, args: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        """Send a command to the connected device; return its result frame."""
        assert self._loop is not None
        self._ids += 1
        command_id = f"c-{name}-{self._ids}"
        frame = json.dumps({"t": "cmd", "id": command_id, "name": name, "args": args})
        if name == "ota":
            self.ota_bytes += len(frame)
        ws = self._ws
        assert ws is not None, "the device is not connected"
        asyncio.run_coroutine_threadsafe(ws.send(frame), self._loop).result(10)
        deadline = time.monotonic() + timeout
        while command_id not in self.results:
            assert time.monotonic() < deadline, "no result for the ota command"
            time.sleep(0.05)
        return self.results[command_id]

    def state_names(self, release: str) -> list[str]:
        return [s["state"] for s in self.states if s.get("release") == release]

    def serve_options(self) -> dict[str, Any]:
        return {**super().serve_options(), "max_size": 1 << 20}

    async def _handler(self, ws: ServerConnection) -> None:
        try:
            auth = json.loads(await asyncio.wait_for(ws.recv(), 15))
            if auth.get("t") != "auth" or auth.get("device_id") != self.device_id:
                return
            while self.hold_welcome.is_set() and not self.release_welcome.is_set():
                await asyncio.sleep(0.05)
            await ws.send(json.dumps({"t": "welcome", "device": self.device_id, "last_seq": self.last_seq,
                                      "max_batch": 20, "rate": 100.0}))
            self.welcomes += 1
            self._ws = ws
            async for raw in ws:
                if not isinstance(raw, str):
                    continue
                await self._frame(ws, raw)
        except (ConnectionClosed, TimeoutError, ValueError):
            pass
        finally:
            if self._ws is ws:
                self._ws = None
            with contextlib.suppress(Exception):
                await ws.close()

    async def _frame(self, ws: ServerConnection, raw: str) -> None:
        msg = json.loads(raw)
        kind = msg.get("t")
        if kind == "data":
            self.last_seq = max(self.last_seq, msg["seq"] + len(msg["r"]) - 1)
            await ws.send(json.dumps({"t": "ack", "seq": self.last_seq}))
        elif kind == "status":
            self.statuses.append(msg)
        elif kind == "result":
            if str(msg.get("id", "")).startswith("c-ota-"):
                self.ota_bytes += len(raw)
            self.results[msg["id"]] = msg
        elif kind == "ota":
            self.ota_bytes += len(raw)
            self.states.append(msg)
            if msg.get("state") == self.hold_after:
                self.hold_welcome.set()
        elif kind == "ota_get":
            self.ota_bytes += len(raw)
            self.gets.append(msg)
            if self.on_get is not None:
                self.on_get(msg)
            await ws.send(self._chunk(msg))

    def _chunk(self, msg: dict[str, Any]) -> str:
        files = self.releases.get(msg.get("release", ""))
        name, off, size = msg.get("file"), msg.get("off"), msg.get("len")
        if files is None or name not in files:
            return json.dumps({"t": "error", "code": "ota_unknown", "msg": "no such release or file"})
        if type(off) is not int or type(size) is not int or off < 0 or not 1 <= size <= 4096:
            return json.dumps({"t": "error", "code": "bad_request", "msg": "off >= 0, len 1..4096"})
        data = files[name][off:off + size]
        if self.corrupt == (name, off):
            self.corrupt = None
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        frame = json.dumps({"t": "ota_chunk", "release": msg["release"], "file": name, "off": off,
                            "data": base64.b64encode(data).decode(), "size": len(files[name])})
        self.ota_bytes += len(frame)
        return frame
