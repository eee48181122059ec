"""Pi agent updates end to end in a temporary tree (docs/ota.md#pi-agent).

Real agent processes run from ``<prefix>/current/venv`` (releases installed by edge/release.py
with pip, no index); a scripted gateway offers releases over the device WebSocket and serves
the wheel in ota_get/ota_chunk chunks; the updater (edge/update.py) runs in a thread whenever
the agent leaves a request, as edgewire-agent-update.path starts it on a Pi.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.config import load
from edge.release import Releases
from edge.update import Updater, file_sha256, read_json
from tests.edge.agentproc import wait_for
from tests.edge.otatools import AgentUnit, ScriptedGateway, deps_dir, make_wheel, manifest_text
from tests.helpers.ota_release import ReleaseKey

CRASHING_CLI = 'import sys\n\n\ndef main(argv=None):\n    sys.exit("this release cannot start")\n'


@dataclass
class Pi:
    base: Path
    prefix: Path
    state: Path
    releases: Releases
    unit: AgentUnit
    gateway: ScriptedGateway
    key: ReleaseKey
    updater_runs: list[str]

    def current(self) -> str | None:
        return self.releases.current()

    def good(self) -> str:
        return os.readlink(self.prefix / "good")

    def log(self) -> str:
        return self.unit.log.read_text(errors="replace")[-4000:]


def write_config(path: Path, state: Path, prefix: Path, gateway: str, pubkey: str, health_s: float) -> None:
    cpu = path.parent / "cpu_temp"
    cpu.write_text("45000\n")
    path.write_text(f'''
[agent]
device_id = "PI-OTA"
token = "ewt_test"
gateway = "{gateway}"
interval = 0.2
state_dir = "{state}"
backend = "sim"
log_level = "debug"

[uplink]
backoff_min = 0.1
backoff_max = 0.5
status_interval = 1.0
encoding = "json"
compression = false

[update]
ota_pubkey = "{pubkey}"
update_health_s = {health_s}
prefix = "{prefix}"
system_site_packages = false

[[sensors]]
type = "cpu_temperature"
sensor_file = "{cpu}"
''')


@pytest.fixture
def pi(tmp_path: Path) -> Iterator[Pi]:
    key = ReleaseKey()
    gateway = ScriptedGateway().start()
    prefix, state = tmp_path / "opt", tmp_path / "state"
    (prefix / "wheelhouse").mkdir(parents=True)
    config = tmp_path / "agent.toml"
    write_config(config, state, prefix, gateway.url, key.pubkey, health_s=6)
    releases = Releases(prefix, python=sys.executable, system_site_packages=False)
    first = make_wheel(tmp_path / "wheels", "0.1.0")
    releases.install("0.1.0", first, file_sha256(first))
    releases.switch("0.1.0")
    (prefix / "good").symlink_to("releases/0.1.0")
    unit = AgentUnit(prefix, config, deps_dir(tmp_path), tmp_path / "agent.log")
    runs: list[str] = []
    stop = threading.Event()
    cfg = load(str(config))

    def path_unit() -> None:  # edgewire-agent-update.path: start the updater when a request appears
        updater = Updater(cfg, releases, restart=unit.restart)
        while not stop.is_set():
            if (state / "ota" / "request.json").exists():
                runs.append(updater.run())
            stop.wait(0.05)

    watcher = threading.Thread(target=path_unit, daemon=True)
    watcher.start()
    unit.start()
    node = Pi(tmp_path, prefix, state, releases, unit, gateway, key, runs)
    try:
        wait_for(lambda: gateway.fw == "0.1.0", 30, "agent 0.1.0 online")
        yield node
    finally:
        stop.set()
        watcher.join(60)
        unit.stop()
        gateway.stop()


def test_an_update_is_installed_switched_and_marked_good(pi: Pi) -> None:
    wheel = make_wheel(pi.base / "new", "0.2.0")
    started = time.monotonic()
    result = pi.gateway.offer(pi.key, "0.2.0", wheel)
    assert result["ok"] is True and result["msg"] == "downloading pi-0.2.0", result
    wait_for(lambda: ("good", None) in pi.gateway.state_of("pi-0.2.0"), 60, f"good\n{pi.log()}")
    print(f"\noffer to good: {time.monotonic() - started:.2f} s for a {wheel.stat().st_size} B wheel "
          f"({pi.gateway.gets} ota_get)")
    states = [s for s, _ in pi.gateway.state_of("pi-0.2.0")]
    assert states[0] == "downloading" and states[-1] == "good", states
    assert {"verifying", "trial"} <= set(states), states
    assert pi.current() == "0.2.0" and pi.good() == "releases/0.2.0"
    assert pi.gateway.fw == "0.2.0"
    assert pi.gateway.gets == -(-wheel.stat().st_size // 4096)  # 4096-byte chunks, each asked once
    assert pi.updater_runs == ["good"]
    assert not (pi.state / "ota" / "request.json").exists() and not (pi.state / "ota" / "trial.json").exists()
    assert pi.releases.versions() == ["0.1.0", "0.2.0"]  # the previous one is kept for a rollback
    again = pi.gateway.offer(pi.key, "0.2.0", wheel)
    assert again["ok"] is True and again["msg"] == "already running 0.2.0" and again["data"] == {"state": "good"}


def test_a_download_resumes_where_the_file_ends_after_the_agent_restarts(pi: Pi) -> None:
    wheel = make_wheel(pi.base / "new", "0.2.0")
    pi.gateway.hold_after = 20  # the 21st request goes unanswered: the agent waits, one outstanding
    assert pi.gateway.offer(pi.key, "0.2.0", wheel)["ok"] is True
    wait_for(lambda: pi.gateway.gets == 21, 30, "21 ota_get")
    assert pi.gateway.offsets == [n * 4096 for n in range(21)]
    pi.unit.restart()  # SIGTERM while a chunk is outstanding
    pi.gateway.hold_after = None
    wait_for(lambda: ("good", None) in pi.gateway.state_of("pi-0.2.0"), 60, f"good\n{pi.log()}")
    after = pi.gateway.offsets[21:]
    assert after[0] == 20 * 4096, after[:3]  # resumed at the end of what was on disk, not from 0
    assert after == [n * 4096 for n in range(20, -(-wheel.stat().st_size // 4096))]  # each chunk asked once
    assert pi.current() == "0.2.0" and pi.updater_runs == ["good"]


@pytest.mark.parametrize("broken", ["cannot start", "never acked"])
def test_a_broken_release_is_rolled_back(pi: Pi, broken: str) -> None:
    if broken == "cannot start":
        wheel = make_wheel(pi.base / "new", "0.3.0", {"edge/cli.py": CRASHING_CLI})
    else:
        wheel = make_wheel(pi.base / "new", "0.3.0")
        pi.gateway.no_ack_fw.add("0.3.0")
    assert pi.gateway.offer(pi.key, "0.3.0", wheel)["ok"] is True
    wait_for(lambda: pi.updater_runs, 60, f"the updater's verdict\n{pi.log()}")
    assert pi.updater_runs == ["rolled_back"]
    wait_for(lambda: ("rolled_back", "health_check") in pi.gateway.state_of("pi-0.3.0"), 30,
             f"rolled_back reported\n{pi.log()}")
    assert pi.current() == "0.1.0" and pi.good() == "releases/0.1.0"
    wait_for(lambda: pi.gateway.fw == "0.1.0", 30, "agent 0.1.0 back online")
    assert read_json(pi.state / "ota" / "result.json") == {**read_json(pi.state / "ota" / "result.json"),  # type: ignore[dict-item]
                                                           "state": "rolled_back", "reason": "health_check"}
    if broken == "cannot start":
        assert "this release cannot start" in pi.log()
    # the agent that came back reports it once: a restart does not send it again
    count = len(pi.gateway.state_of("pi-0.3.0"))
    pi.unit.restart()
    wait_for(lambda: len(pi.gateway.statuses) > 0 and pi.gateway.fw == "0.1.0" and pi.unit.proc is not None
             and read_json(pi.state / "status.json") is not None
             and (read_json(pi.state / "status.json") or {}).get("acked"), 30, "the agent back after a restart")
    assert len(pi.gateway.state_of("pi-0.3.0")) == count


@pytest.mark.parametrize("bad", ["bad hash", "bad signature"])
def test_a_bad_release_is_refused_and_nothing_switches(pi: Pi, bad: str) -> None:
    wheel = make_wheel(pi.base / "new", "0.4.0")
    if bad == "bad hash":
        pi.gateway.corrupt.add(("pi-0.4.0", wheel.name))
        assert pi.gateway.offer(pi.key, "0.4.0", wheel)["ok"] is True
        wait_for(lambda: ("failed", "bad_hash") in pi.gateway.state_of("pi-0.4.0"), 30, f"failed\n{pi.log()}")
    else:
        result = pi.gateway.offer(pi.key, "0.4.0", wheel, sig=ReleaseKey().sign(manifest_text("0.4.0", wheel)))
        assert result["ok"] is False and result["data"] == {"code": "bad_signature"}, result
        assert pi.gateway.gets == 0
    assert pi.current() == "0.1.0" and pi.good() == "releases/0.1.0"
    assert pi.releases.versions() == ["0.1.0"]
    assert pi.updater_runs == [] and not (pi.state / "ota" / "request.json").exists()
    assert not (pi.state / "ota" / "staged").exists()
    assert pi.unit.starts == 1  # the agent was never restarted
    # and the agent takes the next, good offer
    assert pi.gateway.offer(pi.key, "0.2.0", make_wheel(pi.base / "next", "0.2.0"))["ok"] is True
    wait_for(lambda: ("good", None) in pi.gateway.state_of("pi-0.2.0"), 60, f"good\n{pi.log()}")

