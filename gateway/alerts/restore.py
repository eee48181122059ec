"""Start-up: the learned state and the open alerts the gateway had when it stopped.

Open alerts are loaded newest first, at most ``max_open`` (older open ones beyond that are
cleared in pages, never all in memory). Each is checked against the rules in force:

- its rule no longer exists, changed type or metric, or no longer applies to the device,
  or a newer alert of the same rule and device is open: cleared (by "system", saying why),
  stored directly without events (no listener of this process ever saw it raised, so a
  webhook is not flooded with clears of alerts from before an upgrade);
- a value alert (above, below, rate, stuck, anomaly, predictive) is suspended: no device
  is online yet; the device's next readings resume it or clear it;
- a no_data or health alert stays as it was.

So a restart never brings back alerts nobody can clear: stale ones are cleared, the rest are
attached to their rule's series and behave as if the gateway had not stopped.
"""

from __future__ import annotations

import json
import logging

from gateway.alerts.lifecycle import AlertLifecycle
from gateway.alerts.model import ALERT_ACKNOWLEDGED, ALERT_ACTIVE, ALERT_SUSPENDED, CLEARED, SYSTEM, mark_cleared
from gateway.logs import log
from gateway.storage.base import AlertHistoryRow, AlertRow

PAGE = 1000
OPEN_STATES = (ALERT_ACTIVE, ALERT_ACKNOWLEDGED, ALERT_SUSPENDED)


async def load_baselines(engine: AlertLifecycle) -> int:
    """Give each rule's series back what it had learned; returns how many series."""
    loaded = 0
    for row in await engine.storage.load_baselines():
        rule = engine.book.rules.get(row.rule_id)
        if rule is None or not rule.applies(row.device_id):
            continue
        track = engine.track_for(rule, row.device_id)
        if track is None:
            continue
        try:
            rule.load(track, json.loads(row.data))
        except (ValueError, TypeError, KeyError, IndexError) as err:
            engine.counts["baseline_errors"] += 1
            log("alert_baseline_unreadable", logging.WARNING, rule=row.rule_id, device=row.device_id,
                error=str(err)[:200])
            continue
        loaded += 1
    return loaded


async def restore_alerts(engine: AlertLifecycle, now: int, max_open: int) -> dict[str, int]:
    """Attach, suspend or clear the stored open alerts, at most ``max_open`` of them, as of ``now``
    (the engine's start, Unix ms); returns counts (logged)."""
    rows = await engine.storage.active_alerts(limit=max_open)
    counts = {"restored": 0, "suspended": 0, "cleared": 0, "over_limit": 0}
    if len(rows) >= max_open and rows:
        counts["over_limit"] = await _clear_beyond(engine, rows[-1].alert_id, now, max_open)
    seen: set[tuple[str, str]] = set()
    stale: list[AlertRow] = []
    for row in rows:  # newest first: the newest of duplicates stays
        rule = engine.book.rules.get(row.rule)
        reason = None
        if rule is None:
            reason = f"rule {row.rule} no longer exists"
        elif rule.kind != row.kind or rule.metric != row.metric:
            reason = f"rule {row.rule} changed since it was raised"
        elif (row.rule, row.device_id) in seen:
            reason = "a newer alert of the same rule and device is open"
        elif not rule.applies(row.device_id):
            reason = f"rule {row.rule} no longer applies to this device"
        if reason is not None or rule is None:
            stale.append(row)
            mark_cleared(row, SYSTEM, now, None, f"{reason} (found at start)")
            continue
        seen.add((row.rule, row.device_id))
        track = engine.track_for(rule, row.device_id)
        if track is None:
            continue
        counts["restored"] += 1
        if engine.adopt(rule, track, row, now):
            counts["suspended"] += 1
    counts["cleared"] = len(stale)
    for start in range(0, len(stale), PAGE):  # stored directly: no listener ever saw these alerts
        await engine.storage.save_alerts([(row, _cleared_entry(row)) for row in stale[start:start + PAGE]])
    log("alerts_restored", **counts)
    return counts


def _cleared_entry(row: AlertRow) -> AlertHistoryRow:
    return AlertHistoryRow(row.alert_id, row.cleared_ms or 0, CLEARED, row.cleared_by, None, row.clear_reason or "")


async def _clear_beyond(engine: AlertLifecycle, before_id: int, now: int, max_open: int) -> int:
    """Clear the open alerts older than the ``max_open`` newest, a page at a time, stored directly."""
    cleared = 0
    reason = f"more than {max_open} open alerts at start (alert_max_open); the oldest were cleared"
    while True:
        page = []
        for state in OPEN_STATES:
            page += await engine.storage.alerts(limit=PAGE, before_id=before_id, state=state)
        if not page:
            return cleared
        for row in page:
            mark_cleared(row, SYSTEM, now, None, reason)
        await engine.storage.save_alerts([(row, _cleared_entry(row)) for row in page])
        cleared += len(page)
        before_id = min(row.alert_id for row in page)
