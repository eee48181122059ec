"""Edgewire protocol v1, the device side: DeviceSession (no I/O, no clock of its own).

Drivers (the Pi agent, the ESP32 firmware, the simulator, the load generator) do the
I/O and keep the readings; this module decides what to send and what each gateway frame
means. MicroPython-safe like wire.py.
"""

from protocol.wire import (
    DEFAULT_RATE,
    E_BAD_FRAME,
    E_RATE,
    E_STORAGE,
    E_UNKNOWN_TYPE,
    T_ACK,
    T_AUTH,
    T_CMD,
    T_ERROR,
    T_RESULT,
    T_SLOW,
    T_STATUS,
    T_WELCOME,
    ProtocolError,
    data_message,
    decode,
    encode,
    is_number,
)

# ---------------------------------------------------------------- device side

DEV_WELCOME = "welcome"  # payload: welcome dict
DEV_ACK = "ack"  # payload: int seq acknowledged (cumulative)
DEV_CMD = "cmd"  # payload: dict id, name, args
DEV_SLOW = "slow"  # payload: dict rate, retry_ms
DEV_ERROR = "error"  # payload: dict code, msg, seq


class DeviceSession:
    """Device-side protocol state: auth, what to send next, what is acknowledged.

    The driver owns the readings (RAM list, flash ring file, SQLite queue); it
    calls ``next_frame(pending)`` with readings not yet acknowledged, in seq
    order, and deletes readings through ``acked`` once the gateway confirms them.
    """

    def __init__(self, device_id, token=None, jwt=None, boot=None, max_batch=20, window=4,
                 loads=None, dumps=None):
        self.device_id = device_id
        self.token = token
        self.jwt = jwt
        self.boot = boot
        self.max_batch = max_batch
        self.window = window  # frames in flight before waiting for an ack
        self.loads = loads
        self.dumps = dumps or encode
        self.acked = 0  # highest seq the gateway confirmed stored
        self.sent = 0  # highest seq sent on this connection
        self.in_flight = []  # last seq of each unacknowledged frame sent
        self.online = False
        self.rate = DEFAULT_RATE
        self.send_after_ms = 0  # set by slow-down: wait this long before the next frame
        self.welcome = None
        self.rejected = 0  # frames the gateway refused as invalid

    def auth_frame(self):
        """The first frame to send, or None when the credential went in a header."""
        msg = {"t": T_AUTH, "device_id": self.device_id}
        if self.jwt is not None:
            msg["jwt"] = self.jwt
        elif self.token is not None:
            msg["token"] = self.token
        else:
            return None
        return self.dumps(msg)

    def connection_lost(self):
        """Forget what was in flight: it is resent after the next welcome."""
        self.online = False
        self.sent = self.acked
        self.in_flight = []

    def receive(self, text):
        """Interpret one frame from the gateway; return (event kind, payload)."""
        msg = decode(text, self.loads, 1 << 20)
        kind = msg["t"]
        if kind == T_ACK:
            seq = msg.get("seq")
            if type(seq) is not int:
                raise ProtocolError(E_BAD_FRAME, "ack without integer seq")
            if seq > self.acked:
                self.acked = seq
            while self.in_flight and self.in_flight[0] <= seq:
                self.in_flight.pop(0)
            if self.sent < self.acked:
                self.sent = self.acked
            return (DEV_ACK, self.acked)
        if kind == T_WELCOME:
            self.online = True
            self.welcome = msg
            last = msg.get("last_seq")
            if type(last) is int and last > self.acked:
                self.acked = last
            self.sent = self.acked
            self.in_flight = []
            batch = msg.get("max_batch")
            if type(batch) is int and 0 < batch < self.max_batch:
                self.max_batch = batch
            rate = msg.get("rate")
            if is_number(rate) and rate > 0:
                self.rate = rate
            return (DEV_WELCOME, msg)
        if kind == T_CMD:
            return (DEV_CMD, {"id": msg.get("id"), "name": msg.get("name"), "args": msg.get("args") or {}})
        if kind == T_SLOW:
            rate = msg.get("rate")
            if is_number(rate) and rate > 0:
                self.rate = rate
            wait = msg.get("retry_ms")
            self.send_after_ms = wait if type(wait) is int and wait > 0 else int(1000 / self.rate)
            # the refused frame was not stored: send it again
            seq = msg.get("seq")
            self._rewind(seq)
            return (DEV_SLOW, msg)
        if kind == T_ERROR:
            seq = msg.get("seq")
            code = msg.get("code")
            if code == E_RATE or code == E_STORAGE:
                self._rewind(seq)  # not stored: send again
            else:
                self.rejected += 1  # invalid: resending would not help
                if type(seq) is int:
                    self._release(seq)
            return (DEV_ERROR, {"code": code, "msg": msg.get("msg"), "seq": seq})
        raise ProtocolError(E_UNKNOWN_TYPE, "unknown message type from gateway")

    def _rewind(self, seq):
        if type(seq) is int and seq > self.acked and seq <= self.sent:
            self.sent = seq - 1
            while self.in_flight and self.in_flight[-1] >= seq:
                self.in_flight.pop()

    def _release(self, seq):
        """Free the window slot of the refused frame that starts at ``seq``."""
        for index in range(len(self.in_flight)):
            if self.in_flight[index] >= seq:
                self.in_flight.pop(index)
                return

    def can_send(self):
        return self.online and len(self.in_flight) < self.window

    def next_frame(self, pending, up=None):
        """Build the next data frame from ``pending`` (Readings in seq order), or None.

        Takes the readings after the last one sent, up to ``max_batch``, stopping
        at the first gap in sequence numbers (a gap is sent as a new frame).
        """
        if not self.can_send():
            return None
        batch = []
        expect = 0
        for reading in pending:
            if reading.seq <= self.sent:
                continue
            if batch and reading.seq != expect:
                break
            batch.append(reading)
            expect = reading.seq + 1
            if len(batch) >= self.max_batch:
                break
        if not batch:
            return None
        self.sent = batch[-1].seq
        self.in_flight.append(self.sent)
        return self.dumps(data_message(batch[0].seq, batch, self.boot, up))

    def result_frame(self, command_id, ok, message=None, data=None):
        msg = {"t": T_RESULT, "id": command_id, "ok": ok}
        if message is not None:
            msg["msg"] = message
        if data is not None:
            msg["data"] = data
        return self.dumps(msg)

    def status_frame(self, fields):
        msg = {"t": T_STATUS}
        for key in fields:
            msg[key] = fields[key]
        return self.dumps(msg)
