"""``storage = "none"``: readings are not stored (benchmarks of the transport alone).

The registry and alerts still go to the wrapped backend (SQLite); readings are counted,
not kept, and ``store`` returns at once, with the rows it accepted (``NoneStorage.store``).
Never use it where readings matter: acks then mean "received", not "stored". The bench runs
it as the system ``gateway-storage-none``.
"""

from __future__ import annotations

from typing import Any

from gateway.storage.base import (
    RAW,
    AlertHistoryRow,
    AlertRow,
    BaselineRow,
    Bucket,
    DashboardToken,
    DeviceRecord,
    DeviceState,
    Expired,
    ReadingRow,
    Storage,
    StoredRule,
)


class NoneStorage(Storage):
    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self._last: dict[str, int] = {}
        self._count = 0

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    def health(self) -> dict[str, Any]:
        return {**self.inner.health(), "readings": "not stored (storage = none)"}

    async def store(self, rows: list[ReadingRow]) -> list[ReadingRow]:
        """Count ``rows``; return the ones "accepted": each device's rows above its highest seq so
        far (it keeps no index of seqs), in order. So within a call the first row of a key wins,
        and a resend is never handed on twice (the dashboard and the alert rules still see every
        reading once, gateway/fanout.py)."""
        last = self._last
        accepted: list[ReadingRow] = []
        for row in rows:
            if row.seq > last.get(row.device_id, 0):
                last[row.device_id] = row.seq
                accepted.append(row)
        self._count += len(accepted)
        return accepted

    async def last_seq(self, device_id: str) -> int:
        return self._last.get(device_id, 0)

    async def latest(self, device_id: str) -> dict[str, tuple[float, int]]:
        return {}

    async def history(self, device_id: str, metric: str, start_ms: int, end_ms: int,
                      limit: int = 10000) -> list[tuple[int, float]]:
        return []

    async def device_states(self) -> dict[str, DeviceState]:
        return {device: DeviceState(device, seq, 0) for device, seq in self._last.items()}

    async def history_buckets(self, device_id: str, metric: str, start_ms: int, end_ms: int, step_ms: int,
                              source: str = RAW) -> list[Bucket]:
        return []

    async def readings(self, device_id: str, start_ms: int, end_ms: int, after: tuple[int, int] | None = None,
                       limit: int = 10000) -> list[ReadingRow]:
        return []

    async def expire(self, readings_before_ms: int, rollups_before_ms: int) -> Expired:
        return Expired(readings=0, rollups=0)

    async def count_readings(self, device_id: str | None = None) -> int:
        return self._count if device_id is None else self._last.get(device_id, 0)

    async def seqs(self, device_id: str) -> list[int]:
        return []

    async def get_device(self, device_id: str) -> DeviceRecord | None:
        return await self.inner.get_device(device_id)

    async def device_by_token_digest(self, digest: bytes) -> DeviceRecord | None:
        return await self.inner.device_by_token_digest(digest)

    async def list_devices(self) -> list[DeviceRecord]:
        return await self.inner.list_devices()

    async def put_device(self, record: DeviceRecord) -> None:
        await self.inner.put_device(record)

    async def add_dashboard_token(self, token: DashboardToken) -> bool:
        return await self.inner.add_dashboard_token(token)

    async def dashboard_token_by_digest(self, digest: bytes) -> DashboardToken | None:
        return await self.inner.dashboard_token_by_digest(digest)

    async def list_dashboard_tokens(self) -> list[DashboardToken]:
        return await self.inner.list_dashboard_tokens()

    async def delete_dashboard_token(self, name: str) -> bool:
        return await self.inner.delete_dashboard_token(name)

    async def save_alerts(self, changes: list[tuple[AlertRow, AlertHistoryRow]]) -> list[int]:
        return await self.inner.save_alerts(changes)

    async def active_alerts(self, limit: int | None = None) -> list[AlertRow]:
        return await self.inner.active_alerts(limit)

    async def alerts(self, device_id: str | None = None, limit: int = 100, before_id: int | None = None,
                     state: str | None = None) -> list[AlertRow]:
        return await self.inner.alerts(device_id, limit, before_id, state)

    async def alert(self, alert_id: int) -> AlertRow | None:
        return await self.inner.alert(alert_id)

    async def alert_history(self, alert_id: int, limit: int = 1000) -> list[AlertHistoryRow]:
        return await self.inner.alert_history(alert_id, limit)

    async def alert_rules(self) -> list[StoredRule]:
        return await self.inner.alert_rules()

    async def put_alert_rule(self, rule: StoredRule) -> None:
        await self.inner.put_alert_rule(rule)

    async def save_baselines(self, rows: list[BaselineRow]) -> None:
        await self.inner.save_baselines(rows)

    async def load_baselines(self) -> list[BaselineRow]:
        return await self.inner.load_baselines()

    async def delete_baselines(self, rule_id: str | None = None, device_id: str | None = None) -> int:
        return await self.inner.delete_baselines(rule_id, device_id)
