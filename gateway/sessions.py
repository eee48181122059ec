"""Device sessions (/v1/device): authentication, the store-and-ack path, replacement, expiry and
the registry sweep. Protocol decisions come from protocol.gateway.GatewaySession; this module
does the I/O around it. Readings go to the flusher (gateway/flusher.py), which hands them to
their consumers (dashboard, alerts, forwarding) once committed (gateway/fanout.py)."""

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
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from gateway.auth import Authenticator, Identity, bearer
from gateway.config import GatewayConfig
from gateway.conn import EdgeConnection, dumps, json_response, send_close
from gateway.dashboard.stream import Hub
from gateway.errors import AuthError, StorageError
from gateway.fanout import Listeners
from gateway.flusher import Flusher
from gateway.forward.setup import Forwarding
from gateway.logs import log
from gateway.metrics import INTERNAL_ERROR, Metrics
from gateway.ota.serve import OtaFrames
from gateway.storage.base import DeviceRecord, ReadingRow, Storage
from gateway.supervisor import spawn
from protocol import wire
from protocol.gateway import (
    EV_AUTH,
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
REPLACE_WAIT_S = 10.0  # how long a new session waits for the one it replaces to end
REPLACED_MESSAGE = "a newer connection authenticated as this device"


class DeviceConnection:
    """One authenticated device connection."""

    def __init__(self, ws: EdgeConnection, session: GatewaySession, identity: Identity, connected_ms: int) -> None:
        self.ws = ws
        self.session = session
        self.device_id: str = identity.device_id
        self.identity = identity
        self.tail: asyncio.Future[None] | None = None  # the flush holding its newest frame (gateway/flusher.py)
        self.acking: asyncio.Future[None] | None = None  # its own ack sender or storage close, while one runs
        self.failed = False  # a store of its rows failed: no ack again, closed with 1013
        self.closing = False
        self.welcomed = False  # the welcome went out: frames are being stored
        self.moved = False  # ended by a takeover or a drain: the device goes on elsewhere
        self.connected_ms = connected_ms
        self.done = asyncio.get_running_loop().create_future()

    def writable(self) -> bool:
        """True when a small frame goes out without waiting: the connection is open and nothing
        waits in its write buffer (see Flusher._ack)."""
        transport = self.ws.transport
        return self.ws.state is State.OPEN and not transport.is_closing() and not transport.get_write_buffer_size()

    async def send(self, frame: str) -> None:
        await self.ws.send(frame)

    async def drain(self) -> None:
        """Wait until every accepted frame is stored and acknowledged (or failed)."""
        while True:
            busy = [f for f in (self.tail, self.acking) if f is not None and not f.done()]
            if not busy:
                return
            await asyncio.wait(busy)

    async def close(self, code: str, message: str) -> None:
        """End the session with ``code`` (through the core: error frame, then its close code)."""
        with contextlib.suppress(ConnectionClosed):
            await send_close(self.ws, self.session.close(code, message))


class SessionHooks:
    """Where a session meets the rest of the fleet (presence, queued commands): the cluster room
    (gateway/cluster) implements them; these defaults keep a session to itself."""

    async def claim(self, conn: DeviceConnection) -> tuple[str, str] | None:
        """Before the welcome: make this instance the device's holder. None to go on, or the
        (error code, message) to close the new connection with."""
        return None

    def welcomed(self, conn: DeviceConnection) -> None:
        """The welcome went out (no I/O here: start a task for it)."""

    async def ended(self, conn: DeviceConnection, current: bool) -> None:
        """The session ended; ``current``: no newer session of the device started here meanwhile."""


class DeviceSessions:
    """Every live device session; at most one per device id."""

    def __init__(self, config: GatewayConfig, storage: Storage, authenticator: Authenticator, hub: Hub,
                 metrics: Metrics, on_result: ResultHandler,
                 on_offline: Callable[[str], None] = lambda device_id: None,
                 clock: Callable[[], float] = time.time, forwarding: Forwarding | None = None,
                 listeners: Listeners | None = None,
                 store: Callable[[list[ReadingRow]], Awaitable[list[ReadingRow]]] | None = None) -> None:
        """``on_offline(device_id)``: the device went offline here (its session ended, and it was not
        handed over to a newer session, here or at another instance). ``listeners``: who gets the
        readings once committed (gateway/fanout.py). ``hub`` and ``forwarding`` hear of the
        sessions' own events (online, offline, status, refused frames)."""
        self.config = config
        self.metric_table = config.metric_table().rows  # the ranges readings are checked against
        self.storage = storage
        self.auth = authenticator
        self.hub = hub
        self.metrics = metrics
        self.counters = metrics.counters
        self.on_result = on_result
        self.on_offline = on_offline
        self.hooks = SessionHooks()
        self.clock = clock
        self.forwarding = forwarding if forwarding is not None else Forwarding(storage, [])  # MQTT/NATS hooks
        self.devices: dict[str, DeviceConnection] = {}
        self.flusher = Flusher(storage, metrics, listeners, store=store)  # store and ack, then the listeners
        self.ota = OtaFrames(None)  # ota_get and ota frames (gateway/ota/serve.py; the gateway sets its store)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # ------------------------------------------------------------ HTTP upgrade
    def client_address(self, ws: EdgeConnection, headers: Headers) -> str:
        peer = ws.remote_address[0] if ws.remote_address else ""
        return self.auth.client_address(str(peer), headers)

    async def check_upgrade(self, ws: EdgeConnection, request: Request) -> Response | None:
        """Check an ``Authorization: Bearer`` credential at the upgrade; without one, the device
        authenticates in its first frame. A refused credential is answered 401/403 before the upgrade."""
        ws.address = address = self.client_address(ws, request.headers)
        try:
            token, jwt = bearer(request.headers)
            if token is None and jwt is None:
                # First-frame authentication: no compression before the device is known
                # (a deflate state per unauthenticated connection was measured to keep ~30 MiB).
                ws.protocol.available_extensions = []
                return None
            ws.identity = await self.auth.authenticate(device_id=None, token=token, jwt=jwt, address=address)
            ws.authenticated()
        except AuthError as err:
            self.auth_failed(err, address)
            return json_response(err.http_status, {"code": err.code, "message": err.message})
        except StorageError:  # the registry is unreadable: the device retries later
            self.metrics.count_error(wire.E_STORAGE)
            return json_response(503, {"code": wire.E_STORAGE, "message": "storage unavailable; reconnect later"},
                                 {"Retry-After": "5"})
        return None

    def auth_failed(self, err: AuthError, address: str) -> None:
        self.counters.auth_failures += 1
        self.metrics.count_error(err.code)
        log("auth_refused", logging.WARNING, code=err.code, address=address)

    # ------------------------------------------------------------ WebSocket side
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
                identity = await self._first_frame_auth(ws, session)
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

    async def _close_with(self, ws: EdgeConnection, event: Any) -> None:
        self.metrics.count_error(event.payload.code)
        await send_close(ws, event)

    async def _first_frame_auth(self, ws: EdgeConnection, session: GatewaySession) -> Identity | None:
        loop = asyncio.get_running_loop()
        timeout = self.config.auth_timeout_s  # handshake and auth frame together, from accept
        try:
            frame = await asyncio.wait_for(ws.recv(), ws.auth_time_left(timeout))
        except TimeoutError:
            await self._close_with(ws, session.refuse(wire.E_AUTH_TIMEOUT,
                                                      f"no auth frame within {timeout:g} s of connecting"))
            return None
        event = session.receive(frame, loop.time())
        if event.kind == EV_CLOSE:
            await self._close_with(ws, event)
            return None
        if event.kind != EV_AUTH:
            await self._close_with(ws, session.refuse(wire.E_AUTH_REQUIRED, "authenticate first"))
            return None
        creds = event.payload
        try:
            identity = await self.auth.authenticate(device_id=creds["device_id"], token=creds["token"],
                                                    jwt=creds["jwt"], address=ws.address)
            ws.authenticated()
            return identity
        except AuthError as err:
            self.auth_failed(err, ws.address)
            await self._close_with(ws, session.refuse(err.code, err.message))
            return None

    async def _serve(self, ws: EdgeConnection, session: GatewaySession, identity: Identity) -> None:
        device_id = identity.device_id
        conn = DeviceConnection(ws, session, identity, self.now_ms())
        old = self.devices.get(device_id)
        self.devices[device_id] = conn
        try:
            if old is not None:
                self.counters.replaced += 1
                self.hub.replaced(device_id, old.ws.address, ws.address)
                log("device_replaced", logging.WARNING, device=device_id, old_address=old.ws.address,
                    address=ws.address)
                old.moved = True
                await self._replace(old)
            if self.devices.get(device_id) is conn and not conn.closing:
                refusal = await self.hooks.claim(conn)  # held by another instance: its takeover first
                if refusal is not None:
                    self.metrics.count_error(refusal[0])
                    await conn.close(*refusal)
                    return
            if conn.closing:
                return  # handed over meanwhile (already closed with 4005)
            if self.devices.get(device_id) is not conn:  # replaced in turn while the old one finished
                await conn.close(wire.E_REPLACED, REPLACED_MESSAGE)
                return
            await self._session(conn)
        finally:
            current = self.devices.get(device_id) is conn
            if current:
                del self.devices[device_id]
                if conn.welcomed:
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

    async def hand_over(self, device_id: str, why: str = "taken over") -> bool:
        """Another instance holds the device now: store what this session accepted, then close it
        with 4005. Returns once its frames are stored (the close handshake goes on by itself), so
        the new holder's welcome carries an exact last_seq. False if no session was here."""
        conn = self.devices.get(device_id)
        if conn is None:
            return False
        conn.moved = True
        if conn.closing:
            await conn.drain()
            return True
        conn.closing = True  # no frame after this one is stored: the device resends it to its new holder
        self.counters.replaced += 1
        log("device_handed_over", logging.WARNING, device=device_id, why=why)
        await conn.drain()
        spawn(conn.close(wire.E_REPLACED, REPLACED_MESSAGE), "hand-over close")
        return True

    async def _replace(self, old: DeviceConnection) -> None:
        """End the session ``old``: its accepted frames stored and acked, then close 4005."""
        old.closing = True
        await old.drain()
        await old.close(wire.E_REPLACED, REPLACED_MESSAGE)
        try:
            await asyncio.wait_for(asyncio.shield(old.done), REPLACE_WAIT_S)
        except TimeoutError:
            log("device_replace_slow", logging.WARNING, device=old.device_id,
                hint=f"the replaced session did not end within {REPLACE_WAIT_S:g} s; going on")

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
                expiry = loop.call_later(delay, lambda: spawn(self._expire(conn), "credential expiry"))
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
                await self._close_with(ws, event)
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

    # ------------------------------------------------------------ ending sessions
    async def sweep_forever(self) -> None:
        """Apply registry changes to live sessions: disabled, revoked, rotated, allowlist."""
        while True:
            await asyncio.sleep(self.config.registry_recheck_s)
            await self.sweep()

    async def sweep(self) -> None:
        if not self.devices:
            return
        try:
            records = {r.device_id: r for r in await self.storage.list_devices()}
        except (StorageError, OSError) as err:
            log("registry_sweep_failed", logging.WARNING, error=str(err))
            return
        for conn in list(self.devices.values()):
            self._apply_registry(conn, records.get(conn.device_id))

    async def recheck(self, device_id: str) -> None:
        """Check one device's session against the registry now (a registry notice from the bus)."""
        conn = self.devices.get(device_id)
        if conn is None or conn.closing:
            return
        try:
            record = await self.storage.get_device(device_id)
        except (StorageError, OSError) as err:  # the sweep tries again within registry_recheck_s
            log("registry_recheck_failed", logging.WARNING, device=device_id, error=str(err))
            return
        if self.devices.get(device_id) is conn:
            self._apply_registry(conn, record)

    def _apply_registry(self, conn: DeviceConnection, record: DeviceRecord | None) -> None:
        verdict = self._still_allowed(conn, record)
        if verdict is not None and not conn.closing:
            conn.closing = True
            log("device_cut_off", logging.WARNING, device=conn.device_id, code=verdict[0])
            spawn(self._cut_off(conn, *verdict), "registry cut-off")

    def _still_allowed(self, conn: DeviceConnection, record: DeviceRecord | None) -> tuple[str, str] | None:
        """None if the session may go on, else (error code, message)."""
        if record is None:
            return (wire.E_AUTH_FAILED, "device removed from the registry")
        if not record.enabled:
            return (wire.E_DISABLED, "device disabled by the operator")
        if conn.identity.method == "token" and (
                record.token_digest is None or (record.token_created_ms or 0) > conn.connected_ms):
            return (wire.E_AUTH_FAILED, "token revoked or rotated; install the new token")
        if not self.auth.address_allowed(conn.ws.address, record):
            return (wire.E_ADDRESS, "address no longer in the allowlist")
        return None

    async def _cut_off(self, conn: DeviceConnection, code: str, message: str) -> None:
        await conn.drain()
        self.metrics.count_error(code)
        await conn.close(code, message)

    async def _expire(self, conn: DeviceConnection) -> None:
        if conn.ws.state.name != "OPEN":
            return
        conn.closing = True
        await conn.drain()
        self.metrics.count_error(wire.E_EXPIRED)
        await conn.close(wire.E_EXPIRED, "credential expired; fetch a new token and reconnect")

    async def close_all(self, per_second: float = 0.0, moving: bool = False) -> None:
        """Shutdown: store and ack what was received, then close the devices with 1012: all at once,
        or ``per_second`` at a time (each batch drained, then closed), so that the devices of a pod
        that several share reconnect over the others instead of all in the same second. Devices
        not in the current batch go on streaming until their turn. ``moving``: the devices go on
        at other instances (their queued commands follow them; they are not offline)."""
        conns = list(self.devices.values())
        if per_second <= 0:
            await self._close_batch(conns, moving)
            return
        loop = asyncio.get_running_loop()
        size = max(1, int(per_second))
        for start in range(0, len(conns), size):
            began = loop.time()
            await self._close_batch(conns[start:start + size], moving)
            if start + size < len(conns):
                await asyncio.sleep(max(0.0, began + size / per_second - loop.time()))

    async def _close_batch(self, conns: list[DeviceConnection], moving: bool) -> None:
        for conn in conns:
            conn.closing = True
            conn.moved = moving
        await asyncio.gather(*(conn.drain() for conn in conns), return_exceptions=True)
        await asyncio.gather(*(conn.close(wire.E_SHUTDOWN, "gateway restarting; reconnect later")
                               for conn in conns), return_exceptions=True)


def select_subprotocol(offered: Sequence[str], cbor: bool = True) -> Subprotocol | None:
    """The subprotocol of a device connection (docs/protocol.md section 1): edgewire.v1.cbor when the
    device offers it (and ``cbor`` allows it), else edgewire.v1.json when offered, else none: JSON."""
    for name in (wire.SUBPROTOCOL_CBOR, wire.SUBPROTOCOL_JSON):
        if name in offered and (cbor or name != wire.SUBPROTOCOL_CBOR):
            return Subprotocol(name)
    return None
