"""The gateway process: its rooms put together, started and stopped.

Rooms: ``http_api`` (routing table, HTTP endpoints, upgrade checks), ``sessions`` (device
sessions around protocol.gateway.GatewaySession), ``admin`` and ``commands`` (the admin API),
``hub`` (dashboard fan-out), ``alerts``, ``metrics`` (``pages``: /healthz and /metrics), ``cluster``
(the bus between instances, docs/scaling.md; in-process without one). Endpoints: docs/protocol.md.
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
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from gateway import gctune, history_api, state_files
from gateway.admin import AdminApi
from gateway.admission import Admission, raise_open_files_limit
from gateway.alerts.admin import AlertAdmin
from gateway.alerts.engine import AlertEngine
from gateway.alerts.localtime import zone
from gateway.alerts.relay import AlertOwner, AlertRelay
from gateway.alerts.webhook import WebhookNotifier
from gateway.auth import Authenticator
from gateway.bus import Bus, default_instance_id, open_bus
from gateway.cluster import Cluster
from gateway.config import GatewayConfig
from gateway.conn import EdgeConnection, connection_class, dumps
from gateway.dashboard import sync as dashboard_sync
from gateway.dashboard.roles import DashboardAuth
from gateway.dashboard.room import Dashboard
from gateway.dashboard.view import Hub
from gateway.device_auth import DeviceAuth
from gateway.device_commands import Commands, CommandTarget
from gateway.device_sweep import RegistrySweep
from gateway.errors import ConfigError, GatewayError
from gateway.fanout import Listeners
from gateway.forward.setup import Forwarding, RelayedForwarding
from gateway.http_api import HttpApi
from gateway.logs import log
from gateway.metrics import Metrics, package_version
from gateway.ota.room import Ota
from gateway.pages import ProcessPages
from gateway.registry import Registry
from gateway.replacement import LiveDevices
from gateway.retention import Retention
from gateway.sessions import DeviceSessions, select_subprotocol
from gateway.storage.base import ReadingRow, Storage
from gateway.supervisor import Supervisor, spawn
from protocol import wire

DEVICE_PATH = "/v1/device"
ADMIN_IDENTITY = "admin"  # who an admin-token holder is in alert histories (acked_by, cleared_by)


def _loop_time() -> float:
    """The running event loop's clock: the one websockets' handshake timeout runs on (Admission's)."""
    return asyncio.get_running_loop().time()


class Gateway:
    def __init__(self, config: GatewayConfig, storage: Storage, authenticator: Authenticator,
                 registry: Registry, admin_token: str, dashboard_token: str | None = None,
                 clock: Callable[[], float] = time.time,
                 webhook_secrets: dict[str, bytes | None] | None = None, bus: Bus | None = None,
                 sock: socket.socket | None = None, worker: tuple[int, int] | None = None,
                 siblings: list[str] | None = None,
                 store: Callable[[list[ReadingRow]], Awaitable[list[ReadingRow]]] | None = None,
                 alert_owner: str | None = None) -> None:
        """``sock``, ``worker`` (index, count) and ``siblings`` (the other workers' instance ids): a
        worker process of a gateway host (gateway/workers.py) serves on its inherited socket; ``store``:
        its readings' commits go to the host's commit process (gateway/commit_link.py);
        ``alert_owner``: the worker whose engine judges every reading (gateway/alerts/relay.py)."""
        self.config = config
        self.sock = sock
        self.worker = worker
        self.storage = storage
        self.auth = authenticator
        self.registry = registry
        self.metrics = Metrics()
        self.counters = self.metrics.counters
        self.hub = Hub(config.dashboard_interval_ms, config.dashboard_queue, dumps, clock,
                       latency=self.metrics.dashboard_latency)
        self.bus = bus if bus is not None else open_bus("", config.instance_id)  # "": in-process
        self.relay: AlertRelay | None = None
        self.alerts: AlertEngine
        if alert_owner is not None and alert_owner != self.bus.instance_id:  # another worker judges readings
            self.alerts = self.relay = AlertRelay(storage, self.bus, alert_owner, config.alerts, clock=clock)
        else:
            self.alerts = AlertEngine(storage, config.alerts, clock=clock, timezone=zone(config.alert_timezone),
                                      max_open=config.alert_max_open,
                                      suspended_expiry_s=config.alert_suspended_expiry_s,
                                      save_interval_s=config.alert_save_interval_s, registry_check_s=60.0)
        self.alerts.listen(self.hub.alert_event)  # open alerts by id on the dashboards
        self.notifier = WebhookNotifier(config.webhooks, webhook_secrets or {}, source=socket.gethostname(),
                                        clock=clock)
        self.alerts.listen(self.notifier.on_event)
        self.commands = Commands(self.bus, self._command_target, registered=storage.get_device, clock=clock,
                                 stored_seq=storage.last_seq)
        # MQTT bridge and NATS sink (docs/mqtt.md); MQTT commands take the admin API's command path.
        # With workers, worker 1 (the owner) forwards for the gateway; the others relay to it.
        self.forwarding = RelayedForwarding(storage, self.relay.forward) if self.relay is not None else \
            Forwarding.from_config(config, storage, config.instance_id or default_instance_id(), package_version(),
                                   run_command=self._run_command)
        # Who gets each committed batch of readings (gateway/fanout.py): one registration per consumer.
        self.listeners = Listeners(self.metrics)
        self.listeners.add("dashboard", self.hub.committed)
        self.listeners.add("alerts", self.alerts.committed)
        self.listeners.add("forwarding", self.forwarding.committed)
        # Device sessions (gateway/sessions.py) and their neighbours: the live sessions (replacement,
        # hand-over, drain), the registry sweep, authentication; the cluster room is their hooks.
        self.live = LiveDevices(self.hub, self.metrics)
        self.sweep = RegistrySweep(self.live, storage, authenticator, self.metrics, config.registry_recheck_s)
        self.device_auth = DeviceAuth(authenticator, self.metrics, config.auth_timeout_s)
        self.cluster = Cluster(self.bus, self.live, self.sweep.recheck, self.commands, self.hub,
                               clustered=bool(config.bus) or worker is not None,
                               takeover_timeout_s=config.takeover_timeout_s, siblings=tuple(siblings or ()))
        # OTA (docs/ota.md): frames of device sessions, admin requests; rollouts driven where alerts are judged.
        self.ota = Ota(config, storage, self._ota_offer, self.cluster.online,
                       self.alerts if self.relay is None else None, storage.list_devices, clock)
        self.sessions = DeviceSessions(config, storage, self.device_auth, self.live, self.sweep, self.hub,
                                       self.metrics, on_result=self.commands.result,
                                       on_offline=self.alerts.device_offline, clock=clock,
                                       forwarding=self.forwarding, listeners=self.listeners, store=store,
                                       hooks=self.cluster, ota=self.ota.frames)
        alert_admin = AlertAdmin(self.alerts)
        relay = self.relay
        alert_requests = relay.admin_requests if relay is not None else alert_admin.requests_as  # as a given who
        self.admin = AdminApi(registry, storage, self.live, self.commands, self.hub, self.metrics,
                              online=self.cluster.online, registry_changed=self.cluster.registry_changed,
                              device_removed=self.forwarding.device_deleted,
                              more={**alert_requests(ADMIN_IDENTITY), **self.ota.admin.requests})  # section 10
        self.alert_owner = AlertOwner(self.bus, self.alerts, alert_admin, self.forwarding) if (
            alert_owner is not None and self.relay is None) else None
        self.dashboard_auth = DashboardAuth(storage, registry.token_key, dashboard_token)
        self.http = HttpApi(config, admin_token=admin_token, dashboard_auth=self.dashboard_auth,
                            client_address=self.device_auth.client_address, draining=lambda: self.draining,
                            count_error=self.metrics.count_error)
        self.http.websocket(DEVICE_PATH, self.device_auth.check_upgrade, self.sessions.handle)
        self.dashboard = Dashboard(config, storage, self.hub, self.http, self.dashboard_auth, self.alerts,
                                   self.admin.run_command, self.metrics.count_error, self.admin.requests,
                                   alert_requests)
        self.http.websocket("/v1/admin", self.http.admin_upgrade, self.admin.handle)
        self.history_api = history_api.HistoryApi(storage, config.readings_retention_days, self.cluster.online,
                                                  table=config.metric_table())
        for path in history_api.PATHS:  # /v1/history, /v1/history.csv, /v1/devices (docs/http-api.md)
            self.http.route(path, self.history)
        self.http.route("/v1/ota", self.ota_status)  # rollouts and update states (docs/dashboard.md)
        self.server: Server | None = None
        self.draining = False
        self.stopped = asyncio.Event()
        self.exit_code = 0
        self.supervisor = Supervisor(on_give_up=self._give_up)
        # The budget of connections before authentication (one Admission, gateway/admission.py), with
        # the open-files limit raised first: half the soft limit at most.
        self.files_limit = raise_open_files_limit()
        self.admission = Admission(min(config.max_unauthenticated, max(64, self.files_limit[1] // 2)),
                                   config.max_unauthenticated_per_address, config.trusted_proxies,
                                   config.auth_timeout_s, _loop_time)
        # /healthz and /metrics (gateway/pages.py); with workers, the whole gateway's.
        self.pages = ProcessPages(config, storage, self.metrics, self.supervisor, self.admission, self.bus,
                                  self.cluster, self.live, self.hub, self.commands, self.forwarding, self.alerts,
                                  self.notifier, self.ota, lambda: self.draining, worker=worker, siblings=siblings)
        self.http.route("/healthz", self.pages.healthz)
        self.http.route("/metrics", self.pages.metrics_page)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Listen first (a busy port fails before anything else starts), then open storage, start
        the background tasks and accept connections."""
        cfg = self.config
        before, soft, hard = self.files_limit
        self.server = await self._listen()
        try:
            log("open_files_limit", soft=soft, was=before, hard=hard, max_unauthenticated=self.admission.max_total,
                max_unauthenticated_per_address=cfg.max_unauthenticated_per_address)
            await self.storage.open()
            await self.alerts.start()
            for alert in self.alerts.open_alerts():  # the restored ones; their changes follow as events
                self.hub.alert_raised(alert, alert["updated"])
            await dashboard_sync.restore(self.hub, self.storage)
            if self.alert_owner is not None:
                await self.alert_owner.start()
            await self.cluster.start()
            await self.forwarding.start()
            self.forwarding.alerts_open(self.alerts.open_alerts())
            self.alerts.listen(self.forwarding.alert_event)
            for name, job in self.forwarding.tasks():
                self.supervisor.start(name, job)
            gctune.tune()
            self.supervisor.start("hub", self.hub.run)
            self.supervisor.start("registry_sweep", self.sweep.sweep_forever)
            self.supervisor.start("dashboard_sync", self.dashboard.sync.run)
            self.supervisor.start("gc", gctune.maintenance)
            self.supervisor.start("alerts", self.alerts.run)
            self.supervisor.start("webhooks", self.notifier.run)
            if self.ota.engine is not None:  # with workers, on the alert owner (worker 1) only
                self.supervisor.start("ota_rollouts", self.ota.engine.run)
            if self.worker is None or self.worker[0] == 1:  # once per gateway, also with workers
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
            bus=self.bus.display if self.worker else cfg.bus_display, instance=self.bus.instance_id)
        if self.worker is None:  # (with workers, the host process writes them: gateway/factory.py)
            state_files.gateway_started(cfg, self.port)  # <data_dir>/storage and gateway.addr, for the CLIs

    def _command_target(self, device_id: str) -> CommandTarget | None:
        """The device's session here, if it is welcomed and not ending."""
        conn = self.live.devices.get(device_id)
        return conn if conn is not None and conn.welcomed and not conn.closing else None

    def _tls(self) -> ssl.SSLContext | None:
        return tls_context(self.config)

    async def _listen(self) -> Server:
        cfg = self.config
        extensions = None
        if cfg.compression:
            extensions = [ServerPerMessageDeflateFactory(
                server_max_window_bits=11, client_max_window_bits=11,
                compress_settings={"memLevel": 4})]
        where: dict[str, Any] = {"sock": self.sock} if self.sock is not None else {"host": cfg.host, "port": cfg.port}
        try:
            return await serve(
                self.http.handle, **where,
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
        log("gateway_stopping", devices=len(self.live.devices))
        if self.server is not None:
            self.server.close(close_connections=False)
            if self.worker is None:
                state_files.gateway_stopped(self.config)
        # Forwarding first: its tasks store their cursors and release their leases (bounded), which a
        # cancellation by the supervisor would skip. Readings stored after this go out at the next start.
        await self._step("forwarding", self.forwarding.close())
        await self._step("background tasks", self.supervisor.stop())
        self.commands.fail_waiting(wire.E_SHUTDOWN, "the gateway is stopping; send the command again once it is back")
        # With peers on a bus, in batches of drain_rate per second: the devices spread over the other
        # pods. The workers of one host stop together: their devices have nowhere to move to.
        clustered = bool(self.config.bus)
        await self._step("device sessions", self.live.close_all(self.config.drain_rate if clustered else 0.0,
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

    async def _ota_offer(self, device_id: str, args: dict[str, Any]) -> dict[str, Any]:
        """A rollout's offer: the ``ota`` command, to a device online now (docs/ota.md)."""
        return await self.commands.run(device_id, "ota", args, self.config.ota_offer_timeout_s, queue=False)

    # ------------------------------------------------------------ HTTP endpoints of the dashboard
    async def history(self, ws: EdgeConnection, request: Request) -> Response:
        """/v1/history, /v1/history.csv, /v1/devices: with the dashboard's checks (docs/http-api.md)."""
        identity = await self.http.dashboard_identity(ws, request)
        return identity if isinstance(identity, Response) else await self.history_api.respond(request.path)

    async def ota_status(self, ws: EdgeConnection, request: Request) -> Response:
        """/v1/ota: the dashboard's OTA panel (rollouts, update states), with the dashboard's checks."""
        identity = await self.http.dashboard_identity(ws, request)
        return identity if isinstance(identity, Response) else await self.ota.status_response()


async def _call(fn: Callable[[], None]) -> None:
    fn()


def tls_context(config: GatewayConfig) -> ssl.SSLContext | None:
    """The server's TLS context (None without ``tls_cert``); ConfigError saying what to check."""
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"tls_cert, tls_key: cannot load {config.tls_cert} and {config.tls_key} "
                          f"({getattr(err, 'strerror', None) or err}); check the paths and that they "
                          "are a PEM certificate and its key") from None
    return context


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
