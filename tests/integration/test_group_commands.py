"""Issue 23: commands to a group reach every online member and report the offline ones (a real gateway
process, simulated devices, the real CLI)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.errors import GatewayError
from tests.helpers.devices import GoodDevice
from tests.helpers.gateway import GatewayProcess, run_cli


@contextlib.asynccontextmanager
async def online(gw: GatewayProcess, tokens: dict[str, str], *device_ids: str) -> AsyncIterator[dict[str, GoodDevice]]:
    async with contextlib.AsyncExitStack() as stack:
        devices = {d: await stack.enter_async_context(GoodDevice(gw.device_url, d, tokens[d], rate=2.0))
                   for d in device_ids}
        yield devices


async def wait_offline(gw: GatewayProcess, device_id: str, timeout: float = 15.0) -> None:
    async def poll() -> None:
        while True:
            listed = (await gw.admin({"t": "devices"}))["devices"]
            if not next(d for d in listed if d["id"] == device_id)["online"]:
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


async def cli(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.get_running_loop().run_in_executor(
        None, lambda: run_cli(*args, "--data-dir", str(gw.data_dir), check=False))


def test_group_command_reaches_every_online_member_and_reports_the_others(gateway: GatewayProcess) -> None:
    gw = gateway
    ids = ["GH-1", "GH-2", "GH-3", "GH-GONE", "GH-NEW", "GH-OFF", "LAB-1"]
    tokens = gw.register_many(ids)
    for device_id in ids[:-1]:
        labels = ["site=greenhouse"] + (["row=2"] if device_id == "GH-2" else [])
        assert gw.cli("devices", "label", device_id, *labels).returncode == 0
    assert gw.cli("devices", "label", "LAB-1", "site=lab").returncode == 0

    async def body() -> None:
        # GH-GONE connected before and is offline now; GH-NEW never connected; GH-OFF is disabled
        async with online(gw, tokens, "GH-GONE"):
            pass
        await wait_offline(gw, "GH-GONE")
        assert gw.cli("devices", "disable", "GH-OFF").returncode == 0
        async with online(gw, tokens, "GH-1", "GH-2", "GH-3", "LAB-1") as devices:
            proc = await cli(gw, "command", "--group", "label=site=greenhouse", "ping", "--timeout", "20")
            assert proc.returncode == 1, proc.stdout + proc.stderr
            lines = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()}
            assert lines == {"GH-1": "ok", "GH-2": "ok", "GH-3": "ok", "GH-GONE": "device_offline",
                             "GH-NEW": "device_offline", "GH-OFF": "device_disabled"}, proc.stdout
            assert proc.stderr.strip() == ("error: ping: 6 devices: 3 ok, 1 device_disabled, 2 device_offline"), \
                proc.stderr
            assert [devices[d].device.counters.commands for d in ("GH-1", "GH-2", "GH-3", "LAB-1")] == [1, 1, 1, 0]

            # a label key and value, two terms: only GH-2; every member ok -> status 0, summary on stdout
            proc = await cli(gw, "command", "--group", "label=site=greenhouse,row=2", "set_interval", "seconds=5")
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert proc.stdout.splitlines()[-1] == "set_interval: 1 device: 1 ok" and proc.stderr == ""
            assert devices["GH-2"].device.counters.commands == 2

            # a list of devices (repeated --device), as JSON
            proc = await cli(gw, "command", "--device", "LAB-1", "--device", "GH-1", "ping", "--json")
            assert proc.returncode == 0, proc.stderr
            reply = json.loads(proc.stdout)
            assert [(r["device"], r["code"], r["result"]["ok"]) for r in reply["results"]] == [
                ("GH-1", "ok", True), ("LAB-1", "ok", True)]
            assert reply["summary"] == {"total": 2, "ok": 2}

        # nothing was queued for the offline members: GH-GONE comes back and gets no command
        async with online(gw, tokens, "GH-GONE") as back:
            await back["GH-GONE"].wait_acked(back["GH-GONE"].acked + 3)
            assert back["GH-GONE"].device.counters.commands == 0

    asyncio.run(body())


@pytest.mark.parametrize(("group", "code"), [
    ("label=site=nowhere", "empty_group"), ("devices=GH-1,NOPE", "not_found"), ("colour=red", "bad_group"),
    ("label=bad key", "bad_label")])
def test_a_bad_or_empty_group_is_one_error_line_and_sends_nothing(gateway: GatewayProcess, group: str,
                                                                 code: str) -> None:
    gateway.register("GH-1")
    assert gateway.cli("devices", "label", "GH-1", "site=greenhouse").returncode == 0
    proc = run_cli("command", "--group", group, "ping", "--data-dir", str(gateway.data_dir), check=False)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout
    assert proc.stderr.startswith(f"error: {code}: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_admin_group_command_request(gateway: GatewayProcess, tmp_path: Path) -> None:
    tokens = gateway.register_many(["A-1", "A-2"])

    async def body() -> None:
        async with online(gateway, tokens, "A-1"):
            reply = await gateway.admin({"t": "group_command", "devices": ["A-2", "A-1"], "name": "ping",
                                         "timeout": 10, "parallel": 1})
            assert [(r["device"], r["ok"], r["code"]) for r in reply["results"]] == [
                ("A-1", True, "ok"), ("A-2", False, "device_offline")]
            assert reply["summary"] == {"total": 2, "ok": 1, "device_offline": 1}
            labelled = await gateway.admin({"t": "label", "device_id": "A-1", "set": {"tier": "gold"}})
            assert labelled["labels"] == {"tier": "gold"}
            with pytest.raises(GatewayError, match=r"^bad_label: "):  # nothing changes, the good one included
                await gateway.admin({"t": "label", "device_id": "A-1", "set": {"zone": "n", "bad key": "x"}})
            with pytest.raises(GatewayError, match=r"^bad_label: "):
                await gateway.admin({"t": "label", "device_id": "A-1", "remove": [5]})
            listed = (await gateway.admin({"t": "devices"}))["devices"]
            assert [d["labels"] for d in listed] == [{"tier": "gold"}, {}]
            reply = await gateway.admin({"t": "group_command", "group": "label=tier", "name": "ping"})
            assert [r["device"] for r in reply["results"]] == ["A-1"]
            for bad, code in (({"group": "label=tier", "devices": ["A-1"]}, "bad_group"),
                              ({"group": "label=tier", "parallel": 0}, "bad_request")):
                with pytest.raises(GatewayError, match=f"^{code}: "):
                    await gateway.admin({"t": "group_command", "name": "ping", **bad})

    asyncio.run(body())
