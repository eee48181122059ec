"""A simulated device's sending: data frames as the window, pacing, batching and linger allow.

protocol.device.DeviceSession decides what a frame holds (its batch-size rule included) and when
one may go; this part holds a partial batch back for linger_s, counts what was sent and resent,
and sends malformed frames and slow sends when the fault plan says so.
"""

from __future__ import annotations

import asyncio
import math

from websockets.asyncio.client import ClientConnection

from protocol import wire
from simulator.device_base import DeviceBase


class Sending(DeviceBase):
    """The send side of a VirtualDevice's connection."""

    async def _send(self, ws: ClientConnection, frame: str | bytes | bytearray) -> None:
        if self.faults is not None:
            delay = self.faults.send_delay()
            if delay > 0:
                await asyncio.sleep(delay)
        await ws.send(frame)

    def _unsent_index(self) -> int:
        """Index in the outbox of the first reading not sent on this connection."""
        sent = self.session.sent
        index = 0
        for item in self.outbox.readings:
            if item.seq > sent:
                break
            index += 1
        return index

    async def _send_ready(self, ws: ClientConnection, now: float) -> None:
        """Send data frames while the window, pacing and batching allow."""
        session = self.session
        readings = self.outbox.readings
        while session.can_send():
            index = self._unsent_index()
            unsent = len(readings) - index
            if unsent == 0:
                return
            if unsent < self.batch and self._generating and now < self._linger_deadline(index):
                return
            first = readings[index].seq
            frame = session.next_frame(up=self._uptime_ms(now), now_ms=self._ms(now))
            self._sync_counts()
            if frame is None:
                return
            last = session.sent
            count = last - first + 1
            self.counters.sent_frames += 1
            self.counters.sent_readings += count
            if first <= self._max_sent_seq:
                self.counters.resent += min(count, self._max_sent_seq - first + 1)
            self._max_sent_seq = max(self._max_sent_seq, last)
            await self._send(ws, frame)
            if self.faults is not None and self.faults.want_malformed():
                max_frame = (session.welcome or {}).get("max_frame", wire.MAX_FRAME_BYTES)
                _kind, bad = self.faults.malformed_frame(max_frame if type(max_frame) is int else 16384)
                self.counters.malformed += 1
                await self._send(ws, bad)
            readings = self.outbox.readings

    def _linger_deadline(self, index: int) -> float:
        """When a partial batch starting at ``outbox[index]`` is due (its oldest reading aged linger_s)."""
        up = self.outbox.readings[index].up
        if up is None:
            return 0.0
        taken_at: float = self._boot_at + up / 1000.0
        if taken_at > asyncio.get_running_loop().time():
            return 0.0  # read before a reboot (uptime from the previous boot): long overdue
        return taken_at + self.linger_s

    def _deadline(self, now: float, gen_until: float) -> float:
        """The next moment the loop has something to do without a frame arriving."""
        deadline = self._next_sample_at if self._generating and self._next_sample_at < gen_until else math.inf
        if self.session.can_send():
            index = self._unsent_index()
            unsent = self.outbox.count - index
            if unsent:
                due = now + self.session.send_wait_ms(self._ms(now)) / 1000.0
                if unsent < self.batch and self._generating:
                    due = max(due, self._linger_deadline(index))
                deadline = min(deadline, max(due, now))
        return deadline
