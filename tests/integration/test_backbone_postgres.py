"""The gateway on a real PostgreSQL 15: crashes of either side lose nothing acknowledged.

- SIGKILL of the gateway mid-stream: everything acknowledged is in the database; after the
  restart every reading is stored exactly once.
- Immediate-mode stop of PostgreSQL mid-stream (a database crash): the gateway acknowledges
  nothing while it is down, closes devices with 1013 (storage_unavailable), reconnects by
  itself when it is back, and the devices catch up: nothing acknowledged was lost, nothing
  is stored twice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.postgres import PostgresServer
from simulator.fleet import Fleet
from tests.helpers.gateway import GatewayProcess
from tests.helpers.postgres import stored_seqs

DEVICES = 20


def storage_refusals(fleet: Fleet, device_id: str | None = None) -> int:
    """1013 closes and HTTP 503 storage_unavailable refusals the devices saw."""
    return sum(d.counters.errors.get("close_1013", 0) + d.counters.errors.get("storage_unavailable", 0)
               for d in fleet.devices if device_id is None or d.device_id == device_id)


def test_sigkill_gateway_mid_stream_loses_nothing_acknowledged(tmp_path: Path, postgres_dsn: str) -> None:
    gw = GatewayProcess(tmp_path, storage=postgres_dsn).start()
    try:
        creds = gw.register_many([f"pgk-{i:02d}" for i in range(DEVICES)])

        async def run() -> tuple[dict[str, int], dict[str, list[int]], dict[str, object], dict[str, int]]:
            loop = asyncio.get_running_loop()
            async with Fleet(gw.url, creds, rate=5.0, batch=2, seed=3, backoff_initial_s=0.2,
                             backoff_max_s=1.0) as fleet:
                fleet.start()
                assert await fleet.wait_until(lambda f: all(d.counters.acked >= 10 for d in f.devices), 30)
                await loop.run_in_executor(None, gw.kill)
                # Every device has seen its connection die: no ack can arrive any more.
                assert await fleet.wait_until(lambda f: f.online == 0, 15)
                acked_at_kill = {d.device_id: d.session.acked for d in fleet.devices}
                in_database = await stored_seqs(postgres_dsn)
                await loop.run_in_executor(None, gw.start)
                assert await fleet.wait_until(
                    lambda f: all(d.session.acked >= acked_at_kill[d.device_id] + 10 for d in f.devices), 60)
                summary = await fleet.stop(drain_s=30.0)
                generated = {d.device_id: d.counters.generated for d in fleet.devices}
            return acked_at_kill, in_database, summary, generated

        acked_at_kill, in_database, summary, generated = asyncio.run(run())
        final = asyncio.run(stored_seqs(postgres_dsn))
    finally:
        gw.stop()
        gw.kill()

    for device_id, acked in acked_at_kill.items():
        missing = set(range(1, acked + 1)) - set(in_database.get(device_id, []))
        assert not missing, f"{device_id}: acknowledged but not in PostgreSQL at the kill: {sorted(missing)[:5]}"
    assert summary["crashed"] == 0 and summary["buffered"] == 0
    assert summary["acked"] == summary["generated"]
    for device_id, n in generated.items():
        assert final[device_id] == list(range(1, n + 1)), f"{device_id}: not stored exactly once"


def test_postgres_immediate_stop_mid_stream(tmp_path: Path, postgres_server: PostgresServer,
                                            postgres_dsn: str) -> None:
    gw = GatewayProcess(tmp_path, storage=postgres_dsn).start()
    try:
        creds = gw.register_many([f"pgs-{i:02d}" for i in range(DEVICES)])

        async def run() -> tuple[dict[str, int], dict[str, int], dict[str, object], dict[str, int]]:
            loop = asyncio.get_running_loop()
            async with Fleet(gw.url, creds, rate=5.0, batch=2, seed=5, backoff_initial_s=0.2,
                             backoff_max_s=1.0) as fleet:
                fleet.start()
                assert await fleet.wait_until(lambda f: all(d.counters.acked >= 10 for d in f.devices), 30)
                await loop.run_in_executor(None, lambda: postgres_server.stop(mode="immediate"))
                # Each device is refused for storage (1013 close or 503 at the upgrade) ...
                assert await fleet.wait_until(
                    lambda f: all(storage_refusals(f, d.device_id) >= 1 for d in f.devices), 30)
                acked_down = {d.device_id: d.session.acked for d in fleet.devices}
                refused = {d.device_id: storage_refusals(fleet, d.device_id) for d in fleet.devices}
                # ... and refused again on its next attempt: all that time, nothing was acknowledged.
                assert await fleet.wait_until(
                    lambda f: all(storage_refusals(f, d.device_id) > refused[d.device_id] for d in f.devices), 30)
                assert {d.device_id: d.session.acked for d in fleet.devices} == acked_down
                await loop.run_in_executor(None, postgres_server.start)
                # The gateway reconnects by itself; the devices catch up.
                assert await fleet.wait_until(
                    lambda f: all(d.session.acked >= acked_down[d.device_id] + 10 for d in f.devices), 60)
                summary = await fleet.stop(drain_s=30.0)
                generated = {d.device_id: d.counters.generated for d in fleet.devices}
            return acked_down, generated, summary, refused

        acked_down, generated, summary, _ = asyncio.run(run())
        final = asyncio.run(stored_seqs(postgres_dsn))
        metrics = gw.metrics()
        assert gw.proc is not None and gw.proc.poll() is None  # the same gateway process throughout
    finally:
        if not postgres_server.running:
            postgres_server.start()
        gw.stop()
        gw.kill()

    assert metrics["edgewire_storage_errors_total"] >= 1
    assert summary["errors"].get("close_1013", 0) >= 1  # type: ignore[attr-defined]  # closed mid-stream
    assert metrics['edgewire_errors_total{code="storage_unavailable"}'] >= 1
    assert summary["crashed"] == 0 and summary["buffered"] == 0
    assert summary["acked"] == summary["generated"]
    for device_id, n in generated.items():
        assert acked_down[device_id] <= n
        assert final[device_id] == list(range(1, n + 1)), f"{device_id}: lost or duplicated readings"
    assert "storage_reconnected" in gw.log_text()
