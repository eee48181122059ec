"""Conformance adapters of the CPython drivers, and the registry of every driver under test.

One adapter class per driver (the interface is documented in scenarios.py); adding a driver
is one class here plus one line in IN_PROCESS. ``features`` says which scenarios apply
(scenarios.DEVICE_FEATURES for a device; the load generator, under LOADGEN, has none). The firmware's adapter
(firmware_adapter.FirmwareAdapter) runs inside the firmware's interpreters, listed in
INTERPRETERS: CPython with simulator/micropython_standins, and real MicroPython under Node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from tests.conformance.scenarios import DEVICE_FEATURES

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _response(status: int, body: bytes | None) -> Any:
    """The HTTP refusal as the websockets client hands it over (InvalidStatus.response)."""
    from websockets.datastructures import Headers
    from websockets.http11 import Response

    return Response(status, "Refused", Headers(), body or b"")


class AgentAdapter:
    """The Pi agent: edge.agent.Agent (sim backend, mock pins) and its SQLite queue."""

    features = tuple(f for f in DEVICE_FEATURES if f != "sleeps")
    output = "relay"

    def __init__(self, workdir: Path, fresh: bool | None) -> None:
        from edge import config
        from edge.agent import Agent

        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "cpu").write_text("45000\n")
        text = f'''
[agent]
device_id = "PI-CONF"
token = "ewt_{"p" * 32}"
gateway = "ws://127.0.0.1:9/v1/device"
state_dir = "{workdir / "state"}"
backend = "sim"
interval = 30
[[sensors]]
type = "cpu_temperature"
sensor_file = "{workdir / "cpu"}"
[outputs.relay]
pin = 22
'''
        self.agent = Agent(config.parse(tomllib.loads(text)))
        self.session = self.agent.session
        if fresh is False:
            self.agent.queue.confirm()

    def sample(self, n: int) -> list[int]:
        queue = self.agent.queue
        return [queue.append({"temperature": 20.0 + i / 10}, None, 1000 * (i + 1), "ok", self.agent.boot)
                for i in range(n)]

    def held(self) -> list[int]:
        return [r.seq for r in self.agent.queue.pending(0, 1_000_000)]

    def rejected(self) -> int:
        return self.agent.queue.rejected

    def reopen(self) -> AgentAdapter:
        self.agent.close()
        return AgentAdapter(self.workdir, None)

    def state(self) -> Any:
        agent = self.agent
        return _copy({"interval": agent.interval, "thresholds": agent.rules.describe(),
                      "outputs": agent.outputs.states()})

    def reboots(self) -> bool:
        return self.agent.reboot_requested

    def refuse(self, status: int, body: bytes | None) -> Any:
        from edge.uplink import Uplink, now_ms

        agent = self.agent
        return Uplink(agent.cfg, agent.session, agent.credentials, agent, now_ms).refused(_response(status, body))

    def sleep(self) -> AgentAdapter:
        raise NotImplementedError("the agent does not deep-sleep")

    def close(self) -> None:
        self.agent.close()


class SimulatorAdapter:
    """The simulator: simulator.device.VirtualDevice and its in-memory outbox (not durable)."""

    features = tuple(f for f in DEVICE_FEATURES if f not in ("durable", "sleeps"))
    output = "relay"

    def __init__(self, workdir: Path, fresh: bool | None) -> None:
        from simulator.device import VirtualDevice

        self.dev = VirtualDevice("ws://127.0.0.1:9", "SIM-CONF", "ewt_" + "s" * 32,
                                 first_seq=None if fresh else 1)
        self.session = self.dev.session

    def sample(self, n: int) -> list[int]:
        return [self.dev.outbox.add({"temperature": 20.0 + i / 10}, None, 1000 * (i + 1), "ok").seq
                for i in range(n)]

    def held(self) -> list[int]:
        return [r.seq for r in self.dev.outbox.readings]

    def rejected(self) -> int:
        return self.dev.outbox.rejected

    def reopen(self) -> SimulatorAdapter:
        raise NotImplementedError("the simulator's outbox lives in memory")

    def state(self) -> Any:
        dev = self.dev
        return _copy({"interval": dev.interval_s, "thresholds": dev.thresholds, "outputs": dev.outputs})

    def reboots(self) -> bool:
        return self.dev.reboot_pending

    def refuse(self, status: int, body: bytes | None) -> Any:
        from websockets.exceptions import InvalidStatus

        return self.dev._on_refused(InvalidStatus(_response(status, body)))

    def sleep(self) -> SimulatorAdapter:
        raise NotImplementedError("the simulator does not deep-sleep")

    def close(self) -> None:
        return None


class LoadgenAdapter:
    """The load generator: bench.session.BenchSession (the core's LOADGEN policy) over a BenchOutbox.

    A benchmark client has none of the features: it never reconnects, ignores slow-downs'
    waits and pacing, and answers commands without running them; no settings, no reboot.
    """

    features: tuple[str, ...] = ()
    output = "relay"  # it has no outputs: a set_output is answered "not run" like any other command

    def __init__(self, workdir: Path, fresh: bool | None) -> None:
        from bench.outbox import BenchOutbox
        from bench.session import BenchSession

        self.outbox = BenchOutbox(first_seq=None if fresh else 1)
        self.bench = BenchSession("LG-CONF", "ewt_" + "l" * 32, self.outbox)
        self.session = self.bench.core

    def sample(self, n: int) -> list[int]:
        return [self.outbox.add({"temperature": 20.0 + i / 10}, 1000 * (i + 1), None, "ok").seq for i in range(n)]

    def held(self) -> list[int]:
        return [r.seq for r in self.outbox.readings]

    def rejected(self) -> int:
        return self.outbox.rejected

    def reopen(self) -> LoadgenAdapter:
        raise NotImplementedError("the load generator's outbox lives in memory")

    def state(self) -> Any:
        return {}  # nothing a command could change

    def reboots(self) -> bool:
        return False

    def refuse(self, status: int, body: bytes | None) -> Any:
        return self.session.refused(status, body, 0)  # it has no HTTP client of its own: the session is its path

    def sleep(self) -> LoadgenAdapter:
        raise NotImplementedError("the load generator does not deep-sleep")

    def close(self) -> None:
        return None


# Drivers whose adapter runs in the test process: name -> adapter class.
IN_PROCESS: dict[str, type[Any]] = {
    "agent": AgentAdapter,
    "simulator": SimulatorAdapter,
    "loadgen": LoadgenAdapter,
}


def run_firmware_cpython(tmp: Path) -> subprocess.CompletedProcess[str]:
    """run_firmware.py under CPython with the MicroPython stand-ins (the firmware as the board runs it)."""
    boot = ("import sys; from simulator.micropython_standins import install; install(); "
            f"sys.path[:0] = [{str(ROOT / 'firmware')!r}, {str(HERE)!r}]; "
            f"exec(compile(open({str(HERE / 'run_firmware.py')!r}).read(), 'run_firmware.py', 'exec'))")
    env = dict(os.environ, PYTHONPATH=str(ROOT), EW_SIM_FS=str(tmp))
    return subprocess.run([sys.executable, "-c", boot], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=env)


def run_firmware_micropython(tmp: Path) -> subprocess.CompletedProcess[str]:
    """run_firmware.py under real MicroPython (WebAssembly port in Node), firmware and protocol deployed."""
    node_dir = ROOT / "tests" / "firmware" / "node"
    assert (node_dir / "node_modules" / "@micropython").exists(), "run `make node-deps` first"
    board = ROOT / "tests" / "firmware" / "mpy" / "board"
    files = ["scenarios.py", "firmware_adapter.py"]
    puts: list[str] = []
    for name in files:
        puts += ["--put", f"{HERE / name}:/lib/{name}"]
    cmd = ["node", str(node_dir / "run_mpy.mjs"), "--heap", str(1024 * 1024), "--deploy", "--put", f"{board}:/lib",
           *puts, str(HERE / "run_firmware.py")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT)


# Drivers whose adapter runs in another interpreter: name -> runner returning its output.
INTERPRETERS = {
    "firmware-cpython": run_firmware_cpython,
    "firmware-micropython": run_firmware_micropython,
}
