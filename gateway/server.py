"""The gateway process: its rooms put together, started and stopped.

Rooms: ``http_api`` (routing table, HTTP endpoints, upgrade checks), ``sessions`` (device
sessions around protocol.gateway.GatewaySession), ``admin`` and ``commands`` (the admin API),
``hub`` (dashboard fan-out), ``alerts``, ``metrics``, ``cluster`` (the bus between instances,
docs/scaling.md; in-process without one). Endpoints: docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from gateway import dashboard_sync, gctune, history_api
from gateway.admin import AdminApi
from gateway.admission import TOO_MANY, Admission, raise_open_files_limit
from gateway.alerts.admin import AlertAdmin
from gateway.alerts.engine import AlertEngine
from gateway.alerts.localtime import zone
from gateway.alerts.metrics import metric_lines as alert_metric_lines
from gateway.alerts.webhook import WebhookNotifier
from gateway.auth import Authenticator
from gateway.bus import Bus, default_instance_id, open_bus
from gateway.cluster import Cluster
from gateway.commands import Commands, CommandTarget
from gateway.config import GatewayConfig
from gateway.conn import EdgeConnection, connection_class, dumps, json_response
from gateway.dashboard import Dashboard
from gateway.dashboard_auth import DashboardAuth
from gateway.errors import ConfigError, GatewayError
from gateway.fanout import Listeners
from gateway.forward import metrics as forward_metrics
from gateway.forward.setup import Forwarding
from gateway.http_api import HttpApi
from gateway.hub import Hub
from gateway.logs import log
from gateway.metrics import Metrics, package_version
from gateway.registry import Registry
from gateway.retention import Retention
from gateway.sessions import DeviceSessions, select_subprotocol
from gateway.storage.base import Storage
from gateway.supervisor import Supervisor, spawn
from protocol import wire

DEVICE_PATH = "/v1/device"
ADMIN_IDENTITY = "admin"  # who an admin-token holder is in alert histories (acked_by, cleared_by)


class Gateway:
    def __init__(self, config: GatewayConfig, storage: Storage, authenticator: Authenticator,
                 registry: Registry, admin_token: str, dashboard_token: str | None = None,
                 clock: Callable[[], float] = time.time,
                 webhook_secrets: dict[str, bytes | None] | None = None, bus: Bus | None = None) -> None:
        self.config = config
        self.storage = storage
        self.auth = authenticator
        self.registry = registry
        self.metrics = Metrics()
        self.counters = self.metrics.counters
        self.hub = Hub(config.dashboard_interval_ms, config.dashboard_queue, dumps, clock)
        self.alerts = AlertEngine(storage, config.alerts, clock=clock, timezone=zone(config.alert_timezone),
                                  max_open=config.alert_max_open, suspended_expiry_s=config.alert_suspended_expiry_s,
                                  save_interval_s=config.alert_save_interval_s, registry_check_s=60.0)
        self.alerts.listen(self.hub.alert_event)  # open alerts by id on the dashboards
        self.notifier = WebhookNotifier(config.webhooks, webhook_secrets or {}, source=socket.gethostname(),
                                        clock=clock)
        self.alerts.listen(self.notifier.on_event)
        self.bus = bus if bus is not None else open_bus("", config.instance_id)  # "": in-process
        self.commands = Commands(self.bus, self._command_target, registered=storage.get_device, clock=clock)
        # MQTT bridge and NATS sink (docs/mqtt.md); MQTT commands take the admin API's command path.
        self.forwarding = Forwarding.from_config(config, storage, config.instance_id or default_instance_id(),
                                                 package_version(), run_command=self._run_command)
        # Who gets each committed batch of readings (gateway/fanout.py): one registration per consumer.
        self.listeners = Listeners(self.metrics)
        self.listeners.add("dashboard", self.hub.committed)
        self.listeners.add("alerts", self.alerts.committed)
        self.listeners.add("forwarding", self.forwarding.committed)
        self.sessions = DeviceSessions(config, storage, authenticator, self.hub, self.metrics,
                                       on_result=self.commands.result, on_offline=self.alerts.device_offline,
                                       clock=clock, forwarding=self.forwarding, listeners=self.listeners)
        self.cluster = Cluster(self.bus, self.sessions, self.commands, self.hub, clustered=bool(config.bus),
                               takeover_timeout_s=config.takeover_timeout_s)
        self.sessions.hooks = self.cluster
        self.admin = AdminApi(registry, storage, self.sessions, self.commands, self.hub, self.metrics,
                              online=self.cluster.online, registry_changed=self.cluster.registry_changed)
        self.admin.requests.update(AlertAdmin(self.alerts).requests_as(ADMIN_IDENTITY))  # protocol.md section 10
        self.dashboard_auth = DashboardAuth(storage, registry.token_key, dashboard_token)
        self.http = HttpApi(config, admin_token=admin_token, dashboard_auth=self.dashboard_auth,
                            client_address=self.sessions.client_address, draining=lambda: self.draining,
                            count_error=self.metrics.count_error)
        self.http.route("/healthz", self.healthz)
        self.http.route("/metrics", self.metrics_page)
        self.http.websocket(DEVICE_PATH, self.sessions.check_upgrade, self.sessions.handle)
        self.dashboard = Dashboard(config, storage, self.hub, self.http, self.dashboard_auth, self.alerts,
                                   self.admin.run_command, self.metrics.count_error)
        self.http.websocket("/v1/admin", self.http.admin_upgrade, self.admin.handle)
        self.history_api = history_api.HistoryApi(storage, config.readings_retention_days, self.cluster.online)
        for path in history_api.PATHS:  # /v1/history, /v1/history.csv, /v1/devices (docs/http-api.md)
            self.http.route(path, self.history)
        self.server: Server | None = None
        self.draining = False
        self.stopped = asyncio.Event()
        self.exit_code = 0
        self.started_at = time.time()
        self.supervisor = Supervisor(on_give_up=self._give_up)
        self.admission = Admission(config.max_unauthenticated, config.max_unauthenticated_per_address,
                                   config.trusted_proxies)


    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Listen first (a busy port fails before anything else starts), then open storage, start
        the background tasks and accept connections."""
        cfg = self.config
        before, soft, hard = raise_open_files_limit()
        cap = min(cfg.max_unauthenticated, max(64, soft // 2))
        self.admission = Admission(cap, cfg.max_unauthenticated_per_address, cfg.trusted_proxies)
        self.server = await self._listen()
        try:
            log("open_files_limit", soft=soft, was=before, hard=hard, max_unauthenticated=cap,
                max_unauthenticated_per_address=cfg.max_unauthenticated_per_address)
            await self.storage.open()
            await self.alerts.start()
            for alert in self.alerts.open_alerts():  # the restored ones; their changes follow as events
                self.hub.alert_raised(alert, alert["updated"])
            await dashboard_sync.restore(self.hub, self.storage)
            await self.cluster.start()
            await self.forwarding.start()
            self.alerts.listen(self.forwarding.alert_event)
            for name, job in self.forwarding.tasks():
                self.supervisor.start(name, job)
            gctune.tune()
            self.supervisor.start("hub", self.hub.run)
            self.supervisor.start("registry_sweep", self.sessions.sweep_forever)
            self.supervisor.start("dashboard_sync", self.dashboard.sync.run)
            self.supervisor.start("gc", gctune.maintenance)
            self.supervisor.start("alerts", self.alerts.run)
            self.supervisor.start("webhooks", self.notifier.run)
            self.supervisor.start("retention", Retention(self.storage, cfg.readings_retention_days,
                                                         cfg.rollup_retention_days).run_forever)
            if self.cluster.clustered:
                self.supervisor.start("cluster", self.cluster.watch)
            await self.server.start_serving()
        except BaseException:
            self.server.close()
            await self.forwarding.close()
            await self.supervisor.stop()
            await self.cluster.close()
            await self.storage.close()
            raise
        log("gateway_started", host=cfg.host, port=self.port, storage=cfg.storage_kind,
            database=str(cfg.database) if cfg.storage_kind == "sqlite" else cfg.storage_display,
            bus=cfg.bus_display, instance=self.bus.instance_id)

    def _command_target(self, device_id: str) -> CommandTarget | None:
        """The device's session here, if it is welcomed and not ending."""
        conn = self.sessions.devices.get(device_id)
        return conn if conn is not None and conn.welcomed and not conn.closing else None

    def _tls(self) -> ssl.SSLContext | None:
        if not self.config.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"tls_cert, tls_key: cannot load {self.config.tls_cert} and {self.config.tls_key} "
                              f"({getattr(err, 'strerror', None) or err}); check the paths and that they "
                              "are a PEM certificate and its key") from None
        return context

    async def _listen(self) -> Server:
        cfg = self.config
        extensions = None
        if cfg.compression:
            extensions = [ServerPerMessageDeflateFactory(
                server_max_window_bits=11, client_max_window_bits=11,
                compress_settings={"memLevel": 4})]
        try:
            return await serve(
                self.http.handle, cfg.host, cfg.port,
                process_request=self.http.process_request, create_connection=connection_class(self.admission),
                compression=None, extensions=extensions, select_subprotocol=self._subprotocol,
                max_size=cfg.max_frame, max_queue=16,
                open_timeout=cfg.auth_timeout_s,
                ping_interval=cfg.ping_interval_s, ping_timeout=cfg.ping_timeout_s,
                close_timeout=5, ssl=self._tls(), server_header="edgewire", start_serving=False,
            )
        except OSError as err:
            raise GatewayError(listen_error(cfg.host, cfg.port, err)) from None

    def _subprotocol(self, ws: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        """Only device connections have a subprotocol to choose (the encoding); others never get one."""
        request = ws.request
        if request is not None and request.path.split("?", 1)[0] == DEVICE_PATH:
            return select_subprotocol(offered, self.config.cbor)
        return None

    @property
    def port(self) -> int:
        assert self.server is not None
        for sock in self.server.sockets:
            return int(sock.getsockname()[1])
        return self.config.port

    def _give_up(self, task: str, error: BaseException) -> None:
        """A background task keeps failing: stop with exit status 1 (systemd restarts the process)."""
        self.exit_code = 1
        spawn(self.shutdown(), "shutdown")

    async def _step(self, name: str, action: Awaitable[object]) -> None:
        """One shutdown step: a failure is logged and the shutdown goes on with the next step."""
        try:
            await action
        except Exception as err:
            self.exit_code = 1
            log("shutdown_step_failed", logging.ERROR, step=name, error=f"{type(err).__name__}: {err}"[:300])

    async def shutdown(self) -> None:
        """Stop accepting, store and ack what was received, close devices with 1012, flush.

        Every step runs even if an earlier one (or a background task) failed."""
        if self.draining:
            return
        self.draining = True
        log("gateway_stopping", devices=len(self.sessions.devices))
        if self.server is not None:
            self.server.close(close_connections=False)
        # Forwarding first: its tasks store their cursors and release their leases (bounded), which a
        # cancellation by the supervisor would skip. Readings stored after this go out at the next start.
        await self._step("forwarding", self.forwarding.close())
        await self._step("background tasks", self.supervisor.stop())
        self.commands.fail_waiting(wire.E_SHUTDOWN, "the gateway is stopping; send the command again once it is back")
        # With peers, in batches of drain_rate per second: the devices spread over the other pods.
        clustered = self.cluster.clustered
        await self._step("device sessions", self.sessions.close_all(self.config.drain_rate if clustered else 0.0,
                                                                    moving=clustered))
        await self._step("alerts", self.alerts.close())  # learned state and queued changes stored
        await self._step("webhooks", self.notifier.close())  # what is queued goes out, or is counted
        await self._step("dashboards", _call(self.hub.flush))
        await self._step("bus", self.cluster.close())
        for waiting in list(self.admission.waiting):  # still in the handshake or before auth: no data yet
            waiting.transport.abort()
        if self.server is not None:
            for ws in list(self.server.connections):
                with contextlib.suppress(Exception):
                    await ws.close(wire.CLOSE_GOING_AWAY, "gateway stopping")
            await self._step("connections", self.server.wait_closed())
        await self._step("storage", self.storage.close())
        log("gateway_stopped", stored=self.counters.readings_stored, exit_code=self.exit_code)
        self.stopped.set()

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: spawn(self.shutdown(), "shutdown"))
        await self.stopped.wait()

    async def _run_command(self, device_id: str, name: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        return await self.admin.run_command(device_id, name, args, timeout)

    # ------------------------------------------------------------ HTTP endpoints of the process
    async def healthz(self, ws: EdgeConnection, request: Request) -> Response:
        """200 while serving with storage and every background task well; 503 while draining or when
        storage or a task fails. ``checks`` holds each part with its state (storage, hub, registry_sweep,
        gc, retention; with a bus also cluster and bus). A bus that is not ok makes the status
        ``degraded`` with HTTP 200: the pod still stores readings, so readiness must not drop it (a
        bus outage would otherwise empty the Service of every pod); docs/scaling.md section 9."""
        storage = {"backend": self.config.storage_kind, **self.storage.health()}
        checks: dict[str, dict[str, Any]] = {"storage": storage, **self.supervisor.health()}
        forwarding = self.forwarding.health()  # shown, but a broker being away does not make the gateway unhealthy
        if forwarding:
            checks["forwarding"] = forwarding
        healthy = storage["state"] == "ok" and self.supervisor.healthy
        bus = self.cluster.health()
        if bus is not None:
            checks["bus"] = bus
        status = "draining" if self.draining else "degraded" if not healthy or (
            bus is not None and bus["state"] != "ok") else "ok"
        return json_response(200 if status == "ok" or (status == "degraded" and healthy) else 503, {
            "status": status, "checks": checks, "devices_online": len(self.sessions.devices),
            "dashboard_clients": len(self.hub.clients), "uptime_s": round(time.time() - self.started_at, 1)})

    async def history(self, ws: EdgeConnection, request: Request) -> Response:
        """/v1/history, /v1/history.csv, /v1/devices: with the dashboard's checks (docs/http-api.md)."""
        identity = await self.http.dashboard_identity(ws, request)
        return identity if isinstance(identity, Response) else await self.history_api.respond(request.path)

    async def metrics_page(self, ws: EdgeConnection, request: Request) -> Response:
        admission = self.admission
        self.counters.by_error[TOO_MANY] = sum(admission.refused.values())
        cluster_gauges, cluster_counters, cluster_labelled = self.cluster.metric_rows()
        body = self.metrics.render(
            gauges=[*cluster_gauges,
                ("devices_online", "Devices with an authenticated session.", len(self.sessions.devices)),
                ("dashboard_clients", "Browsers (dashboard stream clients) connected to /v1/dashboard.",
                 len(self.hub.clients)),
                ("unauthenticated_connections", "Connections accepted that have not authenticated yet.",
                 admission.total),
                ("commands_pending", "Commands sent to devices and waiting for their result.",
                 len(self.commands.pending)),
                ("up", "1 while every background task runs and storage is ok, else 0.",
                 int(self.supervisor.healthy and self.storage.health()["state"] == "ok")),
            ],
            counters=[("dashboard_resyncs", "Dashboard clients that fell behind and were resynced with a "
                       "snapshot.", self.hub.resyncs),
                      ("dashboard_updates", "Coalesced update frames built for dashboards.", self.hub.updates_sent),
                      *cluster_counters],
            labelled=[("connections_refused", "Connections refused at accept, by the cap they hit.", "reason",
                       dict(admission.refused)),
                      ("task_restarts", "Restarts of background tasks after a failure.", "task",
                       {name: state.restarts for name, state in self.supervisor.tasks.items()}),
                      *cluster_labelled],
            event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
            extra=[*alert_metric_lines(self.alerts, self.notifier), *forward_metrics.lines(self.forwarding)])
        return Response(200, "OK", Headers({"Content-Type": "text/plain; version=0.0.4; charset=utf-8",
                                            "Content-Length": str(len(body))}), body)


async def _call(fn: Callable[[], None]) -> None:
    fn()


def listen_error(host: str, port: int, err: OSError) -> str:
    """What to do when the gateway cannot listen on host:port."""
    where = f"cannot listen on {host}:{port}"
    if err.errno == errno.EADDRINUSE:
        return f"{where}: the port is in use (another gateway?); stop that process or choose another --port"
    if err.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need privileges); choose a port above 1023"
    if err.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(err, socket.gaierror):
        return f"{where}: no such address on this machine; check --host"
    return f"{where}: {err.strerror or err}"
