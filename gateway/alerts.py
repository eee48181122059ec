"""Threshold alerts with hysteresis: raised above a limit, cleared below limit - hysteresis.

State lives in memory (restored from storage at start); raised and cleared alerts are stored
and published to dashboards as events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.config import AlertRule
from gateway.hub import Hub
from gateway.logs import log
from gateway.storage.base import Storage
from gateway.supervisor import spawn


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One stored alert change: ``kind`` (raised, cleared), the alert dict after it, ``at`` (gateway ms)."""

    kind: str
    alert: dict[str, Any]
    at: int


class AlertEngine:
    """``clock`` (Unix seconds) stamps the dashboard events: when the gateway raised or cleared
    an alert, as opposed to the reading's own time that the alert records."""

    def __init__(self, rules: list[AlertRule], storage: Storage, hub: Hub,
                 clock: Callable[[], float] = time.time) -> None:
        self.rules = rules
        self.clock = clock
        # metric -> [(rule, rule text)]: the text is the alert key, built once, not per reading
        self.by_metric: dict[str, list[tuple[AlertRule, str]]] = {}
        for rule in rules:
            self.by_metric.setdefault(rule.metric, []).append((rule, rule.describe()))
        self.storage = storage
        self.hub = hub
        # (device, rule text) -> alert dict; "id" is filled in once stored
        self.active: dict[tuple[str, str], dict[str, Any]] = {}
        self._writes: set[asyncio.Task[None]] = set()
        self._raises: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._listeners: list[Callable[[AlertEvent], None]] = []

    async def restore(self) -> None:
        """Load the alerts that were active when the gateway stopped."""
        for row in await self.storage.active_alerts():
            alert = {"id": row.alert_id, "device": row.device_id, "metric": row.metric, "rule": row.rule,
                     "raised": row.raised_ms, "value": row.value}
            self.active[(row.device_id, row.rule)] = alert
            self.hub.alert_raised(alert)

    def check(self, device_id: str, metrics: dict[str, float], time_ms: int) -> None:
        """Evaluate the rules against one reading (hot path: dict lookups only)."""
        by_metric = self.by_metric
        for name, value in metrics.items():
            rules = by_metric.get(name)
            if rules is None:
                continue
            for rule, text in rules:
                key = (device_id, text)
                alert = self.active.get(key)
                if alert is None and value > rule.above:
                    self._raise(key, rule, value, time_ms)
                elif alert is not None and value < rule.above - rule.hysteresis:
                    self._clear(key, alert, value, time_ms)

    def _raise(self, key: tuple[str, str], rule: AlertRule, value: float, time_ms: int) -> None:
        alert: dict[str, Any] = {"id": None, "device": key[0], "metric": rule.metric, "rule": key[1],
                                 "raised": time_ms, "value": value}
        self.active[key] = alert
        self._raises[key] = self._spawn(self._store_raise(alert))

    def _clear(self, key: tuple[str, str], alert: dict[str, Any], value: float, time_ms: int) -> None:
        del self.active[key]
        raising = self._raises.pop(key, None)
        self._spawn(self._store_clear(alert, raising, value, time_ms))

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = spawn(coro, "alert write")  # a failed write is logged
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return task

    def listen(self, callback: Callable[[AlertEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` after each stored change (``raised``, ``cleared``); returns the
        unsubscribe function. Callbacks run on the event loop and must not block; one that raises is
        logged and never disturbs the engine (the event stream of /work/coord/alerts-api.md)."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def _emit(self, kind: str, alert: dict[str, Any], at: int) -> None:
        event = AlertEvent(kind, alert, at)
        for callback in list(self._listeners):
            try:
                callback(event)
            except Exception as err:
                log("alert_listener_failed", logging.ERROR, error=f"{type(err).__name__}: {err}"[:300])

    async def _store_raise(self, alert: dict[str, Any]) -> None:
        alert["id"] = await self.storage.raise_alert(alert["device"], alert["metric"], alert["rule"],
                                                     alert["raised"], alert["value"])
        log("alert_raised", device=alert["device"], rule=alert["rule"], value=alert["value"])
        now = int(self.clock() * 1000)
        self.hub.alert_raised(alert, now)
        self._emit("raised", dict(alert), now)

    async def _store_clear(self, alert: dict[str, Any], raising: asyncio.Task[None] | None,
                           value: float, time_ms: int) -> None:
        if raising is not None:
            await raising  # the alert needs its stored id first
        cleared = dict(alert, cleared=time_ms, clear_value=value)
        await self.storage.clear_alert(cleared["id"], time_ms, value)
        log("alert_cleared", device=alert["device"], rule=alert["rule"], value=value)
        now = int(self.clock() * 1000)
        self.hub.alert_cleared(cleared, now)
        self._emit("cleared", cleared, now)

    async def drain(self) -> None:
        """Wait for every alert write in flight (shutdown)."""
        while self._writes:
            await asyncio.wait(list(self._writes))
