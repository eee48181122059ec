"""The dashboard's plain-HTTP side: its static files and the GET endpoints the page reads first.

- ``GET /v1/session``: who this browser is (role, token name), or 401 with how to get a token;
  the page asks before it opens the stream, so a missing token is explained, not retried.
- ``GET /v1/meta``: the metric table (``protocol.wire.METRICS`` and the configuration's ``[[metrics]]``,
  gateway/metric_table.py) and the command table (``protocol.wire.COMMANDS``), so the page never
  carries a copy of either.
- ``GET /v1/alerts?device=ID&limit=N``: recent alerts, newest first (open and closed).
- ``GET /v1/rules?device=ID``: the alert rules in force for a device (its charts draw their thresholds).
- The page itself: every file under gateway/dashboard/static/ (vendored uPlot included), read once at start.

docs/dashboard.md describes the page; docs/http-api.md these endpoints.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Response

from gateway.dashboard.roles import DashboardIdentity
from gateway.errors import RequestError, StorageError
from gateway.history_api import Reply, int_param, json_reply, parse_query, to_response
from gateway.metric_table import BUILT_IN, MetricTable
from protocol import wire

STATIC_DIR = Path(__file__).parent / "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".LICENSE": "text/plain; charset=utf-8",
}
SECURITY_HEADERS = {
    # no inline script or style, no other origin; the WebSocket goes to the page's own host
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
PATHS = frozenset({"/v1/session", "/v1/meta", "/v1/alerts", "/v1/rules"})
MAX_ALERTS = 500

AlertLister = Callable[[str | None, int], Awaitable[list[dict[str, Any]]]]
RuleLister = Callable[[str], list[dict[str, Any]]]


def load_static(root: Path = STATIC_DIR) -> dict[str, tuple[bytes, str]]:
    """URL path -> (body, content type) for every servable file under ``root`` ("/" is index.html)."""
    files: dict[str, tuple[bytes, str]] = {}
    for file in sorted(root.rglob("*")):
        ctype = CONTENT_TYPES.get(file.suffix)
        if not file.is_file() or ctype is None:
            continue
        path = "/" + file.relative_to(root).as_posix()
        files[path] = (file.read_bytes(), ctype)
        if path == "/index.html":
            files["/"] = files[path]
    return files


def static_response(body: bytes, ctype: str) -> Response:
    headers = Headers({"Content-Type": ctype, "Content-Length": str(len(body)), "Cache-Control": "no-cache",
                       **SECURITY_HEADERS})
    return Response(200, "OK", headers, body)


def meta_document(table: MetricTable = BUILT_IN) -> dict[str, Any]:
    """The metric table (this gateway's: wire.METRICS and its [[metrics]]) and the command table as the page
    uses them."""
    metrics = {name: {"unit": unit, "low": low, "high": high, "device_class": device_class, "label": label}
               for name, (unit, low, high, device_class, label) in table.rows.items()}
    commands = {name: {"usage": usage, "args": [{"name": arg, "kind": kind, "required": required}
                                                for arg, kind, required in spec]}
                for name, (usage, spec, _check) in wire.COMMANDS.items()}
    return {"metrics": metrics, "commands": commands}


class DashboardHttp:
    """Answers the GET endpoints above for a caller the gateway has identified."""

    def __init__(self, list_alerts: AlertLister, list_rules: RuleLister, table: MetricTable = BUILT_IN,
                 clock: Callable[[], float] = time.time) -> None:
        self.list_alerts = list_alerts
        self.list_rules = list_rules
        self.clock = clock
        self._meta = json_reply(200, meta_document(table))

    async def respond(self, identity: DashboardIdentity, target: str) -> Response:
        return to_response(await self.handle(identity, target))

    async def handle(self, identity: DashboardIdentity, target: str) -> Reply:
        path = target.split("?", 1)[0]
        try:
            params = parse_query(target)
            if path == "/v1/session":
                return json_reply(200, {"role": identity.role, "token": identity.name,
                                        "time": int(self.clock() * 1000)})
            if path == "/v1/meta":
                return self._meta
            if path == "/v1/alerts":
                device = params.get("device") or None
                if device is not None and not wire.valid_device_id(device):
                    raise RequestError("device", "a device id (1-64 of A-Z a-z 0-9 _ - . :)")
                limit = int_param(params, "limit", 100, 1, MAX_ALERTS)
                return json_reply(200, {"alerts": await self.list_alerts(device, limit)})
            if path == "/v1/rules":
                device = params.get("device", "")
                if not wire.valid_device_id(device):
                    raise RequestError("device", "required: a device id (1-64 of A-Z a-z 0-9 _ - . :)")
                return json_reply(200, {"device": device, "rules": self.list_rules(device)})
            return json_reply(404, {"code": "not_found", "message": f"no such path {path[:64]}"})
        except RequestError as err:
            return json_reply(err.status, {"code": "bad_request", "param": err.param, "message": err.message})
        except StorageError as err:
            return json_reply(503, {"code": wire.E_STORAGE, "message": f"storage unavailable: {err}"},
                              {"Retry-After": "5"})
