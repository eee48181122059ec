"""Outputs on gpiozero MockFactory pins: LED patterns per state, buzzer, relay, rules."""

from __future__ import annotations

import time
from statistics import median
from typing import Any

import pytest

from edge import outputs
from edge.config import OutputSpec, RuleSpec
from edge.errors import OutputError
from edge.outputs import Outputs
from edge.rules import Rules

SPECS = {"led": OutputSpec("led", 17), "buzzer": OutputSpec("buzzer", 27),
         "relay": OutputSpec("relay", 22, active_high=False)}


def pin(factory: Any, number: int) -> Any:
    return factory.pin(number)


def blink_times(factory: Any, number: int, seconds: float) -> tuple[float, float]:
    """Median on and off durations seen on a mock pin over ``seconds``."""
    p = pin(factory, number)
    p.clear_states()
    time.sleep(seconds)
    # MockPin records each change as (time the previous state lasted, new state)
    entries = list(p.states)
    ons, offs = [], []
    for before, entry in zip(entries, entries[1:], strict=False):
        if bool(before.state) != bool(entry.state):
            (ons if before.state else offs).append(entry.timestamp)
    ons, offs = ons[1:], offs[1:]  # the first interval started before clear_states()
    assert ons and offs, f"pin GPIO{number} did not blink: {entries}"
    return median(ons), median(offs)


def test_led_patterns_on_mock_pins(mock_pins: Any) -> None:
    out = Outputs(SPECS)
    try:
        led = pin(mock_pins, 17)
        assert led.state is False  # off until a state is shown
        out.show(outputs.ONLINE)
        time.sleep(0.3)
        assert led.state is True  # steady on
        assert all(s.state for s in led.states[-1:])

        out.show(outputs.CONNECTING)
        on, off = blink_times(mock_pins, 17, 2.6)
        assert 0.5 <= on / off <= 2.0  # even blink

        out.show(outputs.ALERT)
        on, off = blink_times(mock_pins, 17, 1.2)
        assert on < 0.4 and off < 0.4  # fast blink

        out.show(outputs.BUFFERING)
        on, off = blink_times(mock_pins, 17, 4.5)
        assert off > 5 * on  # short flash, long pause
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
