"""The dashboard room: the page, its GET endpoints, its stream and what operators do from it.

Parts: ``dashboard_auth`` (tokens and roles), ``dashboard_http`` (static files, /v1/session,
/v1/meta, /v1/alerts, /v1/rules), ``hub`` (the view model: gateway/dashboard/view.py), ``stream`` (the
WebSocket stream), ``actions`` (the table of operator actions: ack, clear, command from the browser; the console's
device and rule actions: devices_actions, rules_actions),
``sync`` (registry and token changes). This module puts them together on the
gateway's routing table; docs/dashboard.md describes the whole.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from websockets.http11 import Request, Response

from gateway.alerts.engine import AlertEngine
from gateway.config import GatewayConfig
from gateway.conn import EdgeConnection
from gateway.dashboard.actions import (
    E_NOT_FOUND,
    ActionError,
    ActionHandlers,
    DashboardActions,
    ExtraAction,
    console_action,
)
from gateway.dashboard.devices_actions import DeviceActions
from gateway.dashboard.http import PATHS, DashboardHttp
from gateway.dashboard.roles import DashboardAuth
from gateway.dashboard.rules_actions import AdminRequest, RuleActions
from gateway.dashboard.stream import DashboardStream
from gateway.dashboard.sync import DashboardSync
from gateway.dashboard.view import Hub
from gateway.errors import DeviceOffline
from gateway.http_api import HttpApi
from gateway.storage.base import Storage

RunCommand = Callable[[str, str, dict[str, Any], float], Awaitable[dict[str, Any]]]


class Dashboard:
    def __init__(self, config: GatewayConfig, storage: Storage, hub: Hub, http: HttpApi, auth: DashboardAuth,
                 alerts: AlertEngine, run_command: RunCommand,
                 count_error: Callable[[str], None] = lambda code: None,
                 admin_requests: dict[str, AdminRequest] | None = None,
                 alert_requests: Callable[[str], dict[str, AdminRequest]] | None = None) -> None:
        """``admin_requests``: the admin API's request table (the console's device actions run its
        registry requests); ``alert_requests(who)``: its alert requests acting as ``who`` (rules)."""
        self.storage = storage
        self.http = http
        self.alerts = alerts
        self.run_command = run_command
        self.sync = DashboardSync(hub, storage, config.registry_recheck_s)
        console: dict[str, ExtraAction] = {}
        if admin_requests is not None:
            console.update(DeviceActions(admin_requests, storage.get_device, self.sync.sync).table())
        if alert_requests is not None:
            console.update(RuleActions(alert_requests, storage, alerts.hour_of, alerts.clock).table())
        actions = DashboardActions(ActionHandlers(self.ack, self.clear, self.command), auth, count_error,
                                   more={name: console_action(action) for name, action in console.items()})
        self.stream = DashboardStream(hub, actions)
        self.endpoints = DashboardHttp(self.list_alerts, alerts.rules_for, config.metric_table())
        http.websocket("/v1/dashboard", http.dashboard_upgrade, self.stream.serve)
        for path in PATHS:
            http.route(path, self.get)

    async def get(self, ws: EdgeConnection, request: Request) -> Response:
        """/v1/session, /v1/meta, /v1/alerts, /v1/rules, for a client that passes the dashboard's checks."""
        identity = await self.http.dashboard_identity(ws, request)
        if isinstance(identity, Response):
            return identity
        return await self.endpoints.respond(identity, request.path)

    # ------------------------------------------------------------ what the browser's actions run
    async def ack(self, alert_id: int, by: str) -> dict[str, Any]:
        return await self.alerts.ack(alert_id, by)  # AlertError codes go to the browser as they are

    async def clear(self, alert_id: int, by: str) -> dict[str, Any]:
        return await self.alerts.clear(alert_id, by)

    async def command(self, device_id: str, name: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        try:
            return await self.run_command(device_id, name, args, timeout)
        except DeviceOffline:
            if await self.storage.get_device(device_id) is None:
                raise ActionError(E_NOT_FOUND, f"no device {device_id} is registered") from None
            raise

    async def list_alerts(self, device_id: str | None, limit: int) -> list[dict[str, Any]]:
        return await self.alerts.alerts(device_id, limit=limit)
