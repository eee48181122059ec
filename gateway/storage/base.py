"""The storage interface: a written contract that every backend implements.

Backends: ``sqlite.SQLiteStorage`` (embedded default) and ``postgresql.PostgresStorage``
(a server several gateways can share). tests/gateway/storage/ is the conformance suite that
runs the same tests against both; a new backend passes it before it is used.

The contract, beyond each method's docstring:

- **Ack after commit.** ``store`` returns only after its rows are durably committed (SQLite
  ``synchronous=FULL``; PostgreSQL ``synchronous_commit=on``); callers acknowledge after that.
  If it raises StorageError, nothing of its rows is stored, or the outcome is unknown (the
  connection broke during COMMIT): either way the caller must not acknowledge, and a resend
  is harmless because of the next point.
- **Exactly once per (device_id, seq).** A row whose (device_id, seq) is already stored is
  ignored, whatever its time or values, also when several callers, connections or gateways
  store the same rows concurrently; within one call or one group commit the first wins.
- **Derived data follows the readings exactly.** In the same transaction as the readings it
  derives from, a backend keeps, for the readings actually inserted (never for ignored
  duplicates): the per-device state (highest seq, last receive time), the latest value of
  each metric, and two rollup tiers of every metric (``ROLLUP_TIERS``: 5-minute and 1-hour
  buckets of count, sum, min and max). So an ack covers them too, and a resend never counts
  twice.
- **Retention** (``expire``) deletes readings and rollup buckets older than a cut-off; the
  device state and latest values stay, so ``last_seq`` never goes back.
- **Alerts** are written only by the alert engine (gateway/alerts/): ``save_alerts`` stores a
  batch of changes (rows and their history entries) in one transaction, all or nothing, and
  assigns ids to new rows; the engine emits an alert's events only after that commit. Open
  alerts are every state but ``cleared``. Stored rules (the admin API's, tombstones for deleted
  ones) and learned baselines (JSON text per rule and device) are the engine's to interpret.
- **Errors** are StorageError (a message saying what to check); a closed storage raises it too.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class ReadingRow:
    """One reading to store. ``metrics`` maps metric name to value."""

    device_id: str
    seq: int
    time_ms: int  # best estimate of when it was read (protocol.wire.reading_time_ms)
    received_ms: int  # gateway receive time, always set
    metrics: dict[str, float]
    boot: str | None = None
    device_ts: int | None = None
    uptime_ms: int | None = None
    quality: str | None = None


RAW = "raw"
# Rollup tiers: name -> bucket width in ms. Buckets start at multiples of the width (Unix epoch, UTC).
ROLLUP_TIERS: dict[str, int] = {"5m": 300_000, "1h": 3_600_000}
DAY_MS = 86_400_000


def check_tier(source: str, start_ms: int, end_ms: int, step_ms: int) -> None:
    """ValueError unless ``source`` is a rollup tier and the range and step are on its grid."""
    width = ROLLUP_TIERS.get(source)
    if width is None:
        raise ValueError(f"source {source!r} must be {RAW!r} or one of {', '.join(ROLLUP_TIERS)}")
    if start_ms % width or end_ms % width or step_ms % width:
        raise ValueError(f"start, end and step must be multiples of {width} ms for the {source} rollups")


@dataclass(slots=True, frozen=True)
class Bucket:
    """One downsampled point: readings with ``t <= time_ms < t + step``."""

    t: int
    min: float
    avg: float
    max: float
    count: int


@dataclass(slots=True)
class DeviceState:
    """What storage knows about a device's readings (kept by ``store``, survives retention)."""

    device_id: str
    last_seq: int  # highest seq ever stored
    last_seen_ms: int  # highest received_ms ever stored
    latest: dict[str, tuple[float, int]] = field(default_factory=dict)  # metric -> (value, time_ms)


@dataclass(slots=True, frozen=True)
class Expired:
    """What one ``expire`` call deleted."""

    readings: int  # readings deleted
    rollups: int  # rollup buckets deleted, both tiers
    partitions: int = 0  # daily partitions dropped (PostgreSQL)


@dataclass(slots=True)
class DeviceRecord:
    device_id: str
    enabled: bool
    token_digest: bytes | None  # HMAC-SHA256 of the current token; None if revoked
    allow_cidrs: list[str] = field(default_factory=list)
    label: str = ""
    created_ms: int = 0
    token_created_ms: int | None = None


# Alert states (gateway/alerts/model.py has the meaning); an alert is "open" unless cleared.
ALERT_ACTIVE = "active"
ALERT_ACKNOWLEDGED = "acknowledged"
ALERT_SUSPENDED = "suspended"
ALERT_CLEARED = "cleared"
ALERT_STATES = (ALERT_ACTIVE, ALERT_ACKNOWLEDGED, ALERT_SUSPENDED, ALERT_CLEARED)


@dataclass(slots=True, eq=False)
class AlertRow:
    """One alert: a (rule, device) episode from raised to cleared. Times are gateway Unix ms.

    ``alert_id`` is 0 until storage assigned one (``save_alerts``). The alert engine keeps
    these objects in memory and changes them in place; storage writes all their columns.
    """

    alert_id: int
    device_id: str
    metric: str  # the metric name, or "*" for a device-level rule
    rule: str  # the rule's id
    raised_ms: int
    value: float | None  # the value that raised it (None when the rule has none, e.g. no_data)
    cleared_ms: int | None = None
    clear_value: float | None = None
    kind: str = "above"  # the rule's type
    severity: str = "major"
    state: str = ALERT_ACTIVE
    text: str = ""
    last_value: float | None = None
    updated_ms: int = 0
    acked_ms: int | None = None
    acked_by: str | None = None
    suspended_ms: int | None = None
    cleared_by: str | None = None
    clear_reason: str | None = None

    @property
    def is_open(self) -> bool:
        return self.state != ALERT_CLEARED


# Alert columns in both backends' order; the first is the id.
ALERT_COLUMNS = ("id", "device_id", "metric", "rule", "kind", "severity", "state", "text", "raised_ms", "value",
                 "last_value", "updated_ms", "acked_ms", "acked_by", "suspended_ms", "cleared_ms", "cleared_by",
                 "clear_value", "clear_reason")


def alert_tuple(row: AlertRow) -> tuple[Any, ...]:
    """The row's values in ALERT_COLUMNS order."""
    return (row.alert_id, row.device_id, row.metric, row.rule, row.kind, row.severity, row.state, row.text,
            row.raised_ms, row.value, row.last_value, row.updated_ms, row.acked_ms, row.acked_by,
            row.suspended_ms, row.cleared_ms, row.cleared_by, row.clear_value, row.clear_reason)


def alert_from_tuple(values: Sequence[Any]) -> AlertRow:
    """An AlertRow from values in ALERT_COLUMNS order (a database row)."""
    (alert_id, device_id, metric, rule, kind, severity, state, text, raised_ms, value, last_value, updated_ms,
     acked_ms, acked_by, suspended_ms, cleared_ms, cleared_by, clear_value, clear_reason) = values
    return AlertRow(alert_id=int(alert_id), device_id=device_id, metric=metric, rule=rule, raised_ms=int(raised_ms),
                    value=value, cleared_ms=cleared_ms, clear_value=clear_value, kind=kind, severity=severity,
                    state=state, text=text, last_value=last_value, updated_ms=int(updated_ms), acked_ms=acked_ms,
                    acked_by=acked_by, suspended_ms=suspended_ms, cleared_by=cleared_by, clear_reason=clear_reason)


@dataclass(slots=True, frozen=True)
class AlertHistoryRow:
    """One entry of an alert's history: what happened (an alert event kind), when, by whom."""

    alert_id: int
    at_ms: int
    event: str
    by: str | None = None
    value: float | None = None
    text: str = ""


@dataclass(slots=True, frozen=True)
class StoredRule:
    """An alert rule as the admin API left it: ``spec`` is the rule's canonical table (JSON
    object), or None for a deleted rule (a tombstone that hides a rule of the config file)."""

    rule_id: str
    spec: dict[str, Any] | None
    updated_ms: int
    updated_by: str


@dataclass(slots=True, frozen=True)
class BaselineRow:
    """Learned state of one (rule, device) series (JSON text, the rule type's own format)."""

    rule_id: str
    device_id: str
    data: str
    updated_ms: int


class Storage(abc.ABC):
    """Readings, the device registry and alerts."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Create the schema if needed and start background work."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Commit everything queued, then release resources. Idempotent."""

    def health(self) -> dict[str, Any]:
        """The backend's state for /healthz, without I/O: ``{"state": "ok" | "failing" | "failed" |
        "closed", ...details}``. Anything but "ok" makes /healthz answer 503. Backends override it."""
        return {"state": "ok"}

    # -- readings
    @abc.abstractmethod
    async def store(self, rows: list[ReadingRow]) -> None:
        """Durably store ``rows`` (group-committed with other callers' rows).

        Idempotent per (device_id, seq): a row already stored is ignored.
        Raises StorageError if the commit failed; then nothing of ``rows`` is stored.
        """

    @abc.abstractmethod
    async def last_seq(self, device_id: str) -> int:
        """Highest seq ever stored for the device (also after retention deleted it), 0 if none."""

    @abc.abstractmethod
    async def latest(self, device_id: str) -> dict[str, tuple[float, int]]:
        """Latest value per metric: metric -> (value, time_ms) of the reading with the newest
        (time_ms, seq) that carried the metric. Kept after retention."""

    @abc.abstractmethod
    async def device_states(self) -> dict[str, DeviceState]:
        """State and latest values of every device that has stored readings."""

    @abc.abstractmethod
    async def history(
        self, device_id: str, metric: str, start_ms: int, end_ms: int, limit: int = 10000
    ) -> list[tuple[int, float]]:
        """(time_ms, value) of one metric in [start_ms, end_ms), oldest first."""

    @abc.abstractmethod
    async def history_buckets(self, device_id: str, metric: str, start_ms: int, end_ms: int, step_ms: int,
                              source: str = RAW) -> list[Bucket]:
        """Downsample one metric over [start_ms, end_ms) into buckets of ``step_ms``.

        Bucket ``k`` covers [start_ms + k*step_ms, start_ms + (k+1)*step_ms); empty buckets are
        left out; oldest first. ``source`` is ``RAW`` (the readings) or a ``ROLLUP_TIERS`` name,
        for which start_ms, end_ms and step_ms must be multiples of the tier's width
        (ValueError otherwise); avg is then sum/count of the rollups, exactly the raw average.
        """

    @abc.abstractmethod
    async def readings(self, device_id: str, start_ms: int, end_ms: int, after: tuple[int, int] | None = None,
                       limit: int = 10000) -> list[ReadingRow]:
        """Stored readings of the device with start_ms <= time_ms < end_ms, ordered by (time_ms, seq).

        ``after`` = (time_ms, seq) of the last row of the previous page: pages through any range.
        """

    @abc.abstractmethod
    async def count_readings(self, device_id: str | None = None) -> int:
        """Number of stored readings, for one device or all."""

    @abc.abstractmethod
    async def seqs(self, device_id: str) -> list[int]:
        """Every stored seq of the device, ascending (tests and audits)."""

    # -- retention and upkeep
    async def prepare(self, now_ms: int) -> None:
        """Get ready to store readings of the coming days (PostgreSQL creates partitions ahead).

        Called at open and hourly by the gateway's retention task; no-op by default.
        """
        return None

    @abc.abstractmethod
    async def expire(self, readings_before_ms: int, rollups_before_ms: int) -> Expired:
        """Delete readings with time_ms < readings_before_ms and rollup buckets that start before
        rollups_before_ms, without stalling ``store`` (small transactions, or whole partitions).

        A backend may keep the readings of the UTC day containing readings_before_ms
        (PostgreSQL drops whole daily partitions); everything older is always deleted.
        Device state and latest values are kept.
        """

    # -- registry
    @abc.abstractmethod
    async def get_device(self, device_id: str) -> DeviceRecord | None: ...

    @abc.abstractmethod
    async def device_by_token_digest(self, digest: bytes) -> DeviceRecord | None: ...

    @abc.abstractmethod
    async def list_devices(self) -> list[DeviceRecord]: ...

    @abc.abstractmethod
    async def put_device(self, record: DeviceRecord) -> None:
        """Insert or replace the device's registry row."""

    async def create_device(self, record: DeviceRecord) -> bool:
        """Insert the device's row unless its id is registered; False if it was.

        Backends override this with an atomic insert; this fallback checks, then puts.
        """
        if await self.get_device(record.device_id) is not None:
            return False
        await self.put_device(record)
        return True

    # -- alerts (written only by the alert engine, gateway/alerts/)
    @abc.abstractmethod
    async def save_alerts(self, changes: list[tuple[AlertRow, AlertHistoryRow]]) -> list[int]:
        """Write alert changes in ONE transaction, in order; return each change's alert id.

        For each (row, entry): a row with ``alert_id == 0`` is inserted and gets a new id
        (written back into ``row.alert_id``); any other row replaces every column of the
        stored alert with that id. Then ``entry`` is appended to the alert's history (its own
        ``alert_id`` is ignored: the row's is used). All or nothing: on StorageError no change
        is stored and no ``alert_id`` is assigned.
        """

    @abc.abstractmethod
    async def active_alerts(self, limit: int | None = None) -> list[AlertRow]:
        """Open alerts (every state but cleared), newest first, at most ``limit`` (None: all)."""

    @abc.abstractmethod
    async def alerts(self, device_id: str | None = None, limit: int = 100, before_id: int | None = None,
                     state: str | None = None) -> list[AlertRow]:
        """Alerts, newest (highest id) first: of one device or all, with ``alert_id < before_id``
        (paging), in one state or all."""

    @abc.abstractmethod
    async def alert(self, alert_id: int) -> AlertRow | None:
        """One alert by id, None if unknown."""

    @abc.abstractmethod
    async def alert_history(self, alert_id: int, limit: int = 1000) -> list[AlertHistoryRow]:
        """The alert's history entries, oldest first (insertion order), at most ``limit``."""

    @abc.abstractmethod
    async def alert_rules(self) -> list[StoredRule]:
        """Every rule the admin API stored (tombstones included), by rule id."""

    @abc.abstractmethod
    async def put_alert_rule(self, rule: StoredRule) -> None:
        """Insert or replace the stored rule ``rule.rule_id`` (``spec`` None: a tombstone)."""

    @abc.abstractmethod
    async def save_baselines(self, rows: list[BaselineRow]) -> None:
        """Insert or replace learned series state, by (rule_id, device_id), in one transaction."""

    @abc.abstractmethod
    async def load_baselines(self) -> list[BaselineRow]:
        """Every stored series state."""

    @abc.abstractmethod
    async def delete_baselines(self, rule_id: str | None = None, device_id: str | None = None) -> int:
        """Delete the series state of one rule, of one device, or of one (rule, device); return how
        many rows. At least one of the two must be given (ValueError otherwise)."""
