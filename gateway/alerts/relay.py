"""One alert engine and one forwarding bridge for all the workers of a gateway host (gateway/workers.py).

Alert rules keep state per device (a ``for`` duration, a stuck sensor, a learned baseline), and
an open alert has one life cycle, one webhook per change. With several worker processes a device
moves between them (its reconnects land where the kernel puts them), so the rules run in one
place: the *alert owner*, worker 1, whose AlertEngine is the gateway's. The other workers run an
``AlertRelay`` in its stead:

- each reading the relay is given, and each device that went offline there, goes to the owner
  in an ``alert_in`` request on the host bus, batched every ``FLUSH_S`` and in order (one
  request at a time: a batch the owner did not take is counted and logged, never silent); the owner's
  ``AlertOwner`` feeds them to its engine. The forwarding bridge's hooks (MQTT discovery,
  availability, status: gateway/forward/setup.py ``RelayedForwarding``) ride in the same
  batches, so worker 1's bridge and readings forwarders speak for the whole gateway, with one
  MQTT client and one cursor per sink. A batch the bus could not carry (the owner restarting) is counted
  in ``relay_dropped`` and logged: the readings are stored all the same; only their judging is lost;
- operator calls (acknowledge, clear, list, the admin API's alert requests) are requests to the
  owner (``alert_call``), answered by its engine, with the same error codes;
- the owner's alert events reach every dashboard in its hub's deltas (gateway/cluster), as any
  peer's; the relay's hub starts from the open alerts in storage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.alerts.admin import AlertAdmin
from gateway.alerts.engine import AlertEngine
from gateway.alerts.lifecycle import AlertStorage
from gateway.alerts.model import alert_dict
from gateway.bus import Bus
from gateway.errors import AlertError, BusError, RemoteError
from gateway.logs import log
from gateway.supervisor import spawn

ALERT_IN = "alert_in"  # request to the owner, answered once fed: {"ops": [["r", ...], ["off", id], ["f", hook, args]]}
HOOKS = frozenset({"device_online", "device_offline", "device_status", "device_deleted"})
ALERT_CALL = "alert_call"  # request to the owner: {"op", ...} -> the engine's answer
FLUSH_S = 0.02
CALL_TIMEOUT_S = 15.0
RULES_REFRESH_S = 30.0


class AlertOwner:
    """Worker 1: answers the relays with the gateway's alert engine."""

    def __init__(self, bus: Bus, engine: AlertEngine, admin: AlertAdmin, forwarding: object) -> None:
        """``forwarding``: the gateway's Forwarding, whose bridge hooks (``HOOKS``) the relays call."""
        self.engine = engine
        self.admin = admin
        self.forwarding = forwarding
        self.bus = bus
        bus.serve(ALERT_CALL, self._call)
        bus.serve(ALERT_IN, self._feed_request)

    async def start(self) -> None:
        """Nothing to subscribe: the relays' batches are requests (answered once fed)."""

    async def _feed_request(self, message: dict[str, Any], sender: str) -> dict[str, Any]:
        self._feed(message, sender)
        return {}

    def _feed(self, message: dict[str, Any], sender: str) -> None:
        reading = self.engine.reading
        saw: Any = getattr(self.forwarding, "saw_reading", None)  # the bridge's discovery
        wake: Any = getattr(self.forwarding, "wake", None)
        for op in message.get("ops", ()):
            kind = op[0]
            if kind == "r":
                reading(op[1], op[2], op[3], op[4], op[5])
                if saw is not None:
                    saw(op[1], op[2])
            elif kind == "off":
                self.engine.device_offline(op[1])
            elif kind == "f" and op[1] in HOOKS:
                getattr(self.forwarding, op[1])(*op[2])
        if wake is not None:
            wake()  # the other worker's rows are in the forward log: the forwarders read them now

    async def _call(self, message: dict[str, Any], sender: str) -> dict[str, Any]:
        op = message.get("op")
        engine = self.engine
        if op == "ack":
            return await engine.ack(message.get("alert_id"), str(message.get("by")), str(message.get("note", "")))
        if op == "clear":
            return await engine.clear(message.get("alert_id"), str(message.get("by")), str(message.get("note", "")))
        if op == "list":
            return {"alerts": await engine.alerts(message.get("device_id"), limit=int(message.get("limit", 100)))}
        if op == "admin":
            handler = self.admin.requests.get(str(message.get("name")))
            if handler is None:
                raise AlertError("bad_request", f"no alert request {str(message.get('name'))[:40]!r}")
            return await handler(message.get("msg") or {}, str(message.get("by")))
        raise AlertError("bad_request", f"unknown alert call {str(op)[:40]!r}")


class AlertRelay(AlertEngine):
    """The AlertEngine surface of a worker that is not the alert owner (see the module docstring)."""

    def __init__(self, storage: AlertStorage, bus: Bus, owner: str, rules: list[dict[str, Any]] | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(storage, rules, clock=clock)
        self.bus = bus
        self.owner = owner
        self._ops: list[list[Any]] = []
        self._flush: asyncio.TimerHandle | None = None
        self._restored: list[dict[str, Any]] = []
        self.relayed = 0
        self.relay_dropped = 0
        self._order = asyncio.Lock()  # batches go to the owner one at a time, in order

    # ------------------------------------------------------------------ to the owner
    def reading(self, device_id: str, metrics: dict[str, float], time_ms: int, received_ms: int,
                quality: str | None = None) -> None:
        self._ops.append(["r", device_id, metrics, time_ms, received_ms, quality])
        self._schedule()

    def device_offline(self, device_id: str, now_ms: int | None = None) -> None:
        self._ops.append(["off", device_id])
        self._schedule()

    def forward(self, hook: str, args: list[Any]) -> None:
        """A forwarding bridge hook for the owner's bridge (gateway/forward/setup.py RelayedForwarding)."""
        self._ops.append(["f", hook, args])
        self._schedule()

    def _schedule(self) -> None:
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(FLUSH_S, self._send)

    def _send(self) -> None:
        self._flush = None
        ops, self._ops = self._ops, []
        spawn(self._publish({"ops": ops}), "alert relay")

    async def _publish(self, message: dict[str, Any]) -> None:
        count = sum(1 for op in message["ops"] if op[0] == "r")
        try:
            async with self._order:  # (asyncio's lock is fair: first come, first sent)
                await self.bus.request(self.owner, ALERT_IN, message, CALL_TIMEOUT_S)
            self.relayed += count
        except BusError as err:
            self.relay_dropped += count
            log("alert_relay_dropped", logging.WARNING, readings=count, events=len(message["ops"]) - count,
                error=str(err)[:200], hint="the readings are stored; the owner (worker 1) did not judge them "
                "for alerts nor see them for MQTT discovery")

    async def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.bus.request(self.owner, ALERT_CALL, message, CALL_TIMEOUT_S)
        except RemoteError as err:
            raise AlertError(err.code, str(err)) from None
        except BusError as err:
            raise AlertError("storage_unavailable", f"the alert owner ({self.owner}) did not answer: {err}") from None

    async def ack(self, alert_id: Any, by: str, note: str = "") -> dict[str, Any]:
        return await self._ask({"op": "ack", "alert_id": alert_id, "by": by, "note": note})

    async def clear(self, alert_id: Any, by: str, note: str = "") -> dict[str, Any]:
        return await self._ask({"op": "clear", "alert_id": alert_id, "by": by, "note": note})

    async def alerts(self, device_id: str | None = None, state: str | None = None, limit: int = 100,
                     before: int | None = None) -> list[dict[str, Any]]:
        answer = await self._ask({"op": "list", "device_id": device_id, "limit": limit})
        return list(answer["alerts"])

    def admin_requests(self, who: str) -> dict[str, Callable[[dict[str, Any]], Any]]:
        """The admin API's alert requests, each asked of the owner (gateway/alerts/admin.py's table)."""
        def forward(name: str) -> Callable[[dict[str, Any]], Any]:
            async def call(msg: dict[str, Any]) -> dict[str, Any]:
                answer = await self._ask({"op": "admin", "name": name, "msg": msg, "by": who})
                if name in ("alert_rule_put", "alert_rule_delete"):
                    await self._load_rules()
                return answer
            return call

        return {name: forward(name) for name in AlertAdmin(self).requests}

    # ------------------------------------------------------------------ its own life: no rules run here
    async def _load_rules(self) -> None:
        self.book.load(await self.storage.alert_rules())

    async def start(self) -> None:
        """The rules (for listings) and the open alerts (the hub's first view), from storage."""
        self.started_ms = self.now_ms()
        await self._load_rules()
        self._restored = [alert_dict(row) for row in await self.storage.active_alerts(limit=self.max_open)]

    def open_alerts(self, device_id: str | None = None) -> list[dict[str, Any]]:
        return sorted((a for a in self._restored if device_id is None or a["device"] == device_id),
                      key=lambda a: int(a["id"]))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(RULES_REFRESH_S)
            await self._load_rules()

    async def close(self, timeout_s: float = 10.0) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._send()

    def stats(self) -> dict[str, Any]:
        """Zeros but the relay's own counters: the owner's page has the alerts (the pages are summed)."""
        stats = super().stats()
        return dict(dict.fromkeys(stats, 0), open_by_state={}, open_by_severity={}, rules=0,
                    relayed=self.relayed, relay_dropped=self.relay_dropped)
