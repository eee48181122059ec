"""A small Fleet against the real gateway process (tests/helpers/gateway.py), with a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from simulator.faults import FaultPlan
from simulator.fleet import Fleet
from tests.helpers.gateway import GatewayProcess

pytestmark = pytest.mark.timeout(120)


def test_fleet_survives_drops_and_a_gateway_restart_without_loss(gateway: GatewayProcess) -> None:
    creds = {f"gw-{i}": gateway.register(f"gw-{i}") for i in range(4)}

    async def main() -> dict[str, object]:
        plan = FaultPlan(seed=4, drop_mean_s=0.7)
        async with Fleet(gateway.url, creds, rate=20, batch=4, faults=plan, backoff_initial_s=0.1,
                         backoff_max_s=1.0) as fleet:
            fleet.start()
            assert await fleet.wait_until(lambda f: f.online == 4, timeout_s=10), "every device online"
            assert await fleet.wait_until(lambda f: all(d.counters.acked >= 8 for d in f.devices), timeout_s=10), \
                "readings acked before the restart"
            await asyncio.to_thread(gateway.restart)
            before = {dev.device_id: dev.counters.acked for dev in fleet.devices}
            assert await fleet.wait_until(lambda f: f.online == 4, timeout_s=15), "every device back online"
            assert await fleet.wait_until(
                lambda f: all(d.counters.acked > before[d.device_id] for d in f.devices), timeout_s=15), \
                "readings acked after the restart"
            summary = await fleet.stop(drain_s=15)
            for dev in fleet.devices:
                assert gateway.seqs(dev.device_id) == list(range(1, dev.counters.generated + 1))
            return summary

    summary = asyncio.run(main())
    assert summary["buffered"] == 0 and summary["crashed"] == 0
    assert summary["acked"] == summary["generated"] > 0
    assert summary["reconnects"] >= 4  # every device came back after the restart


def test_expiring_jwt_against_the_real_gateway(tmp_path: Path) -> None:
    secret = "j" * 40
    secret_file = tmp_path / "jwt.secret"
    secret_file.write_text(secret)
    with GatewayProcess(tmp_path, jwt_secret_file=str(secret_file)) as gw:
        gw.register("jwt-1")
        plan = FaultPlan(jwt_secret=secret, jwt_ttl_s=1.0)

        async def main() -> dict[str, object]:
            async with Fleet(gw.url, {"jwt-1": "minted-by-the-fault-plan"}, rate=20, batch=2, faults=plan,
                             backoff_initial_s=0.1) as fleet:
                fleet.start()
                dev = fleet.devices[0]
                assert await fleet.wait_until(
                    lambda f: dev.counters.errors.get("close_4004", 0) >= 1 and dev.online, timeout_s=10)
                summary = await fleet.stop(drain_s=10)
                assert dev.stopped_reason is None
                assert gw.seqs("jwt-1") == list(range(1, dev.counters.generated + 1))
                return summary

        summary = asyncio.run(main())
    assert summary["acked"] == summary["generated"] > 0
