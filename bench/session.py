"""A benchmark device's protocol session: the one place in bench/ that uses protocol.device.

``BenchSession`` wraps ``protocol.device.DeviceSession`` (auth frame, data frames, window of
frames in flight, cumulative acks, renumbering from the welcome's last_seq). A benchmark
device departs from a field device in three ways, on purpose:

- it never reconnects: a closed connection ends that device for the step, and the step
  reports it (``closed_during_run``, ``close_codes``), since hiding a failure behind a
  reconnect would make the figures lie;
- it does not wait out a slow-down's ``retry_ms``: the offered load stays the configured
  rate. Each slow-down is counted (``slowed``), and the refused frame goes out again with
  the next reading;
- it answers every command "ok" without running it: it has no hardware, and commands are
  not part of the load.

These three choices live here, at the points marked "bench policy", until protocol.device
carries them as a policy of its own (issue 8); then this module asks the core and nothing
else in bench/ changes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from websockets.typing import BytesLike

from protocol import wire
from protocol.device import DEV_ACK, DEV_CMD, DEV_ERROR, DEV_SLOW, DEV_WELCOME, DeviceSession

__all__ = ["BenchSession"]

_MOVED: tuple[bool, str | None] = (True, None)  # the window moved: prune acked readings, send more
_NOTHING: tuple[bool, str | None] = (False, None)


class BenchSession:
    """DeviceSession as a benchmark device uses it (see the module docstring for the policy)."""

    __slots__ = ("base_seq", "core", "rejected", "sent_before_loss", "slowed", "welcomed")

    def __init__(self, device_id: str, token: str, window: int = 4, max_batch: int = 20,
                 loads: Callable[[str | bytes], Any] | None = None,
                 dumps: Callable[[Any], str] | None = None) -> None:
        self.core = DeviceSession(device_id, token=token, boot=f"{random.getrandbits(32):08x}",
                                  max_batch=max_batch, window=window, loads=loads, dumps=dumps)
        self.welcomed = False
        self.base_seq = 0  # last_seq of the first welcome: readings above it are this run's
        self.rejected = 0  # error frames (the gateway refused or could not store a frame)
        self.slowed = 0  # slow-down frames
        self.sent_before_loss = 0  # highest seq sent before the connection was lost

    def auth_frame(self) -> str | None:
        return self.core.auth_frame()

    def receive(self, payload: BytesLike) -> tuple[bool, str | None]:
        """Interpret one text message: (the window moved, frame to send back or None)."""
        try:
            kind, info = self.core.receive(str(payload, "utf-8"))
        except (wire.ProtocolError, UnicodeDecodeError):
            return _NOTHING  # a frame the core cannot read changes nothing
        if kind == DEV_ACK:
            return _MOVED
        if kind == DEV_WELCOME:
            if not self.welcomed:
                self.welcomed = True
                self.base_seq = self.core.acked
            return _MOVED
        if kind == DEV_CMD:
            return False, self.core.result_frame(info["id"], True, "ok")  # bench policy: not run
        if kind == DEV_SLOW:
            self.slowed += 1  # bench policy: retry_ms not waited out
        elif kind == DEV_ERROR:
            self.rejected += 1
        return _NOTHING

    def next_frame(self, pending: Sequence[wire.Reading]) -> str | None:
        """The next data frame the window allows, or None."""
        return self.core.next_frame(pending)

    def closed(self, code: int) -> None:
        """The connection is gone (the server's close ``code``, 0 without one).

        Bench policy: whatever the code, the device stops; the step counts it.
        """
        self.sent_before_loss = max(self.sent_before_loss, self.core.sent)
        self.core.connection_lost()

    @property
    def sent_through(self) -> int:
        """Highest seq sent on this connection (absolute)."""
        return self.core.sent

    @property
    def acked_through(self) -> int:
        """Highest seq the gateway acknowledged (absolute)."""
        return self.core.acked

    @property
    def acked(self) -> int:
        """Readings of this run acknowledged."""
        return max(0, self.core.acked - self.base_seq)

    @property
    def sent(self) -> int:
        """Readings of this run sent at least once."""
        return max(0, max(self.core.sent, self.sent_before_loss) - self.base_seq)
