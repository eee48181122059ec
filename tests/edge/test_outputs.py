"""Outputs on gpiozero MockFactory pins: LED patterns per state, buzzer, relay, rules."""

from __future__ import annotations

from typing import Any

import pytest

from edge import outputs
from edge.config import OutputSpec, RuleSpec
from edge.errors import OutputError
from edge.outputs import Outputs
from edge.rules import Rules
from tests.edge.agentproc import wait_for
from tests.edge.pins import blink_times, pattern_of

SPECS = {"led": OutputSpec("led", 17), "buzzer": OutputSpec("buzzer", 27),
         "relay": OutputSpec("relay", 22, active_high=False)}


def pin(factory: Any, number: int) -> Any:
    return factory.pin(number)


def test_led_patterns_on_mock_pins(mock_pins: Any) -> None:
    out = Outputs(SPECS)
    try:
        led = pin(mock_pins, 17)
        assert led.state is False  # off until a state is shown
        out.show(outputs.ONLINE)
        wait_for(lambda: led.state is True, 5, "the LED on")  # steady on
        assert all(s.state for s in led.states[-1:])

        out.show(outputs.CONNECTING)
        times = blink_times(led, 2.6)
        assert times is not None and 0.5 <= times[0] / times[1] <= 2.0  # even blink
        assert pattern_of(led, 2.6) == "even"

        out.show(outputs.ALERT)
        times = blink_times(led, 1.2)
        assert times is not None and times[0] < 0.4 and times[1] < 0.4  # fast blink

        out.show(outputs.BUFFERING)
        times = blink_times(led, 4.5)
        assert times is not None and times[1] > 5 * times[0]  # short flash, long pause

        out.show(outputs.ONLINE)
        assert pattern_of(led, 1.0) == "steady"
    finally:
        out.close()


def test_every_state_has_a_distinct_pattern() -> None:
    assert len(set(outputs.PATTERNS.values())) == len(outputs.PATTERNS)


def test_relay_and_buzzer_commands_drive_pins(mock_pins: Any) -> None:
    out = Outputs(SPECS)
    try:
        relay, buzzer = pin(mock_pins, 22), pin(mock_pins, 27)
        assert relay.state is True  # active-low relay board: idle = high = off
        out.set("relay", True)
        assert relay.state is False and out.states()["relay"] is True
        out.set("buzzer", True)
        assert buzzer.state is True
        out.set("buzzer", False)
        assert buzzer.state is False
        with pytest.raises(OutputError, match="no output 'fan'"):
            out.set("fan", True)
    finally:
        out.close()


def test_local_rule_override_is_undone_when_back_online(mock_pins: Any) -> None:
    out = Outputs(SPECS)
    try:
        out.set("relay", True)  # commanded on
        out.set("relay", False, source="rule")
        out.set("buzzer", True, source="rule")
        assert pin(mock_pins, 27).state is True
        out.restore()
        assert out.states()["relay"] is True  # back to the commanded state
        assert pin(mock_pins, 27).state is False
    finally:
        out.close()


def test_output_on_a_busy_pin_says_what_to_check(mock_pins: Any) -> None:
    with pytest.raises(OutputError, match="BCM"):
        Outputs({"led": OutputSpec("led", 17), "relay": OutputSpec("relay", 99)})


def test_rules_with_hysteresis() -> None:
    rules = Rules([RuleSpec("temperature", high=30.0, low=5.0, hysteresis=1.0, outputs=["buzzer"])])
    rules.update({"humidity": 50.0})
    assert not rules.alerting
    rules.update({"temperature": 30.5})
    assert rules.alerting and rules.wanted_outputs() == {"buzzer": True}
    rules.update({"temperature": 29.5})  # inside, but not by the hysteresis
    assert rules.alerting
    rules.update({"temperature": 28.9})
    assert not rules.alerting and rules.wanted_outputs() == {"buzzer": False}
    rules.update({"temperature": 4.0})
    assert rules.alerting


def test_set_thresholds_replaces_or_adds() -> None:
    rules = Rules([RuleSpec("temperature", high=30.0)])
    rules.set_thresholds("temperature", 25.0, None)
    rules.set_thresholds("humidity", None, 20.0)
    rules.update({"temperature": 26.0, "humidity": 50.0})
    assert rules.describe()[0]["active"] is True and rules.describe()[1]["active"] is False
