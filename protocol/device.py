"""Edgewire protocol v1, the device side: DeviceSession and Backoff (no I/O; the clock is passed in).

DeviceSession owns the device half of docs/protocol.md. It decides what to send, what
each gateway frame means (a Decision, already applied to the driver's outbox: ack
through N, renumber by N, drop a refused range), what to do when a connection ends (a
Reconnect: back off, reconnect slowly, retry hourly, stop, refresh the credential) and
which commands and arguments are valid (wire.COMMANDS; the driver registers handlers),
how many readings a frame holds (one rule, _fit_batch), what an HTTP refusal's body says
(refusal_code) and what must outlive the session object across a deep sleep (state() and
restore()). Backoff is the one reconnect backoff every driver uses. The session's rooms:
protocol/decisions.py (Decision, Reconnect and their kinds, the close table, refusal_code,
Backoff, Policy: all public here too), device_frames.py, device_commands.py and
device_endings.py (its mixins). Drivers (the Pi agent, the
ESP32 firmware, the simulator, the load generator) do the I/O and keep the readings in
an outbox: ``next_seq``, ``first_seq``, ``confirmed``, ``pending(after, limit)``,
``ack(seq)``, ``drop(first, last)``, ``renumber(delta)``, ``confirm()``
(protocol/outbox.py has an in-memory one). MicroPython-safe like wire.py.

Why the command handlers run inside ``handle()`` rather than coming back as actions for
the driver to run: a handler here is a short, synchronous, local change (an interval, a
threshold, an output pin, a flag that asks for a reboot); nothing in it talks to the
gateway. Running it in the same call lets the core own the whole command contract of
docs/protocol.md section 8 in one step that no driver can split: the arguments are
checked before any handler sees them, a handler that raises is answered ``ok: false``
instead of taking the device down, the answer is built and remembered under the command
id before handle() returns (so a repeated id can never run twice, even if the driver
handled another frame before sending the answer), and the LOADGEN policy's "not run"
replaces the handler. Returned as actions, each of the four drivers would have to run
the handler, catch its exceptions and hand the result back in a second call, and a
driver that forgot the second call would break at-least-once delivery. What a command
needs after its answer is sent (``reboot``) is already an action: the Decision's
``name`` and ``ok`` tell the driver to reboot once the reply is out. A handler that would
need I/O or time (an over-the-air update, say) answers at once and leaves the work to
the driver the same way.
"""

# The decisions' public names (protocol.decisions.__all__) are this module's too: the drivers
# import them from here.
from protocol.decisions import *  # noqa: F403
from protocol.decisions import D_INVALID, DEVICE, ENC_CBOR, ENC_JSON, Backoff, Decision, Reconnect
from protocol.device_commands import _Commands
from protocol.device_endings import _Endings
from protocol.device_frames import _Frames
from protocol.wire import (
    _CPYTHON,
    DEFAULT_RATE,
    E_UNKNOWN_TYPE,
    MAX_FRAME_BYTES,
    SUBPROTOCOL_CBOR,
    SUBPROTOCOL_JSON,
    T_ACK,
    T_AUTH,
    T_CMD,
    T_ERROR,
    T_OTA_CHUNK,
    T_SLOW,
    T_STATUS,
    T_WELCOME,
    ProtocolError,
    data_message,
    decode,
    encode,
)


class DeviceSession(_Frames, _Commands, _Endings):
    """The device side of one device's conversation with the gateway, across connections.

    The driver calls ``handle(text, now_ms)`` for every frame received and acts on the
    Decision, sends ``next_frame(...)`` while it returns a frame, and asks ``closed()``,
    ``refused()`` or ``failed()`` what to do when a connection ends. ``handlers`` maps
    command names to ``fn(args) -> (ok, message, data)``; arguments are validated here.
    What each gateway frame means is in _Frames (protocol/device_frames.py), its commands in
    _Commands (protocol/device_commands.py), its end of a connection (state() and restore()
    included) in _Endings (protocol/device_endings.py): one object, four rooms.
    """

    def __init__(self, device_id, token=None, jwt=None, boot=None, max_batch=20, window=4,
                 loads=None, dumps=None, outbox=None, backoff=None, policy=None, handlers=None, encoding=ENC_JSON,
                 batch_cap=None, ota=None):
        if encoding != ENC_JSON and encoding != ENC_CBOR:
            raise ValueError("encoding: json or cbor")
        self.device_id = device_id
        self.encoding = encoding  # what to offer at the upgrade (docs/protocol.md section 1)
        self.cbor = False  # this connection negotiated edgewire.v1.cbor: data frames go binary
        self.token = token
        self.jwt = jwt
        self.boot = boot
        max_batch = max_batch if max_batch >= 1 else 1
        self.batch_limit = max_batch  # configured batch size (halved after a 1009 close)
        self.batch_cap = batch_cap if batch_cap is not None and batch_cap > max_batch else max_batch
        self.max_batch = max_batch  # in effect (_fit_batch): see docs/protocol.md section 4
        self.slowed = False  # a slow-down came: frames may grow to batch_cap
        self.window = window  # frames in flight before waiting for an ack
        self.loads = loads
        self.dumps = dumps or encode
        self.outbox = outbox
        self.backoff = backoff if backoff is not None else Backoff()
        self.policy = policy if policy is not None else DEVICE
        self.handlers = handlers if handlers is not None else {}
        self.ota = ota  # a protocol.ota.OtaCore: the ota command, ota_chunk frames, ota state frames
        if ota is not None:
            self.handlers = dict(self.handlers)
            self.handlers["ota"] = ota.offer
        self.acked = 0  # highest seq the gateway confirmed stored
        self.sent = 0  # highest seq sent on this connection
        self.in_flight = []  # (first seq, last seq) of each unacknowledged frame sent
        self.online = False
        self.rate = DEFAULT_RATE
        self.max_frame = MAX_FRAME_BYTES
        self.send_at_ms = None  # pacing: no data frame before this time (None: now)
        self.welcome = None
        self.rejected = 0  # readings the gateway refused (dropped, not resent)
        self.oversize = 0  # readings dropped because one alone exceeds max_frame
        self.closing = 0  # close code announced by an error frame, until the close arrives
        self.stopped = False  # R_STOP: no attempt until set_credential()
        self.retry_at_ms = 0  # when the next connection attempt is due
        self.last_reconnect = None
        self.answered = []  # (command id, result frame) of the last REPEATS_KEPT commands, oldest first

    # ------------------------------------------------------------ credential
    @property
    def credential(self):
        """The JWT or token to send as ``Authorization: Bearer``."""
        return self.jwt if self.jwt is not None else self.token

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

    def set_credential(self, token=None, jwt=None):
        """A new credential (operator rotated the token, provider refreshed the JWT): ends a stop."""
        self.token = token
        self.jwt = jwt
        self.stopped = False
        self.retry_at_ms = 0
        self.backoff.reset()

    # ------------------------------------------------------------ encoding (docs/protocol.md section 1)
    def subprotocols(self):
        """The Sec-WebSocket-Protocol values to offer at the upgrade, most wanted first."""
        if self.encoding == ENC_CBOR:
            return [SUBPROTOCOL_CBOR, SUBPROTOCOL_JSON]
        return []

    def negotiated(self, subprotocol):
        """The upgrade's answer (None: no subprotocol): data frames are binary CBOR on this connection
        only if the gateway selected edgewire.v1.cbor; everything else stays JSON text."""
        self.cbor = self.encoding == ENC_CBOR and subprotocol == SUBPROTOCOL_CBOR
        return self.cbor

    def _data_frame(self, batch, up):
        seq = batch[0].seq
        if self.cbor:
            from protocol.cbor import encode_data  # imported at the first CBOR frame: JSON-only devices never load it

            frame = encode_data(seq, batch, self.boot, up)
            if frame is not None:
                return frame  # else JSON, which a CBOR connection accepts too (a value not exact as an integer)
        return self.dumps(data_message(seq, batch, self.boot, up))

    # ------------------------------------------------------------ frames from the gateway
    def handle(self, text, now_ms=0):
        """Interpret one gateway frame, apply it to the outbox; return a Decision (never raises)."""
        try:
            msg = decode(text, self.loads, 1 << 20)
        except ProtocolError as err:
            return Decision(D_INVALID, code=err.code, message="gateway frame ignored: " + err.message)
        kind = msg["t"]
        if kind == T_ACK:
            return self._on_ack(msg)
        if kind == T_WELCOME:
            return self._on_welcome(msg)
        if kind == T_SLOW:
            return self._on_slow(msg, now_ms)
        if kind == T_ERROR:
            return self._on_error(msg)
        if kind == T_CMD:
            return self._on_cmd(msg)
        if kind == T_OTA_CHUNK:
            return self._on_ota_chunk(msg)
        return Decision(D_INVALID, code=E_UNKNOWN_TYPE, message="gateway frame of unknown type '" + kind[:32]
                        + "' ignored")

    # ------------------------------------------------------------ frames to the gateway
    def can_send(self):
        return self.online and len(self.in_flight) < self.window

    def send_wait_ms(self, now_ms):
        """Milliseconds until pacing or a slow-down allows the next data frame."""
        at = self.send_at_ms
        if at is None or now_ms >= at:
            return 0
        return at - now_ms

    def next_frame(self, pending=None, up=None, now_ms=None):
        """The next data frame, or None (window full, paced, nothing to send).

        Takes the readings after the last one sent from ``pending`` (or the outbox), up to
        ``max_batch``, stopping at the first gap in sequence numbers, and never builds a
        frame larger than the welcome's ``max_frame``: the batch shrinks, and a reading
        that alone is too large is dropped from the outbox and counted. With ``now_ms``
        frames are paced at ``rate`` per second (unless the policy ignores slow-downs).
        """
        if not self.can_send():
            return None
        if now_ms is not None and self.send_at_ms is not None and now_ms < self.send_at_ms:
            return None
        while True:
            source = pending
            if source is None:
                if self.outbox is None:
                    return None
                source = self.outbox.pending(self.sent, self.max_batch)
            batch = []
            expect = 0
            for reading in source:
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
            frame = self._data_frame(batch, up)
            while len(frame) > self.max_frame and len(batch) > 1:
                batch = batch[:len(batch) // 2]
                frame = self._data_frame(batch, up)
            if len(frame) <= self.max_frame:
                break
            seq = batch[0].seq  # one reading larger than any frame the gateway accepts
            if self.outbox is not None:
                self.outbox.drop(seq, seq)
            self.oversize += 1
            self.rejected += 1
            self.sent = seq
        self.sent = batch[-1].seq
        self.in_flight.append((batch[0].seq, self.sent))
        if now_ms is not None and self.policy.obey_slow:
            self.send_at_ms = now_ms + int(1000 / self.rate)
        return frame

    def status_frame(self, fields):
        msg = {"t": T_STATUS}
        for key in fields:
            msg[key] = fields[key]
        return self.dumps(msg)


# ---------------------------------------------------------------- CPython only
# Debug reprs; not defined on the board, where their code would take heap for nothing.
if _CPYTHON:

    def _decision_repr(self):
        return "Decision(%s, seq=%r, last=%r, count=%r, renumber=%r, code=%r)" % (
            self.kind, self.seq, self.last, self.count, self.renumber, self.code)

    def _reconnect_repr(self):
        return "Reconnect(%s, delay_ms=%r, code=%r)" % (self.action, self.delay_ms, self.code)

    Decision.__repr__ = _decision_repr
    Reconnect.__repr__ = _reconnect_repr
