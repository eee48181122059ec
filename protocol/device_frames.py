"""DeviceSession's reading of the gateway's frames (docs/protocol.md sections 3-6), a mixin of
protocol/device.py: ack, welcome (the outbox reconciled), slow-down, error; the one batch-size rule
(_fit_batch) and the rate's bounds. ``DeviceSession.handle`` dispatches to them.
MicroPython-safe like wire.py.
"""

from protocol.decisions import (
    D_ACK,
    D_CLOSING,
    D_DROP,
    D_INVALID,
    D_NOTE,
    D_RESEND,
    D_SLOW,
    D_WELCOME,
    MAX_RATE,
    MAX_RETRY_MS,
    MIN_RATE,
    Decision,
    _seq_or_zero,
)
from protocol.wire import (
    CLOSE_FOR_ERROR,
    E_BAD_FRAME,
    E_RATE,
    E_STORAGE,
    MAX_BATCH,
    MAX_FRAME_BYTES,
    is_number,
)


class _Frames:
    """What each gateway frame means, applied to the session and its outbox (a Decision)."""

    def _on_ack(self, msg):
        seq = msg.get("seq")
        if type(seq) is not int or seq < 0:
            return Decision(D_INVALID, code=E_BAD_FRAME, message="ack without an integer seq ignored")
        count = 0
        if seq > self.acked:
            self.acked = seq
            if self.outbox is not None:
                count = self.outbox.ack(seq)
        flight = self.in_flight
        while flight and flight[0][1] <= seq:
            flight.pop(0)
        if self.sent < self.acked:
            self.sent = self.acked
        return Decision(D_ACK, seq=self.acked, count=count)

    def _on_welcome(self, msg):
        """Online. The welcome's last_seq acks what it covers, unless the counter was lost.

        The counter was lost (docs/protocol.md section 3) when the gateway stored seqs this
        device never issued (last_seq >= next_seq), or when the outbox's counter was never
        confirmed by a welcome (store created fresh) and its readings start at or below
        last_seq: then the held readings are renumbered from last_seq + 1 instead.
        """
        self.online = True
        self.welcome = msg
        last = _seq_or_zero(msg.get("last_seq"))
        renumber = 0
        count = 0
        box = self.outbox
        if box is not None:
            following = box.next_seq
            first = box.first_seq
            if last >= following or (not box.confirmed and first < following and first <= last):
                renumber = last + 1 - first
                box.renumber(renumber)
            else:
                count = box.ack(last)
                box.confirm()
        self.acked = last
        self.sent = last
        self.in_flight = []
        self.closing = 0
        self.stopped = False
        self.retry_at_ms = 0  # online: no attempt pending
        self.send_at_ms = None
        self.backoff.reset()
        if self.ota is not None:
            self.ota.online()
        self.max_batch = self._fit_batch()
        frame = msg.get("max_frame")
        self.max_frame = frame if type(frame) is int and frame > 256 else MAX_FRAME_BYTES
        self._set_rate(msg.get("rate"))
        return Decision(D_WELCOME, seq=last, renumber=renumber, count=count)

    def _fit_batch(self):
        """The batch size to use now, by the one batch-size rule for every driver (docs/protocol.md
        section 4): the configured size (``batch_limit``, halved by each 1009 close), or after a
        slow-down ``batch_cap`` (a paced device moves its backlog in fewer, fuller frames), never
        above the welcome's max_batch (wire.MAX_BATCH when it announced none)."""
        limit = self.batch_cap if self.slowed else self.batch_limit
        welcome = self.welcome
        announced = welcome.get("max_batch") if welcome is not None else None
        gateway = announced if type(announced) is int and announced > 0 else MAX_BATCH
        return limit if limit < gateway else gateway

    def _set_rate(self, rate):
        """Take the gateway's frame rate, within MIN_RATE..MAX_RATE (a hostile or broken value
        such as 1e-300 must not stall the device for ever or overflow the pacing)."""
        if is_number(rate) and rate > 0:
            self.rate = min(max(rate, MIN_RATE), MAX_RATE)

    def _on_slow(self, msg, now_ms):
        self._set_rate(msg.get("rate"))
        seq = _seq_or_zero(msg.get("seq"))
        self._rewind(seq)  # the refused frame was not stored: send it again
        if not self.slowed:
            self.slowed = True
            size = self._fit_batch()
            if size > self.max_batch:  # a slow-down only ever grows frames
                self.max_batch = size
        wait = 0
        if self.policy.obey_slow:
            wait = msg.get("retry_ms")
            if type(wait) is not int or wait <= 0:
                wait = int(1000 / self.rate)
            wait = min(wait, MAX_RETRY_MS)
            self.send_at_ms = now_ms + wait
        return Decision(D_SLOW, seq=seq, wait_ms=wait)

    def _on_error(self, msg):
        seq = msg.get("seq")
        code = msg.get("code")
        text = msg.get("msg")
        code = code if type(code) is str else E_BAD_FRAME
        text = text[:200] if type(text) is str else ""
        if type(seq) is not int:
            close = CLOSE_FOR_ERROR.get(code, 0)
            if close:
                self.closing = close
                return Decision(D_CLOSING, code=code, message=text, close_code=close)
            if self.ota is not None and self.ota.refused(code):
                text = "update aborted: " + text
            return Decision(D_NOTE, code=code, message=text)
        if code == E_RATE or code == E_STORAGE:
            self._rewind(seq)  # not stored: send again
            return Decision(D_RESEND, seq=seq, code=code, message=text)
        flight = self.in_flight
        for index in range(len(flight)):
            first, last = flight[index]
            if first <= seq <= last:
                flight.pop(index)  # free its window slot
                count = self.outbox.drop(first, last) if self.outbox is not None else 0
                self.rejected += last - first + 1
                return Decision(D_DROP, seq=first, last=last, count=count, code=code, message=text)
        return Decision(D_NOTE, seq=seq, code=code, message=text)

    def _rewind(self, seq):
        if seq > self.acked and seq <= self.sent:
            self.sent = seq - 1
            flight = self.in_flight
            while flight and flight[-1][0] >= seq:
                flight.pop()
