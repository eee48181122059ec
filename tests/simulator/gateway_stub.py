"""An in-test gateway: a real websockets server on 127.0.0.1:0 driven by protocol.gateway.GatewaySession,
with in-memory "storage". It stores what the session hands it and acks after storing, so tests
can check what a VirtualDevice delivered (exactly once, in order) without the real gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import Counter, defaultdict
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from protocol import wire
from protocol.gateway import EV_AUTH, EV_CLOSE, EV_DATA, EV_REJECT, EV_RESULT, EV_STATUS, EV_THROTTLE, GatewaySession


class StubGateway:
    def __init__(self, tokens: dict[str, str], *, rate: float = 100.0, burst: float = 200.0,
                 max_batch: int = 100, max_frame: int = 16384, jwt_secret: str | None = None,
                 ack_delay_s: float = 0.0, announce: dict[str, Any] | None = None) -> None:
        """``announce`` overrides welcome fields (a gateway may announce a rate it does not grant)."""
        self.tokens = dict(tokens)
        self.rate, self.burst = rate, burst
        self.max_batch, self.max_frame = max_batch, max_frame
        self.jwt_secret = jwt_secret
        self.ack_delay_s = ack_delay_s
        self.announce = announce
        self.stored: dict[str, list[int]] = defaultdict(list)  # every seq stored, in store order
        self.values: dict[str, list[dict[str, float]]] = defaultdict(list)
        self.stamps: dict[str, list[tuple[int | None, int]]] = defaultdict(list)  # (reading ts, received ms)
        self.frames: Counter[str] = Counter()  # data frames received per device
        self.errors: Counter[str] = Counter()  # error codes sent
        self.slows = 0
        self.results: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.connects: Counter[str] = Counter()
        self.live: dict[str, ServerConnection] = {}
        self.sessions: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._server: Server | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self.url = ""

    # -- lifecycle
    async def start(self) -> str:
        self._server = await serve(self._handler, "127.0.0.1", 0, process_request=self._process_request,
                                   max_size=self.max_frame, compression=None)
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- test controls
    def abort(self, device_id: str) -> None:
        """Drop the device's TCP connection without a close frame."""
        ws = self.live.get(device_id)
        if ws is not None and ws.transport is not None:
            ws.transport.abort()

    async def command(self, device_id: str, name: str, args: dict[str, Any] | None = None,
                      timeout: float = 5.0) -> dict[str, Any]:
        ws, session = self.live[device_id], self.sessions[device_id]
        command_id = f"c-{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        await ws.send(session.command_frame(command_id, name, args or {}))
        return await asyncio.wait_for(future, timeout)

    def last_seq(self, device_id: str) -> int:
        seqs = self.stored.get(device_id)
        return max(seqs) if seqs else 0

    # -- auth
    def _identify(self, credential: str | None,
                  device_id: str | None) -> tuple[str | None, str, float | None]:
        """(device id or None, error code, jwt exp)."""
        if credential is None:
            return None, wire.E_AUTH_FAILED, None
        if credential.startswith("ewt_"):
            for dev, token in self.tokens.items():
                if token == credential and (device_id is None or device_id == dev):
                    return dev, "", None
            return None, wire.E_AUTH_FAILED, None
        if self.jwt_secret is None:
            return None, wire.E_AUTH_FAILED, None
        import jwt

        try:
            claims = jwt.decode(credential, self.jwt_secret, algorithms=["HS256"],
                                options={"require": ["exp"]})
        except jwt.ExpiredSignatureError:
            return None, wire.E_EXPIRED, None
        except jwt.InvalidTokenError:
            return None, wire.E_AUTH_FAILED, None
        sub = claims.get("sub")
        if sub not in self.tokens:
            return None, wire.E_AUTH_FAILED, None
        return sub, "", float(claims["exp"])

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        header = request.headers.get("Authorization")
        if header is None:
            return None
        credential = header[7:] if header.startswith("Bearer ") else None
        device, code, exp = self._identify(credential, None)
        if device is None:
            body = json.dumps({"code": code, "message": "authentication failed"})
            return Response(401, "Unauthorized", Headers({"Content-Type": "application/json"}), body.encode())
        ws.stub_identity = (device, exp)  # type: ignore[attr-defined]
        return None

    # -- connection
    async def _handler(self, ws: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        session = GatewaySession(rate=self.rate, burst=self.burst, now=loop.time(),
                                      max_batch=self.max_batch, max_frame=self.max_frame)
        identity = getattr(ws, "stub_identity", None)
        try:
            if identity is None:
                first = await asyncio.wait_for(ws.recv(), 5.0)
                event = session.receive(first, loop.time())
                if event.kind != EV_AUTH:
                    await self._close(ws, event)
                    return
                device, code, exp = self._identify(event.payload.get("jwt") or event.payload.get("token"),
                                                   event.payload.get("device_id"))
                if device is None:
                    await self._close(ws, session.refuse(code, "authentication failed"))
                    return
                identity = (device, exp)
            device, exp = identity
            old = self.live.get(device)
            if old is not None:
                old_session = self.sessions[device]
                await self._close(old, old_session.close(wire.E_REPLACED, "replaced"))
            self.live[device] = ws
            self.sessions[device] = session
            self.connects[device] += 1
            await ws.send(session.accept(device, self.last_seq(device), int(time.time() * 1000), self.announce))
            expiry = None
            if exp is not None:
                def expire() -> None:
                    event = session.close(wire.E_EXPIRED, "credential expired")
                    self._tasks.add(asyncio.ensure_future(self._close(ws, event)))

                expiry = loop.call_at(loop.time() + max(0.0, exp - time.time()), expire)
            try:
                await self._serve(ws, session, device)
            finally:
                if expiry is not None:
                    expiry.cancel()
                if self.live.get(device) is ws:
                    del self.live[device]
        except (ConnectionClosed, TimeoutError):
            pass

    async def _close(self, ws: ServerConnection, event: Any) -> None:
        with contextlib.suppress(ConnectionClosed):
            if event.reply:
                self.errors[event.payload.code] += 1
                await ws.send(event.reply)
            await ws.close(event.close_code or wire.CLOSE_POLICY, event.payload.code)

    async def _serve(self, ws: ServerConnection, session: Any, device: str) -> None:
        loop = asyncio.get_running_loop()
        async for text in ws:
            event = session.receive(text, loop.time())
            kind = event.kind
            if kind == EV_DATA:
                frame = event.payload
                self.frames[device] += 1
                for item in frame.readings:
                    self.stored[device].append(item.seq)
                    self.values[device].append(item.metrics)
                    self.stamps[device].append((item.ts, int(time.time() * 1000)))
                if self.ack_delay_s:
                    await asyncio.sleep(self.ack_delay_s)
                await ws.send(session.ack(frame.last_seq))
            elif kind == EV_REJECT:
                self.errors[event.payload.code] += 1
                await ws.send(event.reply)
            elif kind == EV_THROTTLE:
                if event.reply:
                    self.slows += 1
                    await ws.send(event.reply)
            elif kind == EV_CLOSE:
                await self._close(ws, event)
                return
            elif kind == EV_RESULT:
                self.results.append(event.payload)
                future = self._pending.pop(event.payload["id"], None)
                if future is not None and not future.done():
                    future.set_result(event.payload)
            elif kind == EV_STATUS:
                self.statuses.append(event.payload)
