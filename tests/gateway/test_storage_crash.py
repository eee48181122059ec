"""Crash safety: every reading whose store() returned is present after SIGKILL and reopen."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from gateway.storage.sqlite import SQLiteStorage

WRITER = textwrap.dedent("""
    import asyncio, sys
    from gateway.storage.base import ReadingRow
    from gateway.storage.sqlite import SQLiteStorage

    async def device(storage, name, batches):
        seq = 0
        for _ in range(batches):
            rows = [ReadingRow(name, seq + i, 1000 + seq + i, 1000 + seq + i,
                               {"temperature": 20.0, "humidity": 1.0}) for i in range(1, 11)]
            await storage.store(rows)
            seq += 10
            print("ACK", name, seq, flush=True)

    async def main():
        storage = SQLiteStorage(sys.argv[1], commit_interval_ms=1.0)
        await storage.open()
        print("READY", flush=True)
        await asyncio.gather(*(device(storage, f"D{d}", 100000) for d in range(4)))

    asyncio.run(main())
""")


def test_acknowledged_rows_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(db)], stdout=subprocess.PIPE, text=True)
    acked: dict[str, int] = {}
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        acks = 0
        while acks < 400:  # bounded: 400 acknowledged stores, then kill mid-stream
            line = proc.stdout.readline()
            assert line, "writer exited early"
            _, name, seq = line.split()
            acked[name] = int(seq)
            acks += 1
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    async def check() -> None:
        storage = SQLiteStorage(db)
        await storage.open()
        try:
            for name, seq in acked.items():
                stored = await storage.seqs(name)
                # Everything acknowledged is there, and nothing else is half-written.
                assert stored[:seq] == list(range(1, seq + 1))
                assert stored == list(range(1, len(stored) + 1))
                assert len(stored) % 10 == 0
                assert len(await storage.history(name, "temperature", 0, 2**62, limit=10**6)) == len(stored)
        finally:
            await storage.close()

    asyncio.run(check())
