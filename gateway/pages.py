"""The gateway process's own pages: /healthz and /metrics (docs/protocol.md section 1).

Built by gateway/server.py with the parts they read; with workers (gateway/workers.py), the
``HostView`` (gateway/host_metrics.py) asks the sibling workers for their own reports and the
pages show the whole gateway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from gateway.admission import TOO_MANY, Admission
from gateway.alerts.engine import AlertEngine
from gateway.alerts.metrics import metric_lines as alert_metric_lines
from gateway.alerts.webhook import WebhookNotifier
from gateway.bus import Bus
from gateway.cluster import Cluster
from gateway.config import GatewayConfig
from gateway.conn import EdgeConnection, json_response
from gateway.dashboard.view import Hub
from gateway.device_commands import Commands
from gateway.forward import metrics as forward_metrics
from gateway.forward.setup import Forwarding
from gateway.host_metrics import HostView
from gateway.metrics import Metrics
from gateway.ota.room import Ota
from gateway.replacement import LiveDevices
from gateway.storage.base import Storage
from gateway.supervisor import Supervisor


class ProcessPages:
    """/healthz and /metrics of one gateway process; ``draining`` tells whether it is stopping.
    ``siblings`` (the other workers' instance ids): the pages merge theirs (``host_view``)."""

    def __init__(self, config: GatewayConfig, storage: Storage, metrics: Metrics, supervisor: Supervisor,
                 admission: Admission, bus: Bus, cluster: Cluster, live: LiveDevices, hub: Hub,
                 commands: Commands, forwarding: Forwarding, alerts: AlertEngine, notifier: WebhookNotifier,
                 ota: Ota, draining: Callable[[], bool], *, worker: tuple[int, int] | None = None,
                 siblings: list[str] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.storage = storage
        self.metrics = metrics
        self.supervisor = supervisor
        self.admission = admission
        self.bus = bus
        self.cluster = cluster
        self.live = live
        self.hub = hub
        self.commands = commands
        self.forwarding = forwarding
        self.alerts = alerts
        self.notifier = notifier
        self.ota = ota
        self.draining = draining
        self.worker = worker
        self.clock = clock
        self.started_at = clock()
        self.host_view = HostView(bus, siblings, self.own_metrics, self.own_health) if siblings else None

    # ------------------------------------------------------------ /healthz
    def own_health(self) -> dict[str, Any]:
        """This process's health report (see ``healthz``) with its HTTP status under ``http``."""
        storage = {"backend": self.config.storage_kind, **self.storage.health()}
        checks: dict[str, dict[str, Any]] = {"storage": storage, **self.supervisor.health()}
        # shown; a broker being away never makes the gateway unhealthy (503), a sink far behind makes it degraded
        forwarding = self.forwarding.health()
        if forwarding:
            checks["forwarding"] = forwarding
        healthy = storage["state"] == "ok" and self.supervisor.healthy
        bus = self.cluster.health()
        if bus is not None:
            checks["bus"] = bus
        status = "draining" if self.draining() else "degraded" if not healthy or (
            bus is not None and bus["state"] != "ok") or forwarding.get("state") == "degraded" else "ok"
        return {"status": status, "http": 200 if status == "ok" or (status == "degraded" and healthy) else 503,
                "checks": checks, "devices_online": len(self.live.devices),
                "dashboard_clients": len(self.hub.clients), "uptime_s": round(self.clock() - self.started_at, 1)}

    async def healthz(self, ws: EdgeConnection, request: Request) -> Response:
        """200 while serving with storage and every background task well; 503 while draining or when
        storage or a task fails. ``checks`` holds each part with its state (storage, hub, registry_sweep,
        gc, retention; with a bus also cluster and bus). A bus that is not ok makes the status
        ``degraded`` with HTTP 200: the pod still stores readings, so readiness must not drop it (a
        bus outage would otherwise empty the Service of every pod); docs/scaling.md section 9. So does
        forwarding past ``forward_lag_degraded_s`` (a sink's broker away too long: docs/mqtt.md).

        With workers (gateway/workers.py), ``workers`` holds each worker's own report, and the
        gateway's status is the worst of them (a worker that does not answer is ``unreachable``:
        503); ``devices_online`` and ``dashboard_clients`` are the sums."""
        own = self.own_health()
        if self.host_view is None:
            return json_response(own.pop("http"), own)
        workers = await self.host_view.workers_health(self.bus.instance_id, dict(own))
        codes = [int(report.get("http", 503)) for report in workers.values()]
        rank = {"ok": 0, "degraded": 1, "draining": 2, "unreachable": 3}
        worst = max((str(r.get("status", "unreachable")) for r in workers.values()), key=lambda s: rank.get(s, 3))
        for report in workers.values():
            report.pop("http", None)
        body = {**{k: v for k, v in own.items() if k != "http"}, "status": worst,
                "devices_online": sum(int(r.get("devices_online", 0)) for r in workers.values()),
                "dashboard_clients": sum(int(r.get("dashboard_clients", 0)) for r in workers.values()),
                "workers": workers}
        return json_response(max(codes), body)

    # ------------------------------------------------------------ /metrics
    async def own_metrics(self) -> str:
        """This process's Prometheus text."""
        admission = self.admission
        self.metrics.counters.by_error[TOO_MANY] = admission.answered
        cluster_gauges, cluster_counters, cluster_labelled = self.cluster.metric_rows()
        body = self.metrics.render(
            gauges=[*cluster_gauges,
                ("devices_online", "Devices with an authenticated session.", len(self.live.devices)),
                ("fleet_registered", "Enabled devices in the registry (the fleet that should be online).",
                 sum(1 for view in self.hub.devices.values() if view.registered and view.enabled)),
                ("dashboard_clients", "Browsers (dashboard stream clients) connected to /v1/dashboard.",
                 len(self.hub.clients)),
                ("unauthenticated_connections", "Connections accepted that have not authenticated yet.",
                 admission.total),
                ("commands_pending", "Commands sent to devices and waiting for their result.",
                 len(self.commands.pending)),
                ("up", "1 while every background task runs and storage is ok, else 0.",
                 int(self.supervisor.healthy and self.storage.health()["state"] == "ok")),
                ("storage_ok", "1 while storage is ok, 0 while it fails (/healthz checks.storage says how).",
                 int(self.storage.health()["state"] == "ok")),
            ],
            counters=[("dashboard_resyncs", "Dashboard clients that fell behind and were resynced with a "
                       "snapshot.", self.hub.resyncs),
                      ("dashboard_updates", "Coalesced update frames built for dashboards.", self.hub.updates_sent),
                      ("ota_chunks", "ota_chunk frames sent to devices (docs/ota.md).", self.ota.frames.chunks),
                      ("ota_chunk_bytes", "Bytes of the ota_chunk frames sent to devices.",
                       self.ota.frames.chunk_bytes),
                      ("ota_refused", "ota_get requests answered with an error (ota_unknown, storage).",
                       self.ota.frames.refused),
                      ("ota_offers", "OTA offers made by this process's rollout engine.",
                       self.ota.engine.offers if self.ota.engine is not None else 0),
                      *cluster_counters],
            labelled=[("task_restarts", "Restarts of background tasks after a failure.", "task",
                       {name: state.restarts for name, state in self.supervisor.tasks.items()}),
                      *cluster_labelled],
            event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
            extra=[*alert_metric_lines(self.alerts, self.notifier), *forward_metrics.lines(self.forwarding),
                   *admission.metric_lines()])
        if self.worker is not None:  # each worker's own devices, under its label (gateway/host_metrics.py)
            body += ("# HELP edgewire_worker_devices_online Devices with a session on each worker process.\n"
                     "# TYPE edgewire_worker_devices_online gauge\n"
                     f'edgewire_worker_devices_online{{worker="{self.bus.instance_id}"}} '
                     f"{len(self.live.devices)}\n").encode()
        return body.decode()

    async def metrics_page(self, ws: EdgeConnection, request: Request) -> Response:
        """Prometheus text; with workers, the whole gateway's (gateway/host_metrics.py)."""
        page = await self.own_metrics()
        if self.host_view is not None:
            page = await self.host_view.merged_metrics(page)
        body = page.encode()
        return Response(200, "OK", Headers({"Content-Type": "text/plain; version=0.0.4; charset=utf-8",
                                            "Content-Length": str(len(body))}), body)
