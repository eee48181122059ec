"""The admin API (/v1/admin, docs/protocol.md section 10): registry operations, commands, queries.

One request table: adding a request is one method plus one row in ``AdminApi.requests``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from gateway.conn import dumps
from gateway.dashboard.view import Hub
from gateway.device_commands import Commands
from gateway.errors import (
    AlertError,
    BusError,
    CommandError,
    DeviceOffline,
    GroupError,
    OtaError,
    RegistryError,
    TooManyCommands,
)
from gateway.group_commands import DEFAULT_PARALLEL, MAX_PARALLEL, run_group, summary
from gateway.groups import device_group, members, parse_group
from gateway.logs import log
from gateway.metrics import INTERNAL_ERROR, Metrics
from gateway.registry import Registry, check_device_id
from gateway.replacement import LiveDevices
from gateway.storage.base import Storage
from protocol import wire
from protocol.gateway import MAX_RESULT_DEPTH, MAX_RESULT_VALUES, json_shape_error

Request = dict[str, Any]
MAX_COMMAND_TIMEOUT_S = 300
MAX_HISTORY_POINTS = 100_000


def command_fields(msg: Request) -> tuple[str, dict[str, Any], float]:
    """A command request's ``name``, ``args`` (default {}) and ``timeout`` (default 10 s), checked."""
    name, args, timeout = msg.get("name"), msg.get("args") or {}, msg.get("timeout", 10)
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        raise ValueError("name: the command's name, a string (set_interval, set_output, reboot, ping, ...)")
    if not isinstance(args, dict):
        raise ValueError("args: an object of the command's arguments")
    shape = json_shape_error(args, MAX_RESULT_DEPTH, MAX_RESULT_VALUES)
    if shape is not None:
        raise ValueError(f"args: {shape}")
    if type(timeout) not in (int, float) or not 0 < timeout <= MAX_COMMAND_TIMEOUT_S:
        raise ValueError(f"timeout: seconds, more than 0 and at most {MAX_COMMAND_TIMEOUT_S}")
    return name, args, float(timeout)


class AdminApi:
    def __init__(self, registry: Registry, storage: Storage, sessions: LiveDevices, commands: Commands,
                 hub: Hub, metrics: Metrics, online: Callable[[str], bool] | None = None,
                 registry_changed: Callable[[str, str], None] = lambda device_id, change: None,
                 device_removed: Callable[[str], None] = lambda device_id: None,
                 more: Mapping[str, Callable[[Request], Awaitable[dict[str, Any]]]] | None = None) -> None:
        """``online(device_id)``: on any instance (default: a session here). ``registry_changed``: told
        after each registry change made here (the cluster re-checks the session wherever it is).
        ``device_removed``: told after a ``remove`` (the MQTT bridge clears the device's topics).
        ``more``: further requests by name (the alerts' table, gateway/alerts/admin.py; OTA's)."""
        self.registry = registry
        self.storage = storage
        self.sessions = sessions
        self.commands = commands
        self.hub = hub
        self.metrics = metrics
        self.online = online or (lambda device_id: device_id in sessions.devices)
        self.registry_changed = registry_changed
        self.device_removed = device_removed
        self.requests: dict[str, Callable[[Request], Awaitable[dict[str, Any]]]] = {
            "register": self.register,
            "rotate": self.rotate,
            "disable": self.disable,
            "enable": self.enable,
            "revoke": self.revoke,
            "remove": self.remove,
            "delete": self.remove,
            "label": self.label,
            "devices": self.devices,
            "command": self.command,
            "group_command": self.group_command,
            "latest": self.latest,
            "history": self.history,
            "stats": self.stats,
            **(more or {}),
        }

    async def handle(self, ws: ServerConnection) -> None:
        """Serve one admin connection: one reply per request, in order."""
        with contextlib.suppress(ConnectionClosed):  # the tool went away: nothing to report
            await self._serve(ws)

    async def _serve(self, ws: ServerConnection) -> None:
        async for frame in ws:
            try:
                msg = orjson.loads(frame)
                if not isinstance(msg, dict):
                    raise ValueError("request must be an object")
            except ValueError:
                await ws.send(dumps({"t": "error", "id": None, "code": wire.E_BAD_JSON, "msg": "not a JSON object"}))
                continue
            request_id = msg.get("id")
            if not ((isinstance(request_id, str) and len(request_id) <= 64)
                    or (type(request_id) is int and abs(request_id) < 2**53)):
                request_id = None  # echoed back as given only when it is a short string or an integer
            try:
                reply = await self.request(msg)
                reply.update({"t": "ok", "id": request_id})
                text = dumps(reply)
            except (CommandError, DeviceOffline, BusError, TooManyCommands, GroupError) as err:  # a stable code
                text = dumps({"t": "error", "id": request_id, "code": err.code, "msg": str(err)[:300] or err.code})
            except (RegistryError, ValueError, KeyError, TypeError, TimeoutError) as err:
                code = "timeout" if isinstance(err, TimeoutError) else "bad_request"
                if isinstance(err, AlertError | OtaError):  # their requests' own codes (docs/alerts.md, ota.md)
                    code = err.code
                text = dumps({"t": "error", "id": request_id, "code": code, "msg": str(err)[:300] or code})
            except Exception as err:  # a bug: this request fails, the connection and the gateway go on
                self.metrics.count_error(INTERNAL_ERROR)
                log("admin_request_failed", logging.ERROR, request=str(msg.get("t"))[:32],
                    error=f"{type(err).__name__}: {err}"[:300])
                text = dumps({"t": "error", "id": request_id, "code": INTERNAL_ERROR,
                              "msg": "internal error; see the gateway log"})
            await ws.send(text)

    async def request(self, msg: Request) -> dict[str, Any]:
        kind = msg.get("t")
        handler = self.requests.get(kind) if isinstance(kind, str) else None
        if handler is None:
            raise ValueError(f"unknown admin request {kind!r}")
        return await handler(msg)

    async def register(self, msg: Request) -> dict[str, Any]:
        device_id = check_device_id(msg.get("device_id"))
        label = msg.get("label", "")
        if not isinstance(label, str):
            raise ValueError("label: must be a string")
        token = await self.registry.add(device_id, label=label)
        log("device_registered", device=device_id)
        return {"device_id": device_id, "token": token}

    async def rotate(self, msg: Request) -> dict[str, Any]:
        device_id = check_device_id(msg.get("device_id"))
        token = await self.registry.rotate(device_id)
        log("device_token_rotated", device=device_id)
        self.registry_changed(device_id, "rotate")
        return {"device_id": device_id, "token": token}

    async def disable(self, msg: Request) -> dict[str, Any]:
        """Refuse the device from now on; its session (on any instance) is closed with 4003."""
        return await self._change(msg, self.registry.disable, "disable", {"enabled": False})

    async def enable(self, msg: Request) -> dict[str, Any]:
        return await self._change(msg, self.registry.enable, "enable", {"enabled": True})

    async def revoke(self, msg: Request) -> dict[str, Any]:
        """Delete the device's token; its token session (on any instance) is closed with 4001."""
        return await self._change(msg, self.registry.revoke, "revoke", {"has_token": False})

    async def remove(self, msg: Request) -> dict[str, Any]:
        """Decommission: the device leaves the registry, its session (on any instance) ends, and the
        MQTT bridge clears its Home Assistant discovery and its retained topics. Its readings stay
        until retention (docs/mqtt.md, "Removing a device")."""
        device_id = check_device_id(msg.get("device_id"))
        await self.registry.delete(device_id)
        log("device_removed", device=device_id)
        self.device_removed(device_id)
        self.registry_changed(device_id, "remove")
        return {"device_id": device_id, "removed": True, "history": "kept until retention"}

    async def label(self, msg: Request) -> dict[str, Any]:
        """``label`` (a string): the device's display label; ``set`` ({key: value}) and ``remove``
        ([key]): its labels for groups. Replies with both."""
        device_id = check_device_id(msg.get("device_id"))
        display = msg.get("label")
        if "label" in msg:
            if not isinstance(display, str):
                raise ValueError("label: must be a string")
            await self._change(msg, lambda device_id: self.registry.set_label(device_id, display), "label",
                               {"label": display})
            if "set" not in msg and "remove" not in msg:
                return {"device_id": device_id, "label": display}
        changes, remove = msg.get("set") or {}, msg.get("remove") or []
        if not isinstance(changes, dict) or not isinstance(remove, list):
            raise GroupError("bad_label", "set: an object of labels {key: value}; remove: a list of keys")
        labels = await self.registry.set_labels(device_id, changes, remove)  # checked there (bad_label)
        log("device_labels_changed", device=device_id, labels=",".join(labels))
        return {"device_id": device_id, "labels": labels}

    async def _change(self, msg: Request, action: Callable[[str], Awaitable[None]], change: str,
                      reply: dict[str, Any]) -> dict[str, Any]:
        """A registry change: done, logged, and told to whichever instance holds the device."""
        device_id = check_device_id(msg.get("device_id"))
        await action(device_id)
        log("device_registry_changed", device=device_id, change=change)
        self.registry_changed(device_id, change)
        return {"device_id": device_id, **reply}

    async def devices(self, msg: Request) -> dict[str, Any]:
        online = self.online
        records = await self.storage.list_devices()
        return {"devices": [{"id": r.device_id, "enabled": r.enabled, "online": online(r.device_id),
                             "has_token": r.token_digest is not None, "allow": r.allow_cidrs, "label": r.label,
                             "labels": r.labels}
                            for r in records]}

    async def command(self, msg: Request) -> dict[str, Any]:
        device_id = check_device_id(msg.get("device_id"))
        name, args, timeout = command_fields(msg)
        result = await self.commands.run(device_id, name, args, timeout)
        return {"result": result}

    async def group_command(self, msg: Request) -> dict[str, Any]:
        """One command to a group (``group``: a selector, or ``devices``: a list of ids), one result per
        member (gateway/group_commands.py): members offline now are reported, not queued."""
        if ("group" in msg) == ("devices" in msg):
            raise GroupError("bad_group", "give group (label=KEY, label=KEY=VALUE, devices=ID,...) or devices "
                             "(a list of ids), not both")
        group = parse_group(msg["group"]) if "group" in msg else device_group(msg["devices"] or [])
        name, args, timeout = command_fields(msg)
        parallel = msg.get("parallel", DEFAULT_PARALLEL)
        if type(parallel) is not int or not 1 <= parallel <= MAX_PARALLEL:
            raise ValueError(f"parallel: commands in flight at once, 1 to {MAX_PARALLEL}")
        records = members(group, await self.storage.list_devices())
        results = await run_group(self.commands, records, name, args, timeout, parallel)
        log("group_command", group=group.text[:100], command=name, devices=len(results),
            ok=sum(1 for r in results if r["ok"]))
        return {"name": name, "group": group.text, "results": results, "summary": summary(results)}

    async def run_command(self, device_id: str, name: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The command path of the dashboard and the MQTT commands (gateway/forward/mqtt_commands.py):
        for a device online now, on any instance; DeviceOffline at once if it is online nowhere (or
        goes offline before answering), TimeoutError after ``timeout`` s. The admin ``command``
        request also queues a command for an offline device until its timeout (docs/protocol.md
        section 8). Arguments are the caller's to check."""
        return await self.commands.run(device_id, name, args, timeout, queue=False)

    async def latest(self, msg: Request) -> dict[str, Any]:
        device_id = check_device_id(msg.get("device_id"))
        latest = await self.storage.latest(device_id)
        return {"device_id": device_id, "latest": {k: list(v) for k, v in latest.items()}}

    async def history(self, msg: Request) -> dict[str, Any]:
        device_id = check_device_id(msg.get("device_id"))
        metric = msg.get("metric")
        if not isinstance(metric, str) or not wire.valid_metric_name(metric):
            raise ValueError("metric: a metric name such as temperature")
        bounds = {}
        for key, default, low, high in (("start", 0, 0, 2**62), ("end", 2**62, 0, 2**62),
                                        ("limit", 10000, 1, MAX_HISTORY_POINTS)):
            value = msg.get(key, default)
            if type(value) is not int or not low <= value <= high:
                raise ValueError(f"{key}: an integer from {low} to {high}")
            bounds[key] = value
        points = await self.storage.history(device_id, metric, bounds["start"], bounds["end"], bounds["limit"])
        return {"points": [list(p) for p in points]}

    async def stats(self, msg: Request) -> dict[str, Any]:
        return {"counters": dict(vars(self.metrics.counters)),
                "stored": await self.storage.count_readings(), "resyncs": self.hub.resyncs}
