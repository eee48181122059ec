"""The storage interface: a written contract that every backend implements.

Backends: ``sqlite.SQLiteStorage`` (embedded default) and ``postgresql.PostgresStorage``
(a server several gateways can share). tests/gateway/storage/ is the conformance suite that
runs the same tests against both; a new backend passes it before it is used.

The contract comes in protocols by concern: ``ReadingWriter`` (``store``), ``ReadingHistory``
(what is stored, read back), ``Upkeep`` (retention), ``ForwardLog`` (forwarding's log, cursors
and leases), ``DeviceRegistry``, ``DashboardTokens`` and ``AlertStore``. ``Storage`` is their
union, with ``open``/``close``/``health``: a backend subclasses it and implements everything,
while a consumer takes only the protocol it uses (the flusher a ReadingWriter, a forwarder a
ForwardLog, ...), so a test's fake implements only that.

The contract, beyond each method's docstring:

- **Ack after commit.** ``store`` returns only after its rows are durably committed (SQLite
  ``synchronous=FULL``; PostgreSQL ``synchronous_commit=on``); callers acknowledge after that.
  If it raises StorageError, nothing of its rows is stored, or the outcome is unknown (the
  connection broke during COMMIT): either way the caller must not acknowledge, and a resend
  is harmless because of the next point.
- **Exactly once per (device_id, seq).** A row whose (device_id, seq) is already stored is
  ignored, whatever its time or values, also when several callers, connections or gateways
  store the same rows concurrently; within one call or one group commit the first wins.
  ``store`` returns the rows it really inserted, so whatever follows a commit (the dashboard,
  alert rules, gateway/fanout.py) sees each reading once, however often it was sent.
- **Derived data follows the readings exactly.** In the same transaction as the readings it
  derives from, a backend keeps, for the readings actually inserted (never for ignored
  duplicates): the per-device state (highest seq, last receive time), the latest value of
  each metric, and two rollup tiers of every metric (``ROLLUP_TIERS``: 5-minute and 1-hour
  buckets of count, sum, min and max). So an ack covers them too, and a resend never counts
  twice.
- **Retention** (``expire``) deletes readings and rollup buckets older than a cut-off; the
  device state and latest values stay, so ``last_seq`` never goes back.
- **Storage order for forwarders.** Every group commit that inserts readings also appends, in
  the same transaction, one row to the forward log holding the keys of exactly those readings.
  ``readings_after`` walks that log, so a sink (gateway/forward/) reads every stored reading
  once, in commit order, after its cursor (a ``LogPosition``), and a reading committed late by
  a concurrent transaction is never skipped. Each sink's cursor and its lease (only one owner
  forwards at a time, also across gateways sharing a database) are kept by ``claim_sink``,
  ``advance_sink`` and ``release_sink``. ``trim_forward_log`` (and ``expire``) delete the log
  rows every cursor has passed. The log is written only while some sink cursor exists.
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
from typing import Any, Protocol

from gateway.errors import StorageError


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
    forward_log: int = 0  # forward log rows deleted (trim_forward_log)


@dataclass(slots=True, frozen=True, order=True)
class LogPosition:
    """A place in the storage order of readings: everything before the commit (tx, commit), plus
    the first ``index`` readings of that commit, lies behind it.

    ``tx`` is the writing transaction's id on PostgreSQL (0 on SQLite), ``commit`` the forward
    log row of the group commit. Positions compare in storage order.
    """

    tx: int = 0
    commit: int = 0
    index: int = 0


@dataclass(slots=True, frozen=True)
class SinkCursor:
    """A forwarding sink's cursor and lease, as stored."""

    sink: str
    position: LogPosition
    owner: str  # the gateway instance holding (or last holding) the lease
    lease_until_ms: int  # the owner's lease ends then unless renewed; 0 after a release
    updated_ms: int  # when the cursor last moved or the lease was last renewed
    expired: int = 0  # readings whose log rows were trimmed by age before this sink passed them (forced drops)


@dataclass(slots=True)
class DeviceRecord:
    device_id: str
    enabled: bool
    token_digest: bytes | None  # HMAC-SHA256 of the current token; None if revoked
    allow_cidrs: list[str] = field(default_factory=list)
    label: str = ""
    created_ms: int = 0
    token_created_ms: int | None = None
    labels: dict[str, str] = field(default_factory=dict)  # key -> value ("" for a bare tag): gateway/groups.py


DASHBOARD_ROLES = ("viewer", "operator")  # an operator may also do everything a viewer may


@dataclass(slots=True)
class DashboardToken:
    """A named dashboard token (``python -m gateway tokens add NAME --role ROLE``).

    Only the digest is stored: HMAC-SHA256 under the gateway's token key, as for device tokens."""

    name: str
    role: str  # one of DASHBOARD_ROLES
    digest: bytes
    created_ms: int = 0


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


# The contract by concern (see the module docstring); ``Storage`` at the end is their union.


class ReadingWriter(Protocol):
    """Storing readings (the flusher, the commit process)."""

    @abc.abstractmethod
    async def store(self, rows: list[ReadingRow]) -> list[ReadingRow]:
        """Durably store ``rows`` (group-committed with other callers' rows); return the rows this
        call newly stored.

        ``rows`` may hold rows of several devices, interleaved (the gateway stores every frame of
        one event-loop iteration in one call, gateway/flusher.py); each device keeps its own
        watermark. Idempotent per (device_id, seq): a row already stored is ignored.

        The return value is what the commit really inserted for this caller: the row objects of
        ``rows`` that are new, in their order, a plain list (picklable). It leaves out a row whose
        (device_id, seq) was stored before, by any caller or gateway, a second row of one key
        within ``rows``, and a row of a key that another caller of the same group commit offered
        first (that caller gets it). So across all callers each stored reading is returned
        exactly once: the gateway hands these rows to its listeners (gateway/fanout.py).
        Raises StorageError if the commit failed; then nothing of ``rows`` is stored.
        """


class ReadingHistory(Protocol):
    """The stored readings, read: device state, latest values, history, export."""

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



class Upkeep(Protocol):
    """Retention and upkeep (gateway/retention.py)."""

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



class ForwardLog(Protocol):
    """Forwarding (gateway/forward/): the forward log, sink cursors and leases."""

    async def readings_after(self, position: LogPosition,
                             limit: int = 1000) -> list[tuple[LogPosition, ReadingRow | None]]:
        """Up to ``limit`` readings stored after ``position``, in storage order (commit by commit;
        within a commit by (device_id, seq)), each with the position just after it.

        A reading whose log entry outlived the reading itself (deleted by retention before it
        was forwarded) comes as ``None`` with its position, so the caller can count it.
        On PostgreSQL only commits of transactions older than every running one are returned,
        so nothing committed later can land before a returned position.
        """
        raise StorageError(f"{type(self).__name__} keeps no readings to forward; use sqlite or postgresql storage")

    async def register_sink(self, sink: str, now_ms: int) -> None:
        """Make sure ``sink`` has a cursor (new: at the end of the log, no lease) and write the forward
        log from now on. Every gateway configured with the sink calls it at start, also when another
        process (the forwarding worker, another instance) does the forwarding."""
        raise StorageError(f"{type(self).__name__} keeps no readings to forward; use sqlite or postgresql storage")

    async def claim_sink(self, sink: str, owner: str, now_ms: int, lease_ms: int) -> LogPosition | None:
        """Take or renew ``sink``'s lease for ``owner`` until now_ms + lease_ms and return its cursor;
        None while another owner's lease runs (``lease_until_ms > now_ms``).

        Owners are ``<instance>/<process>``: an owner takes over at once from one of the same
        instance (a restarted or replacement process of the same gateway, whose lease would
        otherwise hold for up to ``lease_ms``); the old one is fenced off from then on
        (``advance_sink`` returns False to it).

        A sink seen for the first time starts at the end of the log (readings stored from now on).
        Also makes the storage write the forward log from now on.
        """
        raise StorageError(f"{type(self).__name__} keeps no readings to forward; use sqlite or postgresql storage")

    async def advance_sink(self, sink: str, owner: str, position: LogPosition, now_ms: int, lease_ms: int) -> bool:
        """Store ``position`` as ``sink``'s cursor and renew the lease, if ``owner`` still holds it;
        False (nothing changed) if another owner took the sink over. A cursor never moves back."""
        raise StorageError(f"{type(self).__name__} keeps no readings to forward")

    async def release_sink(self, sink: str, owner: str) -> None:
        """End ``owner``'s lease of ``sink`` now (another owner may claim it at once); keeps the cursor."""
        raise StorageError(f"{type(self).__name__} keeps no readings to forward")

    async def sink_cursors(self) -> list[SinkCursor]:
        """Every sink's cursor, by sink name."""
        return []

    async def forget_sink(self, sink: str) -> bool:
        """Delete ``sink``'s cursor (a sink no longer configured stops holding the log back);
        False if there was none. The sink starts at the end of the log if it comes back."""
        return False

    async def trim_forward_log(self, older_than_ms: int) -> int:
        """Delete forward log rows every sink cursor has passed (all rows when there is no sink),
        and rows written before ``older_than_ms`` whatever the cursors: their readings a sink had
        not passed are added to its cursor's ``expired`` count. Returns the log rows deleted."""
        return 0



class DeviceRegistry(Protocol):
    """The device registry."""

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

    async def delete_device(self, device_id: str) -> bool:
        """Delete the device's registry row (its readings stay until retention); False if none."""
        raise StorageError(f"{type(self).__name__} cannot delete devices")


class DashboardTokens(Protocol):
    """Dashboard tokens (a table created idempotently at every open, not a numbered migration)."""

    @abc.abstractmethod
    async def add_dashboard_token(self, token: DashboardToken) -> bool:
        """Insert the token unless its name exists (atomic); False if the name was taken.

        A digest names one token only: StorageError if another row has the same digest."""

    @abc.abstractmethod
    async def dashboard_token_by_digest(self, digest: bytes) -> DashboardToken | None:
        """The token whose digest this is, or None (revoked or never issued)."""

    @abc.abstractmethod
    async def list_dashboard_tokens(self) -> list[DashboardToken]:
        """Every dashboard token, in name order."""

    @abc.abstractmethod
    async def delete_dashboard_token(self, name: str) -> bool:
        """Revoke (delete) the named token; False if there was none."""


class AlertStore(Protocol):
    """Alerts, stored rules and learned baselines (written only by the alert engine, gateway/alerts/)."""

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


class DeviceData(ReadingHistory, DeviceRegistry, Protocol):
    """The registry with what is stored of each device (the history API, the MQTT bridge)."""


class Storage(ReadingWriter, ReadingHistory, Upkeep, ForwardLog, DeviceRegistry, DashboardTokens, AlertStore,
              abc.ABC):
    """Readings, the forward log, the device registry, dashboard tokens and alerts: the whole
    contract, which every backend implements (tests/gateway/storage/ is its conformance suite)."""

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
