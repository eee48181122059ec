"""systemd integration of ``gateway serve`` (gateway/systemd/edgewire-gateway.service, Type=notify).

READY=1 is sent once the gateway listens; WATCHDOG=1 every half WatchdogSec, from a task on
the gateway's own event loop, so a blocked loop stops it and systemd restarts the gateway.
A tick that arrives later than the watchdog interval (the loop was stalled that long) is not
followed by a ping either, so a loop that keeps stalling between pings is restarted as well.
STOPPING=1 is sent when the gateway starts draining. Outside systemd ($NOTIFY_SOCKET unset)
nothing is sent.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from gateway.logs import log
from runtime import sdnotify


class ServiceNotifier:
    """Decides when to ping the systemd watchdog; ``run`` drives it on the event loop."""

    def __init__(self, environ: dict[str, str] | None = None, clock: Callable[[], float] = time.monotonic,
                 notify: Callable[[str, dict[str, str] | None], bool] = sdnotify.notify,
                 tick_s: float = 1.0) -> None:
        self.environ = environ
        self.clock = clock
        self._notify = notify
        self.interval = sdnotify.watchdog_interval(environ)
        self.tick_s = tick_s if self.interval is None else min(tick_s, self.interval / 2)
        self.last_ping = -math.inf
        self.expected = 0.0
        self.stalled = False

    def send(self, state: str) -> bool:
        return self._notify(state, self.environ)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")
        self.expected = self.clock() + self.tick_s

    def tick(self) -> bool:
        """Called every ``tick_s``; True when a watchdog ping was sent."""
        now = self.clock()
        lag = now - self.expected
        self.expected = now + self.tick_s
        if self.interval is None:
            return False
        if lag > self.interval:
            if not self.stalled:
                log("event_loop_stalled", logging.ERROR, lag_s=round(lag, 1),
                    hint="withholding the systemd watchdog ping")
            self.stalled = True
            return False
        self.stalled = False
        if now - self.last_ping < self.interval:
            return False
        self.send("WATCHDOG=1")
        self.last_ping = now
        return True

    async def run(self, draining: Callable[[], bool]) -> None:
        """Ping while the gateway serves; send STOPPING=1 once it drains. Cancel to stop."""
        while not draining():
            await asyncio.sleep(self.tick_s)
            if not draining():
                self.tick()
        self.send("STOPPING=1")
