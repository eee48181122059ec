"""The gateway's one reconnect backoff: every loop that reconnects or retries after a failure
(PostgreSQL's writer connection, the forwarders, the NATS and MQTT links, the forwarding
worker's supervisor, the bus engine) waits ``first_s``, then twice that, up to ``cap_s``, and
starts over after a success.

It is the devices' ``protocol.device.Backoff`` (the doubling, the cap, ``reset``) in seconds
and without its jitter: a device's jitter spreads a fleet's reconnects over time, while each of
these loops is one per process and its delays are logged and documented as exact numbers.
"""

from __future__ import annotations

from protocol import device


class Backoff(device.Backoff):
    """Delays in seconds: ``next_s()`` after each failure, ``reset()`` after a success."""

    def __init__(self, first_s: float, cap_s: float) -> None:
        super().__init__(round(first_s * 1000), round(cap_s * 1000))
        self.delay_s = 0.0  # the last delay handed out; 0.0 before the first failure and after reset()

    def draw(self, delay: int) -> int:
        return delay  # exact, no jitter

    def next_s(self) -> float:
        """The next delay (counts one more failure)."""
        self.delay_s = self.next_ms() / 1000
        return self.delay_s

    def reset(self) -> None:
        super().reset()
        self.delay_s = 0.0
