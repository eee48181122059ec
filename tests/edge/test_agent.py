"""The agent in-process against a small websockets server built on protocol.gateway.GatewaySession:
slow-down obeyed, refused frames dropped and counted, commands validated, systemd notifications."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import stat
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from edge import config
from edge.agent import Agent
from protocol import wire
from protocol.gateway import EV_CLOSE, EV_DATA, EV_STATUS, EV_THROTTLE, GatewaySession
from tests.edge.agentproc import AgentThread, wait_for
from tests.edge.conftest import agent_toml


class CoreGateway:
    """A gateway on loopback that stores in memory and follows GatewaySession.

    ``announce`` overrides welcome fields (a gateway can announce a rate it does not grant).
    ``refuse`` is a set of seqs whose frames are answered with a bad_value error instead.
    """

    def __init__(self, rate: float = 100.0, burst: float = 20.0, announce: dict[str, Any] | None = None,
                 refuse: set[int] | None = None) -> None:
        self.rate, self.burst = rate, burst
        self.announce = announce or {}
        self.refuse = refuse or set()
        self.stored: list[int] = []
        self.throttled = 0
        self.closed_codes: list[int] = []
        self.statuses: list[dict[str, Any]] = []
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def handler(self, ws: ServerConnection) -> None:
        session = GatewaySession(rate=self.rate, burst=self.burst, now=time.monotonic())
        last = self.stored[-1] if self.stored else 0
        await ws.send(session.accept("PI-TEST", last, int(time.time() * 1000), self.announce))
        async for text in ws:
            event = session.receive(text, time.monotonic())
            if event.kind == EV_DATA:
                frame = event.payload
                if frame.seq in self.refuse:
                    await ws.send(session.error_frame(wire.E_BAD_VALUE, "refused by test", frame.seq))
                    continue
                self.stored.extend(r.seq for r in frame.readings)
                await ws.send(session.ack(session.accepted_seq))
            elif event.kind == EV_THROTTLE:
                self.throttled += 1
                if event.reply:
                    await ws.send(event.reply)
            elif event.kind == EV_STATUS:
                self.statuses.append(event.payload)
            elif event.kind == EV_CLOSE:
                self.closed_codes.append(event.close_code)
                await ws.send(event.reply)
                await ws.close(event.close_code)
                return

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        async with serve(self.handler, "127.0.0.1", 0) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            await self.stop_event.wait()

    def start(self) -> CoreGateway:
        self.thread.start()
        wait_for(lambda: self.port, 10, "test gateway listening")
        return self

    def stop(self) -> None:
        if self.loop and self.stop_event:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10)


def make_agent(tmp_path: Path, gw_url: str, extra: str = "", agent_extra: str = "") -> Agent:
    (tmp_path / "cpu").write_text("45000\n")
    sensors = f'[[sensors]]\ntype = "cpu_temperature"\nsensor_file = "{tmp_path}/cpu"\n'
    text = agent_toml(tmp_path / "state", gateway=gw_url, extra=sensors + extra, agent_extra=agent_extra)
    text = text.replace("interval = 0.2", "interval = 0.02")
    return Agent(config.parse(tomllib.loads(text)))


def test_slow_down_is_obeyed_and_nothing_is_lost(tmp_path: Path, mock_pins: Any) -> None:
    gw = CoreGateway(rate=5.0, burst=1.0, announce={"rate": 200.0}).start()
    agent = make_agent(tmp_path, f"ws://127.0.0.1:{gw.port}/v1/device", extra="[queue]\nmax_batch = 2\n")
    runner = AgentThread(agent).start()
    try:
        wait_for(lambda: gw.throttled > 0, 20, "the gateway throttling the agent")
        wait_for(lambda: len(gw.stored) >= 30, 30, "readings stored after the slow-down")
    finally:
        assert runner.stop() == 0
        gw.stop()
    assert wire.CLOSE_RATE_LIMITED not in gw.closed_codes  # the agent slowed down: never cut off
    assert gw.stored == list(range(1, len(gw.stored) + 1))  # resent from the slow frame's seq, exactly once
    assert gw.throttled < 40


def test_refused_frame_is_dropped_and_counted(tmp_path: Path, mock_pins: Any) -> None:
    gw = CoreGateway(refuse={3}).start()
    agent = make_agent(tmp_path, f"ws://127.0.0.1:{gw.port}/v1/device")
    agent.cfg.max_batch = 1
    runner = AgentThread(agent).start()
    try:
        wait_for(lambda: len(gw.stored) >= 10, 30, "readings after the refused one")
        wait_for(lambda: any(s.get("rejected") == 1 for s in gw.statuses), 30, "rejected count in a status")
    finally:
        assert runner.stop() == 0
        gw.stop()
    assert 3 not in gw.stored and gw.stored[:3] == [1, 2, 4]
    status = tmp_path / "state" / "status.json"
    assert json.loads(status.read_text())["rejected"] == 1
    assert stat.S_IMODE(status.stat().st_mode) == 0o600  # issue 15 item 9: state files are private
    assert stat.S_IMODE(status.parent.stat().st_mode) == 0o700


def test_out_of_range_values_never_reach_the_queue(tmp_path: Path, mock_pins: Any) -> None:
    agent = make_agent(tmp_path, "ws://127.0.0.1:9/v1/device")
    try:
        (tmp_path / "cpu").write_text("180000\n")  # 180 °C: outside cpu_temperature's plausible range
        merged = agent.record(agent.read_all())
        assert merged == {} and agent.queue.count() == 0 and agent.sensor_errors == 1
        (tmp_path / "cpu").write_text("50000\n")
        assert agent.record(agent.read_all()) == {"cpu_temperature": 50.0}
    finally:
        agent.close()


@pytest.mark.parametrize(("name", "args", "expect"), [
    ("set_interval", {"seconds": 0}, "seconds > 0"),
    ("set_interval", {"seconds": "5"}, "seconds > 0"),
    ("set_interval", {"seconds": True}, "seconds > 0"),
    ("set_thresholds", {"high": 3}, "metric"),
    ("set_thresholds", {"metric": "temperature"}, "high, low or both"),
    ("set_thresholds", {"metric": "temperature", "high": 1, "low": 5}, "below high"),
    ("set_output", {"output": "relay"}, "on (boolean)"),
    ("set_output", {"output": "fan", "on": True}, "no output 'fan'"),
    ("warp", {}, "unknown command"),
])
def test_bad_commands_answer_false_and_change_nothing(tmp_path: Path, mock_pins: Any, name: str,
                                                      args: dict[str, Any], expect: str) -> None:
    agent = make_agent(tmp_path, "ws://127.0.0.1:9/v1/device", extra="[outputs.relay]\npin = 22\n")
    try:
        before = (agent.interval, agent.rules.describe(), agent.outputs.states())
        ok, message, _ = agent.command(name, args)
        assert ok is False and expect in message
        assert (agent.interval, agent.rules.describe(), agent.outputs.states()) == before
    finally:
        agent.close()


def test_settings_from_commands_survive_restart(tmp_path: Path, mock_pins: Any) -> None:
    agent = make_agent(tmp_path, "ws://127.0.0.1:9/v1/device")
    agent.interval_changed = asyncio.Event()
    assert agent.command("set_interval", {"seconds": 12})[0]
    assert agent.command("set_thresholds", {"metric": "cpu_temperature", "high": 70})[0]
    agent.close()
    again = make_agent(tmp_path, "ws://127.0.0.1:9/v1/device")
    try:
        assert again.interval == 12.0
        rule = again.rules.describe()[0]
        assert rule["metric"] == "cpu_temperature" and rule["high"] == 70
    finally:
        again.close()


def test_ready_and_watchdog_only_while_healthy(tmp_path: Path, mock_pins: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """No fixed sleeps: the test follows the agent's own events (its stall warning, its supervisor rounds)."""
    sock_path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(sock_path)
    server.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # WatchdogSec=0.2: ping every 0.1 s
    agent = make_agent(tmp_path, "ws://127.0.0.1:9/v1/device")
    agent.stall_after = 1.0
    release = threading.Event()
    stalled = threading.Event()
    after_stall: list[bytes] = []  # datagrams sent after the agent declared the sampler stalled
    rounds = [0]
    enough = threading.Event()

    def drain() -> list[bytes]:
        out = []
        server.setblocking(False)
        try:
            while True:
                out.append(server.recv(256))
        except BlockingIOError:
            return out
        finally:
            server.settimeout(10)

    class StallSeen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:  # runs in the agent's thread, in order
            if "withholding the systemd watchdog" in record.getMessage() and not stalled.is_set():
                drain()  # everything sent before the warning
                stalled.set()

    original_status = agent.write_status

    def counting_status() -> None:  # one call per supervisor round
        original_status()
        if stalled.is_set() and not release.is_set():
            rounds[0] += 1
            if rounds[0] >= 5:
                enough.set()

    handler = StallSeen()
    logging.getLogger("edgewire.edge.agent").addHandler(handler)
    agent.write_status = counting_status  # type: ignore[method-assign]
    runner = AgentThread(agent).start()
    try:
        assert server.recv(256).startswith(b"READY=1")
        assert server.recv(256) == b"WATCHDOG=1"
        original = agent.read_all
        agent.read_all = lambda: (release.wait(30), original())[1]  # type: ignore[method-assign]
        assert stalled.wait(30), "the agent never noticed its stalled sampler"
        assert enough.wait(30), "the supervisor stopped running"
        after_stall.extend(drain())
        assert b"WATCHDOG=1" not in after_stall  # withheld for five supervisor rounds
        release.set()
        assert server.recv(256) == b"WATCHDOG=1"  # healthy again: pings resume
    finally:
        release.set()
        logging.getLogger("edgewire.edge.agent").removeHandler(handler)
        assert runner.stop() == 0
        server.close()


def test_a_clean_stop_is_not_an_unreachable_gateway(tmp_path: Path, mock_pins: Any,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Issue 20 item 9: stopping the agent closed its connection, and the local rules ran as if the gateway
    were unreachable ("gateway unreachable: local rule switches buzzer off")."""
    gw = CoreGateway().start()
    rules = '[outputs.buzzer]\npin = 27\n[[rules]]\nmetric = "cpu_temperature"\nhigh = 90.0\noutputs = ["buzzer"]\n'
    agent = make_agent(tmp_path, f"ws://127.0.0.1:{gw.port}/v1/device", extra=rules)
    caplog.set_level(logging.INFO, logger="edgewire.edge")
    runner = AgentThread(agent).start()
    try:
        wait_for(lambda: len(gw.stored) >= 3, 30, "readings stored")
    finally:
        assert runner.stop() == 0
        gw.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("agent stopped") for m in messages), messages
    assert not [m for m in messages if "unreachable" in m or "local rule" in m], messages
