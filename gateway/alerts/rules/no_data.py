"""no_data: nothing received for ``intervals`` x the device's usual interval (and at least ``min_s``).

The interval is learned from the readings: a moving average of the gaps between the frames
that carried data (readings of one frame share their arrival time). A gap far above the
estimate (an outage) moves it by at most 3x, so an outage does not teach the rule that the
device reports hourly. Until 3 gaps are seen the rule does not judge. The engine's timer
(every 2 s) raises the alert; the next reading clears it. Without ``metric`` any reading of
the device counts; with one, only readings that carry it. After a gateway restart the silence
is counted from the start, not from before the outage. Never suspended: an offline device is
what this rule is for.
"""

from __future__ import annotations

from typing import Any

from gateway.alerts.rules.base import CALM, FIRE, SAME, Device, Param, Rule, Track, fmt_duration

MIN_GAPS = 3
ALPHA = 0.2
MIN_GAP_MS = 50  # readings closer than this arrived in one frame


class NoDataTrack(Track):
    __slots__ = ("gaps", "interval", "last", "silent")

    def __init__(self, device_id: str) -> None:
        super().__init__(device_id)
        self.last = -1  # gateway time (ms) data last arrived
        self.interval = 0.0
        self.gaps = 0
        self.silent = 0  # ms of silence when last judged (for the text)


class NoData(Rule):
    kind = "no_data"
    METRIC = "optional"
    SUSPENDS = False
    TIMED = True
    HAS_FOR = False
    PARAMS = (
        Param("intervals", "number", 5.0, "how many usual intervals of silence raise the alert", low=1, high=10_000),
        Param("min_s", "number", 60.0, "the shortest silence that raises it, whatever the interval", low=1,
              high=30 * 86400),
    )
    track_class = NoDataTrack

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.intervals = float(spec["intervals"])
        self.min_ms = int(spec["min_s"] * 1000)

    def update(self, track: NoDataTrack, value: float, time_ms: int, device: Device) -> int:
        arrival = device.arrival
        gap = arrival - track.last
        if track.last >= 0 and gap >= MIN_GAP_MS:
            if track.gaps == 0:
                track.interval = float(gap)
            else:
                estimate = track.interval
                track.interval = estimate + ALPHA * (min(gap, 3 * estimate) - estimate)
            track.gaps += 1
        if arrival > track.last:
            if track.alert is not None:
                track.silent = arrival - track.last
            track.last = arrival
        return CALM

    def limit_ms(self, track: NoDataTrack) -> float:
        return max(self.intervals * track.interval, self.min_ms)

    def silence(self, track: NoDataTrack, now_ms: int, started_ms: int) -> int:
        """Timer check: FIRE when silent too long, else SAME."""
        if track.gaps < MIN_GAPS:
            return SAME
        silent = now_ms - max(track.last, started_ms)
        if silent > self.limit_ms(track):
            track.silent = silent
            return FIRE
        return SAME

    def text(self, track: NoDataTrack, value: float | None, time_ms: int) -> str:
        what = "no data" if self.metric == "*" else f"no {self.metric} readings"
        return f"{what} for {fmt_duration(track.silent)} (usually every {fmt_duration(track.interval)})"

    def save(self, track: NoDataTrack) -> Any:
        return [track.last, track.interval, track.gaps] if track.gaps else None

    def load(self, track: NoDataTrack, data: Any) -> None:
        last, interval, gaps = data
        track.last, track.interval, track.gaps = int(last), float(interval), int(gaps)

    def clear_reason(self, track: NoDataTrack) -> str:
        return f"data again after {fmt_duration(track.silent)}"
