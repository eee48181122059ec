"""Edgewire protocol v1, the device side: DeviceSession and Backoff (no I/O; the clock is passed in).

DeviceSession owns the device half of docs/protocol.md. It decides what to send, what
each gateway frame means (a Decision, already applied to the driver's outbox: ack
through N, renumber by N, drop a refused range), what to do when a connection ends (a
Reconnect: back off, reconnect slowly, retry hourly, stop, refresh the credential) and
which commands and arguments are valid (wire.COMMANDS; the driver registers handlers),
how many readings a frame holds (one rule, _fit_batch), what an HTTP refusal's body says
(refusal_code) and what must outlive the session object across a deep sleep (state() and
restore()). Backoff is the one reconnect backoff every driver uses. Drivers (the Pi agent, the
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

try:
    import random
except ImportError:  # pragma: no cover - MicroPython builds that only have urandom
    import urandom as random  # type: ignore[no-redef]

from protocol.wire import (
    _CPYTHON,
    CLOSE_ADDRESS,
    CLOSE_AUTH_FAILED,
    CLOSE_DISABLED,
    CLOSE_EXPIRED,
    CLOSE_FOR_ERROR,
    CLOSE_IDENTITY,
    CLOSE_REPLACED,
    CLOSE_TOO_BIG,
    CLOSE_TOO_MANY_ERRORS,
    COMMANDS,
    DEFAULT_RATE,
    E_BAD_FRAME,
    E_RATE,
    E_STORAGE,
    E_UNKNOWN_TYPE,
    MAX_BATCH,
    MAX_FRAME_BYTES,
    SUBPROTOCOL_CBOR,
    SUBPROTOCOL_JSON,
    T_ACK,
    T_AUTH,
    T_CMD,
    T_ERROR,
    T_OTA_CHUNK,
    T_RESULT,
    T_SLOW,
    T_STATUS,
    T_WELCOME,
    ProtocolError,
    _strict_loads,
    data_message,
    decode,
    encode,
    is_number,
    parse_command,
)

# What one gateway frame means (Decision.kind).
D_WELCOME = "welcome"  # online; outbox reconciled: renumbered by .renumber, or acked through .seq
D_ACK = "ack"  # acked through .seq; .count readings removed
D_DROP = "drop"  # a frame in flight was refused as invalid: .seq..last dropped and counted rejected
D_RESEND = "resend"  # a frame was not stored (rate_limited / storage_unavailable): resent from .seq
D_SLOW = "slow"  # slow-down: resent from .seq after .wait_ms, then paced at session.rate
D_COMMAND = "command"  # a command: send .reply; reboot after sending when .name == "reboot" and .ok
# (.ok is False for a repeated command id: .code REPEATED, .reply the first answer again, nothing run)
D_CLOSING = "closing"  # an error frame that ends the connection; close .close_code follows
D_NOTE = "note"  # an error frame about no frame in flight: log .code / .message
D_INVALID = "invalid"  # a gateway frame the session could not read (bad JSON, unknown type): log
D_OTA_CHUNK = "ota_chunk"  # an update's chunk: write .data at offset .seq of file .name (protocol/ota.py)

# What to do after a connection ended (Reconnect.action), docs/protocol.md section 11.
R_BACKOFF = "backoff"  # reconnect after .delay_ms (exponential backoff with jitter)
R_SLOW = "slow"  # reconnect after .delay_ms at the backoff cap (too many errors)
R_HOURLY = "hourly"  # one attempt per hour (device disabled)
R_STOP = "stop"  # no attempt until the credential changes (set_credential); keep sampling
R_REFRESH = "refresh"  # get a new credential from the driver's provider, then refreshed()

HOURLY_MS = 3600000

# Encodings a driver may ask for (DeviceSession(encoding=...)): JSON only, or CBOR data frames when
# the gateway selects edgewire.v1.cbor at the upgrade (JSON otherwise).
ENC_JSON = "json"
ENC_CBOR = "cbor"

# Commands are delivered at least once (a gateway may send one again after the device moved to
# another instance): the answers to the last REPEATS_KEPT command ids are kept, and a repeated id
# gets its first answer again without running the command twice. An answer longer than
# REPEAT_MAX_BYTES is kept without its data (the ESP32's heap is small).
REPEATS_KEPT = 8
REPEAT_MAX_BYTES = 512
REPEATED = "repeated"

_NO_STATUS = 1005  # close frame without a code (RFC 6455)
_ABNORMAL = 1006  # no close frame at all: the connection dropped

# Close code -> action. Every code not listed (1000, 1001, 1006, 1009, 1011, 1012, 1013,
# 4002, 4008, 4009, unknown ones) backs off; 1009 also halves the batch size.
CLOSE_ACTIONS = {
    CLOSE_TOO_MANY_ERRORS: R_SLOW,
    CLOSE_AUTH_FAILED: R_STOP,
    CLOSE_DISABLED: R_HOURLY,
    CLOSE_EXPIRED: R_REFRESH,
    CLOSE_REPLACED: R_STOP,
    CLOSE_ADDRESS: R_STOP,
    CLOSE_IDENTITY: R_STOP,
}

# An HTTP refusal's body is read only up to this size (the gateway's is a small JSON object).
REFUSAL_MAX_BYTES = 1024

# state() / restore(): the snapshot's format version.
STATE_VERSION = 1

_ACTION_TEXT = {
    R_BACKOFF: "reconnect in %d ms",
    R_SLOW: "reconnect slowly, in %d ms; the device sent invalid frames: check its firmware",
    R_HOURLY: "retry in %d ms (hourly): the device is disabled at the gateway",
    R_STOP: "stopped: no reconnect until the credential changes%s",
    R_REFRESH: "the credential expired: getting a new one%s",
}


def _close_name(code):
    """The error code (or RFC 6455 name) a close code stands for."""
    for error in CLOSE_FOR_ERROR:
        if CLOSE_FOR_ERROR[error] == code:
            return error
    if code == CLOSE_TOO_BIG:
        return "message too big"
    if code == _ABNORMAL:
        return "connection lost"
    return "close"


def refusal_code(body, loads=None):
    """The error code of an HTTP refusal's JSON body (``{"code": ..., "message": ...}``,
    docs/protocol.md section 2), or None: no body, longer than REFUSAL_MAX_BYTES, not UTF-8,
    not JSON, not an object, or no code of 1-64 characters. Never raises: the body comes from
    the network. ``body`` is bytes, bytearray or str; ``loads`` as DeviceSession's."""
    if body is None or len(body) > REFUSAL_MAX_BYTES:
        return None
    try:
        text = body if type(body) is str else bytes(body).decode()
        msg = (loads or _strict_loads)(text)
    except Exception:  # ValueError, UnicodeError, a decoder's own error, nesting too deep
        return None
    code = msg.get("code") if type(msg) is dict else None
    return code if type(code) is str and 0 < len(code) <= 64 else None


def _fingerprint(credential):
    """A CRC-32 of the credential: state() records which credential a stop was for without the secret."""
    from binascii import crc32

    return crc32((credential or "").encode()) & 0xFFFFFFFF


def _rand():
    return random.getrandbits(16) / 65536


# Bounds on what the gateway may ask for (welcome "rate", slow "rate" and "retry_ms").
MIN_RATE = 0.001  # frames/s: one frame per 1,000 s at the slowest
MAX_RATE = 1000.0
MAX_RETRY_MS = 3600000  # a slow-down longer than an hour is taken as an hour


class Backoff:
    """Exponential backoff: base, 2*base, 4*base ... cap, each delay drawn from [d/2, d].

    ``rand()`` returns a float in [0, 1) (injected so tests are exact). The clock is not
    needed here: DeviceSession adds the delay to the ``now_ms`` its caller passes in.
    """

    def __init__(self, base_ms=1000, cap_ms=60000, rand=None):
        self.base_ms = int(base_ms) if base_ms >= 1 else 1
        self.cap_ms = int(cap_ms) if cap_ms >= self.base_ms else self.base_ms
        self.rand = rand or _rand
        self.attempt = 0

    def draw(self, delay):
        """A delay in [delay/2, delay] (equal jitter)."""
        half = delay // 2
        return half + int(self.rand() * (delay - half + 1))

    def next_ms(self):
        """The next delay; counts one more failed attempt."""
        delay = self.base_ms << self.attempt if self.attempt < 24 else self.cap_ms
        if delay >= self.cap_ms:
            delay = self.cap_ms
        else:
            self.attempt += 1
        return self.draw(delay)

    def at_cap_ms(self):
        """A delay at the cap, and stay there until reset()."""
        self.attempt = 24
        return self.draw(self.cap_ms)

    def reset(self):
        self.attempt = 0


class Policy:
    """What a driver may skip. Devices use DEVICE; the load generator uses LOADGEN."""

    def __init__(self, reconnect=True, obey_slow=True, run_commands=True):
        self.reconnect = reconnect  # False: every closed/refused/failed answers R_STOP
        self.obey_slow = obey_slow  # False: slow frames still rewind, but no wait and no pacing
        self.run_commands = run_commands  # False: every command is answered ok without running it


DEVICE = Policy()
LOADGEN = Policy(False, False, False)  # a benchmark client: one connection, full speed, commands not run


class Decision:
    """What one gateway frame means for the device (see the D_* kinds)."""

    __slots__ = ("close_code", "code", "count", "data", "kind", "last", "message", "name", "ok", "renumber",
                 "reply", "seq", "wait_ms")

    def __init__(self, kind, seq=0, last=0, count=0, renumber=0, wait_ms=0, reply=None, name=None, ok=True,
                 code=None, message="", close_code=0, data=None):
        self.kind = kind
        self.seq = seq
        self.last = last
        self.count = count
        self.renumber = renumber
        self.wait_ms = wait_ms
        self.reply = reply
        self.name = name
        self.ok = ok
        self.code = code
        self.message = message
        self.close_code = close_code
        self.data = data


class Reconnect:
    """What to do after a connection ended (see the R_* actions). ``at_ms`` = -1 when stopped."""

    __slots__ = ("action", "at_ms", "code", "delay_ms", "error", "reason")

    def __init__(self, action, delay_ms, at_ms, code, reason, error=None):
        self.action = action
        self.delay_ms = delay_ms
        self.at_ms = at_ms
        self.code = code  # the close code, or the HTTP status of a refusal (0: unreachable)
        self.reason = reason
        self.error = error  # the error code an HTTP refusal's body named (None: none readable)


def _seq_or_zero(value):
    return value if type(value) is int and value >= 0 else 0


class _Commands:
    """DeviceSession's commands (docs/protocol.md section 8): arguments checked against
    wire.COMMANDS, the driver's handler run, the answer built and kept for a repeated id."""

    def _on_cmd(self, msg):
        command_id = msg.get("id")
        name = msg.get("name")
        label = name[:32] if type(name) is str else None
        if type(command_id) is not str or not command_id:
            return Decision(D_INVALID, code=E_BAD_FRAME, message="command without a string id ignored", name=label)
        for entry in self.answered:
            if entry[0] == command_id:
                return Decision(D_COMMAND, reply=entry[1], name=label, ok=False, code=REPEATED,
                                message="command " + command_id[:24] + " answered before: answer sent again, not run")
        if not self.policy.run_commands:
            ok, text, data = True, "not run (load generator)", None
        else:
            ok, text, data = self.run_command(name, msg.get("args"))
        reply = self.result_frame(command_id, ok, text, data)
        self._remember(command_id, ok, text, reply)
        return Decision(D_COMMAND, reply=reply, name=label, ok=ok, message=text)

    def _remember(self, command_id, ok, text, reply):
        if len(reply) > REPEAT_MAX_BYTES:
            reply = self.result_frame(command_id, ok, text)
        answered = self.answered
        answered.append((command_id, reply))
        if len(answered) > REPEATS_KEPT:
            answered.pop(0)

    def run_command(self, name, args):
        """Validate ``args`` for command ``name`` and run the driver's handler: (ok, message, data)."""
        handlers = self.handlers
        known = ", ".join(sorted(handlers))
        if type(name) is not str or name not in COMMANDS:
            return False, "unknown command '" + str(name)[:32] + "'; known: " + known, None
        handler = handlers.get(name)
        if handler is None:
            return False, name + " is not supported by this device; known: " + known, None
        try:
            parsed = parse_command(name, args)
        except ProtocolError as err:
            return False, err.message, None
        try:
            ok, text, data = handler(parsed)
        except Exception as err:  # a handler bug must not take the device down
            return False, name + " failed: " + str(err)[:80], None
        return ok, text, data

    # ------------------------------------------------------------ over-the-air updates (protocol/ota.py)
    def _on_ota_chunk(self, msg):
        ota = self.ota
        got = ota.on_chunk(msg) if ota is not None else None
        if got is None:
            reason = ota.reason if ota is not None and ota.stage == "failed" else None
            return Decision(D_NOTE, code=reason or E_BAD_FRAME,
                            message="update failed: " + reason if reason else "ota_chunk not asked for: ignored")
        return Decision(D_OTA_CHUNK, seq=got[1], name=got[0], data=got[2])

    def ota_frame(self):
        """The update's next frame to send (its state, or the next ota_get), or None: call while online
        after handling each frame (the core keeps one request outstanding)."""
        if not self.online or self.ota is None:
            return None
        return self.ota.next_frame()

    def result_frame(self, command_id, ok, message=None, data=None):
        msg = {"t": T_RESULT, "id": command_id, "ok": ok}
        if message is not None:
            msg["msg"] = message
        if data is not None:
            msg["data"] = data
        return self.dumps(msg)


class _Endings:
    """DeviceSession's end of a connection (docs/protocol.md section 11): what to do next (a
    Reconnect), and what must outlive the session object (state() and restore())."""

    def connection_lost(self):
        """Forget what was in flight: it is resent after the next welcome."""
        if self.ota is not None:
            self.ota.connection_lost()
        self.online = False
        self.cbor = False
        self.sent = self.acked
        self.in_flight = []

    def closed(self, code=None, now_ms=0):
        """The connection ended with close ``code`` (None: no close frame). Call at the END of the
        attempt: the delay counts from ``now_ms``."""
        self.connection_lost()
        if not code or code == _NO_STATUS or code == _ABNORMAL:
            code = self.closing or code or _ABNORMAL
        if code == CLOSE_TOO_BIG:  # a frame was too large for the gateway: halve the size in effect
            self.batch_limit = self.max_batch // 2 if self.max_batch > 1 else 1
            self.batch_cap = self.batch_limit  # and never grow back to a size the gateway refused
            self.max_batch = self.batch_limit
        name = _close_name(code)
        return self._decide(CLOSE_ACTIONS.get(code, R_BACKOFF), code, now_ms,
                            "closed " + str(code) + " (" + name + ")")

    def refused(self, status, body=None, now_ms=0):
        """The gateway refused the upgrade with HTTP ``status``; ``body`` is the response body as
        received (bytes or str; None if there was none), read by refusal_code(). The Reconnect's
        ``error`` is the code it named."""
        self.connection_lost()
        code = refusal_code(body, self.loads)
        close = CLOSE_FOR_ERROR.get(code, 0) if code is not None else 0
        if not close:
            if status == 401:
                close = CLOSE_AUTH_FAILED
            elif status == 403:
                close = CLOSE_DISABLED
        action = CLOSE_ACTIONS.get(close, R_BACKOFF) if close else R_BACKOFF
        label = code if code is not None else _close_name(close)
        decision = self._decide(action, status, now_ms, "HTTP " + str(status) + " (" + label[:64] + ")")
        decision.error = code
        return decision

    def failed(self, now_ms=0):
        """Could not reach the gateway at all (DNS, TCP, TLS, timeout, no welcome)."""
        self.connection_lost()
        return self._decide(R_BACKOFF, 0, now_ms, "gateway unreachable")

    def refreshed(self, token=None, jwt=None, now_ms=0):
        """After R_REFRESH: the provider's credential (None: nothing new) -> R_BACKOFF or R_STOP."""
        fresh = jwt if jwt is not None else token
        last = self.last_reconnect
        code = last.code if last is not None else 0
        if fresh is None or fresh == self.credential:
            return self._decide(R_STOP, code, now_ms, "no new credential", "; the provider had none")
        if jwt is not None:
            self.jwt = jwt
            self.token = None
        else:
            self.token = token
            self.jwt = None
        return self._decide(R_BACKOFF, code, now_ms, "new credential")

    def connect_due(self, now_ms):
        """True when a connection attempt may start (not stopped, delay over)."""
        return not self.stopped and now_ms >= self.retry_at_ms

    # ------------------------------------------------------------ across a deep sleep
    def state(self):
        """A small JSON-able snapshot of what must outlive this object (a deep sleep, a restart):
        the backoff's attempt count, when the next attempt is due, the batch size after 1009
        halvings, and a stop with a fingerprint (CRC-32) of the credential it was for."""
        snapshot = {"v": STATE_VERSION, "attempt": self.backoff.attempt, "retry_at_ms": self.retry_at_ms,
                    "batch_limit": self.batch_limit}
        if self.stopped:
            snapshot["stopped_for"] = _fingerprint(self.credential)
        return snapshot

    def restore(self, snapshot):
        """Take back a state() snapshot; False (nothing changed) when it is not one. A stop comes
        back only for the same credential: a new one ends it, as set_credential() does."""
        if type(snapshot) is not dict or snapshot.get("v") != STATE_VERSION:
            return False
        attempt = snapshot.get("attempt")
        retry = snapshot.get("retry_at_ms")
        batch = snapshot.get("batch_limit")
        stopped_for = snapshot.get("stopped_for")
        if type(attempt) is not int or not 0 <= attempt <= 24 or type(retry) is not int or retry < -1 \
                or type(batch) is not int or batch < 1 or (stopped_for is not None and type(stopped_for) is not int):
            return False
        if batch < self.batch_limit:
            self.batch_limit = batch
            self.batch_cap = batch
            self.max_batch = self._fit_batch()
        if stopped_for is not None and stopped_for == _fingerprint(self.credential):
            self.stopped = True
            self.retry_at_ms = -1
            self.backoff.attempt = attempt
        elif stopped_for is not None:  # stopped for another credential: this one starts afresh
            self.stopped = False
            self.retry_at_ms = 0
            self.backoff.reset()
        else:
            self.stopped = False
            self.retry_at_ms = retry if retry >= 0 else 0
            self.backoff.attempt = attempt
        return True

    def _decide(self, action, code, now_ms, what, extra=""):
        self.closing = 0
        if not self.policy.reconnect:
            action = R_STOP
            extra = "; policy: this client never reconnects"
        if action == R_STOP:
            delay = -1
        elif action == R_REFRESH:
            delay = 0
        elif action == R_HOURLY:
            delay = HOURLY_MS - int(self.backoff.rand() * (HOURLY_MS // 10))  # 54-60 min: fleets spread out
        elif action == R_SLOW:
            delay = self.backoff.at_cap_ms()
        else:
            delay = self.backoff.next_ms()
        self.stopped = action == R_STOP
        self.retry_at_ms = now_ms + delay if delay >= 0 else -1
        text = _ACTION_TEXT[action]
        reason = what + ": " + (text % extra if action == R_STOP or action == R_REFRESH else text % delay)
        decision = Reconnect(action, delay, self.retry_at_ms, code, reason)
        self.last_reconnect = decision
        return decision


class DeviceSession(_Commands, _Endings):
    """The device side of one device's conversation with the gateway, across connections.

    The driver calls ``handle(text, now_ms)`` for every frame received and acts on the
    Decision, sends ``next_frame(...)`` while it returns a frame, and asks ``closed()``,
    ``refused()`` or ``failed()`` what to do when a connection ends. ``handlers`` maps
    command names to ``fn(args) -> (ok, message, data)``; arguments are validated here.
    Its commands are in _Commands and its end of a connection (state() and restore()
    included) in _Endings, above: one object, three rooms of under 300 lines.
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
