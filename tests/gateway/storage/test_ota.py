"""Conformance: the OTA store (gateway/storage/ota_base.py) on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import OtaError
from gateway.storage.base import Storage
from gateway.storage.none import NoneStorage
from gateway.storage.ota_backends import ota_store
from gateway.storage.ota_base import (
    ABORTED,
    DONE,
    DOWNLOADING,
    FAILED,
    GOOD,
    OFFERED,
    PAUSED,
    PENDING,
    RUNNING,
    STOPPED,
    TRIAL,
    DeviceReport,
    Member,
    Release,
    Rollout,
)
from gateway.storage.sqlite import SQLiteStorage
from tests.gateway.storage.conftest import Backend

BLOB = bytes(range(256)) * 40 + b"tail"  # 10244 bytes, every byte value


def release(release_id: str = "esp32-1.2.0", created_ms: int = 1000) -> Release:
    return Release(release_id, "esp32", release_id.split("-", 1)[1], '{"v": 1}', "ab" * 64, created_ms, len(BLOB) + 3)


def rollout(rollout_id: str = "ro-1", release_id: str = "esp32-1.2.0", state: str = RUNNING) -> Rollout:
    return Rollout(rollout_id, release_id, state, "devices", 10, 1, 2000, 2000)


def test_releases_and_chunks(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        ota = ota_store(s)
        assert await ota.releases() == []
        assert await ota.put_release(release(), {"app.mpy": BLOB, "main.py": b"abc"}) is True
        assert await ota.put_release(release(), {"app.mpy": b"other"}) is False  # never twice, first kept
        assert await ota.put_release(release("esp32-1.3.0", 5000), {"app.mpy": b"x"}) is True
        assert [r.release_id for r in await ota.releases()] == ["esp32-1.3.0", "esp32-1.2.0"]
        assert await ota.release("esp32-1.2.0") == release()
        assert await ota.release("esp32-9") is None
        assert await ota.chunk("esp32-1.2.0", "app.mpy", 0, 2048) == (BLOB[:2048], len(BLOB))
        assert await ota.chunk("esp32-1.2.0", "app.mpy", 10240, 2048) == (b"tail", len(BLOB))
        assert await ota.chunk("esp32-1.2.0", "app.mpy", len(BLOB), 2048) == (b"", len(BLOB))
        assert await ota.chunk("esp32-1.2.0", "main.py", 1, 4096) == (b"bc", 3)
        assert await ota.chunk("esp32-1.2.0", "nope.py", 0, 10) is None
        assert await ota.chunk("esp32-1.3.0", "main.py", 0, 10) is None
        assert await ota.delete_release("esp32-1.3.0") is True
        assert await ota.delete_release("esp32-1.3.0") is False
        assert await ota.chunk("esp32-1.3.0", "app.mpy", 0, 10) is None

    backend.run(body)


def test_rollouts_members_and_reports(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        ota = ota_store(s)
        with pytest.raises(OtaError) as err:  # no rollout of a release that does not exist
            await ota.create_rollout(rollout(), [])
        assert err.value.code == "no_such_release"
        await ota.put_release(release(), {"app.mpy": BLOB})
        members = [Member("ro-1", "d1", True), Member("ro-1", "d2", False), Member("ro-1", "d3", False)]
        await ota.create_rollout(rollout(), members)
        assert await ota.rollout("ro-1") == rollout()
        assert await ota.rollout("ro-2") is None
        assert [m.device_id for m in await ota.members("ro-1")] == ["d1", "d2", "d3"]
        assert (await ota.members("ro-1"))[0].canary is True
        assert [r.rollout_id for r in await ota.rollouts((RUNNING, PAUSED))] == ["ro-1"]
        assert await ota.rollouts((DONE,)) == []

        # A pending member is not offered: the device may not download, its reports move nothing.
        assert await ota.offered("d1", "esp32-1.2.0") is False
        report = DeviceReport("d1", "esp32-1.2.0", DOWNLOADING, "", 0, 100, 3000)
        assert await ota.record_report(report) == 0
        assert await ota.reports() == [report]

        assert await ota.set_member("ro-1", "d1", OFFERED, "", 3100, (PENDING,)) is True
        assert await ota.set_member("ro-1", "d1", OFFERED, "", 3100, (PENDING,)) is False  # compare-and-set
        assert await ota.offered("d1", "esp32-1.2.0") is True
        assert await ota.offered("d1", "esp32-1.3.0") is False
        assert await ota.offered("d2", "esp32-1.2.0") is False
        assert await ota.record_report(DeviceReport("d1", "esp32-1.2.0", TRIAL, "", None, None, 3200)) == 1
        assert await ota.record_report(DeviceReport("d1", "esp32-1.2.0", GOOD, "", None, None, 3300)) == 1
        # final: a later report is kept as the device's latest, the member stays good
        assert await ota.record_report(DeviceReport("d1", "esp32-1.2.0", FAILED, "crashed", None, None, 3400)) == 0
        assert (await ota.members("ro-1"))[0].state == GOOD
        assert (await ota.reports())[0].reason == "crashed"

        with pytest.raises(OtaError) as err:  # a live rollout keeps its release
            await ota.delete_release("esp32-1.2.0")
        assert err.value.code == "release_in_use"
        assert await ota.set_rollout_state("ro-1", STOPPED, "limit", 4000, (RUNNING,)) is True
        assert await ota.set_rollout_state("ro-1", STOPPED, "limit", 4000, (RUNNING,)) is False
        assert (await ota.rollout("ro-1")).reason == "limit"  # type: ignore[union-attr]
        assert await ota.offered("d1", "esp32-1.2.0") is True  # stopped: started downloads go on
        assert await ota.set_rollout_state("ro-1", ABORTED, "by admin", 4100, (RUNNING, PAUSED, STOPPED)) is True
        assert await ota.offered("d1", "esp32-1.2.0") is False  # aborted: nothing more is served
        assert await ota.delete_release("esp32-1.2.0") is True

    backend.run(body)


def test_rollouts_survive_reopen(backend: Backend) -> None:
    async def first(s: Storage) -> None:
        ota = ota_store(s)
        await ota.put_release(release(), {"app.mpy": BLOB})
        await ota.create_rollout(rollout(), [Member("ro-1", "d1", False)])
        await ota.set_member("ro-1", "d1", OFFERED, "", 5, (PENDING,))

    async def second(s: Storage) -> None:
        ota = ota_store(s)
        assert await ota.rollout("ro-1") == rollout()
        assert [(m.device_id, m.state) for m in await ota.members("ro-1")] == [("d1", OFFERED)]
        assert await ota.chunk("esp32-1.2.0", "app.mpy", 0, 4) == (BLOB[:4], len(BLOB))

    backend.run(first)
    backend.run(second)


def test_none_backend_has_no_ota_store(tmp_path: Path) -> None:
    with pytest.raises(OtaError) as err:  # (its registry is in SQLite; releases are not kept)
        ota_store(NoneStorage(SQLiteStorage(tmp_path / "e.db")))
    assert err.value.code == "ota_unavailable"
