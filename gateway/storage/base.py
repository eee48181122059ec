"""The storage interface. SQLite is the embedded default; PostgreSQL plugs in here later.

Every method is async so a network database fits without changing callers. ``store``
returns only after the rows are durably committed; callers acknowledge after that.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class ReadingRow:
    """One reading to store. ``metrics`` maps metric name to value."""

    device_id: str
    seq: int
    time_ms: int  # best estimate of when it was read (protocol.core.reading_time_ms)
    received_ms: int  # gateway receive time, always set
    metrics: dict[str, float]
    boot: str | None = None
    device_ts: int | None = None
    uptime_ms: int | None = None
    quality: str | None = None


@dataclass(slots=True)
class DeviceRecord:
    device_id: str
    enabled: bool
    token_digest: bytes | None  # HMAC-SHA256 of the current token; None if revoked
    allow_cidrs: list[str] = field(default_factory=list)
    label: str = ""
    created_ms: int = 0
    token_created_ms: int | None = None


@dataclass(slots=True)
class AlertRow:
    alert_id: int
    device_id: str
    metric: str
    rule: str  # e.g. "temperature > 30"
    raised_ms: int
    value: float
    cleared_ms: int | None = None
    clear_value: float | None = None


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
        """Highest seq stored for the device, 0 if none."""

    @abc.abstractmethod
    async def latest(self, device_id: str) -> dict[str, tuple[float, int]]:
        """Latest value per metric: metric -> (value, time_ms)."""

    @abc.abstractmethod
    async def history(
        self, device_id: str, metric: str, start_ms: int, end_ms: int, limit: int = 10000
    ) -> list[tuple[int, float]]:
        """(time_ms, value) of one metric in [start_ms, end_ms), oldest first."""

    @abc.abstractmethod
    async def count_readings(self, device_id: str | None = None) -> int:
        """Number of stored readings, for one device or all."""

    @abc.abstractmethod
    async def seqs(self, device_id: str) -> list[int]:
        """Every stored seq of the device, ascending (tests and audits)."""

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

    # -- alerts
    @abc.abstractmethod
    async def raise_alert(self, device_id: str, metric: str, rule: str, at_ms: int, value: float) -> int:
        """Store a raised alert; return its id."""

    @abc.abstractmethod
    async def clear_alert(self, alert_id: int, at_ms: int, value: float) -> None: ...

    @abc.abstractmethod
    async def active_alerts(self) -> list[AlertRow]: ...

    @abc.abstractmethod
    async def alerts(self, device_id: str | None = None, limit: int = 100) -> list[AlertRow]:
        """Most recent alerts first, active and cleared."""
