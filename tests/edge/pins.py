"""Read blink patterns back from gpiozero mock pins."""

from __future__ import annotations

import itertools
import time
from statistics import median
from typing import Any


def blink_times(pin: Any, seconds: float) -> tuple[float, float] | None:
    """Median on and off durations seen on a MockPin over ``seconds``; None if it did not blink."""
    pin.clear_states()
    time.sleep(seconds)
    # MockPin records each change as (time the previous state lasted, new state)
    entries = list(pin.states)
    ons: list[float] = []
    offs: list[float] = []
    for before, entry in itertools.pairwise(entries):
        if bool(before.state) != bool(entry.state):
            (ons if before.state else offs).append(entry.timestamp)
    ons, offs = ons[1:], offs[1:]  # the first interval started before clear_states()
    if not ons or not offs:
        return None
    return median(ons), median(offs)


def pattern_of(pin: Any, seconds: float = 4.5) -> str:
    """Classify what a status LED pin shows: steady, off, even, fast or flash."""
    times = blink_times(pin, seconds)
    if times is None:
        return "steady" if pin.state else "off"
    on, off = times
    if on < 0.4 and off < 0.4:
        return "fast"
    if off > 5 * on:
        return "flash"
    if 0.5 <= on / off <= 2.0:
        return "even"
    return f"unknown({on:.2f}/{off:.2f})"
