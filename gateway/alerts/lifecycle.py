"""The alerts' life cycle: every reading through the rules of its metric, each verdict into an alert's change.

Hot path (``committed``, the commit listener of gateway/fanout.py: ``reading`` once per stored
reading, after its commit, so a resend is never judged twice): one dict lookup per metric,
then per rule of that metric one dict lookup for the device's track and the rule's ``update``
(a few comparisons, no allocation). Alert changes are made in memory at once and queued to the
writer (gateway/alerts/writer.py), which stores them in order and then emits the events.
Once stored, a raise is logged (``alert_raised``, warning) and a clear too (``alert_cleared``),
each with the alert's id, device, rule, metric and value (the clearing value, who, and why).

``AlertLifecycle`` holds the engine's alerts and rules and makes every transition (raise,
update, suspend, resume, clear) and the devices' events (offline, deleted). ``AlertEngine``
(gateway/alerts/engine.py) adds the operators' requests, rule edits, start-up and timers.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from gateway.alerts.localtime import HourOfDay
from gateway.alerts.model import (
    ALERT_ACKNOWLEDGED,
    ALERT_ACTIVE,
    ALERT_CLEARED,
    ALERT_SUSPENDED,
    AUTO,
    CLEARED,
    RAISED,
    RESUMED,
    SUSPENDED,
    SYSTEM,
    UPDATED,
    AlertEvent,
    alert_dict,
    mark_cleared,
)
from gateway.alerts.rulebook import RuleBook
from gateway.alerts.rules import DEFAULT_RULES, parse_rules
from gateway.alerts.rules.base import CALM, FIRE, SAME, Device, Rule, Track
from gateway.alerts.writer import AlertWriter, Change
from gateway.errors import StorageError
from gateway.logs import log
from gateway.storage.base import AlertHistoryRow, AlertRow, AlertStore, DeviceRecord, ReadingRow

NAN = float("nan")
_MISSING: Any = object()
Listener = Callable[[AlertEvent], None]


class AlertStorage(AlertStore, Protocol):
    """What the engine uses of storage: the alerts' part, and the registered devices (``reconcile_registry``)."""

    async def list_devices(self) -> list[DeviceRecord]: ...


class AlertLifecycle:
    """Alerts in memory and their transitions (see the module docstring)."""

    def __init__(self, storage: AlertStorage, rules: list[dict[str, Any]] | None = None, *,
                 clock: Callable[[], float] = time.time, timezone: datetime.tzinfo | None = None,
                 update_interval_s: float = 60.0, max_queue: int = 100_000) -> None:
        self.storage = storage
        self.clock = clock
        self.hour_of = HourOfDay(timezone)
        self.book = RuleBook(rules if rules is not None else parse_rules(DEFAULT_RULES))
        for rule in self.book.rules.values():
            rule.hour_of = self.hour_of
        self.update_ms = int(update_interval_s * 1000)
        self.devices: dict[str, Device] = {}
        self.open: dict[int, AlertRow] = {}  # stored open alerts by id
        self.by_device: dict[str, dict[str, AlertRow]] = {}  # device -> rule id -> open alert (stored or not yet)
        self.listeners: list[Listener] = []
        self.writer = AlertWriter(storage, self._committed, max_queue=max_queue)
        self.counts = {"raised": 0, "cleared": 0, "suspended": 0, "resumed": 0, "acknowledged": 0,
                       "listener_errors": 0, "baseline_errors": 0}

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # ------------------------------------------------------------------ the event stream
    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` after every stored change; returns a function that unsubscribes."""
        self.listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self.listeners:
                self.listeners.remove(listener)

        return unsubscribe

    def _committed(self, change: Change) -> None:
        alert = change.alert
        if alert.state != ALERT_CLEARED:
            self.open[alert.alert_id] = alert
        else:
            self.open.pop(alert.alert_id, None)
        entry = change.entry
        snapshot = change.snapshot
        if entry.event == RAISED:
            log("alert_raised", logging.WARNING, alert=alert.alert_id, device=alert.device_id, rule=alert.rule,
                metric=alert.metric, severity=alert.severity, value=snapshot["value"])
        elif entry.event == CLEARED:
            log("alert_cleared", alert=alert.alert_id, device=alert.device_id, rule=alert.rule, metric=alert.metric,
                value=snapshot["clear_value"], by=entry.by, reason=snapshot["clear_reason"])
        event = AlertEvent(entry.event, snapshot, entry.at_ms, entry.by)
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception as err:  # one listener's bug never stops the engine or the others
                self.counts["listener_errors"] += 1
                log("alert_listener_failed", logging.ERROR, error=f"{type(err).__name__}: {err}"[:300])

    def _record(self, alert: AlertRow, event: str, at_ms: int, by: str | None, value: float | None, text: str,
                future: asyncio.Future[None] | None = None) -> bool:
        entry = AlertHistoryRow(alert.alert_id, at_ms, event, by, value, text)
        return self.writer.add(alert, entry, alert_dict(alert), future)

    def raise_external(self, source: str, rule: str, text: str, severity: str = "major") -> None:
        """Raise an alert that no rule judges (a rollout stopped at its failure limit: gateway/ota/):
        ``source`` stands where a device id goes, ``rule`` names what raised it. It is stored and
        emitted like the others (webhooks, dashboards) and cleared by an operator; a restart clears
        it (no rule of the book holds it)."""
        now = self.now_ms()
        alert = AlertRow(0, source, "*", rule, now, None, kind=rule, severity=severity, state=ALERT_ACTIVE,
                         text=text, updated_ms=now)
        if self._record(alert, RAISED, now, None, None, text):
            self.counts["raised"] += 1

    # ------------------------------------------------------------------ hot path
    def committed(self, rows: list[ReadingRow]) -> None:
        """The commit listener (gateway/fanout.py): each newly stored reading through ``reading``.
        Only rows the storage inserted get here, so a resend never counts twice."""
        reading = self.reading
        for row in rows:
            reading(row.device_id, row.metrics, row.time_ms, row.received_ms, row.quality)

    def reading(self, device_id: str, metrics: dict[str, float], time_ms: int, received_ms: int,
                quality: str | None = None) -> None:
        """Evaluate the rules against one reading (``time_ms``: when it was read; ``received_ms``:
        the gateway's time). Never raises for a rule's sake."""
        device = self.devices.get(device_id)
        if device is None:
            device = self.devices[device_id] = Device()
        device.arrival = received_ms
        device.quality = quality
        device.online = True
        by_metric = self.book.by_metric
        for name, value in metrics.items():
            rules = by_metric.get(name)
            if rules is None:
                continue
            for rule in rules:
                track = rule.tracks.get(device_id, _MISSING)
                if track is _MISSING:
                    track = self._new_track(rule, device_id)
                if track is None:
                    continue
                verdict = rule.update(track, value, time_ms, device)
                if verdict == SAME or (verdict != FIRE and track.alert is None and track.since < 0
                                       and not track.latched):
                    continue
                self._judge(rule, track, verdict, value, time_ms, received_ms)
        # The same steps as above for the rules on the device as a whole (no value), written out on
        # purpose: a shared method cost 0.75 us per reading with the 9-rule set (bench.alerts_bench).
        for rule in self.book.device_rules:
            track = rule.tracks.get(device_id, _MISSING)
            if track is _MISSING:
                track = self._new_track(rule, device_id)
            if track is None:
                continue
            verdict = rule.update(track, NAN, time_ms, device)
            if verdict == SAME or (verdict != FIRE and track.alert is None and track.since < 0 and not track.latched):
                continue
            self._judge(rule, track, verdict, None, time_ms, received_ms)

    def _new_track(self, rule: Rule, device_id: str) -> Track | None:
        track = rule.new_track(device_id) if rule.applies(device_id) else None
        rule.tracks[device_id] = track
        return track

    def _judge(self, rule: Rule, track: Track, verdict: int, value: float | None, time_ms: int, now_ms: int) -> None:
        alert: AlertRow | None = track.alert
        if verdict == FIRE:
            if alert is None:
                if track.latched:
                    return
                if track.since < 0:
                    track.since = time_ms
                if time_ms - track.since >= rule.for_ms:
                    self._raise(rule, track, value, time_ms, now_ms)
            elif alert.state == ALERT_SUSPENDED:
                self._resume(alert, value, now_ms)
            else:
                alert.last_value = value
                if now_ms - alert.updated_ms >= self.update_ms:
                    self._refresh(rule, track, alert, value, time_ms, now_ms)
            return
        track.since = -1
        if verdict == CALM:
            track.latched = False
            if alert is not None:
                reason = rule.clear_reason(track)
                if alert.state == ALERT_SUSPENDED:
                    reason += " (after the device came back)"
                self._clear(alert, track, AUTO, now_ms, value, reason)
        elif alert is not None and alert.state == ALERT_SUSPENDED:  # HOLD: not over yet
            self._resume(alert, value, now_ms)

    # ------------------------------------------------------------------ transitions
    def _raise(self, rule: Rule, track: Track, value: float | None, time_ms: int, now_ms: int) -> None:
        text = rule.text(track, value, time_ms)
        alert = AlertRow(0, track.device_id, rule.metric, rule.id, now_ms, value, kind=rule.kind,
                         severity=rule.severity, state=ALERT_ACTIVE, text=text, last_value=value, updated_ms=now_ms)
        track.since = -1
        if not self._record(alert, RAISED, now_ms, None, value, text):
            return  # dropped (storage far behind): the rule raises again on a later reading
        track.alert = alert
        self.by_device.setdefault(track.device_id, {})[rule.id] = alert
        self.counts["raised"] += 1

    def _refresh(self, rule: Rule, track: Track, alert: AlertRow, value: float | None, time_ms: int,
                 now_ms: int) -> None:
        alert.updated_ms = now_ms
        text = rule.text(track, value, time_ms)
        if text != alert.text:
            alert.text = text
            self._record(alert, UPDATED, now_ms, None, value, text)

    def _resume(self, alert: AlertRow, value: float | None, now_ms: int) -> None:
        alert.state = ALERT_ACKNOWLEDGED if alert.acked_ms is not None else ALERT_ACTIVE
        alert.suspended_ms = None
        alert.last_value = value
        alert.updated_ms = now_ms
        self.counts["resumed"] += 1
        self._record(alert, RESUMED, now_ms, None, value, "device back; the condition still holds")

    def _suspend(self, alert: AlertRow, now_ms: int, why: str) -> None:
        alert.state = ALERT_SUSPENDED
        alert.suspended_ms = now_ms
        alert.updated_ms = now_ms
        self.counts["suspended"] += 1
        self._record(alert, SUSPENDED, now_ms, None, None, why)

    def _clear(self, alert: AlertRow, track: Track | None, by: str, now_ms: int, value: float | None, reason: str,
               future: asyncio.Future[None] | None = None) -> None:
        mark_cleared(alert, by, now_ms, value, reason)
        if track is not None and track.alert is alert:
            track.alert = None
        alerts = self.by_device.get(alert.device_id)
        if alerts is not None and alerts.get(alert.rule) is alert:
            del alerts[alert.rule]
            if not alerts:
                del self.by_device[alert.device_id]
        self.counts["cleared"] += 1
        self._record(alert, CLEARED, now_ms, by, value, reason, future)

    def _track_of(self, alert: AlertRow) -> Track | None:
        rule = self.book.rules.get(alert.rule)
        return None if rule is None else rule.tracks.get(alert.device_id)

    # ------------------------------------------------------------------ start-up (gateway/alerts/restore.py)
    def track_for(self, rule: Rule, device_id: str) -> Track | None:
        """The rule's series of the device, made if it has none yet; None if the rule does not apply."""
        track = rule.tracks.get(device_id)
        return self._new_track(rule, device_id) if track is None else track

    def adopt(self, rule: Rule, track: Track, alert: AlertRow, now_ms: int) -> bool:
        """Attach a stored open alert to its series (start-up). A value alert is then suspended (no
        device is online yet) until the device's next readings; returns whether it was."""
        track.alert = alert
        self.by_device.setdefault(alert.device_id, {})[alert.rule] = alert
        self.open[alert.alert_id] = alert
        if rule.SUSPENDS and alert.state in (ALERT_ACTIVE, ALERT_ACKNOWLEDGED):
            self._suspend(alert, now_ms, "gateway restarted; waiting for the device's next reading")
            return True
        return False

    # ------------------------------------------------------------------ devices
    def device_online(self, device_id: str, now_ms: int | None = None) -> None:
        device = self.devices.get(device_id)
        if device is not None:
            device.online = True

    def device_offline(self, device_id: str, now_ms: int | None = None) -> None:
        """Suspend the device's open value alerts; its rules forget short-term state (windows, runs)."""
        now = self.now_ms() if now_ms is None else now_ms
        device = self.devices.get(device_id)
        if device is not None:
            device.online = False
        for alert in list(self.by_device.get(device_id, {}).values()):
            rule = self.book.rules.get(alert.rule)
            if rule is not None and rule.SUSPENDS and alert.state in (ALERT_ACTIVE, ALERT_ACKNOWLEDGED):
                self._suspend(alert, now, "device offline; waiting for its next reading")
        for rule in self.book.rules.values():
            track = rule.tracks.get(device_id)
            if track is not None:
                track.since = -1
                rule.reset(track)

    async def device_deleted(self, device_id: str, by: str, reason: str = "") -> int:
        """The device was removed from the registry: clear its alerts, forget its state. Returns how many cleared."""
        now = self.now_ms()
        alerts = list(self.by_device.get(device_id, {}).values())
        for alert in alerts:
            self._clear(alert, self._track_of(alert), SYSTEM, now, None, reason or f"device deleted by {by}")
        for rule in self.book.rules.values():
            rule.tracks.pop(device_id, None)
        self.devices.pop(device_id, None)
        try:
            await self.storage.delete_baselines(device_id=device_id)
        except StorageError as err:
            log("alert_baselines_not_deleted", logging.WARNING, device=device_id, error=str(err)[:300])
        return len(alerts)

    async def reconcile_registry(self) -> int:
        """Treat devices that are no longer registered as deleted (removed by the CLI, or while the
        gateway was down): every device that sends data is registered, JWT devices included."""
        try:
            registered = {record.device_id for record in await self.storage.list_devices()}
        except StorageError as err:
            log("alert_registry_check_failed", logging.WARNING, error=str(err)[:300])
            return 0
        gone = [device_id for device_id in set(self.by_device) | set(self.devices) if device_id not in registered]
        for device_id in gone:
            await self.device_deleted(device_id, SYSTEM, "device no longer in the registry")
        return len(gone)
