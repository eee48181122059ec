"""The gateway process: a thin asyncio driver around protocol.gateway.GatewaySession.

Endpoints (docs/protocol.md): /v1/device, /v1/dashboard, /v1/admin, /, /healthz, /metrics;
/v1/history, /v1/history.csv, /v1/devices (docs/http-api.md, gateway/history_api.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import http
import itertools
import logging
import signal
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request, Response

from gateway import history_api
from gateway import registry as registry_mod
from gateway.alerts.admin import AlertAdmin
from gateway.alerts.engine import AlertEngine
from gateway.alerts.localtime import zone
from gateway.alerts.metrics import metric_lines as alert_metric_lines
from gateway.alerts.model import CLEARED, AlertEvent
from gateway.alerts.webhook import WebhookNotifier, load_secret
from gateway.auth import Authenticator, Identity
from gateway.config import GatewayConfig
from gateway.errors import AlertError, AuthError, RegistryError, StorageError
from gateway.hub import Hub, now_ms
from gateway.logs import log
from gateway.retention import Retention
from gateway.storage.base import DeviceRecord, ReadingRow, Storage
from protocol import wire
from protocol.gateway import (
    EV_AUTH,
    EV_CLOSE,
    EV_DATA,
    EV_REJECT,
    EV_RESULT,
    EV_STATUS,
    EV_THROTTLE,
    Event,
    GatewaySession,
)

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}


def dumps(msg: Any) -> str:
    return orjson.dumps(msg).decode()


def _json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    data = orjson.dumps(body)
    hdrs = Headers({"Content-Type": "application/json", "Content-Length": str(len(data)),
                    "Cache-Control": "no-store", **(headers or {})})
    return Response(status, http.HTTPStatus(status).phrase, hdrs, data)


GC_THRESHOLDS = (50_000, 50, 1000)  # young collections every 50k net allocations instead of 700
GC_FREEZE_EVERY_S = 60.0
GC_FULL_EVERY_S = 600.0


@dataclass
class Counters:
    connections: int = 0
    auth_failures: int = 0
    frames: int = 0
    readings_stored: int = 0
    duplicates: int = 0
    bad_frames: int = 0
    throttled: int = 0
    storage_errors: int = 0
    replaced: int = 0
    gaps: int = 0
    by_error: dict[str, int] = field(default_factory=dict)


class DeviceConnection:
    """One authenticated device connection."""

    def __init__(self, ws: ServerConnection, session: GatewaySession, identity: Identity) -> None:
        self.ws = ws
        self.session = session
        self.device_id: str = identity.device_id
        self.identity = identity
        self.tail: asyncio.Future[None] | None = None  # last store-and-ack task, acks go in order
        self.closing = False
        self.connected_ms = now_ms()
        self.expected_seq = 1  # the seq that continues the stored sequence without a gap
        self.done = asyncio.get_running_loop().create_future()

    async def drain(self) -> None:
        """Wait until every accepted frame is stored and acknowledged (or failed)."""
        while self.tail is not None and not self.tail.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self.tail)


class Gateway:
    def __init__(self, config: GatewayConfig, storage: Storage, authenticator: Authenticator,
                 registry: registry_mod.Registry, admin_token: str, dashboard_token: str | None = None) -> None:
        self.config = config
        self.storage = storage
        self.auth = authenticator
        self.registry = registry
        self._admin_digest = _digest(admin_token)
        self._dashboard_digest = _digest(dashboard_token) if dashboard_token else None
        self.hub = Hub(config.dashboard_interval_ms, config.dashboard_queue, dumps)
        self.alerts = AlertEngine(storage, config.alerts, timezone=zone(config.alert_timezone),
                                  max_open=config.alert_max_open, suspended_expiry_s=config.alert_suspended_expiry_s,
                                  save_interval_s=config.alert_save_interval_s, registry_check_s=60.0)
        self.alerts.listen(self._alert_event)
        self.alert_admin = AlertAdmin(self.alerts)
        self.notifier = WebhookNotifier(config.webhooks, {hook.name: load_secret(hook) for hook in config.webhooks},
                                        source=socket.gethostname())
        self.alerts.listen(self.notifier.on_event)
        self._notifier_task: asyncio.Task[None] | None = None
        self._alerts_task: asyncio.Task[None] | None = None
        self.devices: dict[str, DeviceConnection] = {}
        self.counters = Counters()
        self.commands: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._command_ids = itertools.count(1)
        self.server: Server | None = None
        self.draining = False
        self.stopped = asyncio.Event()
        self.started_at = time.time()
        self._sweeper: asyncio.Task[None] | None = None
        self._gc_task: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        self.history_api = history_api.HistoryApi(storage, config.readings_retention_days,
                                                  lambda device_id: device_id in self.devices)
        self._static: dict[str, tuple[bytes, str]] = {}
        for path, (name, ctype) in STATIC_FILES.items():
            file = STATIC_DIR / name
            if file.exists():
                self._static[path] = (file.read_bytes(), ctype)

    def _alert_event(self, event: AlertEvent) -> None:
        """Alert events to the dashboards: open alerts shown, cleared ones removed."""
        if event.kind == CLEARED:
            self.hub.alert_cleared(event.alert)
        else:
            self.hub.alert_raised(event.alert)

    # ------------------------------------------------------------ lifecycle
    async def _gc_maintenance(self) -> None:
        """Keep long-lived objects out of the cyclic GC's young collections (docs/performance.md).

        With 10,000 connections the default thresholds (700, 10, 10) make CPython walk
        hundreds of thousands of live objects several times a minute: 300+ ms pauses and
        ~20 % of the time. Survivors are frozen every minute; every 10 minutes everything
        is unfrozen and collected once, so garbage cycles of closed connections are freed.
        """
        loop = asyncio.get_running_loop()
        last_full = loop.time()
        while True:
            await asyncio.sleep(GC_FREEZE_EVERY_S)
            if loop.time() - last_full >= GC_FULL_EVERY_S:
                started = time.perf_counter()
                gc.unfreeze()
                freed = gc.collect()
                last_full = loop.time()
                log("gc_full_collection", freed=freed, pause_ms=round(1000 * (time.perf_counter() - started), 1))
            gc.freeze()

    async def start(self) -> None:
        await self.storage.open()
        await self.alerts.start()
        for alert in self.alerts.open_alerts():  # the restored ones; changes follow as events
            self.hub.alert_raised(alert)
        self._alerts_task = asyncio.get_running_loop().create_task(self.alerts.run())
        self._notifier_task = asyncio.get_running_loop().create_task(self.notifier.run())
        await history_api.restore_hub(self.hub, self.storage)
        self.hub.start()
        gc.collect()
        gc.freeze()  # modules, config, caches: never garbage
        gc.set_threshold(*GC_THRESHOLDS)
        self._gc_task = asyncio.get_running_loop().create_task(self._gc_maintenance())
        self._sweeper = asyncio.get_running_loop().create_task(self._registry_sweep())
        self._retention = asyncio.get_running_loop().create_task(Retention(
            self.storage, self.config.readings_retention_days, self.config.rollup_retention_days).run_forever())
        extensions = None
        if self.config.compression:
            extensions = [ServerPerMessageDeflateFactory(
                server_max_window_bits=11, client_max_window_bits=11,
                compress_settings={"memLevel": 4})]
        ssl_context = None
        if self.config.tls_cert:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        self.server = await serve(
            self.handle, self.config.host, self.config.port,
            process_request=self.process_request,
            compression=None, extensions=extensions,
            max_size=self.config.max_frame, max_queue=16,
            open_timeout=self.config.auth_timeout_s,
            ping_interval=self.config.ping_interval_s, ping_timeout=self.config.ping_timeout_s,
            close_timeout=5, ssl=ssl_context, server_header="edgewire",
        )
        log("gateway_started", host=self.config.host, port=self.port, storage=self.config.storage_kind,
            database=str(self.config.database) if self.config.storage_kind == "sqlite" else self.config.storage_display)

    @property
    def port(self) -> int:
        assert self.server is not None
        for sock in self.server.sockets:
            return int(sock.getsockname()[1])
        return self.config.port

    async def shutdown(self) -> None:
        """Stop accepting, store and ack what was received, close devices with 1012, flush."""
        if self.draining:
            return
        self.draining = True
        log("gateway_stopping", devices=len(self.devices))
        if self.server is not None:
            self.server.close(close_connections=False)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._gc_task is not None:
            self._gc_task.cancel()
        if self._retention is not None:
            self._retention.cancel()
        conns = list(self.devices.values())
        for conn in conns:
            conn.closing = True
        await asyncio.gather(*(conn.drain() for conn in conns), return_exceptions=True)
        await asyncio.gather(*(self._close(conn.ws, wire.E_SHUTDOWN, "gateway restarting; reconnect later")
                               for conn in conns), return_exceptions=True)
        await self.alerts.close()
        if self._alerts_task is not None:
            self._alerts_task.cancel()
        await self.notifier.close()
        if self._notifier_task is not None:
            self._notifier_task.cancel()
        self.hub.flush()
        await self.hub.stop()
        if self.server is not None:
            for ws in list(self.server.connections):
                with contextlib.suppress(Exception):
                    await ws.close(wire.CLOSE_GOING_AWAY, "gateway stopping")
            await self.server.wait_closed()
        await self.storage.close()
        log("gateway_stopped", stored=self.counters.readings_stored)
        self.stopped.set()

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: loop.create_task(self.shutdown()))
        await self.stopped.wait()

    # ------------------------------------------------------------ HTTP side
    async def process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            status = 503 if self.draining else 200
            return _json_response(status, {
                "status": "draining" if self.draining else "ok", "devices_online": len(self.devices),
                "dashboards": len(self.hub.clients), "storage": self.config.storage_kind,
                "uptime_s": round(time.time() - self.started_at, 1)})
        if path == "/metrics":
            return self._metrics_response()
        if path in self._static and "upgrade" not in request.headers.get("Connection", "").lower():
            body, ctype = self._static[path]
            return Response(200, "OK", Headers({
                "Content-Type": ctype, "Content-Length": str(len(body)), "Cache-Control": "no-cache",
                "Content-Security-Policy": "default-src 'self'; connect-src 'self'",
                "X-Content-Type-Options": "nosniff"}), body)
        if self.draining:
            return _json_response(503, {"code": wire.E_SHUTDOWN, "message": "gateway restarting; reconnect later"},
                                  {"Retry-After": "5"})
        if path == "/v1/device":
            return await self._authorize_device(ws, request)
        if path == "/v1/dashboard":
            return self._dashboard_refused(request)
        if path in history_api.PATHS:
            return self._dashboard_refused(request) or await self.history_api.respond(request.path)
        if path == "/v1/admin":
            token = _bearer(request.headers)
            if token is None or not hmac.compare_digest(_digest(token), self._admin_digest):
                return _json_response(401, {"code": wire.E_AUTH_FAILED, "message": "admin authentication failed"})
            return None
        return _json_response(404, {"code": "not_found", "message": f"no such path {path[:64]}"})

    def _dashboard_refused(self, request: Request) -> Response | None:
        """401 unless the request carries the dashboard token (when one is required); None if allowed."""
        if self._dashboard_digest is None:
            return None
        token = _bearer(request.headers) or _query_token(request.path)
        if token is None or not hmac.compare_digest(_digest(token), self._dashboard_digest):
            return _json_response(401, {"code": wire.E_AUTH_FAILED, "message": "dashboard authentication "
                                        "failed: open the page as /#token=<contents of dashboard.token>"})
        return None

    async def _authorize_device(self, ws: ServerConnection, request: Request) -> Response | None:
        address = self._address(ws, request.headers)
        ws.ew_address = address  # type: ignore[attr-defined]
        token = _bearer(request.headers)
        if token is None:
            return None  # first-frame authentication
        try:
            if token.startswith("ewt_"):
                identity = await self.auth.authenticate(device_id=None, token=token, jwt=None, address=address)
            else:
                identity = await self.auth.authenticate(device_id=None, token=None, jwt=token, address=address)
        except AuthError as err:
            self._auth_failed(err, address)
            return _json_response(err.http_status, {"code": err.code, "message": err.message})
        except StorageError:
            self._count_error(wire.E_STORAGE)
            return _json_response(503, {"code": wire.E_STORAGE, "message": "storage unavailable; reconnect later"},
                                  {"Retry-After": "5"})
        ws.ew_identity = identity  # type: ignore[attr-defined]
        return None

    def _address(self, ws: ServerConnection, headers: Headers) -> str:
        peer = ws.remote_address[0] if ws.remote_address else ""
        return self.auth.client_address(str(peer), headers)

    def _auth_failed(self, err: AuthError, address: str) -> None:
        self.counters.auth_failures += 1
        self._count_error(err.code)
        log("auth_refused", logging.WARNING, code=err.code, address=address)

    def _count_error(self, code: str) -> None:
        self.counters.by_error[code] = self.counters.by_error.get(code, 0) + 1

    def _metrics_response(self) -> Response:
        c = self.counters
        lines = [
            "# TYPE edgewire_devices_online gauge", f"edgewire_devices_online {len(self.devices)}",
            "# TYPE edgewire_dashboards gauge", f"edgewire_dashboards {len(self.hub.clients)}",
        ]
        for name in ("connections", "auth_failures", "frames", "readings_stored", "duplicates",
                     "bad_frames", "throttled", "storage_errors", "replaced", "gaps"):
            lines += [f"# TYPE edgewire_{name}_total counter", f"edgewire_{name}_total {getattr(c, name)}"]
        lines += ["# TYPE edgewire_dashboard_resyncs_total counter",
                  f"edgewire_dashboard_resyncs_total {self.hub.resyncs}",
                  "# TYPE edgewire_errors_total counter"]
        lines += [f'edgewire_errors_total{{code="{code}"}} {n}' for code, n in sorted(c.by_error.items())]
        lines += alert_metric_lines(self.alerts, self.notifier)
        body = ("\n".join(lines) + "\n").encode()
        return Response(200, "OK", Headers({"Content-Type": "text/plain; version=0.0.4",
                                            "Content-Length": str(len(body))}), body)

    # ------------------------------------------------------------ WebSocket side
    async def handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        path = ws.request.path.split("?", 1)[0]
        if path == "/v1/device":
            # The handshake headers stay referenced for the connection's life (~2.8 KiB per
            # device, tracemalloc); everything needed from them was read in process_request.
            ws.request.headers = Headers()
            if ws.response is not None:
                ws.response.headers = Headers()
            await self.handle_device(ws)
        elif path == "/v1/dashboard":
            await self.hub.serve(ws)
        elif path == "/v1/admin":
            await self.handle_admin(ws)

    async def _close(self, ws: ServerConnection, code: str, message: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(dumps(wire.error_message(code, message)))
        await ws.close(wire.CLOSE_FOR_ERROR.get(code, wire.CLOSE_POLICY), code)

    async def _send_close(self, ws: ServerConnection, event: Event) -> None:
        self._count_error(event.payload.code)
        with contextlib.suppress(ConnectionClosed):
            if event.reply:
                await ws.send(event.reply)
        await ws.close(event.close_code or wire.CLOSE_POLICY, event.payload.code)

    async def handle_device(self, ws: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        self.counters.connections += 1
        session = GatewaySession(rate=cfg.rate, burst=cfg.burst, now=loop.time(), max_batch=cfg.max_batch,
                                      max_frame=cfg.max_frame, loads=orjson.loads, dumps=dumps)
        identity: Identity | None = getattr(ws, "ew_identity", None)
        address: str = getattr(ws, "ew_address", "")
        try:
            if identity is None:
                identity = await self._first_frame_auth(ws, session, address)
                if identity is None:
                    return
            await self._serve_device(ws, session, identity)
        except ConnectionClosed:
            pass
        except StorageError as err:  # registry or last_seq unreadable: the device retries later (1013)
            self._count_error(wire.E_STORAGE)
            log("storage_failed", logging.ERROR, error=str(err))
            with contextlib.suppress(ConnectionClosed):
                await self._close(ws, wire.E_STORAGE, "storage unavailable; reconnect later")

    async def _first_frame_auth(self, ws: ServerConnection, session: GatewaySession,
                                address: str) -> Identity | None:
        loop = asyncio.get_running_loop()
        try:
            frame = await asyncio.wait_for(ws.recv(), self.config.auth_timeout_s)
        except TimeoutError:
            self._count_error(wire.E_AUTH_TIMEOUT)
            await self._close(ws, wire.E_AUTH_TIMEOUT, f"no auth frame within {self.config.auth_timeout_s:g} s")
            return None
        event = session.receive(frame, loop.time())
        if event.kind == EV_CLOSE:
            await self._send_close(ws, event)
            return None
        if event.kind != EV_AUTH:
            await self._send_close(ws, session.refuse(wire.E_AUTH_REQUIRED, "authenticate first"))
            return None
        creds = event.payload
        try:
            return await self.auth.authenticate(device_id=creds["device_id"], token=creds["token"],
                                                jwt=creds["jwt"], address=address)
        except AuthError as err:
            self._auth_failed(err, address)
            await self._send_close(ws, session.refuse(err.code, err.message))
            return None

    async def _serve_device(self, ws: ServerConnection, session: GatewaySession, identity: Identity) -> None:
        loop = asyncio.get_running_loop()
        device_id = identity.device_id
        conn = DeviceConnection(ws, session, identity)
        old = self.devices.get(device_id)
        self.devices[device_id] = conn
        if old is not None:
            self.counters.replaced += 1
            old.closing = True
            await old.drain()
            await self._close(old.ws, wire.E_REPLACED, "a newer connection authenticated as this device")
            with contextlib.suppress(Exception):
                await old.done
        if self.devices.get(device_id) is not conn:
            await self._close(ws, wire.E_REPLACED, "a newer connection authenticated as this device")
            return
        expiry: asyncio.TimerHandle | None = None
        try:
            last_seq = await self.storage.last_seq(device_id)
            conn.expected_seq = last_seq + 1
            extra = {"expires": int(identity.expires_at)} if identity.expires_at else None
            await ws.send(session.accept(device_id, last_seq, now_ms(), extra))
            self.hub.online(device_id)
            log("device_online", device=device_id, last_seq=last_seq, address=getattr(ws, "ew_address", ""))
            if identity.expires_at:
                delay = max(0.0, identity.expires_at - time.time())
                expiry = loop.call_later(delay, lambda: loop.create_task(self._expire(conn)))
            await self._receive_loop(conn)
        finally:
            if expiry is not None:
                expiry.cancel()
            await conn.drain()
            if self.devices.get(device_id) is conn:
                del self.devices[device_id]
                self.hub.offline(device_id)
                self.alerts.device_offline(device_id)
            if not conn.done.done():
                conn.done.set_result(None)
            log("device_offline", device=device_id, code=ws.close_code)

    async def _registry_sweep(self) -> None:
        """Apply registry changes to live sessions: disabled, revoked, rotated, allowlist."""
        while True:
            await asyncio.sleep(self.config.registry_recheck_s)
            if not self.devices:
                continue
            try:
                records = {r.device_id: r for r in await self.storage.list_devices()}
            except (StorageError, OSError) as err:
                log("registry_sweep_failed", logging.WARNING, error=str(err))
                continue
            for conn in list(self.devices.values()):
                verdict = self._still_allowed(conn, records.get(conn.device_id))
                if verdict is not None and not conn.closing:
                    conn.closing = True
                    log("device_cut_off", logging.WARNING, device=conn.device_id, code=verdict[0])
                    asyncio.get_running_loop().create_task(self._cut_off(conn, *verdict))

    def _still_allowed(self, conn: DeviceConnection, record: DeviceRecord | None) -> tuple[str, str] | None:
        """None if the session may go on, else (error code, message)."""
        if record is None:
            return (wire.E_AUTH_FAILED, "device removed from the registry")
        if not record.enabled:
            return (wire.E_DISABLED, "device disabled by the operator")
        if conn.identity.method == "token" and (
                record.token_digest is None or (record.token_created_ms or 0) > conn.connected_ms):
            return (wire.E_AUTH_FAILED, "token revoked or rotated; install the new token")
        if not self.auth.address_allowed(getattr(conn.ws, "ew_address", ""), record):
            return (wire.E_ADDRESS, "address no longer in the allowlist")
        return None

    async def _cut_off(self, conn: DeviceConnection, code: str, message: str) -> None:
        await conn.drain()
        self._count_error(code)
        with contextlib.suppress(ConnectionClosed):
            await self._close(conn.ws, code, message)

    async def _expire(self, conn: DeviceConnection) -> None:
        if conn.ws.state.name != "OPEN":
            return
        conn.closing = True
        await conn.drain()
        self._count_error(wire.E_EXPIRED)
        await self._close(conn.ws, wire.E_EXPIRED, "credential expired; fetch a new token and reconnect")

    async def _receive_loop(self, conn: DeviceConnection) -> None:
        loop = asyncio.get_running_loop()
        ws = conn.ws
        session = conn.session
        counters = self.counters
        async for frame in ws:
            if conn.closing:
                break  # not stored, not acked: the device resends after reconnecting
            counters.frames += 1
            event = session.receive(frame, loop.time())
            kind = event.kind
            if kind == EV_DATA:
                self._on_data(conn, event.payload)
            elif kind == EV_REJECT:
                counters.bad_frames += 1
                self._count_error(event.payload.code)
                if event.reply:
                    await ws.send(event.reply)
            elif kind == EV_THROTTLE:
                counters.throttled += 1
                if event.reply:
                    await ws.send(event.reply)
            elif kind == EV_CLOSE:
                if event.payload.code != wire.E_RATE:
                    counters.bad_frames += 1
                log("device_closed", logging.WARNING, device=conn.device_id, code=event.payload.code)
                await conn.drain()
                await self._send_close(ws, event)
                break
            elif kind == EV_RESULT:
                future = self.commands.get(event.payload["id"])
                if future is not None and not future.done():
                    future.set_result(event.payload)
            elif kind == EV_STATUS:
                self.hub.status(conn.device_id, event.payload)

    def _on_data(self, conn: DeviceConnection, frame: wire.DataFrame) -> None:
        received = now_ms()
        device_id = conn.device_id
        rows: list[ReadingRow] = []
        if frame.readings:
            if frame.seq > conn.expected_seq:
                self.counters.gaps += frame.seq - conn.expected_seq
            conn.expected_seq = frame.last_seq + 1
            hub_reading = self.hub.reading
            check = self.alerts.reading
            for reading in frame.readings:
                time_ms = wire.reading_time_ms(reading, frame, received)
                rows.append(ReadingRow(device_id, reading.seq, time_ms, received, reading.metrics, frame.boot,
                                       reading.ts, reading.up, reading.quality))
                check(device_id, reading.metrics, time_ms, received, reading.quality)
            last = frame.readings[-1]
            hub_reading(device_id, last.metrics, rows[-1].time_ms)
        else:
            self.counters.duplicates += 1
        target = conn.session.accepted_seq
        previous = conn.tail
        task = asyncio.ensure_future(self._store_and_ack(conn, previous, rows, target))
        task.add_done_callback(_retrieve)
        conn.tail = task

    async def _store_and_ack(self, conn: DeviceConnection, previous: asyncio.Future[None] | None,
                             rows: list[ReadingRow], target: int) -> None:
        try:
            if rows:
                await self.storage.store(rows)
            if previous is not None:
                await previous
        except (StorageError, OSError) as err:
            self.counters.storage_errors += 1
            log("storage_failed", logging.ERROR, device=conn.device_id, error=str(err))
            conn.closing = True
            with contextlib.suppress(ConnectionClosed):
                await self._close(conn.ws, wire.E_STORAGE, "storage unavailable; reconnect later")
            raise
        self.counters.readings_stored += len(rows)
        with contextlib.suppress(ConnectionClosed):
            await conn.ws.send(conn.session.ack(target))

    # ------------------------------------------------------------ admin
    async def handle_admin(self, ws: ServerConnection) -> None:
        async for frame in ws:
            try:
                msg = orjson.loads(frame)
                if not isinstance(msg, dict):
                    raise ValueError("request must be an object")
            except ValueError:
                await ws.send(dumps({"t": "error", "id": None, "code": wire.E_BAD_JSON, "msg": "not a JSON object"}))
                continue
            request_id = msg.get("id")
            try:
                reply = await self._admin_request(msg)
                reply.update({"t": "ok", "id": request_id})
            except (RegistryError, ValueError, KeyError, TimeoutError) as err:
                code = "timeout" if isinstance(err, TimeoutError) else "bad_request"
                if isinstance(err, AlertError):
                    code = err.code
                reply = {"t": "error", "id": request_id, "code": code, "msg": str(err) or code}
            await ws.send(dumps(reply))

    async def _admin_request(self, msg: dict[str, Any]) -> dict[str, Any]:
        kind = msg.get("t")
        if kind == "register":
            token = await self.registry.add(str(msg["device_id"]), label=str(msg.get("label", "")))
            log("device_registered", device=msg["device_id"])
            return {"device_id": msg["device_id"], "token": token}
        if kind == "rotate":
            token = await self.registry.rotate(str(msg["device_id"]))
            log("device_token_rotated", device=msg["device_id"])
            return {"device_id": msg["device_id"], "token": token}
        if kind == "devices":
            records = await self.storage.list_devices()
            return {"devices": [{"id": r.device_id, "enabled": r.enabled, "online": r.device_id in self.devices,
                                 "has_token": r.token_digest is not None, "allow": r.allow_cidrs}
                                for r in records]}
        if kind == "command":
            result = await self.send_command(str(msg["device_id"]), str(msg["name"]), msg.get("args") or {},
                                             float(msg.get("timeout", 10)))
            return {"result": result}
        if kind == "latest":
            device_id = str(msg["device_id"])
            latest = await self.storage.latest(device_id)
            return {"device_id": device_id, "latest": {k: list(v) for k, v in latest.items()}}
        if kind == "history":
            points = await self.storage.history(str(msg["device_id"]), str(msg["metric"]),
                                                int(msg.get("start", 0)), int(msg.get("end", 2**62)),
                                                int(msg.get("limit", 10000)))
            return {"points": [list(p) for p in points]}
        if kind == "stats":
            return {"counters": {k: v for k, v in vars(self.counters).items()},
                    "stored": await self.storage.count_readings(), "resyncs": self.hub.resyncs}
        handler = self.alert_admin.requests.get(kind) if isinstance(kind, str) else None
        if handler is not None:
            return await handler(msg, "admin")  # the admin token's holder
        raise ValueError(f"unknown admin request {kind!r}")

    async def send_command(self, device_id: str, name: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a command to an online device and wait for its result."""
        conn = self.devices.get(device_id)
        if conn is None:
            raise RegistryError(f"device {device_id!r} is not online")
        command_id = f"c{next(self._command_ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.commands[command_id] = future
        try:
            await conn.ws.send(conn.session.command_frame(command_id, name, args))
            return await asyncio.wait_for(future, timeout)
        finally:
            self.commands.pop(command_id, None)


def _digest(token: str) -> bytes:
    """Fixed-length digest so secrets are compared in constant time whatever their length."""
    return hmac.new(b"edgewire-secret", token.encode("utf-8", "surrogatepass"), "sha256").digest()


def _query_token(path: str) -> str | None:
    """``token`` from the request's query string (browsers cannot set WebSocket headers)."""
    values = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query).get("token")
    return values[0] if values else None


def _retrieve(task: asyncio.Future[None]) -> None:
    """Mark a store-and-ack failure as seen: it was logged, and the next frame's task re-raises it
    so that no later ack can claim the failed rows were stored."""
    if not task.cancelled():
        task.exception()


def _bearer(headers: Headers) -> str | None:
    value = headers.get("Authorization")
    if not value:
        return None
    scheme, _, credential = value.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return credential.strip()


async def run_gateway(config: GatewayConfig) -> None:
    """Build every part from ``config``, serve until SIGTERM/SIGINT, then shut down cleanly."""
    from gateway.factory import build_gateway
    from gateway.service import ServiceNotifier

    gateway = await build_gateway(config)
    await gateway.start()
    print(f"edgewire gateway listening on http://{config.host}:{gateway.port} "
          f"(dashboard http://{config.host}:{gateway.port}/)", flush=True)
    notifier = ServiceNotifier()  # systemd: READY=1 now, WATCHDOG=1 while the loop is healthy
    notifier.ready(f"listening on {config.host}:{gateway.port}")
    watchdog = asyncio.get_running_loop().create_task(notifier.run(lambda: gateway.draining))
    await gateway.run_forever()
    watchdog.cancel()
