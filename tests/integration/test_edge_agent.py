"""The Pi agent PROCESS against a real gateway PROCESS: readings, commands, a 30 s outage, SIGKILL.

Hardware is simulated (sim backend, gpiozero MockFactory pins inside the agent process); the agent
reports its LED pattern, output states and pin levels in <state_dir>/status.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.edge.agentproc import AgentProcess, wait_for
from tests.helpers.gateway import GatewayProcess

OUTAGE_S = 30.0  # the figure


def assert_exactly_once(seqs: list[int], first: int, last: int) -> None:
    """Every seq first..last stored once: contiguous, no duplicates, nothing else."""
    assert len(seqs) == len(set(seqs)), "duplicate seqs stored"
    missing = sorted(set(range(first, last + 1)) - set(seqs))[:20]
    assert seqs == list(range(first, last + 1)), f"gaps: {missing}"


@pytest.fixture
def agent_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    agents: list[AgentProcess] = []

    def make(gateway: GatewayProcess, **kwargs: object) -> AgentProcess:
        token = kwargs.pop("token", None) or gateway.register(str(kwargs.get("device_id", "PI-1")))
        agent = AgentProcess(tmp_path, gateway.device_url, str(token), **kwargs)  # type: ignore[arg-type]
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.kill()


def drained(agent: AgentProcess, gateway: GatewayProcess) -> bool:
    status = agent.status()
    return (bool(status.get("connected")) and status.get("buffered") == 0
            and bool(gateway.seqs(agent.device_id)))


def test_readings_arrive_and_commands_are_answered(gateway: GatewayProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory(gateway, dht=True).start()
    wait_for(lambda: len(gateway.seqs("PI-1")) >= 12, 60, "12 readings at the gateway")
    rows = gateway.query("SELECT seq, metrics FROM readings WHERE device_id='PI-1' ORDER BY seq")
    names = set()
    for _, metrics in rows:
        names.update(json.loads(metrics))
    assert {"temperature", "humidity", "cpu_temperature", "soil_temperature", "soil_moisture"} <= names
    assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1))

    wait_for(lambda: agent.status().get("led") == "online", 10, "LED pattern online")
    status = agent.status()
    assert status["connected"] is True and status["pins"]["led"] == 1
    assert status["outputs"]["relay"] is False and status["pins"]["relay"] == 1  # active-low relay idle

    result = gateway.send_command("PI-1", "set_output", {"output": "relay", "on": True})
    assert result["ok"] is True, result
    wait_for(lambda: agent.status().get("pins", {}).get("relay") == 0, 10, "relay pin driven low (on)")
    assert agent.status()["outputs"]["relay"] is True

    assert gateway.send_command("PI-1", "ping")["ok"] is True
    bad = gateway.send_command("PI-1", "set_output", {"output": "relay", "on": "yes"})
    assert bad["ok"] is False and "on (boolean)" in bad["msg"]
    assert agent.status()["outputs"]["relay"] is True  # a bad command changed nothing
    unknown = gateway.send_command("PI-1", "self_destruct")
    assert unknown["ok"] is False and "unknown command" in unknown["msg"]

    result = gateway.send_command("PI-1", "set_interval", {"seconds": 0.5})
    assert result["ok"] is True
    wait_for(lambda: agent.status().get("interval") == 0.5, 10, "interval 0.5 s")
    assert agent.stop() == 0


@pytest.mark.parametrize("outage_s", [OUTAGE_S])
def test_gateway_outage_every_reading_delivered_exactly_once(gateway: GatewayProcess, agent_factory,  # type: ignore[no-untyped-def]
                                                             outage_s: float) -> None:
    agent = agent_factory(gateway).start()
    wait_for(lambda: len(gateway.seqs("PI-1")) >= 10, 60, "first readings")
    gateway.stop()
    wait_for(lambda: agent.status().get("connected") is False, 15, "agent noticing the outage")
    before = agent.status()["next_seq"]
    # the outage lasts until the agent has sampled outage_s worth of readings (interval 0.2 s) into its queue
    wait_for(lambda: agent.status()["next_seq"] - before >= int(outage_s / 0.2 * 0.8), outage_s * 4,
             f"{outage_s:g} s of readings buffered during the outage")
    during = agent.status()
    assert during["connected"] is False and during["led"] == "buffering"
    held = agent.queue_seqs()
    assert during["next_seq"] - before >= 20, "the agent kept sampling during the outage"
    assert held and held == list(range(held[0], held[-1] + 1))

    gateway.start()
    wait_for(lambda: drained(agent, gateway) and gateway.seqs("PI-1")[-1] >= held[-1], 90,
             "the backlog delivered")
    assert agent.stop() == 0
    last = agent.queue_next_seq() - 1
    assert agent.status()["next_seq"] == last + 1  # the final status file is written on exit
    seqs = gateway.seqs("PI-1")
    unsent = agent.queue_seqs()  # readings taken while stopping, not yet acked, stay for next start
    assert_exactly_once(seqs + unsent, 1, last)
    assert agent.status()["dropped"] == 0


def device_status(gateway: GatewayProcess, device_id: str) -> dict[str, object]:
    """The latest status frame the gateway holds for a device (from the dashboard snapshot)."""
    from websockets.sync.client import connect

    with connect(gateway.url + "/v1/dashboard", open_timeout=10) as ws:
        snapshot = json.loads(ws.recv(timeout=10))
    for device in snapshot["devices"]:
        if device["id"] == device_id:
            return dict(device.get("status") or {})
    return {}


def test_sigkill_with_a_full_queue_loses_nothing(gateway: GatewayProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory(gateway, extra="[queue]\nmax_readings = 60\n")
    gateway.stop()
    agent.start()
    wait_for(lambda: agent.status().get("dropped", 0) > 0, 60, "the queue filling up and dropping")
    agent.kill()
    held = agent.queue_seqs()
    assert len(held) == 60 and held == list(range(held[0], held[0] + 60))
    dropped = held[0] - 1  # the full queue dropped the oldest: everything below held[0], and counted it

    # restart on the same state dir with room to spare, so the restart itself drops nothing
    text = agent.config_path.read_text()
    agent.config_path.write_text(text.replace("max_readings = 60", "max_readings = 5000"))
    gateway.start()
    agent.start()
    wait_for(lambda: drained(agent, gateway), 60, "delivery after restart")
    seqs = gateway.seqs("PI-1")
    assert set(held) <= set(seqs), "a reading held at SIGKILL time was lost"
    assert seqs[0] == held[0]
    assert_exactly_once(seqs, held[0], seqs[-1])
    assert agent.status()["dropped"] == dropped  # the drop counter survived SIGKILL
    wait_for(lambda: device_status(gateway, "PI-1").get("dropped") == dropped, 30,
             "the gateway holding the agent's dropped count")
    assert agent.stop() == 0


def test_reboot_command_answers_then_exits_for_systemd_restart(gateway: GatewayProcess,
                                                               agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory(gateway).start()
    wait_for(lambda: agent.status().get("connected"), 30, "agent online")
    result = gateway.send_command("PI-1", "reboot")
    assert result["ok"] is True
    assert agent.wait_exit(30) == 75  # non-zero: Restart=on-failure starts the service again


def test_wrong_token_keeps_readings_and_retries(gateway: GatewayProcess, agent_factory) -> None:  # type: ignore[no-untyped-def]
    gateway.register("PI-1")
    agent = agent_factory(gateway, token="ewt_" + "A" * 32).start()
    wait_for(lambda: "HTTP 401" in agent.log_text(), 30, "the refusal logged")
    assert agent.status()["connected"] is False
    wait_for(lambda: len(agent.queue_seqs()) >= 5, 30, "readings kept on disk")
    assert "A" * 32 not in agent.log_text()  # the credential is never logged
    assert agent.stop() == 0
