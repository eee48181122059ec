"""The status LED, buzzer and relay through every agent state, read back from gpiozero mock pins.

The agent runs in this process (its own event loop in a thread) so the test can watch the
MockFactory pins directly, against a real gateway process that is stopped and started.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from edge import config
from edge.agent import Agent
from tests.edge.agentproc import AgentThread, wait_for
from tests.edge.conftest import mock_pins, write_probe  # noqa: F401  (fixture)
from tests.edge.pins import pattern_of
from tests.helpers.gateway import GatewayProcess

LED, BUZZER, RELAY = 17, 27, 22


def test_led_buzzer_relay_follow_agent_state(tmp_path: Path, gateway: GatewayProcess, mock_pins: Any) -> None:  # noqa: F811
    token = gateway.register("PI-LED")
    w1 = tmp_path / "w1"
    w1.mkdir()
    text = f'''
[agent]
device_id = "PI-LED"
token = "{token}"
gateway = "{gateway.device_url}"
interval = 0.2
state_dir = "{tmp_path / 'state'}"
backend = "sim"
[uplink]
backoff_min = 0.2
backoff_max = 0.5
[[sensors]]
type = "ds18b20"
devices_dir = "{w1}"
attempts = 1
[outputs.led]
pin = {LED}
[outputs.buzzer]
pin = {BUZZER}
[outputs.relay]
pin = {RELAY}
active_high = false
[[rules]]
metric = "temperature"
high = 30.0
hysteresis = 1.0
outputs = ["buzzer", "relay"]
'''
    cfg = config.parse(tomllib.loads(text))
    gateway.stop()
    runner = AgentThread(Agent(cfg)).start()
    led, buzzer, relay = (mock_pins.pin(n) for n in (LED, BUZZER, RELAY))
    try:
        # gateway down, no probe yet so nothing buffered: connecting = even blink
        wait_for(lambda: runner.agent.outputs.pattern == "connecting", 10, "connecting")
        assert pattern_of(led, 2.6) == "even"
        assert relay.state is True and buzzer.state is False  # active-low relay idle, buzzer silent

        gateway.start()
        wait_for(lambda: runner.agent.connected, 30, "online")
        assert pattern_of(led, 1.5) == "steady" and led.state is True

        gateway.stop()
        write_probe(w1, "28-000000000001", 21500)
        wait_for(lambda: runner.agent.outputs.pattern == "buffering", 20, "buffering")
        assert pattern_of(led, 4.5) == "flash"
        assert runner.agent.buffered > 0

        # too hot while the gateway is unreachable: alert blink, local rule sounds buzzer, closes relay
        write_probe(w1, "28-000000000001", 35000)
        wait_for(lambda: runner.agent.outputs.pattern == "alert", 10, "alert")
        assert pattern_of(led, 1.5) == "fast"
        wait_for(lambda: relay.state is False and buzzer.state is True, 10, "rule outputs on")

        # gateway back: outputs return to the commanded state (off); the alert still shows on the LED
        gateway.start()
        wait_for(lambda: runner.agent.connected, 30, "online again")
        wait_for(lambda: relay.state is True and buzzer.state is False, 10, "rule outputs released")
        assert pattern_of(led, 1.5) == "fast"

        # cooled down: online
        write_probe(w1, "28-000000000001", 20000)
        wait_for(lambda: runner.agent.outputs.pattern == "online", 10, "online pattern")
        assert pattern_of(led, 1.5) == "steady"

        # a command switches the relay pin while online
        assert gateway.send_command("PI-LED", "set_output", {"output": "relay", "on": True})["ok"] is True
        assert relay.state is False
    finally:
        assert runner.stop() == 0
