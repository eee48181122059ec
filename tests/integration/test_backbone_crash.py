"""Crash: SIGKILL the gateway mid-stream and restart it. Every reading acknowledged before the
kill is in storage, and after the devices reconnect every reading sent is stored exactly once."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

from simulator.fleet import Fleet
from tests.helpers.gateway import GatewayProcess

DEVICES = 50


def stored_seqs_in_copy(db: Path, workdir: Path) -> dict[str, set[int]]:
    """Open a copy of the database files as they were left by the killed process."""
    workdir.mkdir()
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(db) + suffix)
        if src.exists():
            shutil.copy(src, workdir / (db.name + suffix))
    conn = sqlite3.connect(workdir / db.name)
    try:
        seqs: dict[str, set[int]] = {}
        for device_id, seq in conn.execute("SELECT device_id, seq FROM readings"):
            seqs.setdefault(device_id, set()).add(seq)
        return seqs
    finally:
        conn.close()


def test_sigkill_mid_stream_loses_nothing_acknowledged(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path).start()
    try:
        creds = gw.register_many([f"crash-{i:02d}" for i in range(DEVICES)])

        async def run() -> tuple[dict[str, int], dict[str, set[int]], dict[str, object], dict[str, int]]:
            loop = asyncio.get_running_loop()
            async with Fleet(gw.url, creds, rate=5.0, batch=2, seed=3, backoff_initial_s=0.2,
                             backoff_max_s=1.0) as fleet:
                fleet.start()
                ok = await fleet.wait_until(lambda f: all(d.counters.acked >= 10 for d in f.devices), 30)
                assert ok, "devices did not get going"
                await loop.run_in_executor(None, gw.kill)
                # Every device sees its connection end: the acks that were on the wire have been
                # read, and none can be new.
                assert await fleet.wait_until(lambda f: not any(d.online for d in f.devices), 30), \
                    "devices did not notice the kill"
                acked_at_kill = {d.device_id: d.session.acked for d in fleet.devices}
                on_disk = stored_seqs_in_copy(gw.db_path, tmp_path / "at-kill")
                # The devices buffer while the gateway is down.
                assert await fleet.wait_until(lambda f: all(
                    d.counters.generated >= acked_at_kill[d.device_id] + 5 for d in f.devices), 30)
                await loop.run_in_executor(None, gw.start)
                # Every device is back and has readings acknowledged beyond what it had at the kill.
                assert await fleet.wait_until(lambda f: all(
                    d.online and d.session.acked > acked_at_kill[d.device_id] for d in f.devices), 60), \
                    "devices did not resume after the restart"
                summary = await fleet.stop(drain_s=30.0)
                generated = {d.device_id: d.counters.generated for d in fleet.devices}
            return acked_at_kill, on_disk, summary, generated

        acked_at_kill, on_disk, summary, generated = asyncio.run(run())
    finally:
        gw.stop()
        gw.kill()

    assert all(acked >= 10 for acked in acked_at_kill.values())
    for device_id, acked in acked_at_kill.items():
        missing = set(range(1, acked + 1)) - on_disk.get(device_id, set())
        assert not missing, f"{device_id}: acknowledged but not on disk at the kill: {sorted(missing)[:5]}"
    assert summary["crashed"] == 0 and summary["buffered"] == 0
    assert summary["acked"] == summary["generated"]
    assert summary["reconnects"] >= DEVICES
    for device_id, n in generated.items():
        assert gw.seqs(device_id) == list(range(1, n + 1)), f"{device_id}: not stored exactly once"
