"""The alert engine: every reading through the rules of its metric, alerts through their life cycle.

The hot path and the transitions are ``AlertLifecycle`` (gateway/alerts/lifecycle.py); here, the
engine around them: operators' requests, rule edits, start-up, timers and shutdown.

Life cycle of an alert (docs/alerts.md): raised when its rule's condition held for ``for_s``;
updated (text, value) at most every ``update_interval_s``; acknowledged by an operator;
suspended while its device is offline (value rules only) and resumed or cleared by the
device's next readings; cleared when the condition ends, by hand, or by housekeeping (rule
or device deleted, suspended longer than ``suspended_expiry_s``).

Timers (``run``): no_data silences every 2 s, suspended expiry every minute, learned state
saved every ``save_interval_s`` (and at ``close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.alerts import restore
from gateway.alerts.lifecycle import AlertLifecycle, AlertStorage
from gateway.alerts.model import (
    ACKNOWLEDGED,
    ALERT_ACKNOWLEDGED,
    ALERT_ACTIVE,
    ALERT_CLEARED,
    ALERT_SUSPENDED,
    SYSTEM,
    UPDATED,
    alert_dict,
    history_dict,
)
from gateway.alerts.rules import make_rule, parse_rule
from gateway.alerts.rules.base import FIRE, Rule
from gateway.errors import AlertError, ConfigError, StorageError
from gateway.logs import log
from gateway.storage.base import AlertRow, BaselineRow, StoredRule

SAVE_CHUNK = 2000  # baseline rows per transaction


class AlertEngine(AlertLifecycle):
    def __init__(self, storage: AlertStorage, rules: list[dict[str, Any]] | None = None, *,
                 clock: Callable[[], float] = time.time, timezone: datetime.tzinfo | None = None,
                 max_open: int = 10_000, suspended_expiry_s: float = 7 * 86400.0, save_interval_s: float = 300.0,
                 update_interval_s: float = 60.0, tick_s: float = 2.0, op_timeout_s: float = 10.0,
                 max_queue: int = 100_000, registry_check_s: float = 0.0) -> None:
        super().__init__(storage, rules, clock=clock, timezone=timezone, update_interval_s=update_interval_s,
                         max_queue=max_queue)
        self.max_open = max_open
        self.suspended_expiry_ms = int(suspended_expiry_s * 1000)
        self.save_interval_s = save_interval_s
        self.tick_s = tick_s
        self.registry_check_s = registry_check_s  # 0: never compare with the registry (tests without one)
        self.op_timeout_s = op_timeout_s
        self.started_ms = 0

    # ------------------------------------------------------------------ operators
    def open_alerts(self, device_id: str | None = None) -> list[dict[str, Any]]:
        """The open alerts (stored), oldest first: a snapshot for a consumer that starts listening now."""
        return [alert_dict(a) for a in sorted(self.open.values(), key=lambda a: a.alert_id)
                if device_id is None or a.device_id == device_id]

    async def _open_alert(self, alert_id: Any) -> AlertRow:
        if type(alert_id) is not int or alert_id < 1:
            raise AlertError("bad_request", "alert_id: a positive integer (an alert's id)")
        alert = self.open.get(alert_id)
        if alert is not None and alert.state != ALERT_CLEARED:
            return alert
        row = alert or await self._storage_call(self.storage.alert(alert_id))
        if row is None:
            raise AlertError("no_such_alert", f"alert {alert_id} does not exist")
        raise AlertError("alert_cleared", f"alert {alert_id} is already cleared (by {row.cleared_by})")

    async def _wait(self, future: asyncio.Future[None]) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(future), self.op_timeout_s)
        except (TimeoutError, StorageError):
            raise AlertError("storage_unavailable", "storage did not take the change in time; it is queued and "
                             "will be stored when storage answers (check the storage)") from None

    async def ack(self, alert_id: Any, by: str, note: str = "") -> dict[str, Any]:
        """Acknowledge an open alert (idempotent: a second ack changes nothing)."""
        alert = await self._open_alert(alert_id)
        if alert.acked_ms is None:
            now = self.now_ms()
            alert.acked_ms = now
            alert.acked_by = by
            alert.updated_ms = now
            if alert.state == ALERT_ACTIVE:
                alert.state = ALERT_ACKNOWLEDGED
            self.counts["acknowledged"] += 1
            future = asyncio.get_running_loop().create_future()
            self._record(alert, ACKNOWLEDGED, now, by, None, note or f"acknowledged by {by}", future)
            await self._wait(future)
        return alert_dict(alert)

    async def clear(self, alert_id: Any, by: str, note: str = "") -> dict[str, Any]:
        """Clear an open alert by hand. Its rule raises again for the device only after the condition
        has ended once; a learning rule (anomaly) takes the present level as normal and learns anew."""
        alert = await self._open_alert(alert_id)
        track = self._track_of(alert)
        if track is not None and track.alert is alert:
            track.latched = True
            rule = self.book.rules[alert.rule]
            rule.forget(track)
        future = asyncio.get_running_loop().create_future()
        self._clear(alert, track, by, self.now_ms(), alert.last_value, note or f"cleared by {by}", future)
        await self._wait(future)
        return alert_dict(alert)

    async def alerts(self, device_id: str | None = None, state: str | None = None, limit: int = 100,
                     before: int | None = None) -> list[dict[str, Any]]:
        rows = await self._storage_call(self.storage.alerts(device_id, limit, before, state))
        return [alert_dict(self.open.get(r.alert_id, r)) for r in rows]

    async def alert(self, alert_id: Any, history: bool = True) -> dict[str, Any]:
        if type(alert_id) is not int or alert_id < 1:
            raise AlertError("bad_request", "alert_id: a positive integer (an alert's id)")
        row = self.open.get(alert_id) or await self._storage_call(self.storage.alert(alert_id))
        if row is None:
            raise AlertError("no_such_alert", f"alert {alert_id} does not exist")
        result = alert_dict(row)
        if history:
            entries = await self._storage_call(self.storage.alert_history(alert_id))
            result["history"] = [history_dict(h) for h in entries]
        return result

    @staticmethod
    async def _storage_call(call: Any) -> Any:
        try:
            return await call
        except StorageError as err:
            raise AlertError("storage_unavailable", f"storage failed: {err}") from None

    # ------------------------------------------------------------------ rules
    def rules(self) -> list[dict[str, Any]]:
        return self.book.describe_all()

    def rules_for(self, device_id: str) -> list[dict[str, Any]]:
        """The canonical tables of the rules in force that apply to ``device_id``, by id."""
        return [dict(rule.spec) for _, rule in sorted(self.book.rules.items()) if rule.applies(device_id)]

    async def put_rule(self, spec: Any, by: str) -> dict[str, Any]:
        """Add or replace a rule (stored: it survives a restart). Open alerts of a replaced rule of
        the same type and metric stay (its learned state is carried over); otherwise they clear."""
        try:
            checked = parse_rule(spec, "rule")
        except ConfigError as err:
            raise AlertError("bad_rule", str(err)) from None
        now = self.now_ms()
        stored = StoredRule(checked["id"], checked, now, by)
        await self._storage_call(self.storage.put_alert_rule(stored))
        rule = make_rule(checked)
        rule.hour_of = self.hour_of
        old = self.book.set(rule, stored)
        if old is not None:
            self._carry_over(old, rule, by, now)
        log("alert_rule_put", rule=rule.id, type=rule.kind, by=by)
        return self.book.describe(rule.id)

    def _carry_over(self, old: Rule, new: Rule, by: str, now_ms: int) -> None:
        same = old.kind == new.kind and old.metric == new.metric
        for device_id, track in old.tracks.items():
            if track is None:
                continue
            alert: AlertRow | None = track.alert
            if not same or not new.applies(device_id):
                if alert is not None:
                    self._clear(alert, track, SYSTEM, now_ms, None, f"rule {old.id} changed by {by}")
                continue
            fresh = new.new_track(device_id)
            data = old.save(track)
            if data is not None:
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    new.load(fresh, data)
            fresh.alert = alert
            fresh.latched = track.latched
            new.tracks[device_id] = fresh
            if alert is not None and alert.severity != new.severity:
                alert.severity = new.severity
                alert.updated_ms = now_ms
                self._record(alert, UPDATED, now_ms, by, None, f"severity now {new.severity} (rule changed by {by})")

    async def delete_rule(self, rule_id: Any, by: str) -> dict[str, Any]:
        if not isinstance(rule_id, str) or rule_id not in self.book.rules:
            raise AlertError("no_such_rule", f"no rule {str(rule_id)[:64]!r}; list them with alert_rules")
        now = self.now_ms()
        await self._storage_call(self.storage.put_alert_rule(StoredRule(rule_id, None, now, by)))
        old = self.book.remove(rule_id, StoredRule(rule_id, None, now, by))
        cleared = 0
        if old is not None:
            for track in old.tracks.values():
                if track is not None and track.alert is not None:
                    self._clear(track.alert, track, SYSTEM, now, None, f"rule {rule_id} deleted by {by}")
                    cleared += 1
        try:
            await self.storage.delete_baselines(rule_id=rule_id)
        except StorageError as err:
            log("alert_baselines_not_deleted", logging.WARNING, rule=rule_id, error=str(err)[:300])
        log("alert_rule_deleted", rule=rule_id, by=by, cleared=cleared)
        return {"rule": rule_id, "cleared": cleared}

    # ------------------------------------------------------------------ start, timers, stop
    async def start(self) -> None:
        """Load the stored rules, learned state and open alerts (gateway/alerts/restore.py)."""
        self.started_ms = self.now_ms()
        self.book.load(await self.storage.alert_rules())
        for rule in self.book.rules.values():
            rule.hour_of = self.hour_of
        await restore.load_baselines(self)
        await restore.restore_alerts(self, self.started_ms, self.max_open)
        if self.registry_check_s > 0:
            await self.reconcile_registry()

    def tick(self, now_ms: int | None = None) -> None:
        """The timed rules' check (no_data): raise for silent devices, refresh open silences' texts."""
        now = self.now_ms() if now_ms is None else now_ms
        for rule in self.book.timed_rules:
            silence = rule.silence
            for track in rule.tracks.values():
                if track is None or track.latched:
                    continue
                if silence(track, now, self.started_ms) != FIRE:
                    continue
                alert = track.alert
                if alert is None:
                    self._raise(rule, track, None, now, now)
                elif now - alert.updated_ms >= self.update_ms:
                    self._refresh(rule, track, alert, None, now, now)

    def expire_suspended(self, now_ms: int | None = None) -> int:
        """Clear alerts suspended for longer than ``suspended_expiry_s`` (a device that never came back)."""
        now = self.now_ms() if now_ms is None else now_ms
        old = [a for a in self.open.values()
               if a.state == ALERT_SUSPENDED and now - (a.suspended_ms or now) > self.suspended_expiry_ms]
        hours = self.suspended_expiry_ms / 3_600_000
        for alert in old:
            self._clear(alert, self._track_of(alert), SYSTEM, now, None,
                        f"device offline for more than {hours:g} h while the alert was suspended")
        return len(old)

    async def save_baselines(self) -> int:
        """Store every series' learned state; returns how many rows."""
        now = self.now_ms()
        rows = []
        for rule in self.book.rules.values():
            save = rule.save
            for device_id, track in rule.tracks.items():
                if track is None:
                    continue
                data = save(track)
                if data is not None:
                    rows.append(BaselineRow(rule.id, device_id, json.dumps(data, separators=(",", ":")), now))
        for start in range(0, len(rows), SAVE_CHUNK):
            await self.storage.save_baselines(rows[start:start + SAVE_CHUNK])
            await asyncio.sleep(0)  # let readings through between chunks
        return len(rows)

    async def run(self) -> None:
        """The writer and the timers, for the gateway's life (a supervised task)."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.writer.run())
            group.create_task(self._timers())

    async def _timers(self) -> None:
        last_expiry = last_save = last_registry = time.monotonic()
        while True:
            await asyncio.sleep(self.tick_s)
            self.tick()
            mono = time.monotonic()
            if mono - last_expiry >= 60:
                last_expiry = mono
                self.expire_suspended()
            if self.registry_check_s > 0 and mono - last_registry >= self.registry_check_s:
                last_registry = mono
                await self.reconcile_registry()
            if mono - last_save >= self.save_interval_s:
                last_save = mono
                try:
                    await self.save_baselines()
                except StorageError as err:
                    self.counts["baseline_errors"] += 1
                    log("alert_baselines_not_saved", logging.WARNING, error=str(err)[:300])

    async def close(self, timeout_s: float = 10.0) -> None:
        """Store what was learned and every queued change (shutdown; ``run`` may be stopped already)."""
        try:
            await self.save_baselines()
        except StorageError as err:
            log("alert_baselines_not_saved", logging.WARNING, error=str(err)[:300])
        if not await self.writer.drain(timeout_s):
            log("alert_changes_not_stored", logging.ERROR, queued=len(self.writer.queue),
                hint="storage did not take them before shutdown")

    def stats(self) -> dict[str, Any]:
        """Counters and gauges for /metrics."""
        by_state: dict[str, int] = {}
        by_severity: dict[str, int] = {}
        for alert in self.open.values():
            by_state[alert.state] = by_state.get(alert.state, 0) + 1
            by_severity[alert.severity] = by_severity.get(alert.severity, 0) + 1
        return dict(self.counts, open_by_state=by_state, open_by_severity=by_severity, queued=len(self.writer.queue),
                    written=self.writer.written, write_failures=self.writer.failures, dropped=self.writer.dropped,
                    rules=len(self.book.rules))
