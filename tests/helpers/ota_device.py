"""A scripted OTA device for integration tests: a plain WebSocket client that takes an offer (the ``ota``
command), checks its signature, pulls every file in chunks with one request outstanding, checks each
file's SHA-256 and reports its update states (OTA-CONTRACT.md). Its outcome is scripted: ``good``,
``failed`` (bad_hash after the download), ``rolled_back`` (crashed in trial), or ``refuse`` (the
offer answered with ``bad_signature``). Counts the bytes of every OTA frame both ways."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


def verify_signature(pubkey_hex: str, manifest: str, sig: str) -> bool:
    """The device's check: with protocol.ota (the devices' verifier) when it exists, else cryptography."""
    import importlib

    try:
        ota = importlib.import_module("protocol.ota")  # the devices' verifier (the ESP32 side), when merged
    except ImportError:
        from gateway.ota.manifest import verify

        return verify(pubkey_hex, manifest, sig)
    return bool(ota.verify(pubkey_hex, manifest, sig))


class OtaDevice:
    def __init__(self, url: str, device_id: str, token: str, pubkey: str, outcome: str = "good",
                 chunk: int = 2048) -> None:
        self.url = url
        self.device_id = device_id
        self.token = token
        self.pubkey = pubkey
        self.outcome = outcome
        self.chunk = chunk
        self.ws: ClientConnection | None = None
        self.offers: list[dict[str, Any]] = []  # the ``ota`` commands received
        self.states: list[str] = []  # states reported
        self.errors: list[dict[str, Any]] = []  # error frames received
        self.files: dict[str, bytes] = {}
        self.sent_bytes = 0  # OTA frames device -> gateway (ota_get, result of the offer, ota)
        self.received_bytes = 0  # OTA frames gateway -> device (the offer, ota_chunk)
        self.offer_bytes = 0  # of which the offer (the ``ota`` command with the manifest)
        self.offered = asyncio.Event()
        self.offered_at: float | None = None  # loop time of the first offer
        self.finished_at: float | None = None  # loop time its last state went out
        self.finished = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __aenter__(self) -> OtaDevice:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        self.ws = await connect(self.url, open_timeout=10)
        await self.ws.send(json.dumps({"t": "auth", "device_id": self.device_id, "token": self.token}))
        welcome = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
        assert welcome["t"] == "welcome", welcome
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await self._task
        if self.ws is not None:
            await self.ws.close()

    async def _read(self) -> None:
        assert self.ws is not None
        async for text in self.ws:
            msg = json.loads(text)
            if msg.get("t") == "cmd" and msg.get("name") == "ota":
                self.received_bytes += len(text)
                self.offer_bytes += len(text)
                self.offers.append(msg)
                if self.offered_at is None:
                    self.offered_at = asyncio.get_running_loop().time()
                asyncio.get_running_loop().create_task(self._update(msg))
            elif msg.get("t") == "cmd":
                await self.ws.send(json.dumps({"t": "result", "id": msg["id"], "ok": True}))
            elif msg.get("t") in ("ota_chunk", "error"):
                self.received_bytes += len(text)
                await self._inbox.put(msg)

    async def _send(self, msg: dict[str, Any]) -> None:
        assert self.ws is not None
        text = json.dumps(msg)
        self.sent_bytes += len(text)
        await self.ws.send(text)

    async def report(self, release: str, state: str, reason: str = "", **extra: int) -> None:
        self.states.append(state)
        await self._send({"t": "ota", "release": release, "state": state, "reason": reason, **extra})

    async def get(self, release: str, name: str, off: int, length: int | None = None) -> dict[str, Any]:
        """One chunk request and its answer (the one outstanding request)."""
        await self._send({"t": "ota_get", "release": release, "file": name, "off": off, "len": length or self.chunk})
        reply = await asyncio.wait_for(self._inbox.get(), 10)
        if reply["t"] == "error":
            self.errors.append(reply)
        return reply

    async def _update(self, cmd: dict[str, Any]) -> None:
        args = cmd["args"]
        manifest = json.loads(args["manifest"])
        release = manifest["release"]
        self.offered.set()
        if self.outcome == "refuse" or not verify_signature(self.pubkey, args["manifest"], args["sig"]):
            await self._send({"t": "result", "id": cmd["id"], "ok": False, "msg": "bad signature",
                              "data": {"code": "bad_signature"}})
            self.finished.set()
            return
        await self._send({"t": "result", "id": cmd["id"], "ok": True, "msg": f"downloading {release}"})
        total = sum(f["size"] for f in manifest["files"])
        if self.outcome == "hold":  # takes the offer, then waits for the test to drive the download
            return
        await self.report(release, "downloading", done=0, total=total)
        if not await self.download(release, manifest):
            await self.report(release, "failed", "aborted")
            self.finished.set()
            return
        await self.report(release, "verifying")
        if self.outcome == "failed":
            await self.report(release, "failed", "bad_hash")
        else:
            await self.report(release, "trial")
            await self.report(release, "rolled_back" if self.outcome == "rolled_back" else "good",
                              "crashed" if self.outcome == "rolled_back" else "")
        self.finished_at = asyncio.get_running_loop().time()
        self.finished.set()

    async def download(self, release: str, manifest: dict[str, Any]) -> bool:
        """Every file, chunk by chunk; True if each matches its size and SHA-256."""
        for entry in manifest["files"]:
            data = b""
            while len(data) < entry["size"]:
                reply = await self.get(release, entry["name"], len(data))
                if reply["t"] != "ota_chunk":
                    return False
                assert reply["off"] == len(data) and reply["size"] == entry["size"]
                piece = base64.b64decode(reply["data"])
                assert 0 < len(piece) <= self.chunk
                data += piece
            if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                return False
            self.files[entry["name"]] = data
        return True
