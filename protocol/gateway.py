"""Edgewire protocol v1, the gateway side: GatewaySession (no I/O, no clock of its own).

Frames in, Events out: each Event carries the reply frame to send and, for a close, the
close code. The asyncio gateway (gateway/) is the driver. MicroPython-safe like wire.py.
"""

import binascii

from protocol.cbor_decode import decode_frame, rows
from protocol.wire import (
    DEFAULT_BURST,
    DEFAULT_RATE,
    E_AUTH_FAILED,
    E_AUTH_REQUIRED,
    E_BAD_CBOR,
    E_BAD_FRAME,
    E_BAD_JSON,
    E_BAD_REQUEST,
    E_BAD_VALUE,
    E_BINARY,
    E_IDENTITY,
    E_NO_SUCH_COMMAND,
    E_RATE,
    E_TOO_LARGE,
    E_TOO_MANY_ERRORS,
    E_UNKNOWN_TYPE,
    MAX_BATCH,
    MAX_FRAME_BYTES,
    MAX_TEXT,
    PROTOCOL_VERSION,
    T_ACK,
    T_AUTH,
    T_CMD,
    T_DATA,
    T_OTA,
    T_OTA_CHUNK,
    T_OTA_GET,
    T_RESULT,
    T_SLOW,
    T_STATUS,
    T_WELCOME,
    ProtocolError,
    _text_field,
    decode,
    encode,
    error_message,
    parse_data,
    valid_device_id,
)

# What the gateway keeps of a status frame (per device, shown on the dashboard) and forwards
# of a command result (to the operator): bounded so that no device can make it large or deep.
MAX_STATUS_FIELDS = 32  # top-level fields of a status frame
MAX_STATUS_DEPTH = 4  # levels of objects/arrays, the status object itself being the first
MAX_STATUS_VALUES = 128  # keys plus array items, at every level together
MAX_STATUS_BYTES = 2048  # the kept fields, encoded as JSON
MAX_RESULT_DEPTH = 8  # levels of a result's ``data``
MAX_RESULT_VALUES = 1024
MAX_RESULT_BYTES = 8192
MAX_FUTURE_MS = 86400000  # default: a reading stamped more than 1 day ahead is refused (bad_value)
MAX_PENDING_COMMANDS = 64  # command ids remembered per connection until their result arrives
_INT64_MIN = -(1 << 63)  # the integers orjson (the gateway's JSON encoder) can write: -2**63 .. 2**64 - 1
_INT64_MAX = (1 << 64) - 1
MAX_OTA_OFFSET = 1 << 40  # beyond any release file (the contract's largest is 64 MiB)


def json_shape_error(value, max_depth, max_values):
    """None if ``value`` nests at most ``max_depth`` objects/arrays and holds at most
    ``max_values`` keys and items in all; otherwise what is wrong. Iterative: no recursion
    limit is reached whatever the input."""
    count = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        kind = type(node)
        if kind is not dict and kind is not list:
            continue
        if depth > max_depth:
            return "nested deeper than " + str(max_depth) + " levels"
        count += len(node)
        if count > max_values:
            return "more than " + str(max_values) + " keys and items"
        for child in (node.values() if kind is dict else node):
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, depth + 1))
    return None


# ---------------------------------------------------------------- rate limit


class TokenBucket:
    """Token bucket: ``rate`` tokens/s, at most ``burst`` stored. Time is passed in (s)."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate, burst, now):
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now, cost=1.0):
        """Take ``cost`` tokens if available; return True if taken."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def wait_ms(self, cost=1.0):
        """Milliseconds until ``cost`` tokens are available."""
        missing = cost - self.tokens
        if missing <= 0:
            return 0
        return int(missing / self.rate * 1000) + 1


# ---------------------------------------------------------------- gateway side

ST_AWAIT_AUTH = 0
ST_ACTIVE = 1
ST_CLOSED = 2

# Events the gateway session returns from receive(); the driver acts on them.
EV_AUTH = "auth"  # payload: dict with device_id / token / jwt
EV_DATA = "data"  # payload: DataFrame
EV_RESULT = "result"  # payload: dict id, ok, msg, data
EV_STATUS = "status"  # payload: dict of status fields
EV_REJECT = "reject"  # payload: ProtocolError (frame rejected; error frame in .reply)
EV_THROTTLE = "throttle"  # payload: ProtocolError (rate limited; slow frame in .reply)
EV_CLOSE = "close"  # payload: ProtocolError (send .reply, then close with .close_code)
EV_OTA_GET = "ota_get"  # payload: dict release, file, off, len (the driver answers with a chunk or an error)
EV_OTA_STATE = "ota_state"  # payload: dict release, state, reason, done, total (no reply)

# OTA frames (docs/ota.md): what the gateway accepts of ota_get and ota frames.
OTA_MAX_CHUNK = 4096
OTA_STATES = ("downloading", "verifying", "trial", "good", "rolled_back", "failed")
OTA_REASONS = ("bad_hash", "bad_signature", "no_space", "crashed", "no_gateway", "health_check", "install",
               "aborted")
_OTA_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.+-"
_OTA_NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"


def _chars_ok(text, allowed, low, high):
    if type(text) is not str or not low <= len(text) <= high:
        return False
    for c in text:
        if c not in allowed:
            return False
    return True


def valid_release_id(text):
    """``<kind>-<version>``: kind esp32 or pi, version of 1-32 characters from 0-9 A-Z a-z . + -."""
    if type(text) is not str:
        return False
    for kind in ("esp32-", "pi-"):
        if text.startswith(kind):
            return _chars_ok(text[len(kind):], _OTA_ID_CHARS, 1, 32)
    return False


def parse_ota_get(msg):
    """The fields of an ``ota_get`` frame; ProtocolError(E_BAD_REQUEST) saying what is wrong."""
    release = msg.get("release")
    name = msg.get("file")
    off = msg.get("off")
    length = msg.get("len")
    if not valid_release_id(release):
        raise ProtocolError(E_BAD_REQUEST, "ota_get needs release '<kind>-<version>' (for example esp32-1.2.0)")
    if not _chars_ok(name, _OTA_NAME_CHARS, 1, 64):
        raise ProtocolError(E_BAD_REQUEST, "ota_get needs file, a name of 1-64 characters from A-Z a-z 0-9 _ . -")
    if type(off) is not int or off < 0 or off > MAX_OTA_OFFSET:
        raise ProtocolError(E_BAD_REQUEST, "ota_get needs off, an integer >= 0")
    if type(length) is not int or not 0 < length <= OTA_MAX_CHUNK:
        raise ProtocolError(E_BAD_REQUEST, "ota_get needs len, an integer from 1 to " + str(OTA_MAX_CHUNK))
    return {"release": release, "file": name, "off": off, "len": length}


def parse_ota_state(msg):
    """The fields of an ``ota`` frame; ProtocolError(E_BAD_REQUEST) saying what is wrong."""
    release = msg.get("release")
    state = msg.get("state")
    reason = msg.get("reason", "")
    if reason is None:
        reason = ""
    if not valid_release_id(release):
        raise ProtocolError(E_BAD_REQUEST, "ota needs release '<kind>-<version>' (for example esp32-1.2.0)")
    if state not in OTA_STATES:
        raise ProtocolError(E_BAD_REQUEST, "ota state must be one of " + ", ".join(OTA_STATES))
    if not _chars_ok(reason, _OTA_NAME_CHARS, 0, 32):
        raise ProtocolError(E_BAD_REQUEST, "ota reason must be a code of at most 32 characters (such as bad_hash)")
    out = {"release": release, "state": state, "reason": reason, "done": None, "total": None}
    for key in ("done", "total"):
        value = msg.get(key)
        if value is None:
            continue
        if type(value) is not int or value < 0 or value > MAX_OTA_OFFSET:
            raise ProtocolError(E_BAD_REQUEST, "ota " + key + " must be an integer >= 0")
        out[key] = value
    return out


class Event:
    """What one received frame means. ``reply`` is a frame to send back, or None."""

    __slots__ = ("close_code", "kind", "payload", "reply")

    def __init__(self, kind, payload=None, reply=None, close_code=0):
        self.kind = kind
        self.payload = payload
        self.reply = reply
        self.close_code = close_code


class GatewaySession:
    """Per-connection protocol state on the gateway. No I/O, no clock of its own.

    Feed frames to ``receive(frame, now)``; it returns an Event. The driver checks
    credentials on EV_AUTH and calls ``accept()`` or ``refuse()``; it stores
    EV_DATA frames and calls ``ack()`` once they are durably committed.
    """

    def __init__(self, rate=DEFAULT_RATE, burst=DEFAULT_BURST, now=0.0,
                 max_batch=MAX_BATCH, max_frame=MAX_FRAME_BYTES, loads=None, dumps=None,
                 max_strikes=10, rate_strikes=40, max_future_ms=MAX_FUTURE_MS, cbor=False, table=None):
        self.state = ST_AWAIT_AUTH
        self.table = table  # the metric table whose ranges apply (wire.parse_data); None: wire.METRICS
        self.cbor = cbor  # edgewire.v1.cbor was negotiated: binary frames are CBOR data frames
        self.device_id = None
        self.last_seq = 0  # highest seq durably stored (acknowledged) for this device
        self.accepted_seq = 0  # highest seq handed to storage; >= last_seq
        self.gaps = 0  # readings skipped by the device (seq jumped past accepted_seq + 1)
        self.last_gap = 0  # readings skipped just before the last EV_DATA frame
        self.hold_from = 0  # after a throttle: frames beyond this seq wait for its resend
        self.max_batch = max_batch
        self.max_frame = max_frame
        self.loads = loads
        self.dumps = dumps or encode
        self.bucket = TokenBucket(rate, burst, now)
        self.strikes = 0  # consecutive bad frames
        self.max_strikes = max_strikes
        self.rate_strikes = 0  # frames refused for rate since the last accepted one
        self.max_rate_strikes = rate_strikes
        self.bad_frames = 0
        self.throttled = 0
        self.duplicates = 0
        self.commands = {}  # ids of commands sent on this connection whose result has not come
        self.max_future_ms = max_future_ms  # how far a reading's ts may be ahead of the gateway's clock

    # -- outgoing frames
    def frame(self, msg):
        return self.dumps(msg)

    def error_frame(self, code, message, seq=None):
        return self.dumps(error_message(code, message, seq))

    def _close_event(self, code, message):
        err = ProtocolError(code, message)
        self.state = ST_CLOSED
        return Event(EV_CLOSE, err, self.error_frame(code, message), err.close_code())

    def accept(self, device_id, last_seq, now_ms, extra=None):
        """Mark the session authenticated; return the welcome frame."""
        self.state = ST_ACTIVE
        self.device_id = device_id
        self.last_seq = last_seq
        self.accepted_seq = last_seq
        msg = {
            "t": T_WELCOME, "v": PROTOCOL_VERSION, "device": device_id, "last_seq": last_seq,
            "rate": self.bucket.rate, "burst": self.bucket.burst, "max_batch": self.max_batch,
            "max_frame": self.max_frame, "time": now_ms,
        }
        if extra:
            for key in extra:
                msg[key] = extra[key]
        return self.dumps(msg)

    def refuse(self, code, message):
        """Authentication failed: return the close Event to carry out."""
        return self._close_event(code, message)

    def close(self, code, message):
        """End an active session for ``code`` (expiry, replacement, shutdown)."""
        return self._close_event(code, message)

    def ack(self, seq):
        """Record that everything through ``seq`` is stored; return the ack frame."""
        if seq > self.last_seq:
            self.last_seq = seq
        return self.dumps({"t": T_ACK, "seq": self.last_seq})

    def command_frame(self, command_id, name, args=None):
        """The cmd frame; ``command_id`` is remembered so that only this connection's device can
        answer it (the oldest of more than MAX_PENDING_COMMANDS is forgotten)."""
        commands = self.commands
        commands[command_id] = True
        if len(commands) > MAX_PENDING_COMMANDS:
            del commands[next(iter(commands))]
        return self.dumps({"t": T_CMD, "id": command_id, "name": name, "args": args or {}})

    # -- incoming frames
    def receive(self, frame, now, wall_ms=None):
        """Interpret one received frame (str or bytes) at time ``now`` (s, monotonic).

        ``wall_ms`` is the gateway's clock (Unix ms); given, readings stamped more than
        ``max_future_ms`` ahead of it are refused. On an edgewire.v1.cbor session a binary frame is
        a columnar data frame (protocol/cbor.py); text frames are JSON on every session."""
        if self.state == ST_CLOSED:
            return Event(EV_REJECT, ProtocolError(E_BAD_FRAME, "session closed"))
        binary = self.cbor and type(frame) in (bytes, bytearray, memoryview)
        try:
            msg = decode_frame(frame, self.max_frame) if binary else decode(frame, self.loads, self.max_frame)
        except ProtocolError as err:
            return self._bad(err)
        kind = msg["t"]
        if self.state == ST_AWAIT_AUTH:
            if kind != T_AUTH:
                return self._close_event(
                    E_AUTH_REQUIRED, "authenticate first: send an auth frame or an Authorization header")
            return self._auth(msg)
        claimed = msg.get("device_id")
        if claimed is not None and claimed != self.device_id:
            named = "'" + claimed[:64] + "'" if type(claimed) is str else "a non-string device_id"
            return self._close_event(
                E_IDENTITY, "frame names " + named + " but this connection is authenticated as another device")
        if kind == T_DATA:
            return self._data(msg, now, wall_ms, binary)
        if kind == T_RESULT:
            return self._result(msg)
        if kind == T_STATUS:
            return self._status(msg)
        if kind == T_OTA_GET:
            return self._ota(msg, parse_ota_get, EV_OTA_GET)
        if kind == T_OTA:
            return self._ota(msg, parse_ota_state, EV_OTA_STATE)
        if kind == T_AUTH:
            return self._bad(ProtocolError(E_BAD_FRAME, "already authenticated"))
        return self._bad(ProtocolError(E_UNKNOWN_TYPE, "unknown message type '" + kind[:32] + "'"))

    def _bad(self, err):
        self.bad_frames += 1
        self.strikes += 1
        if self.state == ST_AWAIT_AUTH:
            if err.code == E_BINARY or err.code == E_BAD_JSON or err.code == E_BAD_CBOR or err.code == E_BAD_FRAME:
                return self._close_event(E_AUTH_REQUIRED, "authenticate first: " + err.message)
        if self.strikes >= self.max_strikes:
            return self._close_event(
                E_TOO_MANY_ERRORS, str(self.strikes) + " invalid frames in a row; fix the device's encoder")
        return Event(EV_REJECT, err, self.error_frame(err.code, err.message))

    def _auth(self, msg):
        device_id = msg.get("device_id")
        token = msg.get("token")
        jwt = msg.get("jwt")
        if device_id is not None and not valid_device_id(device_id):
            return self._close_event(E_AUTH_FAILED, "authentication failed")
        if token is not None and (type(token) is not str or len(token) > 512):
            return self._close_event(E_AUTH_FAILED, "authentication failed")
        if jwt is not None and (type(jwt) is not str or len(jwt) > 4096):
            return self._close_event(E_AUTH_FAILED, "authentication failed")
        if token is None and jwt is None:
            return self._close_event(E_AUTH_FAILED, "auth frame needs 'token' (with 'device_id') or 'jwt'")
        if token is not None and device_id is None:
            return self._close_event(E_AUTH_FAILED, "auth frame with 'token' needs 'device_id'")
        return Event(EV_AUTH, {"device_id": device_id, "token": token, "jwt": jwt})

    def _data(self, msg, now, wall_ms=None, binary=False):
        try:
            if binary:
                msg = rows(msg, self.max_batch)  # inside the try: its errors carry the frame's seq too
            frame = parse_data(msg, self.max_batch, self.table)
            if wall_ms is not None:
                latest = wall_ms + self.max_future_ms
                for reading in frame.readings:
                    if reading.ts is not None and reading.ts > latest:
                        raise ProtocolError(
                            E_BAD_VALUE, "reading ts " + str(reading.ts) + " is more than "
                            + str(self.max_future_ms // 1000) + " s ahead of the gateway clock ("
                            + str(wall_ms) + "); set the device clock (NTP) or send 'up' instead")
        except ProtocolError as err:
            seq = msg.get("seq")
            err_event = self._bad(err)
            # The frame's seq goes back with the error, if any JSON encoder can write it (a binary
            # frame can carry integers beyond 64 bits; then the error frame has no seq).
            if err_event.kind == EV_REJECT and type(seq) is int and _INT64_MIN <= seq <= _INT64_MAX:
                err_event.reply = self.error_frame(err.code, err.message, seq)
            return err_event
        self.strikes = 0
        if self.hold_from:
            if frame.seq > self.hold_from:
                # Sent before the device saw the slow-down; it resends from hold_from.
                # Counted as a strike so a device that ignores slow-downs is still cut off.
                self.throttled += 1
                self.rate_strikes += 1
                if self.rate_strikes > self.max_rate_strikes:
                    return self._close_event(E_RATE, "rate limit exceeded after slow-down; reconnect later")
                err = ProtocolError(E_RATE, "waiting for resend of seq " + str(self.hold_from))
                return Event(EV_THROTTLE, err)
            self.hold_from = 0
        if not self.bucket.take(now):
            self.throttled += 1
            self.rate_strikes += 1
            if self.rate_strikes > self.max_rate_strikes:
                return self._close_event(E_RATE, "rate limit exceeded after slow-down; reconnect later at "
                                         + str(self.bucket.rate) + " frames/s or less")
            err = ProtocolError(
                E_RATE, "rate limit " + str(self.bucket.rate) + " frames/s exceeded; frame not stored, resend later")
            self.hold_from = frame.seq
            slow = {"t": T_SLOW, "rate": self.bucket.rate, "retry_ms": self.bucket.wait_ms(),
                    "seq": frame.seq}
            return Event(EV_THROTTLE, err, self.dumps(slow))
        self.rate_strikes = 0
        self.last_gap = 0
        if frame.last_seq <= self.accepted_seq:
            # Every reading is already stored or being stored: nothing new to store.
            self.duplicates += len(frame.readings)
            frame.readings = []
            return Event(EV_DATA, frame)
        if frame.seq <= self.accepted_seq:
            # Partly seen: keep only the new tail.
            drop = self.accepted_seq - frame.seq + 1
            self.duplicates += drop
            frame.readings = frame.readings[drop:]
            frame.seq = self.accepted_seq + 1
        elif frame.seq > self.accepted_seq + 1:
            # Readings the device never sent (dropped from a full buffer): a gap (protocol.md 3).
            self.last_gap = frame.seq - self.accepted_seq - 1
            self.gaps += self.last_gap
        self.accepted_seq = frame.last_seq
        return Event(EV_DATA, frame)

    def _ota(self, msg, parse, event):
        try:
            fields = parse(msg)
        except ProtocolError as err:
            return self._bad(err)
        self.strikes = 0
        return Event(event, fields)

    def ota_chunk(self, release, name, off, data, size):
        """The ``ota_chunk`` frame answering an EV_OTA_GET (``data``: the bytes, sent as base64)."""
        return self.dumps({"t": T_OTA_CHUNK, "release": release, "file": name, "off": off,
                           "data": binascii.b2a_base64(data).decode().rstrip("\n"), "size": size})

    def _status(self, msg):
        fields = {}
        for key in msg:
            if key != "t" and key != "device_id":
                fields[key] = msg[key]
        if len(fields) > MAX_STATUS_FIELDS:
            return self._bad(ProtocolError(E_TOO_LARGE, "status has more than " + str(MAX_STATUS_FIELDS)
                                           + " fields"))
        problem = json_shape_error(fields, MAX_STATUS_DEPTH, MAX_STATUS_VALUES)
        if problem is None and len(self.dumps(fields)) > MAX_STATUS_BYTES:
            problem = "larger than " + str(MAX_STATUS_BYTES) + " bytes"
        if problem is not None:
            return self._bad(ProtocolError(E_TOO_LARGE, "status " + problem + "; send fewer, flatter fields"))
        self.strikes = 0
        return Event(EV_STATUS, fields)

    def _result(self, msg):
        try:
            command_id = _text_field(msg, "id", False, 64)
        except ProtocolError as err:
            return self._bad(err)
        ok = msg.get("ok")
        if command_id is None or type(ok) is not bool:
            return self._bad(ProtocolError(E_BAD_FRAME, "result needs string 'id' and boolean 'ok'"))
        if command_id not in self.commands:
            return self._bad(ProtocolError(E_NO_SUCH_COMMAND, "no command '" + command_id
                                           + "' is waiting for a result on this connection"))
        del self.commands[command_id]
        self.strikes = 0
        text = msg.get("msg")
        data = msg.get("data")
        result = {"id": command_id, "ok": ok, "msg": text, "data": data}
        problem = None
        if text is not None and (type(text) is not str or len(text) > MAX_TEXT):
            problem = "'msg' must be a string of at most " + str(MAX_TEXT) + " characters"
            result["msg"] = None
        if data is not None:
            shape = json_shape_error(data, MAX_RESULT_DEPTH, MAX_RESULT_VALUES)
            if shape is None and len(self.dumps(data)) > MAX_RESULT_BYTES:
                shape = "larger than " + str(MAX_RESULT_BYTES) + " bytes"
            if shape is not None:
                problem = "'data' " + shape
                result["data"] = None
        if problem is None:
            return Event(EV_RESULT, result)
        # The answer still reaches the operator, without the refused part; the device is told.
        result["refused"] = {"code": E_TOO_LARGE, "msg": "result " + problem}
        return Event(EV_RESULT, result, self.error_frame(E_TOO_LARGE, "result " + problem))
