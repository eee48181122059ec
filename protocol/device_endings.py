"""DeviceSession's end of a connection (docs/protocol.md section 11), a mixin of protocol/device.py:
what to do next (a Reconnect) and what must outlive the session object across a deep sleep (state()
and restore()). MicroPython-safe like wire.py.
"""

from protocol.decisions import (
    _ABNORMAL,
    _ACTION_TEXT,
    _NO_STATUS,
    CLOSE_ACTIONS,
    HOURLY_MS,
    R_BACKOFF,
    R_HOURLY,
    R_REFRESH,
    R_SLOW,
    R_STOP,
    STATE_VERSION,
    Reconnect,
    _close_name,
    _fingerprint,
    refusal_code,
)
from protocol.wire import (
    CLOSE_AUTH_FAILED,
    CLOSE_DISABLED,
    CLOSE_FOR_ERROR,
    CLOSE_TOO_BIG,
)


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
