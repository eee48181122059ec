"""Fleet, FaultPlan, CLI and provisioning."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from simulator import cli
from simulator.errors import ProvisionError, SimConfigError
from simulator.faults import MALFORMED_KINDS, FaultPlan
from simulator.fleet import SUMMARY_KEYS, Fleet
from simulator.provision import device_ids, load_credentials, provision, save_credentials
from tests.simulator.gateway_stub import StubGateway

pytestmark = pytest.mark.timeout(60)


def test_fleet_summary_and_exactly_once_with_drops() -> None:
    creds = {f"f-{i}": f"ewt_{i:032d}" for i in range(12)}

    async def main() -> None:
        stub = StubGateway(creds, ack_delay_s=0.005)
        await stub.start()
        try:
            plan = FaultPlan(seed=2, drop_mean_s=0.4, fraction=0.5)
            async with Fleet(stub.url, creds, rate=40, batch=4, faults=plan, connect_rate=100,
                             backoff_initial_s=0.05) as fleet:
                summary = await fleet.run(1.5, drain_s=5)
                assert set(SUMMARY_KEYS) <= set(summary)
                assert summary["devices"] == 12 and summary["crashed"] == 0
                assert summary["buffered"] == 0
                assert summary["acked"] == summary["generated"] > 0
                assert summary["generated"] == summary["acked"] + summary["rejected"] + summary["dropped"]
                faulty = [d for d in fleet.devices if d.faults is not None]
                assert 0 < len(faulty) < 12  # fraction=0.5 picks a seeded subset
                assert summary["reconnects"] >= 1
                for dev in fleet.devices:
                    assert stub.stored[dev.device_id] == list(range(1, dev.counters.generated + 1))
                assert sum(d.counters.acked for d in fleet.devices) == summary["acked"]
                table = fleet.format_summary()
                assert "acked" in table and "reconnects" in table
                assert "online=" in fleet.status_line()
                # The injected drops are named as such, counted once each, and are not errors.
                drops = summary["errors"].get("fault_drop", 0)
                assert drops >= 1 and summary["errors"] == {"fault_drop": drops}
                assert f"errors=0 (+{drops} simulated network drops)" in fleet.status_line()
        finally:
            await stub.stop()

    asyncio.run(main())


def test_fault_plan_parse_and_validation() -> None:
    plan = FaultPlan.parse("drop=5,delay=0.05,jitter=0.01,skew=-30,drift=50,malformed=0.1,"
                           "kinds=nan+binary,fraction=0.25,seed=7")
    assert plan == FaultPlan(seed=7, drop_mean_s=5.0, send_delay_s=0.05, send_jitter_s=0.01,
                             clock_skew_s=-30.0, clock_drift_ppm=50.0, malformed_rate=0.1,
                             malformed_kinds=("nan", "binary"), fraction=0.25)
    for bad in ("drop", "gremlins=1", "malformed=2", "kinds=teleport", "drop=-1", "jwt_ttl=5", "delay=fast"):
        with pytest.raises(SimConfigError):
            FaultPlan.parse(bad)
    assert [FaultPlan(fraction=0.5, seed=1).applies_to(i) for i in range(20)] == \
        [FaultPlan(fraction=0.5, seed=1).applies_to(i) for i in range(20)]


def test_malformed_frames_never_carry_an_integer_seq() -> None:
    injector = FaultPlan(seed=1, malformed_rate=1.0).injector(0)
    seen = set()
    for _ in range(200):
        kind, frame = injector.malformed_frame(1024)
        seen.add(kind)
        if kind == "binary":
            assert isinstance(frame, bytes)
        elif kind == "oversized":
            assert len(frame) > 1024
        else:
            try:
                msg = json.loads(frame)
            except ValueError:
                continue
            assert not isinstance(msg.get("seq"), int)
    assert seen == set(MALFORMED_KINDS)


def test_clock_skew_shows_in_reading_timestamps() -> None:
    creds = {"skewed": "ewt_" + "c" * 32, "true": "ewt_" + "d" * 32}

    async def main() -> None:
        stub = StubGateway(creds)
        await stub.start()
        try:
            plan = FaultPlan(clock_skew_s=-3600.0, fraction=1.0)
            async with Fleet(stub.url, {"skewed": creds["skewed"]}, rate=50, batch=5, faults=plan) as fleet:
                await fleet.run(0.3, drain_s=3)
            async with Fleet(stub.url, {"true": creds["true"]}, rate=50, batch=5) as fleet:
                await fleet.run(0.3, drain_s=3)
        finally:
            await stub.stop()
        for device, expected_ms in (("skewed", -3_600_000), ("true", 0)):
            stamps = stub.stamps[device]
            assert stamps
            for ts, received in stamps:
                assert ts is not None
                assert abs((ts - received) - expected_ms) < 2000, (device, ts, received)

    asyncio.run(main())


def test_cli_help_and_lazy_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "fleet" in out and "provision" in out and "esp32" in out
    assert cli.main(["warp-drive"]) == 2
    cli.SUBCOMMANDS["broken"] = ("simulator.no_such_module:main", "missing on purpose")
    try:
        assert cli.main(["broken"]) == 2  # a missing module breaks only its own subcommand
    finally:
        del cli.SUBCOMMANDS["broken"]
    with pytest.raises(SystemExit) as info:
        cli.main(["fleet", "--help"])
    assert info.value.code == 0


def test_cli_fleet_reports_missing_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["fleet", "--credentials", str(tmp_path / "nope.json"), "--duration", "0"]) == 2
    assert "cannot read credentials" in capsys.readouterr().err


def test_credentials_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    save_credentials(path, {"a": "ewt_x"})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_credentials(path) == {"a": "ewt_x"}
    path.write_text("[1, 2]")
    with pytest.raises(ProvisionError):
        load_credentials(path)
    assert device_ids(3, "sim-") == ["sim-0001", "sim-0002", "sim-0003"]


def test_provision_registers_devices_in_the_gateway_registry(tmp_path: Path) -> None:
    pytest.importorskip("gateway.registry")
    creds = provision(tmp_path / "data", ["p-1", "p-2"])
    assert set(creds) == {"p-1", "p-2"}
    assert all(t.startswith("ewt_") for t in creds.values())
    with pytest.raises(ProvisionError, match="already registered"):
        provision(tmp_path / "data", ["p-1"])
    rotated = provision(tmp_path / "data", ["p-1"], rotate=True)
    assert rotated["p-1"] != creds["p-1"]
    assert registry_labels(tmp_path / "data") == {"p-1": "Simulated p-1", "p-2": "Simulated p-2"}


def registry_labels(data_dir: Path) -> dict[str, str]:
    """Issue 20 item 12: every simulated device was labelled "simulator", so Home Assistant showed
    several devices of one name. Each has its own label now."""
    listing = subprocess.run([sys.executable, "-m", "gateway", "devices", "list", "--json", "--data-dir",
                              str(data_dir)], capture_output=True, text=True, timeout=60, check=True,
                             cwd=Path(__file__).resolve().parents[2])
    return {d["device_id"]: d["label"] for d in json.loads(listing.stdout)}


def test_provision_through_the_gateway_cli(tmp_path: Path) -> None:
    pytest.importorskip("gateway.cli.devices")
    creds = provision(tmp_path / "data", ["cli-1"], in_process=False)
    assert creds["cli-1"].startswith("ewt_")
    assert registry_labels(tmp_path / "data") == {"cli-1": "Simulated cli-1"}
    assert provision(tmp_path / "data", ["cli-1"], in_process=False, rotate=True)["cli-1"] != creds["cli-1"]
    with pytest.raises(ProvisionError, match="cli-1"):
        provision(tmp_path / "data", ["cli-1"], in_process=False)
