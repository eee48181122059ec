"""A scripted gateway on loopback: each connection follows one Script (refuse, welcome, serve, close).

It speaks docs/protocol.md over a real websockets server in its own thread, records every
attempt (credential, when it started and ended) and every data frame, and answers with
protocol.gateway.GatewaySession frames, so a driver's real connection loop is exercised.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from protocol import wire
from protocol.gateway import EV_AUTH, EV_DATA, EV_STATUS, GatewaySession
from tests.helpers.loopback_server import LoopbackServer

ERROR_FOR_CLOSE = {code: error for error, code in wire.CLOSE_FOR_ERROR.items()}


@dataclass
class Script:
    """What the gateway does with one connection.

    ``http``: refuse the upgrade with (status, error code or None). ``stall_s``: wait before
    answering the upgrade. ``serve``: store and ack until this many readings were stored on
    this connection (0: none). ``refuse_first``: then answer the next data frame with a
    bad_value error instead. ``gate``: wait for this event before closing. ``close``: then close with this
    code (an error frame first when the code stands for an error); None keeps serving.
    """

    http: tuple[int, str | None] | None = None
    http_length: bool = True  # False: no Content-Length (the body ends with the connection)
    stall_s: float = 0.0
    refuse_first: bool = False
    serve: int = 0
    gate: threading.Event | None = None
    close: int | None = None


@dataclass
class Attempt:
    index: int
    started: float
    credential: str | None = None
    ended: float = 0.0
    welcomed: bool = False
    data_seqs: list[int] = field(default_factory=list)


class ScriptedGateway(LoopbackServer):
    def __init__(self, plan: list[Script], device_id: str) -> None:
        self.plan = plan
        self.device_id = device_id
        self.attempts: list[Attempt] = []
        self.stored: list[int] = []
        self.refused: list[int] = []
        self.statuses: list[dict[str, Any]] = []
        super().__init__()

    def script(self, index: int) -> Script:
        return self.plan[min(index, len(self.plan) - 1)]

    def serve_options(self) -> dict[str, Any]:
        return {**super().serve_options(), "process_request": self._process_request}

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        attempt = Attempt(len(self.attempts), time.monotonic())
        header = request.headers.get("Authorization")
        if header is not None and header.startswith("Bearer "):
            attempt.credential = header[7:]
        self.attempts.append(attempt)
        ws.attempt = attempt  # type: ignore[attr-defined]
        script = self.script(attempt.index)
        if script.stall_s:
            await asyncio.sleep(script.stall_s)
        if script.http is not None:
            status, code = script.http
            body = json.dumps({"code": code, "message": "refused by the scripted gateway"}) if code else "{}"
            attempt.ended = time.monotonic()
            reason = {401: "Unauthorized", 403: "Forbidden"}.get(status, "Refused")
            headers = Headers({"Content-Type": "application/json"})
            if script.http_length:
                headers["Content-Length"] = str(len(body))
            return Response(status, reason, headers, body.encode())
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        attempt: Attempt = ws.attempt  # type: ignore[attr-defined]
        script = self.script(attempt.index)
        loop = asyncio.get_running_loop()
        session = GatewaySession(rate=1000.0, burst=1000.0, now=loop.time())
        try:
            if attempt.credential is None:  # first-frame auth (the firmware)
                event = session.receive(await asyncio.wait_for(ws.recv(), 10), loop.time())
                if event.kind != EV_AUTH:
                    return
                attempt.credential = event.payload.get("jwt") or event.payload.get("token")
            last = max(self.stored, default=0)
            await ws.send(session.accept(self.device_id, last, int(time.time() * 1000)))
            attempt.welcomed = True
            stored_here = 0
            refused = False
            while (stored_here < script.serve or (script.refuse_first and not refused)
                   or (script.close is None and script.gate is None)):
                event = session.receive(await ws.recv(), loop.time())
                if event.kind == EV_STATUS:
                    self.statuses.append(event.payload)
                if event.kind != EV_DATA:
                    continue
                frame = event.payload
                seqs = [r.seq for r in frame.readings]
                attempt.data_seqs.extend(seqs)
                if script.refuse_first and not refused and stored_here >= script.serve:
                    refused = True
                    self.refused.extend(seqs)
                    await ws.send(session.error_frame(wire.E_BAD_VALUE, "refused by the scripted gateway",
                                                      frame.seq))
                    continue
                fresh = [s for s in seqs if s > max(self.stored, default=0)]
                self.stored.extend(fresh)
                stored_here += len(fresh)
                await ws.send(session.ack(max(self.stored, default=0)))
            if script.gate is not None:
                while not script.gate.is_set():
                    await asyncio.sleep(0.02)
            if script.close is not None:
                code = script.close
                error = ERROR_FOR_CLOSE.get(code)
                if error is not None:
                    await ws.send(session.error_frame(error, "closed by the scripted gateway"))
                await ws.close(code, error or "scripted close")
        except (ConnectionClosed, TimeoutError):
            pass
        finally:
            attempt.ended = attempt.ended or time.monotonic()
            with contextlib.suppress(Exception):
                await ws.close()
