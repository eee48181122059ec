"""Exactly once: 200 simulated devices for 20 s, with connection drops; every reading sent is
stored exactly once (count and per-device sequence continuity) and a dashboard sees the updates."""

from __future__ import annotations

import asyncio
from pathlib import Path

from simulator.faults import FaultPlan
from simulator.fleet import Fleet
from tests.helpers.dashboard import DashboardWatcher
from tests.helpers.gateway import GatewayProcess
from tests.helpers.waiting import until

DEVICES = 200
DURATION_S = 20.0


def test_200_devices_20_seconds_every_reading_stored_exactly_once(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path) as gw:
        creds = gw.register_many([f"sim-{i:03d}" for i in range(DEVICES)])
        # a quarter of the devices lose their connection every ~6 s on average: resends happen
        faults = FaultPlan(seed=7, drop_mean_s=6.0, fraction=0.25)

        async def run() -> tuple[dict[str, object], dict[str, int], DashboardWatcher]:
            async with DashboardWatcher(gw.url) as dash, Fleet(gw.url, creds, rate=2.0, batch=2, faults=faults,
                                                               seed=1, backoff_initial_s=0.2) as fleet:
                summary = await fleet.run(DURATION_S, drain_s=20.0)
                generated = {d.device_id: d.counters.generated for d in fleet.devices}
                await until(lambda: dash.devices_seen == set(creds), 15, "every device on the dashboard")
            return summary, generated, dash

        summary, generated, dash = asyncio.run(run())

    assert summary["crashed"] == 0
    assert summary["buffered"] == 0 and summary["dropped"] == 0 and summary["rejected"] == 0
    assert summary["acked"] == summary["generated"] > DEVICES * DURATION_S
    assert summary["reconnects"] > 0, "the fault plan should have dropped connections"
    counts = gw.storage_counts()
    assert sum(counts.values()) == summary["generated"]
    for device_id, n in generated.items():
        seqs = gw.seqs(device_id)
        assert seqs == list(range(1, n + 1)), f"{device_id}: stored seqs are not exactly 1..{n}"
    samples = gw.query("SELECT count(*) FROM (SELECT device_id, seq FROM samples GROUP BY device_id, seq)")[0][0]
    assert samples == summary["generated"]
    assert dash.updates > 0
    assert dash.devices_seen == set(creds)
