"""A benchmark device's protocol session: the one place in bench/ that uses protocol.device.

``BenchSession`` drives ``protocol.device.DeviceSession`` (auth frame, data frames, window
of frames in flight, cumulative acks) over a ``BenchOutbox`` (the readings, in memory). A
benchmark device departs from a field device in three ways, on purpose:

- it never reconnects: a closed connection ends that device for the step, and the step
  reports it (``closed_during_run``, ``close_codes``), since hiding a failure behind a
  reconnect would make the figures lie;
- it does not wait out a slow-down's ``retry_ms``: the offered load stays the configured
  rate. Each slow-down is counted (``slowed``), and the refused frame goes out again with
  the next reading;
- it answers every command "ok" without running it: it has no hardware, and commands are
  not part of the load.

These choices are marked "bench policy" below. Once protocol.device carries them as its
``LOADGEN`` policy (issue 8), this module passes that policy and the outbox to the core
and maps its decisions; nothing else in bench/ changes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from websockets.typing import BytesLike

from bench.outbox import BenchOutbox
from protocol import wire
from protocol.device import DEV_ACK, DEV_CMD, DEV_ERROR, DEV_SLOW, DEV_WELCOME, DeviceSession

__all__ = ["NOT_RUN", "BenchSession"]

NOT_RUN = "not run (load generator)"  # the result text of every command (bench policy)
_MOVED: tuple[bool, str | None] = (True, None)  # the window moved: send what it allows now
_NOTHING: tuple[bool, str | None] = (False, None)


class BenchSession:
    """DeviceSession as a benchmark device uses it (see the module docstring for the policy)."""

    __slots__ = ("base_seq", "core", "outbox", "rejected", "sent_before_loss", "slowed", "welcomed")

    def __init__(self, device_id: str, token: str, outbox: BenchOutbox, window: int = 4, max_batch: int = 20,
                 loads: Callable[[str | bytes], Any] | None = None,
                 dumps: Callable[[Any], str] | None = None) -> None:
        self.core = DeviceSession(device_id, token=token, boot=f"{random.getrandbits(32):08x}",
                                  max_batch=max_batch, window=window, loads=loads, dumps=dumps)
        self.outbox = outbox
        self.welcomed = False
        self.base_seq = 0  # seq before this run's first reading
        self.rejected = 0  # error frames (the gateway refused or could not store a frame)
        self.slowed = 0  # slow-down frames
        self.sent_before_loss = 0  # highest seq sent before the connection was lost

    def auth_frame(self) -> str | None:
        return self.core.auth_frame()

    def handle(self, payload: BytesLike) -> tuple[bool, str | None]:
        """Interpret one text message: (the window moved, frame to send back or None)."""
        try:
            kind, info = self.core.receive(str(payload, "utf-8"))
        except (wire.ProtocolError, UnicodeDecodeError):
            return _NOTHING  # a frame the core cannot read changes nothing
        if kind == DEV_ACK:
            self.outbox.ack(info)
            return _MOVED
        if kind == DEV_WELCOME:
            self._welcome(self.core.acked)
            return _MOVED
        if kind == DEV_CMD:
            return False, self.core.result_frame(info["id"], True, NOT_RUN)  # bench policy: not run
        if kind == DEV_SLOW:
            self.slowed += 1  # bench policy: retry_ms is not waited out
        elif kind == DEV_ERROR:
            self.rejected += 1  # the readings stay until a later cumulative ack covers them
        return _NOTHING

    def _welcome(self, last_seq: int) -> None:
        outbox = self.outbox
        if outbox.confirmed:
            outbox.ack(last_seq)
        else:
            # A fresh process does not know the stored counter: continue right after it.
            delta = last_seq + 1 - outbox.first_seq
            if delta:
                outbox.renumber(delta)
            else:
                outbox.confirm()
        if not self.welcomed:
            self.welcomed = True
            self.base_seq = outbox.first_seq - 1

    def next_frame(self) -> str | None:
        """The next data frame the window allows, or None."""
        core = self.core
        return core.next_frame(self.outbox.pending(core.sent, core.max_batch))

    def closed(self, code: int | None) -> None:
        """The connection is gone (the server's close ``code``; None without a close frame).

        Bench policy: whatever the code, the device stops; the step counts it.
        """
        self.sent_before_loss = max(self.sent_before_loss, self.core.sent)
        self.core.connection_lost()

    @property
    def sent_through(self) -> int:
        """Highest seq sent on this connection."""
        return self.core.sent

    @property
    def acked(self) -> int:
        """Readings of this run acknowledged."""
        return self.outbox.acked

    @property
    def sent(self) -> int:
        """Readings of this run sent at least once."""
        return max(0, max(self.core.sent, self.sent_before_loss) - self.base_seq)
