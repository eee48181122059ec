"""HTTP: ``GET /v1/history``, ``/v1/history.csv`` and ``/v1/devices`` (docs/http-api.md).

Query parameters are parsed and checked here, the answer comes from storage (never from the
gateway's memory, except ``online``), and every failure is a JSON error with a stable code:
400 ``bad_request`` naming the parameter, 404 ``not_found`` for an unregistered device, 404
``unknown_metric`` (with the device's ``metrics``) for a metric it has never sent, 503
``storage_unavailable``. The gateway checks the dashboard token before calling ``respond``.
"""

from __future__ import annotations

import http
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Response

from gateway import history
from gateway.errors import RequestError, StorageError, UnknownMetric
from gateway.export import buckets_csv
from gateway.metric_table import BUILT_IN, MetricTable
from gateway.storage.base import DAY_MS, DeviceData
from protocol import wire

PATHS = frozenset({"/v1/history", "/v1/history.csv", "/v1/devices"})
MAX_TIME_MS = 2**53 - 1
DEFAULT_RANGE_MS = DAY_MS  # from defaults to one day before to
_DIGITS = re.compile(r"[0-9]{1,16}")
_MAX_FIELDS = 32


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return orjson.loads(self.body)


def json_reply(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, orjson.dumps(body), headers=headers or {})


def to_response(reply: Reply) -> Response:
    headers = Headers({"Content-Type": reply.content_type, "Content-Length": str(len(reply.body)),
                       "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", **reply.headers})
    return Response(reply.status, http.HTTPStatus(reply.status).phrase, headers, reply.body)


def parse_query(target: str) -> dict[str, str]:
    """The query string of ``target`` as a dict; a parameter given twice is refused."""
    query = urllib.parse.urlsplit(target).query
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, max_num_fields=_MAX_FIELDS,
                                       errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise RequestError("query", f"at most {_MAX_FIELDS} parameters, UTF-8, percent-encoded") from None
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise RequestError(key[:32], "given more than once")
        params[key] = value
    return params


def int_param(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise RequestError(name, f"must be an integer from {low} to {high}")
    return int(raw)


class HistoryApi:
    """The three read-only endpoints over one storage."""

    def __init__(self, storage: DeviceData, readings_retention_days: int, is_online: Callable[[str], bool],
                 clock: Callable[[], float] = time.time, table: MetricTable = BUILT_IN) -> None:
        self.storage = storage
        self.table = table  # units
        self.readings_retention_ms = readings_retention_days * DAY_MS
        self.is_online = is_online
        self.clock = clock

    async def respond(self, target: str) -> Response:
        """The websockets Response for a request to ``target`` (path and query)."""
        return to_response(await self.handle(target))

    async def handle(self, target: str) -> Reply:
        path = urllib.parse.urlsplit(target).path
        try:
            params = parse_query(target)
            if path == "/v1/devices":
                return await self._devices()
            if path in ("/v1/history", "/v1/history.csv"):
                return await self._history(params, csv=path.endswith(".csv"))
            return json_reply(404, {"code": "not_found", "message": f"no such path {path[:64]}"})
        except UnknownMetric as err:
            return json_reply(err.status, {"code": err.code, "param": err.param, "message": err.message,
                                           "metrics": err.metrics})
        except RequestError as err:
            code = "not_found" if err.status == 404 else "bad_request"
            return json_reply(err.status, {"code": code, "param": err.param, "message": err.message})
        except StorageError as err:
            return json_reply(503, {"code": wire.E_STORAGE, "message": f"storage unavailable: {err}"},
                              {"Retry-After": "5"})

    async def _history(self, params: dict[str, str], csv: bool) -> Reply:
        device = params.get("device", "")
        if not wire.valid_device_id(device):
            raise RequestError("device", "required: a device id (1-64 of A-Z a-z 0-9 _ - . :)")
        metric = params.get("metric", "")
        if not wire.valid_metric_name(metric):
            raise RequestError("metric", "required: a metric name (1-32 of a-z 0-9 _, starting with a letter)")
        now = int(self.clock() * 1000)
        end = int_param(params, "to", now, 1, MAX_TIME_MS)
        start = int_param(params, "from", max(0, end - DEFAULT_RANGE_MS), 0, MAX_TIME_MS)
        if start >= end:
            raise RequestError("from", "must be before to")
        points = int_param(params, "points", history.DEFAULT_POINTS, 1, history.MAX_POINTS)
        if await self.storage.get_device(device) is None:
            raise RequestError("device", f"no device {device} is registered", 404)
        await history.check_metric(self.storage, device, metric, "metric")
        plan = history.plan(start, end, points, now, self.readings_retention_ms)
        buckets = await history.buckets(self.storage, device, metric, plan)
        if csv:
            name = f"{device}-{metric}.csv".replace(":", "_")
            return Reply(200, buckets_csv(buckets), "text/csv; charset=utf-8",
                         {"Content-Disposition": f'attachment; filename="{name}"'})
        unit = self.table.unit(metric)
        return json_reply(200, {
            "device": device, "metric": metric, "unit": unit, "from": plan.start_ms, "to": plan.end_ms,
            "step_ms": plan.step_ms, "source": plan.source,
            "points": [[b.t, b.min, b.avg, b.max, b.count] for b in buckets]})

    async def _devices(self) -> Reply:
        records = await self.storage.list_devices()
        states = await self.storage.device_states()
        devices = []
        for record in records:
            state = states.get(record.device_id)
            devices.append({
                "id": record.device_id, "label": record.label, "enabled": record.enabled,
                "online": self.is_online(record.device_id),
                "last_seen": state.last_seen_ms if state else None,
                "last_seq": state.last_seq if state else 0,
                "latest": {m: [v, t] for m, (v, t) in sorted(state.latest.items())} if state else {}})
        return json_reply(200, {"time": int(self.clock() * 1000), "devices": devices})

