"""The durable queue: written before sent, deleted only on ack, bounded with counted drops."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edge.store import ReadingQueue


def fill(queue: ReadingQueue, n: int, now: float = 1000.0) -> list[int]:
    return [queue.append({"temperature": 20.0 + i / 10}, None, 1000 + i, "ok", "b1", now) for i in range(n)]


def test_durable_settings(tmp_path: Path) -> None:
    queue = ReadingQueue(tmp_path / "q.db")
    assert queue.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert queue.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    queue.close()


def test_seqs_are_contiguous_and_survive_reopen(tmp_path: Path) -> None:
    queue = ReadingQueue(tmp_path / "q.db")
    assert fill(queue, 5) == [1, 2, 3, 4, 5]
    queue.ack(5)
    assert queue.count() == 0
    queue.close()
    again = ReadingQueue(tmp_path / "q.db")
    assert fill(again, 2) == [6, 7]  # counter persisted even though the queue was empty
    readings = again.pending()
    assert [r.seq for r in readings] == [6, 7]
    assert readings[0].metrics == {"temperature": 20.0}
    assert readings[0].up == 1000 and readings[0].quality == "ok"


def test_reading_is_on_disk_before_append_returns(tmp_path: Path) -> None:
    queue = ReadingQueue(tmp_path / "q.db")
    seq = queue.append({"humidity": 40.0}, 1764080000000, None, "retried", "b1")
    other = sqlite3.connect(tmp_path / "q.db")  # another connection sees the committed row
    assert other.execute("SELECT seq, ts, q FROM readings").fetchall() == [(seq, 1764080000000, "retried")]
    other.close()


def test_ack_deletes_only_through_seq(tmp_path: Path) -> None:
    queue = ReadingQueue(tmp_path / "q.db")
    fill(queue, 10)
    assert queue.ack(4) == 4
    assert [r.seq for r in queue.pending()] == [5, 6, 7, 8, 9, 10]
    assert [r.seq for r in queue.pending(after=7, limit=2)] == [8, 9]
    assert queue.ack(4) == 0  # a repeated ack changes nothing


def test_bound_by_count_drops_oldest_and_counts(tmp_path: Path) -> None:
    queue = ReadingQueue(tmp_path / "q.db", max_readings=5)
    fill(queue, 8)
    assert [r.seq for r in queue.pending()] == [4, 5, 6, 7, 8]
    assert queue.dropped == 3
    queue.close()
    assert ReadingQueue(tmp_path / "q.db").dropped == 3


def test_bound_by_age(tmp_path: Path) -> None:
    queue = ReadingQueue(tmp_path / "q.db", max_age=60)
    fill(queue, 3, now=1000.0)
    queue.append({"temperature": 1.0}, None, None, None, "b1", now=1061.0)
    assert [r.seq for r in queue.pending()] == [4]
    assert queue.dropped == 3


def test_new_queue_counter_is_unconfirmed_until_confirmed(tmp_path: Path) -> None:
    queue = ReadingQueue(tmp_path / "q.db")  # new (or wiped): the gateway may hold higher seqs
    fill(queue, 2)
    assert not queue.confirmed
    queue.close()
    queue = ReadingQueue(tmp_path / "q.db")  # a restart does not confirm it
    assert not queue.confirmed
    queue.confirm()
    queue.close()
    assert ReadingQueue(tmp_path / "q.db").confirmed


def test_renumber_shifts_readings_and_counter(tmp_path: Path) -> None:
    queue = ReadingQueue(tmp_path / "q.db")  # state wiped: counter starts at 1 again
    fill(queue, 3)
    queue.renumber(1041)
    assert [r.seq for r in queue.pending()] == [1042, 1043, 1044]
    assert queue.next_seq == 1045 and queue.first_seq == 1042 and queue.confirmed
    assert fill(queue, 1) == [1045]


def test_drop_removes_and_counts_rejected(tmp_path: Path) -> None:
    queue = ReadingQueue(tmp_path / "q.db")
    fill(queue, 6)
    assert queue.drop(2, 4) == 3
    assert [r.seq for r in queue.pending()] == [1, 5, 6]
    assert queue.rejected == 3


def test_settings_persist(tmp_path: Path) -> None:
    queue = ReadingQueue(tmp_path / "q.db")
    assert queue.get_setting("interval") is None
    queue.put_setting("interval", 12.5)
    queue.close()
    assert ReadingQueue(tmp_path / "q.db").get_setting("interval") == 12.5


def test_forget_uptime_of_other_boots(tmp_path: Path) -> None:
    queue = ReadingQueue(tmp_path / "q.db")
    queue.append({"temperature": 1.0}, None, 500, None, "old-boot")
    queue.append({"temperature": 2.0}, None, 600, None, "new-boot")
    queue.forget_uptime("new-boot")
    assert [r.up for r in queue.pending()] == [None, 600]


def test_unwritable_state_dir_gives_clear_error(tmp_path: Path) -> None:
    import pytest

    from edge.errors import QueueError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(QueueError, match="state directory"):
        ReadingQueue(blocker / "sub" / "q.db")


def test_state_dir_and_files_are_private(tmp_path: Path) -> None:
    """Issue 15 item 9: the agent's state is nobody else's (0700 directory, 0600 files)."""
    import os
    import stat

    shared = tmp_path / "state"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)  # as an older version or a hand-made directory left it
    queue = ReadingQueue(shared / "queue.db")
    fill(queue, 3)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o700
    for name in os.listdir(shared):  # queue.db, -wal, -shm
        assert stat.S_IMODE((shared / name).stat().st_mode) & 0o077 == 0, name
    fresh = tmp_path / "new" / "state"
    ReadingQueue(fresh / "queue.db").close()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
