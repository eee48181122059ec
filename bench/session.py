"""A benchmark device's protocol session: the one place in bench/ that uses protocol.device.

``BenchSession`` drives ``protocol.device.DeviceSession`` (auth frame, data frames, window
of frames in flight, cumulative acks, the welcome's renumbering) over a ``BenchOutbox``
(the readings, in memory) with the core's ``LOADGEN`` policy. A benchmark device departs
from a field device in three ways, on purpose, and the core decides each of them:

- it never reconnects: every ``closed()`` answers R_STOP. A closed connection ends that
  device for the step, and the step reports it (``closed_during_run``, ``close_codes``),
  since hiding a failure behind a reconnect would make the figures lie;
- it does not wait out a slow-down's ``retry_ms`` and is not paced: the offered load stays
  the configured rate. Each slow-down is counted (``slowed``); the refused frame goes out
  again with the next reading;
- it answers every command "ok", "not run (load generator)", without running it: it has
  no hardware, and commands are not part of the load.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from websockets.typing import BytesLike

from bench.outbox import BenchOutbox
from protocol.device import (
    D_ACK,
    D_CLOSING,
    D_COMMAND,
    D_DROP,
    D_NOTE,
    D_RESEND,
    D_SLOW,
    D_WELCOME,
    ENC_JSON,
    LOADGEN,
    DeviceSession,
)

__all__ = ["BenchSession"]

_MOVED: tuple[bool, str | None] = (True, None)  # the window moved: send what it allows now
_NOTHING: tuple[bool, str | None] = (False, None)
_ERRORS = (D_DROP, D_RESEND, D_CLOSING, D_NOTE)  # decisions that answer an error frame


class BenchSession:
    """DeviceSession with the LOADGEN policy, as a benchmark device uses it."""

    __slots__ = ("base_seq", "core", "outbox", "rejected", "sent_before_loss", "slowed", "welcomed")

    def __init__(self, device_id: str, token: str, outbox: BenchOutbox, window: int = 4, max_batch: int = 20,
                 loads: Callable[[str | bytes], Any] | None = None,
                 dumps: Callable[[Any], str] | None = None, encoding: str = ENC_JSON) -> None:
        self.core = DeviceSession(device_id, token=token, boot=f"{random.getrandbits(32):08x}",
                                  max_batch=max_batch, window=window, loads=loads, dumps=dumps, outbox=outbox,
                                  policy=LOADGEN, encoding=encoding)
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
            text = str(payload, "utf-8")
        except UnicodeDecodeError:
            return _NOTHING  # not text: the core could not read it either
        decision = self.core.handle(text)  # LOADGEN neither waits nor paces: no clock needed
        kind = decision.kind
        if kind == D_ACK:
            return _MOVED
        if kind == D_WELCOME:
            if not self.welcomed:
                self.welcomed = True
                self.base_seq = self.outbox.first_seq - 1
            return _MOVED
        if kind == D_COMMAND:
            return False, decision.reply
        if kind == D_SLOW:
            self.slowed += 1
        elif kind in _ERRORS:
            self.rejected += 1
        return _NOTHING

    def subprotocols(self) -> list[str]:
        """What to offer at the upgrade (edgewire.v1.cbor with encoding "cbor")."""
        return self.core.subprotocols()

    def negotiated(self, subprotocol: str | None) -> bool:
        """The upgrade's subprotocol: True when data frames go as binary CBOR."""
        return self.core.negotiated(subprotocol)

    def next_frame(self) -> str | bytearray | None:
        """The next data frame the window allows (text JSON, or binary CBOR), or None."""
        return self.core.next_frame()

    def closed(self, code: int | None) -> None:
        """The connection is gone (the server's close ``code``; None without a close frame).

        LOADGEN: the core answers R_STOP whatever the code; the device is not reconnected.
        """
        self.sent_before_loss = max(self.sent_before_loss, self.core.sent)
        self.core.closed(code)

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
