"""The local hour of day of a Unix time, cached per hour (the anomaly rule asks once per reading)."""

from __future__ import annotations

import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.errors import ConfigError

HOUR_MS = 3_600_000


def zone(name: str) -> datetime.tzinfo | None:
    """The time zone of an IANA name ("Europe/Paris"), None for "" (the system's local time)."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"alert_timezone: {name[:64]!r} is not a time zone name such as \"Europe/Paris\" "
                          "or \"UTC\"") from None


class HourOfDay:
    __slots__ = ("end", "hour", "start", "tz")

    def __init__(self, tz: datetime.tzinfo | None = None) -> None:
        self.tz = tz
        self.start = self.end = 0
        self.hour = 0

    def __call__(self, time_ms: int) -> int:
        if self.start <= time_ms < self.end:
            return self.hour
        moment = datetime.datetime.fromtimestamp(time_ms / 1000, self.tz or datetime.UTC)
        if self.tz is None:
            moment = moment.astimezone()  # the system's local time, DST included
        into = (moment.minute * 60 + moment.second) * 1000 + moment.microsecond // 1000
        self.start = time_ms - into
        self.end = self.start + HOUR_MS
        self.hour = moment.hour
        return self.hour
