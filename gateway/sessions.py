"""Device sessions (/v1/device): the session of one authenticated device, from its welcome to its
end, and the receive loop that stores its readings. Protocol decisions come from
protocol.gateway.GatewaySession; this module does the I/O around it. Its neighbours:

- gateway/device_auth.py: authentication, at the upgrade or in the first frame (``DeviceAuth``);
- gateway/replacement.py: the live sessions, at most one per device (``LiveDevices``: replacement,
  hand-over to another instance, the shutdown close);
- gateway/device_sweep.py: the registry sweep and credential expiry (``RegistrySweep``);
- gateway/device_conn.py: one connection (``DeviceConnection``) and the fleet's hooks (``SessionHooks``).

Where frames are dispatched: ``DeviceSessions._receive_loop`` turns each frame into the core's
event (``session.receive``) and acts on its kind, one branch per kind: data to the flusher
(gateway/flusher.py, which hands the committed rows to the dashboard, alerts and forwarding:
gateway/fanout.py), command results to ``on_result`` (gateway/device_commands.py), status to the
dashboard and forwarding, rejects and closes answered. A new kind of device frame is one new event
kind in protocol/gateway.py and one branch there."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from gateway.auth import Identity
from gateway.config import GatewayConfig
from gateway.conn import EdgeConnection, dumps
from gateway.dashboard.view import Hub
from gateway.device_auth import DeviceAuth
from gateway.device_conn import REPLACED_MESSAGE, DeviceConnection, SessionHooks, close_with
from gateway.device_sweep import RegistrySweep
from gateway.errors import StorageError
from gateway.fanout import Listeners
from gateway.flusher import Flusher
from gateway.forward.setup import Forwarding
from gateway.logs import log
from gateway.metrics import INTERNAL_ERROR, Metrics
from gateway.ota.serve import OtaFrames
from gateway.replacement import LiveDevices
from gateway.storage.base import ReadingRow, Storage
from gateway.supervisor import spawn
from protocol import wire
from protocol.gateway import (
    EV_CLOSE,
    EV_DATA,
    EV_OTA_GET,
    EV_OTA_STATE,
    EV_REJECT,
    EV_RESULT,
    EV_STATUS,
    EV_THROTTLE,
    GatewaySession,
)

ResultHandler = Callable[[str, dict[str, Any]], None]


class DeviceSessions:
    """Serves /v1/device connections: authentication, then one session per device until it ends."""

    def __init__(self, config: GatewayConfig, storage: Storage, auth: DeviceAuth, live: LiveDevices,
                 sweep: RegistrySweep, hub: Hub, metrics: Metrics, on_result: ResultHandler,
                 on_offline: Callable[[str], None] = lambda device_id: None,
                 clock: Callable[[], float] = time.time, forwarding: Forwarding | None = None,
                 listeners: Listeners | None = None,
                 store: Callable[[list[ReadingRow]], Awaitable[list[ReadingRow]]] | None = None,
                 hooks: SessionHooks | None = None, ota: OtaFrames | None = None) -> None:
        """``on_offline(device_id)``: the device went offline here (its session ended, and it was not
        handed over to a newer session, here or at another instance). ``listeners``: who gets the
        readings once committed (gateway/fanout.py). ``hub`` and ``forwarding`` hear of the
        sessions' own events (online, offline, status, refused frames). ``hooks``: where a session
        meets the fleet (the cluster room); the defaults keep a session to itself."""
        self.config = config
        self.metric_table = config.metric_table().rows  # the ranges readings are checked against
        self.storage = storage
        self.auth = auth
        self.live = live
        self.devices = live.devices  # device id -> its live connection (one dict, owned by ``live``)
        self.sweep = sweep
        self.hub = hub
        self.metrics = metrics
        self.counters = metrics.counters
        self.on_result = on_result
        self.on_offline = on_offline
        self.hooks = hooks if hooks is not None else SessionHooks()
        self.clock = clock
        self.forwarding = forwarding if forwarding is not None else Forwarding(storage, [])  # MQTT/NATS hooks
        self.flusher = Flusher(storage, metrics, listeners, store=store)  # store and ack, then the listeners
        self.ota = ota if ota is not None else OtaFrames(None)  # ota_get and ota frames (gateway/ota/serve.py)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def handle(self, ws: EdgeConnection) -> None:
        """Serve one /v1/device connection until it closes."""
        assert ws.request is not None
        # The handshake headers stay referenced for the connection's life (~2.8 KiB per
        # device, tracemalloc); everything needed from them was read at the upgrade.
        ws.request.headers = Headers()
        if ws.response is not None:
            ws.response.headers = Headers()
        loop = asyncio.get_running_loop()
        cfg = self.config
        self.counters.connections += 1
        session = GatewaySession(rate=cfg.rate, burst=cfg.burst, now=loop.time(), max_batch=cfg.max_batch,
                                 max_frame=cfg.max_frame, loads=orjson.loads, dumps=dumps,
                                 max_future_ms=int(cfg.max_clock_skew_s * 1000),
                                 cbor=ws.subprotocol == wire.SUBPROTOCOL_CBOR, table=self.metric_table)
        identity = ws.identity
        try:
            if identity is None:
                identity = await self.auth.first_frame(ws, session)
                if identity is None:
                    return
            await self._serve(ws, session, identity)
        except ConnectionClosed:
            pass
        except StorageError as err:  # registry or last_seq unreadable: the device retries later (1013)
            self.metrics.count_error(wire.E_STORAGE)
            log("storage_failed", logging.ERROR, error=str(err))
            with contextlib.suppress(ConnectionClosed):
                await ws.send(session.error_frame(wire.E_STORAGE, "storage unavailable; reconnect later"))
            await ws.close(wire.CLOSE_TRY_AGAIN_LATER, wire.E_STORAGE)
        except Exception as err:  # a bug: this session ends with 1011, logged; nothing else is affected
            self.metrics.count_error(INTERNAL_ERROR)
            log("device_session_failed", logging.ERROR, device=identity.device_id if identity else None,
                error=f"{type(err).__name__}: {err}"[:300],
                traceback="".join(traceback.format_exception(err))[-4000:])
            await ws.close(wire.CLOSE_INTERNAL, INTERNAL_ERROR)

    async def _serve(self, ws: EdgeConnection, session: GatewaySession, identity: Identity) -> None:
        device_id = identity.device_id
        conn = DeviceConnection(ws, session, identity, self.now_ms())
        live = self.live
        try:
            await live.enter(conn)  # a session of the device found here is replaced first
            if live.current(conn) and not conn.closing:
                refusal = await self.hooks.claim(conn)  # held by another instance: its takeover first
                if refusal is not None:
                    self.metrics.count_error(refusal[0])
                    await conn.close(*refusal)
                    return
            if conn.closing:
                return  # handed over meanwhile (already closed with 4005)
            if not live.current(conn):  # replaced in turn while the old one finished
                await conn.close(wire.E_REPLACED, REPLACED_MESSAGE)
                return
            await self._session(conn)
        finally:
            current = live.leave(conn)
            if current and conn.welcomed:
                self.hub.offline(device_id)
                if not conn.moved:  # (a device handed over goes on elsewhere: not offline)
                    self.forwarding.device_offline(device_id)
                    self.on_offline(device_id)
            try:
                await self.hooks.ended(conn, current)
            finally:
                # Always: the connection that replaces this one waits for it (a chain of quick
                # reconnects of one device must not wait for ever).
                if not conn.done.done():
                    conn.done.set_result(None)

    async def _session(self, conn: DeviceConnection) -> None:
        """Welcome, then frames until the connection ends."""
        loop = asyncio.get_running_loop()
        ws, session, identity, device_id = conn.ws, conn.session, conn.identity, conn.device_id
        expiry: asyncio.TimerHandle | None = None
        try:
            last_seq = await self.storage.last_seq(device_id)
            extra = {"expires": int(identity.expires_at)} if identity.expires_at else None
            await ws.send(session.accept(device_id, last_seq, self.now_ms(), extra))
            conn.welcomed = True
            self.hub.online(device_id)
            self.forwarding.device_online(device_id)
            self.hooks.welcomed(conn)
            log("device_online", device=device_id, last_seq=last_seq, address=ws.address,
                encoding="cbor" if session.cbor else "json")
            if identity.expires_at:
                delay = max(0.0, identity.expires_at - self.clock())
                expiry = loop.call_later(delay, lambda: spawn(self.sweep.expire(conn), "credential expiry"))
            await self._receive_loop(conn)
        finally:
            if expiry is not None:
                expiry.cancel()
            await conn.drain()
            log("device_offline", device=device_id, code=ws.close_code)

    async def _receive_loop(self, conn: DeviceConnection) -> None:
        loop = asyncio.get_running_loop()
        clock = self.clock
        ws = conn.ws
        session = conn.session
        counters = self.counters
        frame_size = self.metrics.frame_size
        async for frame in ws:
            if conn.closing:
                break  # not stored, not acked: the device resends after reconnecting
            counters.frames += 1
            frame_size.observe(len(frame) if not isinstance(frame, str) or frame.isascii() else len(frame.encode()))
            received = int(clock() * 1000)
            event = session.receive(frame, loop.time(), received)
            kind = event.kind
            if kind == EV_DATA:
                self._on_data(conn, event.payload, received)
            elif kind == EV_REJECT:
                counters.bad_frames += 1
                self.metrics.count_error(event.payload.code)
                self.hub.device_error(conn.device_id, event.payload.code, event.payload.message)
                if event.reply:
                    await ws.send(event.reply)
            elif kind == EV_THROTTLE:
                counters.throttled += 1
                if event.reply:
                    await ws.send(event.reply)
            elif kind == EV_CLOSE:
                self.hub.device_error(conn.device_id, event.payload.code, event.payload.message)
                if event.payload.code != wire.E_RATE:
                    counters.bad_frames += 1
                log("device_closed", logging.WARNING, device=conn.device_id, code=event.payload.code)
                await conn.drain()
                await close_with(self.metrics, ws, event)
                break
            elif kind == EV_RESULT:
                self.on_result(conn.device_id, event.payload)
                if event.reply:  # part of the result was refused (too large): the device is told
                    self.metrics.count_error(wire.E_TOO_LARGE)
                    await ws.send(event.reply)
            elif kind == EV_STATUS:
                self.hub.status(conn.device_id, event.payload)
                self.forwarding.device_status(conn.device_id, event.payload)
            elif kind in (EV_OTA_GET, EV_OTA_STATE):
                await self.ota.handle(conn, event)

    def _on_data(self, conn: DeviceConnection, frame: wire.DataFrame, received: int) -> None:
        """Hand the frame's readings to the flusher. Nothing else sees them before their commit:
        the dashboard, the alert rules and forwarding get the rows the commit inserted."""
        device_id = conn.device_id
        rows: list[ReadingRow] = []
        if frame.readings:
            gap = conn.session.last_gap
            if gap:
                self.counters.gaps += gap
            boot = frame.boot
            time_of = wire.reading_time_ms
            rows = [ReadingRow(device_id, reading.seq, time_of(reading, frame, received), received, reading.metrics,
                               boot, reading.ts, reading.up, reading.quality) for reading in frame.readings]
        else:
            self.counters.duplicates += 1
        self.flusher.add(conn, rows, conn.session.accepted_seq)


def select_subprotocol(offered: Sequence[str], cbor: bool = True) -> Subprotocol | None:
    """The subprotocol of a device connection (docs/protocol.md section 1): edgewire.v1.cbor when the
    device offers it (and ``cbor`` allows it), else edgewire.v1.json when offered, else none: JSON."""
    for name in (wire.SUBPROTOCOL_CBOR, wire.SUBPROTOCOL_JSON):
        if name in offered and (cbor or name != wire.SUBPROTOCOL_CBOR):
            return Subprotocol(name)
    return None
