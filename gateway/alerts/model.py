"""The alert's public shape and the events the engine emits (docs/alerts.md).

An alert is a ``storage.base.AlertRow`` (one class for memory and storage); ``alert_dict`` is
its JSON form, the same for the event stream, the admin API, dashboards, MQTT and webhooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.alerts.rules.base import SEVERITIES
from gateway.storage.base import (
    ALERT_ACKNOWLEDGED,
    ALERT_ACTIVE,
    ALERT_CLEARED,
    ALERT_STATES,
    ALERT_SUSPENDED,
    AlertHistoryRow,
    AlertRow,
)

RAISED = "raised"
UPDATED = "updated"
ACKNOWLEDGED = "acknowledged"
SUSPENDED = "suspended"
RESUMED = "resumed"
CLEARED = "cleared"
EVENT_KINDS = (RAISED, UPDATED, ACKNOWLEDGED, SUSPENDED, RESUMED, CLEARED)

AUTO = "auto"  # cleared_by when the condition ended
SYSTEM = "system"  # cleared_by for the engine's own housekeeping (rule or device deleted, restore)

__all__ = ["ACKNOWLEDGED", "ALERT_ACKNOWLEDGED", "ALERT_ACTIVE", "ALERT_CLEARED", "ALERT_STATES", "ALERT_SUSPENDED",
           "AUTO", "CLEARED", "EVENT_KINDS", "RAISED", "RESUMED", "SEVERITIES", "SUSPENDED", "SYSTEM", "UPDATED",
           "AlertEvent", "alert_dict", "history_dict", "mark_cleared"]


def alert_dict(a: AlertRow) -> dict[str, Any]:
    return {"id": a.alert_id, "device": a.device_id, "metric": a.metric, "rule": a.rule, "type": a.kind,
            "severity": a.severity, "state": a.state, "text": a.text, "value": a.value, "last_value": a.last_value,
            "raised": a.raised_ms, "updated": a.updated_ms, "acked": a.acked_ms, "acked_by": a.acked_by,
            "suspended": a.suspended_ms, "cleared": a.cleared_ms, "cleared_by": a.cleared_by,
            "clear_value": a.clear_value, "clear_reason": a.clear_reason}


def mark_cleared(alert: AlertRow, by: str, now_ms: int, value: float | None, reason: str) -> None:
    """Make ``alert`` cleared (in memory; the caller stores the change)."""
    alert.state = ALERT_CLEARED
    alert.cleared_ms = now_ms
    alert.cleared_by = by
    alert.clear_value = value
    alert.clear_reason = reason
    alert.updated_ms = now_ms


def history_dict(h: AlertHistoryRow) -> dict[str, Any]:
    return {"at": h.at_ms, "event": h.event, "by": h.by, "value": h.value, "text": h.text}


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One change of one alert, emitted after it was stored. ``alert`` is the alert's
    ``alert_dict`` after the change, shared by every listener (read it, do not change it)."""

    kind: str
    alert: dict[str, Any]
    at: int
    by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"event": self.kind, "at": self.at, "by": self.by, "alert": self.alert}
