"""The storage setting: sqlite, none or a postgresql:// URL; shown without its password; retention keys."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.storage.base import ReadingRow
from gateway.storage.dsn import redact
from gateway.storage.none import NoneStorage
from gateway.storage.sqlite import SQLiteStorage


@pytest.mark.parametrize(("value", "kind"), [
    ("sqlite", "sqlite"), ("none", "none"),
    ("postgresql://edgewire@127.0.0.1:5432/edgewire", "postgresql"),
    ("postgres://u:secret@db.example/fleet?sslmode=require", "postgresql"),
])
def test_storage_kinds(value: str, kind: str) -> None:
    assert load_config(env={"EDGEWIRE_STORAGE": value}).storage_kind == kind


@pytest.mark.parametrize("value", ["mongodb://x/y", "postgresql://host:99999/db", "postgresql://host:5432",
                                   "postgresql://host/", "SQLite", ""])
def test_bad_storage_is_refused_naming_the_setting(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^storage: "):
        load_config(env={"EDGEWIRE_STORAGE": value})


def test_passwords_never_shown() -> None:
    config = load_config(overrides={"storage": "postgresql://fleet:s3cret@db:5432/edgewire?password=x2&a=1"})
    assert config.storage_display == "postgresql://fleet:***@db:5432/edgewire?password=***&a=1"
    assert "s3cret" not in config.storage_display and "x2" not in config.storage_display
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"storage": "postgresql://fleet:s3cret@db:notaport/x"})
    assert "s3cret" not in str(err.value)
    assert redact("sqlite") == "sqlite"


def test_retention_settings() -> None:
    config = load_config(env={})
    assert (config.readings_retention_days, config.rollup_retention_days) == (30, 730)
    config = load_config(env={"EDGEWIRE_READINGS_RETENTION_DAYS": "7", "EDGEWIRE_ROLLUP_RETENTION_DAYS": "90"})
    assert (config.readings_retention_days, config.rollup_retention_days) == (7, 90)
    with pytest.raises(ConfigError, match=r"^readings_retention_days"):
        load_config(env={"EDGEWIRE_READINGS_RETENTION_DAYS": "0"})
    with pytest.raises(ConfigError, match=r"^rollup_retention_days"):
        load_config(env={"EDGEWIRE_READINGS_RETENTION_DAYS": "60", "EDGEWIRE_ROLLUP_RETENTION_DAYS": "30"})


def test_none_storage_counts_rows_of_several_devices_in_one_call(tmp_path: Path) -> None:
    async def main() -> tuple[list[int], int]:
        storage = NoneStorage(SQLiteStorage(tmp_path / "edgewire.db"))
        await storage.open()
        try:
            await storage.store([ReadingRow("A", 1, 1, 1, {"t": 1.0}), ReadingRow("B", 5, 1, 1, {"t": 1.0}),
                                 ReadingRow("A", 2, 1, 1, {"t": 1.0}), ReadingRow("B", 5, 1, 1, {"t": 1.0})])
            return [await storage.last_seq(d) for d in ("A", "B", "C")], await storage.count_readings()
        finally:
            await storage.close()

    assert asyncio.run(main()) == ([2, 5, 0], 3)


def test_none_storage_returns_the_rows_it_accepted_once(tmp_path: Path) -> None:
    """What follows a commit (gateway/fanout.py) sees each reading once with storage = none too:
    each device's rows above its highest seq so far, the first of a key within a call."""

    async def main() -> list[list[tuple[str, int]]]:
        storage = NoneStorage(SQLiteStorage(tmp_path / "edgewire.db"))
        await storage.open()
        try:
            out = []
            for seqs in ([("A", 1), ("B", 5), ("A", 2), ("B", 5)], [("A", 1), ("A", 2), ("A", 3)], [("B", 4)]):
                inserted = await storage.store([ReadingRow(d, s, 1, 1, {"t": 1.0}) for d, s in seqs])
                out.append([(r.device_id, r.seq) for r in inserted])
            return out
        finally:
            await storage.close()

    assert asyncio.run(main()) == [[("A", 1), ("B", 5), ("A", 2)], [("A", 3)], []]
