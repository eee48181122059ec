"""The gateway on every core (gateway/workers.py): a host process and two worker processes on one port,
on the embedded defaults (SQLite, the host bus). Each promise of the single process holds across
the workers: acks after the durable commit and in order, 1013 for exactly the connections whose
commit failed, takeover with 4005 and an exact last_seq when a device reconnects to the other
worker, commands to a device on any worker, every worker's devices on a dashboard, SIGTERM
draining every process, /metrics and /healthz for the whole gateway, and a worker killed with
SIGKILL under 300 devices restarted by the host with nothing acknowledged lost and nothing
stored twice.

Which worker accepts a connection is the kernel's choice (SO_REUSEPORT); the tests that need
the other worker repeat until they see it (each attempt lands there with probability 1/2)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from simulator.fleet import Fleet
from tests.helpers.cluster import admin, data_frame, device
from tests.helpers.dashboard import DashboardWatcher
from tests.helpers.devices import expect_close
from tests.helpers.gateway import GatewayProcess
from tests.helpers.waiting import until, until_sync

WORKERS = 2


def children(pid: int, module: bytes = b"gateway.worker") -> list[int]:
    """The processes whose parent is ``pid`` running ``module`` (the host's workers, its commit process)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and module in cmdline:
            found.append(int(entry))
    return sorted(found)


def per_worker(gw: GatewayProcess) -> dict[str, float]:
    """edgewire_worker_devices_online by worker instance id."""
    out = {}
    for name, value in gw.metrics().items():
        if name.startswith("edgewire_worker_devices_online{"):
            out[name.split('"')[1]] = value
    return out


def holder(gw: GatewayProcess) -> str:
    """The worker holding the one device connected (tests connect one device at a time)."""
    counts = per_worker(gw)
    held = [worker for worker, n in counts.items() if n == 1]
    assert len(held) == 1, counts
    return held[0]


@pytest.fixture(scope="module", params=[False, True], ids=["workers-commit", "commit-process"])
def gw(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[GatewayProcess]:
    """Two workers that commit their own readings, or a commit process that commits for both."""
    gateway = GatewayProcess(tmp_path_factory.mktemp("workers"), workers=WORKERS, rate=1000.0, burst=1000.0,
                             commit_process=request.param)
    gateway.start()
    try:
        until_sync(lambda: len(per_worker(gateway)) == WORKERS, 30, "both workers in /metrics")
        yield gateway
    finally:
        gateway.stop()
        gateway.kill()


def test_host_runs_one_worker_per_setting_and_reports_them(gw: GatewayProcess) -> None:
    assert gw.proc is not None
    assert len(children(gw.proc.pid)) == WORKERS
    status, body = gw.health()
    assert status == 200 and body["status"] == "ok"
    assert len(body["workers"]) == WORKERS
    assert all(report["status"] == "ok" for report in body["workers"].values())
    metrics = gw.metrics()
    assert metrics["edgewire_workers"] == WORKERS and metrics["edgewire_workers_unreachable"] == 0
    assert metrics["edgewire_up"] == 1


def test_takeover_to_the_other_worker_keeps_last_seq_exact(gw: GatewayProcess) -> None:
    token = gw.register_many(["wk-move"])["wk-move"]

    async def run() -> tuple[int, list[tuple[int, int | None, int, int]]]:
        ws, welcome = await device(gw, token)
        seq = int(welcome["last_seq"])
        where = await asyncio.to_thread(holder, gw)
        seen: list[tuple[int, int | None, int, int]] = []  # (acked by the old session, its close, new last_seq, sent)
        crossed = 0
        for _attempt in range(24):
            for _ in range(20):
                seq += 1
                await ws.send(data_frame(seq))
            closing = asyncio.ensure_future(expect_close(ws, timeout=20))
            new_ws, new_welcome = await device(gw, token)
            frames, code = await closing
            acked = max([int(f["seq"]) for f in frames if f.get("t") == "ack"], default=0)
            seen.append((acked, code, int(new_welcome["last_seq"]), seq))
            now = await asyncio.to_thread(holder, gw)
            crossed += now != where
            where, ws = now, new_ws
            seq = int(new_welcome["last_seq"])
            if crossed >= 2:
                break
        await ws.close()
        return crossed, seen

    crossed, seen = asyncio.run(run())
    assert crossed >= 2, f"no takeover reached the other worker in {len(seen)} attempts"
    for acked, code, last_seq, _sent in seen:
        assert code == 4005
        assert last_seq >= acked  # everything the old session acknowledged is covered by the welcome
    stored = gw.seqs("wk-move")
    assert stored == list(range(1, len(stored) + 1)), "stored exactly once, without holes"
    assert stored[-1] == seen[-1][2]


def test_commands_reach_devices_on_every_worker(gw: GatewayProcess) -> None:
    ids = [f"wk-cmd-{i}" for i in range(8)]
    tokens = gw.register_many(ids)

    async def run() -> list[dict[str, Any]]:
        conns = [(await device(gw, tokens[i]))[0] for i in ids]

        async def answer(ws: Any) -> None:
            with contextlib.suppress(ConnectionClosed):
                async for text in ws:
                    frame = json.loads(text)
                    if frame.get("t") == "cmd":
                        await ws.send(json.dumps({"t": "result", "id": frame["id"], "ok": True, "msg": "pong"}))

        answering = [asyncio.ensure_future(answer(ws)) for ws in conns]
        counts = await asyncio.to_thread(per_worker, gw)
        assert sum(counts.values()) == len(ids)
        replies = []
        for device_id in ids:  # each from a new admin connection: any worker asks any worker
            for _ in range(2):
                replies.append(await admin(gw, {"t": "command", "device_id": device_id, "name": "ping",
                                                "timeout": 10}))
        for task in answering:
            task.cancel()
        for ws in conns:
            await ws.close()
        return replies

    replies = asyncio.run(run())
    assert all(r["t"] == "ok" and r["result"]["ok"] for r in replies), replies


def test_a_dashboard_on_any_worker_shows_every_workers_devices(gw: GatewayProcess) -> None:
    ids = [f"wk-dash-{i}" for i in range(10)]
    tokens = gw.register_many(ids)

    async def run() -> list[int]:
        conns = [(await device(gw, tokens[i]))[0] for i in ids]
        for ws in conns:
            await ws.send(data_frame(1, 22.5))
        counts = await asyncio.to_thread(per_worker, gw)
        online = []
        for _ in range(4):  # several dashboards: they land on both workers
            async with DashboardWatcher(gw.url) as watcher:
                await until(lambda: all(watcher.latest.get(i, {}).get("online") for i in ids), 15,
                            "every device online on the dashboard")
                await until(lambda: all(watcher.latest[i].get("latest") for i in ids), 15, "their readings")
                online.append(sum(1 for i in ids if watcher.latest[i]["online"]))
        assert min(counts.values()) >= 1, f"all devices on one worker: {counts}"
        for ws in conns:
            await ws.close()
        return online

    assert asyncio.run(run()) == [10, 10, 10, 10]


def test_a_failed_commit_closes_only_the_affected_connections(gw: GatewayProcess) -> None:
    ids = ["wk-bad", *(f"wk-ok-{i}" for i in range(5))]
    tokens = gw.register_many(ids)
    conn = sqlite3.connect(gw.db_path, timeout=30)
    conn.execute("CREATE TRIGGER wk_refuse BEFORE INSERT ON readings WHEN NEW.device_id = 'wk-bad' "
                 "BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END")
    conn.commit()

    async def run() -> tuple[int | None, list[dict[str, Any]], dict[str, int]]:
        bad, _ = await device(gw, tokens["wk-bad"])
        good = {i: (await device(gw, tokens[i]))[0] for i in ids[1:]}
        await bad.send(data_frame(1))
        for ws in good.values():
            await ws.send(data_frame(1))
        frames, code = await expect_close(bad, timeout=20)
        acks: dict[str, int] = {}
        for device_id, ws in good.items():
            for seq in range(2, 4):
                await ws.send(data_frame(seq))
            while acks.get(device_id, 0) < 3:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
                if frame.get("t") == "ack":
                    acks[device_id] = int(frame["seq"])
            await ws.close()
        return code, frames, acks

    try:
        code, frames, acks = asyncio.run(run())
    finally:
        conn.execute("DROP TRIGGER wk_refuse")
        conn.commit()
        conn.close()
    assert code == 1013
    assert [f.get("code") for f in frames if f.get("t") == "error"] == ["storage_unavailable"]
    assert not any(f.get("t") == "ack" for f in frames)
    assert acks == dict.fromkeys(ids[1:], 3)
    assert gw.seqs("wk-bad") == []


def test_acks_follow_the_commit_in_order_and_metrics_sum_the_workers(gw: GatewayProcess) -> None:
    ids = [f"wk-sum-{i}" for i in range(20)]
    tokens = gw.register_many(ids)
    before = gw.metrics()["edgewire_readings_stored_total"]

    async def run() -> dict[str, list[int]]:
        acks: dict[str, list[int]] = {}

        async def one(device_id: str) -> None:
            ws, _ = await device(gw, tokens[device_id])
            for seq in range(1, 31):
                await ws.send(data_frame(seq))
            got = acks.setdefault(device_id, [])
            while not got or got[-1] < 30:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
                if frame.get("t") == "ack":
                    got.append(int(frame["seq"]))
                    # every reading an ack covers is already in the database
                    assert len(await asyncio.to_thread(gw.seqs, device_id)) >= got[-1]
            await ws.close()

        await asyncio.gather(*(one(i) for i in ids))
        return acks

    acks = asyncio.run(run())
    for device_id, seqs in acks.items():
        assert seqs == sorted(seqs), f"{device_id}: acks out of order {seqs}"
        assert gw.seqs(device_id) == list(range(1, 31))
    until_sync(lambda: gw.metrics()["edgewire_readings_stored_total"] - before == 600, 10,
               "the stored counter summed over the workers")


@pytest.mark.parametrize(("commit_process", "victim"), [
    (False, b"gateway.worker"), (True, b"gateway.worker"), (True, b"gateway.committer")])
def test_sigkill_of_a_child_under_300_devices(tmp_path: Path, commit_process: bool, victim: bytes) -> None:
    """A worker, or the commit process, SIGKILLed mid-stream: restarted by the host; every device back
    within 10 s; nothing acknowledged lost, nothing stored twice."""
    gw = GatewayProcess(tmp_path, workers=WORKERS, commit_process=commit_process)
    gw.start()
    try:
        assert gw.proc is not None
        ids = [f"wk-kill-{i:03d}" for i in range(300)]
        creds = gw.register_many(ids)

        async def run() -> tuple[dict[str, int], dict[str, Any], dict[str, int], int]:
            async with Fleet(gw.url, creds, rate=1.0, batch=1, seed=5, connect_rate=300.0, backoff_initial_s=0.2,
                             backoff_max_s=1.0) as fleet:
                fleet.start()
                assert await fleet.wait_until(lambda f: all(d.counters.acked >= 3 for d in f.devices), 60), \
                    "fleet did not get going"
                assert gw.proc is not None
                os.kill(children(gw.proc.pid, victim)[0], signal.SIGKILL)
                assert await fleet.wait_until(lambda f: sum(not d.online for d in f.devices) > 0, 15), \
                    "no device noticed the kill"
                acked_at_kill = {d.device_id: d.session.acked for d in fleet.devices}
                back = await fleet.wait_until(lambda f: all(d.online for d in f.devices), 10)
                assert back, f"{sum(not d.online for d in fleet.devices)} devices not back within 10 s"
                assert await fleet.wait_until(lambda f: all(
                    d.session.acked >= acked_at_kill[d.device_id] + 2 for d in f.devices), 30)
                restarted = len(children(gw.proc.pid)) + len(children(gw.proc.pid, b"gateway.committer"))
                summary = await fleet.stop(drain_s=30.0)
                generated = {d.device_id: d.counters.generated for d in fleet.devices}
            return acked_at_kill, summary, generated, restarted

        acked_at_kill, summary, generated, restarted = asyncio.run(run())
        assert restarted == WORKERS + commit_process, "the host restarted the killed process"
        assert "worker_died" in gw.log_text()
        assert summary["crashed"] == 0 and summary["buffered"] == 0
        assert summary["acked"] == summary["generated"]
        for device_id, n in generated.items():
            stored = gw.seqs(device_id)
            assert stored == list(range(1, n + 1)), f"{device_id}: not stored exactly once"
            assert len(stored) >= acked_at_kill[device_id]
    finally:
        gw.stop()
        gw.kill()


def test_sigterm_drains_every_worker(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, workers=WORKERS)
    gw.start()
    assert gw.proc is not None
    host = gw.proc.pid
    workers = children(host)
    ids = [f"wk-term-{i:02d}" for i in range(40)]
    creds = gw.register_many(ids)

    async def run() -> tuple[dict[str, int], int | None]:
        async with Fleet(gw.url, creds, rate=5.0, batch=1, seed=7, connect_rate=200.0, backoff_initial_s=5.0,
                         backoff_max_s=5.0) as fleet:
            fleet.start()
            assert await fleet.wait_until(lambda f: all(d.counters.acked >= 5 for d in f.devices), 30)
            code = await asyncio.to_thread(gw.stop, 60.0)
            assert await fleet.wait_until(lambda f: not any(d.online for d in f.devices), 15)
            acked = {d.device_id: d.session.acked for d in fleet.devices}
            await fleet.close()
        return acked, code

    acked, code = asyncio.run(run())
    assert code == 0
    assert all(not os.path.exists(f"/proc/{pid}") for pid in workers), "a worker outlived the host"
    log = gw.log_text()
    assert log.count('"gateway_stopped"') == WORKERS + 1 or log.count("gateway_stopped") == WORKERS + 1
    for device_id, n in acked.items():
        assert gw.seqs(device_id)[:n] == list(range(1, n + 1))


def test_workers_of_a_killed_host_drain_and_exit(tmp_path: Path) -> None:
    """SIGKILL of the host process alone: each worker sees its stdin close, drains and exits, so
    none is left holding the port; a new host starts on it."""
    gw = GatewayProcess(tmp_path, workers=WORKERS)
    gw.start()
    try:
        assert gw.proc is not None
        workers = children(gw.proc.pid)
        assert len(workers) == WORKERS
        os.kill(gw.proc.pid, signal.SIGKILL)
        gw.proc.wait()
        until_sync(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in workers), 20,
                   "the workers of the killed host to exit")
        assert gw.log_text().count("gateway_stopped") >= WORKERS  # each drained (not killed)
        gw.start()  # the port is free again
        assert gw.health()[0] == 200
    finally:
        gw.stop()
        gw.kill()
