"""Scripted gateway-frame sequences every device driver must handle alike (docs/protocol.md).

Each scenario gets ``make(fresh=False)``, which builds the driver under test and returns its
adapter (tests/conformance/drivers.py for the CPython drivers, firmware_adapter.py for the
firmware): ``a.session`` is the driver's own DeviceSession, bound to the driver's own outbox
(SQLite queue, flash ring, memory). ``fresh=True`` builds it on a new store whose counter was
never confirmed by a gateway (state wiped, reflashed). An adapter has:

    a.session        the driver's DeviceSession
    a.sample(n)      store n readings through the driver's store; their seqs
    a.held()         seqs held in the outbox, ascending
    a.rejected()     readings the store counted as refused by the gateway
    a.reopen()       restart / reboot: rebuild the driver from its durable state; a new adapter
                     (only adapters with a.durable)
    a.state()        the settings commands change (interval, thresholds, outputs)
    a.output         the name of an output the driver has configured
    a.reboots()      True once a reboot command was accepted
    a.refuse(s, b)   the driver's own path for an HTTP refusal: status s, raw body b (bytes or
                     None) as the driver's HTTP client hands it over; the session's Reconnect
    a.sleep()        deep sleep and wake: the driver saves what it keeps (the session's state()),
                     loses RAM, and is built again from it; a new adapter (only with "sleeps")
    a.close()

This file runs unchanged under CPython and MicroPython (the firmware's interpreter), so it
keeps to the subset protocol/ uses. SCENARIOS lists (name, function, needs): the feature a
driver must have for the scenario to apply ("reconnect"), the feature it must lack
("!reconnect"), or None (every driver). Features (an adapter's ``features``): "durable" (its
outbox survives a restart), "reconnect" (it reconnects as docs/protocol.md section 11 says),
"pacing" (it obeys slow-downs and paces frames), "commands" (it runs commands) and "sleeps"
(it deep-sleeps, keeping the session's state() across: the firmware) and "ota" (it takes
over-the-air updates through protocol/ota.py: the firmware; drivers add it as they do). A device driver has the
first four (the simulator is not durable); the load generator, under the core's
LOADGEN policy, has none: the "!reconnect", "!pacing" and "!commands" scenarios check that it
stops after every close, resends a slowed-down frame at once, and answers every command
"not run (load generator)".
"""

import json

from protocol import wire
from protocol.cbor_decode import decode_frame, rows
from protocol.device import (
    D_ACK,
    D_CLOSING,
    D_COMMAND,
    D_DROP,
    D_INVALID,
    D_NOTE,
    D_RESEND,
    D_SLOW,
    D_WELCOME,
    HOURLY_MS,
    R_BACKOFF,
    R_HOURLY,
    R_REFRESH,
    R_SLOW,
    R_STOP,
    REPEATED,
    REPEATS_KEPT,
)

NOW = 1000000  # ms; any clock works, the session only compares what the caller passes in


class Failed(Exception):
    pass


def check(condition, *what):
    if not condition:
        raise Failed(" ".join(str(part) for part in what))


def enc(msg):
    return wire.encode(msg)


def welcome(last_seq, **extra):
    msg = {"t": "welcome", "v": 1, "device": "DEV", "last_seq": last_seq, "rate": 1000.0, "burst": 1000.0,
           "max_batch": 100, "max_frame": 16384, "time": 1764080000000}
    for key in extra:
        msg[key] = extra[key]
    return enc(msg)


def ack(seq):
    return enc({"t": "ack", "seq": seq})


def error(code, seq=None, text="refused by the scripted gateway"):
    return enc(wire.error_message(code, text, seq))


def slow(seq, retry_ms, rate):
    return enc({"t": "slow", "rate": rate, "retry_ms": retry_ms, "seq": seq})


def cmd(command_id, name, args=None):
    msg = {"t": "cmd", "id": command_id, "name": name}
    if args is not None:
        msg["args"] = args
    return enc(msg)


def set_batch(session, n):
    """The session as a driver configured for ``n`` readings per frame would have it (the welcome's
    max_batch of 100 is above every n used here)."""
    session.batch_limit = session.batch_cap = session.max_batch = n


def frames(session, now=None):
    """Every data frame the session sends now, decoded."""
    out = []
    while True:
        text = session.next_frame(up=5000, now_ms=now)
        if text is None:
            return out
        out.append(wire.decode(text))


def seqs_of(frame):
    return list(range(frame["seq"], frame["seq"] + len(frame["r"])))


def online(a, last_seq=0):
    d = a.session.handle(welcome(last_seq), NOW)
    check(d.kind == D_WELCOME, "welcome ->", d.kind)
    return d


# ------------------------------------------------------------------ welcome and last_seq


def sc_welcome_zero_keeps_everything(make):
    a = make()
    try:
        check(a.sample(5) == [1, 2, 3, 4, 5], "seqs", a.held())
        d = online(a, 0)
        check(d.renumber == 0 and d.count == 0, d)
        check(a.held() == [1, 2, 3, 4, 5], a.held())
        sent = frames(a.session)
        check(sent and sent[0]["seq"] == 1, sent)
    finally:
        a.close()


def sc_welcome_acks_through_last_seq(make):
    a = make()
    try:
        a.sample(5)
        d = online(a, 3)
        check(d.renumber == 0 and d.count == 3 and d.seq == 3, d)
        check(a.held() == [4, 5], a.held())
        sent = frames(a.session)
        check(sent[0]["seq"] == 4, sent)
    finally:
        a.close()


def sc_welcome_covering_everything_empties_outbox(make):
    a = make()
    try:
        a.sample(5)
        online(a, 5)
        check(a.held() == [], a.held())
        check(frames(a.session) == [], "nothing to send")
        check(a.sample(1) == [6], "counter continues")
    finally:
        a.close()


def sc_welcome_beyond_counter_renumbers(make):
    a = make()
    try:
        a.sample(3)
        d = online(a, 1041)  # the gateway stored seqs this device never issued: counter lost
        check(d.renumber == 1041, d)
        check(a.held() == [1042, 1043, 1044], a.held())
        check(a.sample(1) == [1045], "counter after renumber")
        check(seqs_of(frames(a.session)[0])[0] == 1042, "first frame")
    finally:
        a.close()


def sc_welcome_beyond_counter_with_empty_outbox(make):
    a = make()
    try:
        online(a, 50)
        check(a.held() == [], a.held())
        check(a.sample(1) == [51], "counter continues after last_seq")
    finally:
        a.close()


def sc_lost_counter_renumbers_overlap(make):
    a = make(fresh=True)  # state wiped: numbering restarted at 1
    try:
        a.sample(5)
        d = online(a, 3)  # the gateway holds 1..3 from a past life
        check(d.renumber == 3 and d.count == 0, d)
        check(a.held() == [4, 5, 6, 7, 8], a.held())
        check(a.sample(1) == [9], "counter")
    finally:
        a.close()


def sc_lost_counter_confirmed_by_first_welcome(make):
    a = make(fresh=True)
    try:
        a.sample(3)
        d = online(a, 0)  # a brand-new device: nothing to renumber
        check(d.renumber == 0 and a.held() == [1, 2, 3], d, a.held())
        a.session.connection_lost()
        d = online(a, 2)  # confirmed now: a later welcome acks
        check(d.renumber == 0 and d.count == 2 and a.held() == [3], d, a.held())
    finally:
        a.close()


def sc_lost_counter_survives_restart(make):
    a = make(fresh=True)
    a.sample(3)
    a = a.reopen()  # rebooted before any welcome: the counter is still unconfirmed
    try:
        d = online(a, 2)
        check(d.renumber == 2 and a.held() == [3, 4, 5], d, a.held())
    finally:
        a.close()


def sc_confirmed_counter_survives_restart(make):
    a = make(fresh=True)
    online(a, 0)
    a.sample(3)
    a = a.reopen()
    try:
        d = online(a, 2)  # the ack of 1..2 was lost, not the counter
        check(d.renumber == 0 and a.held() == [3], d, a.held())
    finally:
        a.close()


# ------------------------------------------------------------------ acks, window, errors


def sc_cumulative_ack(make):
    a = make()
    try:
        a.sample(6)
        online(a, 0)
        set_batch(a.session, 2)
        sent = frames(a.session)
        check([f["seq"] for f in sent] == [1, 3, 5], sent)
        d = a.session.handle(ack(4), NOW)
        check(d.kind == D_ACK and d.seq == 4 and d.count == 4, d)
        check(a.held() == [5, 6] and len(a.session.in_flight) == 1, a.held(), a.session.in_flight)
        d = a.session.handle(ack(2), NOW)  # a stale ack changes nothing
        check(d.count == 0 and a.held() == [5, 6], d, a.held())
    finally:
        a.close()


def sc_window_limits_frames_in_flight(make):
    a = make()
    try:
        a.sample(10)
        online(a, 0)
        set_batch(a.session, 1)
        a.session.window = 4
        check(len(frames(a.session)) == 4, "window of 4")
        a.session.handle(ack(1), NOW)
        again = frames(a.session)
        check(len(again) == 1 and again[0]["seq"] == 5, again)
    finally:
        a.close()


def sc_refused_frame_is_dropped_not_resent(make):
    a = make()
    try:
        a.sample(6)
        online(a, 0)
        set_batch(a.session, 2)
        frames(a.session)  # 1-2, 3-4, 5-6
        d = a.session.handle(error(wire.E_BAD_VALUE, 3), NOW)
        check(d.kind == D_DROP and d.seq == 3 and d.last == 4 and d.count == 2, d)
        check(a.held() == [1, 2, 5, 6] and a.rejected() == 2, a.held(), a.rejected())
        a.session.connection_lost()  # the acks were lost with the connection
        online(a, 0)
        set_batch(a.session, 2)
        resent = [seqs_of(f) for f in frames(a.session)]
        check(resent == [[1, 2], [5, 6]], resent)
    finally:
        a.close()


def sc_refused_frame_frees_its_window_slot(make):
    a = make()
    try:
        a.sample(2)
        online(a, 0)
        set_batch(a.session, 1)
        a.session.window = 1
        check(len(frames(a.session)) == 1 and not a.session.can_send(), "window full")
        a.session.handle(error(wire.E_TOO_LARGE, 1), NOW)
        nxt = frames(a.session)
        check(len(nxt) == 1 and nxt[0]["seq"] == 2, nxt)
    finally:
        a.close()


def sc_not_stored_errors_are_resent(make):
    for code in (wire.E_RATE, wire.E_STORAGE):
        a = make()
        try:
            a.sample(4)
            online(a, 0)
            set_batch(a.session, 1)
            frames(a.session)
            d = a.session.handle(error(code, 3), NOW)
            check(d.kind == D_RESEND and d.seq == 3, code, d)
            check(a.held() == [1, 2, 3, 4] and a.rejected() == 0, code, a.held())
            again = frames(a.session)
            check([f["seq"] for f in again] == [3, 4], code, again)
        finally:
            a.close()


def sc_error_without_a_frame_changes_nothing(make):
    a = make()
    try:
        a.sample(2)
        online(a, 0)
        frames(a.session)
        for text in (error(wire.E_BAD_JSON), error(wire.E_BAD_VALUE, 99)):
            d = a.session.handle(text, NOW)
            check(d.kind == D_NOTE, text, d)
        for text in ('{"t": "surprise"}', "not json", enc({"t": "ack"})):
            d = a.session.handle(text, NOW)
            check(d.kind == D_INVALID, text, d)
        check(a.held() == [1, 2] and a.rejected() == 0, a.held())
    finally:
        a.close()


def sc_closing_error_announces_the_close(make):
    a = make()
    try:
        online(a, 0)
        d = a.session.handle(error(wire.E_AUTH_FAILED), NOW)
        check(d.kind == D_CLOSING and d.close_code == wire.CLOSE_AUTH_FAILED, d)
        r = a.session.closed(None, NOW)  # the socket dropped before the close frame
        check(r.action == R_STOP, r)
    finally:
        a.close()


def sc_slow_down_waits_then_paces(make):
    a = make()
    try:
        a.sample(3)
        online(a, 0)
        set_batch(a.session, 1)
        sent = frames(a.session, NOW)
        check(len(sent) == 1, "paced from the first frame at the welcome's rate", sent)
        sent = frames(a.session, NOW + 1) + frames(a.session, NOW + 2)
        check([f["seq"] for f in sent] == [2, 3], sent)
        d = a.session.handle(slow(2, 500, 2.0), NOW + 2)
        check(d.kind == D_SLOW and d.seq == 2 and d.wait_ms == 500, d)
        check(frames(a.session, NOW + 100) == [] and a.session.send_wait_ms(NOW + 100) == 402, "waits retry_ms")
        again = frames(a.session, NOW + 502)
        check([f["seq"] for f in again] == [2], again)
        check(frames(a.session, NOW + 900) == [], "paced at rate 2/s")
        check([f["seq"] for f in frames(a.session, NOW + 1002)] == [3], "then the next")
        check(a.held() == [1, 2, 3], a.held())
    finally:
        a.close()


def sc_frames_fit_max_frame(make):
    a = make()
    try:
        a.sample(12)
        a.session.handle(welcome(0, max_frame=400), NOW)
        set_batch(a.session, 12)
        a.session.window = 20
        sent = []
        while True:
            text = a.session.next_frame(up=5000)
            if text is None:
                break
            check(len(text) <= 400, "frame of", len(text), "bytes")
            sent.append(wire.decode(text))
        got = []
        for f in sent:
            wire.parse_data(f)
            got += seqs_of(f)
        check(got == list(range(1, 13)) and len(sent) > 1, got)
    finally:
        a.close()


def sc_data_frames_are_valid(make):
    a = make()
    try:
        a.sample(3)
        online(a, 0)
        for f in frames(a.session):
            parsed = wire.parse_data(f)
            check(parsed.readings and f.get("boot"), f)
    finally:
        a.close()


def sc_data_frames_follow_the_negotiated_encoding(make):
    """A driver that offers edgewire.v1.cbor sends binary CBOR data frames once the gateway selects it,
    and JSON text on a connection that selected nothing; one that does not offer it always sends JSON."""
    a = make()
    try:
        a.sample(3)
        offers = wire.SUBPROTOCOL_CBOR in a.session.subprotocols()
        for subprotocol, binary in ((wire.SUBPROTOCOL_CBOR, offers), (None, False)):
            check(a.session.negotiated(subprotocol) == binary, subprotocol, "negotiated ->", not binary)
            online(a, 0)
            got = []
            while True:
                frame = a.session.next_frame(up=5000)
                if frame is None:
                    break
                check((type(frame) is not str) == binary, "binary" if binary else "text", "frame expected:", frame)
                msg = rows(decode_frame(bytes(frame))) if binary else wire.decode(frame)
                got += [r.seq for r in wire.parse_data(msg).readings]
            check(got == [1, 2, 3], subprotocol, "sent", got)
            a.session.connection_lost()
    finally:
        a.close()


# ------------------------------------------------------------------ the end of a connection

BACKOFF_CODES = (1000, 1001, 1006, 1009, 1011, 1012, 1013, 4002, 4008, 4009, 4999)
STOP_CODES = (4001, 4005, 4006, 4007)


def _backoff_delay_ok(session, r, first):
    base = session.backoff.base_ms
    if first:
        return base // 2 <= r.delay_ms <= base
    return base // 2 <= r.delay_ms <= session.backoff.cap_ms


def sc_close_codes(make):
    for code in BACKOFF_CODES:
        a = make()
        try:
            online(a, 0)
            r = a.session.closed(code, NOW)
            check(r.action == R_BACKOFF and _backoff_delay_ok(a.session, r, True), code, r)
            check(r.at_ms == NOW + r.delay_ms, "counted from the end of the attempt", r)
            check(not a.session.connect_due(r.at_ms - 1) and a.session.connect_due(r.at_ms), code)
        finally:
            a.close()
    for code in STOP_CODES:
        a = make()
        try:
            online(a, 0)
            r = a.session.closed(code, NOW)
            check(r.action == R_STOP and r.delay_ms == -1, code, r)
            check(not a.session.connect_due(NOW + 10 * HOURLY_MS), "stopped", code)
        finally:
            a.close()
    a = make()
    try:
        online(a, 0)
        r = a.session.closed(4003, NOW)
        check(r.action == R_HOURLY and HOURLY_MS * 9 // 10 <= r.delay_ms <= HOURLY_MS, r)
        r = a.session.closed(4000, NOW)
        cap = a.session.backoff.cap_ms
        check(r.action == R_SLOW and cap // 2 <= r.delay_ms <= cap, r)
        r = a.session.closed(4004, NOW)
        check(r.action == R_REFRESH, r)
    finally:
        a.close()


def sc_backoff_grows_and_resets_on_welcome(make):
    a = make()
    try:
        s = a.session
        delays = []
        for _ in range(12):
            delays.append(s.failed(NOW).delay_ms)
        base = s.backoff.base_ms
        cap = s.backoff.cap_ms
        check(base // 2 <= delays[0] <= base and delays[-1] >= cap // 2, delays)
        check(max(delays) <= cap, delays)
        online(a, 0)
        check(s.closed(1011, NOW).delay_ms <= base, "reset by the welcome")
    finally:
        a.close()


def body(code, text="refused by the scripted gateway"):
    """An HTTP refusal's body as the gateway sends it (docs/protocol.md section 2)."""
    return enc({"code": code, "message": text}).encode()


# (status, body, action, the code the session read from the body)
REFUSALS = (
    (401, body(wire.E_AUTH_FAILED), R_STOP, wire.E_AUTH_FAILED),
    (401, None, R_STOP, None),
    (401, body(wire.E_EXPIRED), R_REFRESH, wire.E_EXPIRED),
    (403, body(wire.E_DISABLED), R_HOURLY, wire.E_DISABLED),
    (403, b"", R_HOURLY, None),
    (403, body(wire.E_ADDRESS), R_STOP, wire.E_ADDRESS),
    (503, body(wire.E_SHUTDOWN), R_BACKOFF, wire.E_SHUTDOWN),
    (503, body(wire.E_STORAGE), R_BACKOFF, wire.E_STORAGE),
    (404, None, R_BACKOFF, None),
    (500, b"<html><body>Internal Server Error</body></html>", R_BACKOFF, None),
    # bodies the session cannot read fall back to the status: 401 stops, 403 retries hourly
    (401, b'{"code": "auth_fa', R_STOP, None),  # cut short
    (401, b'["credential_expired"]', R_STOP, None),  # not an object
    (401, b'{"code": 4004}', R_STOP, None),  # a number, not a code
    (403, b'{"message": "no code"}', R_HOURLY, None),
    (403, b'{"code": "credential_expired", "x": "\xff\xfe"}', R_HOURLY, None),  # not UTF-8
    (401, b'{"code": "credential_expired", "pad": "' + b"x" * 1100 + b'"}', R_STOP, None),  # too long
    (403, b'{"code": "no_such_code"}', R_HOURLY, "no_such_code"),  # a code without a close: by status
)


def sc_http_refusals(make):
    for status, raw, action, code in REFUSALS:
        a = make()
        try:
            r = a.refuse(status, raw)
            check(r.action == action and r.error == code and r.code == status, status, raw, r, r.error)
            if action == R_STOP:
                check(not a.session.connect_due(NOW + 10 * HOURLY_MS), "stopped after", status, raw)
        finally:
            a.close()
    a = make()
    try:
        r = a.session.refused(401, body(wire.E_EXPIRED).decode(), NOW)  # a str body reads the same
        check(r.action == R_REFRESH and r.error == wire.E_EXPIRED, r)
    finally:
        a.close()


def sc_stop_lasts_until_the_credential_changes(make):
    a = make()
    try:
        online(a, 0)
        r = a.session.closed(4005, NOW)
        check(r.action == R_STOP and not a.session.connect_due(NOW + 100 * HOURLY_MS), r)
        a.sample(2)
        check(a.held() == [1, 2], "sampling continues while stopped", a.held())
        a.session.set_credential(token="ewt_" + "n" * 32)
        check(a.session.connect_due(NOW), "a new credential ends the stop")
        check(a.session.credential == "ewt_" + "n" * 32, a.session.credential)
    finally:
        a.close()


def sc_expired_credential_is_refreshed(make):
    a = make()
    try:
        online(a, 0)
        a.session.closed(4004, NOW)
        r = a.session.refreshed(jwt="aaa.bbb.ccc", now_ms=NOW)
        check(r.action == R_BACKOFF and a.session.credential == "aaa.bbb.ccc", r)
        check(_backoff_delay_ok(a.session, r, True) and a.session.connect_due(r.at_ms), r)
        a.session.closed(4004, NOW)
        r = a.session.refreshed(jwt="aaa.bbb.ccc", now_ms=NOW)  # the provider had nothing new
        check(r.action == R_STOP, r)
        a.session.closed(4004, NOW)
        check(a.session.refreshed(None, None, NOW).action == R_STOP, "no credential at all")
    finally:
        a.close()


def sc_too_big_close_halves_the_batch(make):
    a = make()
    try:
        online(a, 0)
        before = a.session.max_batch
        r = a.session.closed(wire.CLOSE_TOO_BIG, NOW)
        half = max(1, before // 2)
        check(r.action == R_BACKOFF and a.session.batch_limit == half, r, a.session.batch_limit)
        online(a, 0)  # the next connection keeps the halved size, whatever the welcome allows
        check(a.session.max_batch == half, "after the welcome", a.session.max_batch)
        a.session.handle(slow(1, 10, 100.0), NOW)
        check(a.session.max_batch == half, "a slow-down does not grow it back", a.session.max_batch)
    finally:
        a.close()


def sc_batch_follows_the_welcome(make):
    """The one batch-size rule: the driver's size, never above the welcome's max_batch."""
    a = make()
    try:
        own = a.session.batch_limit
        a.sample(own + 2)
        a.session.handle(welcome(0, max_batch=3), NOW)
        check(a.session.max_batch == min(own, 3), "capped by the welcome", a.session.max_batch)
        sent = frames(a.session)
        check(sent and max(len(f["r"]) for f in sent) <= 3, [len(f["r"]) for f in sent])
        a.session.connection_lost()
        a.session.handle(welcome(0, max_batch=1000), NOW)
        check(a.session.max_batch == own, "the driver's own size again", a.session.max_batch)
    finally:
        a.close()


# ------------------------------------------------------------------ what outlives the session (state, restore)


def _snapshot(session):
    """state() through JSON, as RTC memory or a file would keep it."""
    return json.loads(json.dumps(session.state()))


def _next_delay_ok(session, r, attempt):
    """r (a backoff after ``attempt`` failed attempts) drew from [d/2, d], d = base * 2**attempt capped."""
    full = min(session.backoff.base_ms << attempt, session.backoff.cap_ms)
    return full // 2 <= r.delay_ms <= full


def sc_state_keeps_the_backoff(make):
    a = make()
    try:
        for _ in range(3):
            last = a.session.failed(NOW)
        snap = _snapshot(a.session)
    finally:
        a.close()
    b = make()  # a new session object (one driver at a time: the agent's pins are its own)
    try:
        check(b.session.restore(snap), "restore", snap)
        check(b.session.backoff.attempt == 3 and b.session.retry_at_ms == last.at_ms, snap)
        check(not b.session.connect_due(last.at_ms - 1) and b.session.connect_due(last.at_ms), "due as before")
        r = b.session.failed(NOW)
        check(_next_delay_ok(b.session, r, 3), "the fourth delay", r)
    finally:
        b.close()


def sc_state_keeps_a_stop_for_the_same_credential_only(make):
    a = make()
    try:
        online(a, 0)
        a.session.closed(wire.CLOSE_TOO_BIG, NOW)
        halved = a.session.batch_limit
        a.session.closed(4005, NOW)
        snap = _snapshot(a.session)
    finally:
        a.close()
    b = make()
    try:
        check(b.session.restore(snap) and b.session.stopped, "the stop comes back", snap)
        check(not b.session.connect_due(NOW + 10 * HOURLY_MS) and b.session.batch_limit == halved, snap)
    finally:
        b.close()
    c = make()
    try:
        c.session.set_credential(token="ewt_" + "r" * 32)  # the operator installed a new token
        check(c.session.restore(snap) and not c.session.stopped and c.session.connect_due(NOW), "a new credential")
        check(c.session.backoff.attempt == 0, "and a fresh backoff")
    finally:
        c.close()


def sc_unreadable_state_changes_nothing(make):
    a = make()
    try:
        a.session.failed(NOW)
        good = _snapshot(a.session)
        before = (a.session.backoff.attempt, a.session.retry_at_ms, a.session.stopped, a.session.batch_limit)
        bad = [None, 7, "state", [], {}, {"v": 99}]
        for key, value in (("attempt", -1), ("attempt", 25), ("attempt", "3"), ("retry_at_ms", -2),
                           ("retry_at_ms", 1.5), ("batch_limit", 0), ("stopped_for", "crc")):
            broken = dict(good)
            broken[key] = value
            bad.append(broken)
        for snap in bad:
            check(not a.session.restore(snap), "accepted", snap)
            now = (a.session.backoff.attempt, a.session.retry_at_ms, a.session.stopped, a.session.batch_limit)
            check(now == before, snap, "changed", now)
    finally:
        a.close()


def sc_deep_sleep_keeps_the_backoff(make):
    a = make()
    try:
        a.sample(2)
        for _ in range(2):
            last = a.session.failed(NOW)
        a = a.sleep()
        s = a.session
        check(s.backoff.attempt == 2 and s.retry_at_ms == last.at_ms and not s.stopped, s.state())
        check(a.held() == [1, 2], "readings kept", a.held())
        check(_next_delay_ok(s, s.failed(NOW), 2), "the third delay")
        online(a, 0)
        s.closed(4001, NOW)
        a = a.sleep()
        check(a.session.stopped and not a.session.connect_due(NOW + 10 * HOURLY_MS), "the stop survives the sleep")
    finally:
        a.close()


# ------------------------------------------------------------------ commands

GOOD = (
    ("ping", {}),
    ("set_interval", {"seconds": 60}),
    ("set_interval", {"seconds": wire.MAX_INTERVAL_S}),
    ("set_thresholds", {"metric": "temperature", "high": 30.5, "low": 10}),
    ("set_thresholds", {"metric": "humidity", "high": 80}),
    ("set_thresholds", {"metric": "humidity", "low": 20}),
)

BAD = (  # (name, args, a piece of the answer)
    ("set_interval", {"seconds": 0}, "seconds > 0"),
    ("set_interval", {"seconds": -5}, "seconds > 0"),
    ("set_interval", {"seconds": wire.MAX_INTERVAL_S + 1}, "<= 86400"),
    ("set_interval", {"seconds": "5"}, "'seconds' must be a finite number"),
    ("set_interval", {"seconds": True}, "'seconds' must be a finite number"),
    ("set_interval", {}, "'seconds' is missing"),
    ("set_thresholds", {"high": 3}, "'metric' is missing"),
    ("set_thresholds", {"metric": "Temp!", "high": 3}, "'metric' must be a metric name"),
    ("set_thresholds", {"metric": "temperature"}, "neither high nor low"),
    ("set_thresholds", {"metric": "temperature", "high": 1, "low": 5}, "low must be below high"),
    ("set_thresholds", {"metric": "temperature", "high": "hot"}, "'high' must be a finite number"),
    ("set_output", {"on": True}, "'output' is missing"),
    ("set_output", {"output": "OUT", "on": "yes"}, "'on' must be true or false"),
    ("set_output", {"output": "laser", "on": True}, "laser"),
    ("warp", {}, "unknown command 'warp'"),
)


_IDS = [0]


def _new_id():
    _IDS[0] += 1
    return "c-" + str(_IDS[0])


def _answer(a, name, args, command_id=None):
    if command_id is None:
        command_id = _new_id()  # every command a gateway sends has its own id
    d = a.session.handle(cmd(command_id, name, args), NOW)
    check(d.kind == D_COMMAND and d.reply is not None, name, d)
    reply = wire.decode(d.reply)
    check(reply["t"] == "result" and reply["id"] == command_id and type(reply["ok"]) is bool, reply)
    return d, reply


def _no_answer_without_a_string_id(a):
    for bad_id in (None, 7, ""):
        msg = {"t": "cmd", "name": "ping", "args": {}}
        if bad_id is not None:
            msg["id"] = bad_id
        d = a.session.handle(enc(msg), NOW)
        check(d.kind == D_INVALID and d.reply is None, "no answer without a string id", d)


def sc_commands_with_good_arguments(make):
    a = make()
    try:
        online(a, 0)
        for name, args in GOOD:
            before = a.state()
            d, reply = _answer(a, name, args)
            check(reply["ok"] is True and d.ok, name, args, reply)
            if name != "ping":
                check(a.state() != before, name, args, "changed nothing")
        before = a.state()
        d, reply = _answer(a, "set_output", {"output": a.output, "on": True})
        check(reply["ok"] is True and a.state() != before, reply)
        d, reply = _answer(a, "reboot", {})
        check(reply["ok"] is True and d.name == "reboot" and a.reboots(), reply)
    finally:
        a.close()


def sc_commands_with_bad_arguments_change_nothing(make):
    a = make()
    try:
        online(a, 0)
        for name, args, expect in BAD:
            args = dict(args)
            if args.get("output") == "OUT":
                args["output"] = a.output
            before = a.state()
            d, reply = _answer(a, name, args)
            check(reply["ok"] is False and not d.ok, name, args, reply)
            check(expect in reply.get("msg", ""), name, args, "message", reply.get("msg"), "lacks", expect)
            check(a.state() == before, name, args, "changed the state")
        check(not a.reboots(), "no reboot")
    finally:
        a.close()


def sc_malformed_commands(make):
    a = make()
    try:
        online(a, 0)
        _d, reply = _answer(a, "set_interval", [60])
        check(reply["ok"] is False and "object" in reply["msg"], reply)
        _d, reply = _answer(a, "ping", None)  # no args at all: {}
        check(reply["ok"] is True, reply)
        _no_answer_without_a_string_id(a)
    finally:
        a.close()


def sc_repeated_command_id_is_answered_not_run(make):
    """Commands are delivered at least once: a gateway sends a command again (same id) when the
    device moved to another instance before its answer was acknowledged. The device answers the
    repeated id with its first answer and does not run the command twice."""
    a = make()
    try:
        online(a, 0)
        _d, first = _answer(a, "set_output", {"output": a.output, "on": True}, "c-once")
        check(first["ok"] is True, first)
        _d, reply = _answer(a, "set_output", {"output": a.output, "on": False})
        check(reply["ok"] is True, reply)
        switched_off = a.state()
        d, again = _answer(a, "set_output", {"output": a.output, "on": True}, "c-once")
        check(again == first, "the first answer again", again, first)
        check(not d.ok and d.code == REPEATED, "not run", d)
        check(a.state() == switched_off, "a repeated command ran again")
        a.session.connection_lost()  # the answers survive a reconnect (to another instance)
        online(a, 0)
        d, again = _answer(a, "set_output", {"output": a.output, "on": True}, "c-once")
        check(again == first and not d.ok and a.state() == switched_off, "repeated after a reconnect", again)
        for _ in range(REPEATS_KEPT):
            _answer(a, "ping", {})
        _d, late = _answer(a, "set_output", {"output": a.output, "on": True}, "c-once")
        check(late["ok"] is True and a.state() != switched_off, "an id older than the kept answers runs", late)
    finally:
        a.close()


def sc_ota_without_a_key_is_refused(make):
    """Over-the-air updates (protocol/ota.py): a device without a release key (ota_pubkey) refuses
    every offer with code ota_disabled and changes nothing; a chunk nobody asked for is ignored, and
    an idle device sends no OTA frame."""
    a = make()
    try:
        online(a, 0)
        before = a.state()
        manifest = enc({"v": 1, "release": "esp32-9.9.9", "kind": "esp32", "version": "9.9.9",
                        "min_runtime": "1.22.0", "files": [{"name": "app.mpy", "size": 3, "sha256": "a" * 64}],
                        "created_ms": 0})
        d, reply = _answer(a, "ota", {"manifest": manifest, "sig": "ab" * 64})
        check(reply["ok"] is False and reply.get("data") == {"code": "ota_disabled"}, reply)
        d, reply = _answer(a, "ota", {"manifest": manifest, "sig": "AB" * 64})
        check(reply["ok"] is False and "sig" in reply.get("msg", ""), reply)
        d = a.session.handle(enc({"t": "ota_chunk", "release": "esp32-9.9.9", "file": "app.mpy", "off": 0,
                                  "data": "YWJj", "size": 3}), NOW)
        check(d.kind == D_NOTE and d.reply is None, "an unasked chunk is ignored", d)
        check(a.session.ota_frame() is None, "no OTA frame from an idle device")
        check(a.state() == before and not a.reboots(), "an offer changed the device")
    finally:
        a.close()


# ------------------------------------------------------------------ a client without those features (LOADGEN)

NOT_RUN = "not run (load generator)"


def sc_never_reconnects(make):
    for code in BACKOFF_CODES + STOP_CODES + (4000, 4003, 4004, None):
        a = make()
        try:
            online(a, 0)
            r = a.session.closed(code, NOW)
            check(r.action == R_STOP and r.delay_ms == -1 and r.at_ms == -1, code, r)
            check(not a.session.connect_due(NOW + 10 * HOURLY_MS), "stopped", code)
        finally:
            a.close()
    a = make()
    try:
        for status, raw, _action, code in REFUSALS:
            r = a.refuse(status, raw)
            check(r.action == R_STOP and r.error == code, status, raw, r)
        check(a.session.failed(NOW).action == R_STOP, "gateway unreachable")
        check(a.sample(2) == [1, 2] and a.held() == [1, 2], "readings kept while stopped", a.held())
    finally:
        a.close()


def sc_slow_down_resends_at_once(make):
    a = make()
    try:
        a.sample(3)
        online(a, 0)
        set_batch(a.session, 1)
        sent = frames(a.session, NOW)
        check([f["seq"] for f in sent] == [1, 2, 3], "not paced", sent)
        d = a.session.handle(slow(2, 500, 2.0), NOW)
        check(d.kind == D_SLOW and d.seq == 2 and d.wait_ms == 0, d)
        check(a.session.send_wait_ms(NOW) == 0, "no wait")
        again = frames(a.session, NOW)
        check([f["seq"] for f in again] == [2, 3], "the refused frame goes out again at once", again)
        check(a.held() == [1, 2, 3], a.held())
    finally:
        a.close()


def sc_commands_answered_not_run(make):
    a = make()
    try:
        online(a, 0)
        before = a.state()
        cases = GOOD + tuple((name, args) for name, args, _expect in BAD) + (
            ("reboot", {}), ("set_output", {"output": "relay", "on": True}), ("set_interval", [60]),
            ("ping", None))
        for name, args in cases:
            d, reply = _answer(a, name, args)
            check(reply["ok"] is True and d.ok and reply.get("msg") == NOT_RUN, name, args, reply)
        check(a.state() == before and not a.reboots(), "a command was run")
        _no_answer_without_a_string_id(a)
    finally:
        a.close()


SCENARIOS = (
    ("welcome_zero_keeps_everything", sc_welcome_zero_keeps_everything, None),
    ("welcome_acks_through_last_seq", sc_welcome_acks_through_last_seq, None),
    ("welcome_covering_everything_empties_outbox", sc_welcome_covering_everything_empties_outbox, None),
    ("welcome_beyond_counter_renumbers", sc_welcome_beyond_counter_renumbers, None),
    ("welcome_beyond_counter_with_empty_outbox", sc_welcome_beyond_counter_with_empty_outbox, None),
    ("lost_counter_renumbers_overlap", sc_lost_counter_renumbers_overlap, None),
    ("lost_counter_confirmed_by_first_welcome", sc_lost_counter_confirmed_by_first_welcome, None),
    ("lost_counter_survives_restart", sc_lost_counter_survives_restart, "durable"),
    ("confirmed_counter_survives_restart", sc_confirmed_counter_survives_restart, "durable"),
    ("cumulative_ack", sc_cumulative_ack, None),
    ("window_limits_frames_in_flight", sc_window_limits_frames_in_flight, None),
    ("refused_frame_is_dropped_not_resent", sc_refused_frame_is_dropped_not_resent, None),
    ("refused_frame_frees_its_window_slot", sc_refused_frame_frees_its_window_slot, None),
    ("not_stored_errors_are_resent", sc_not_stored_errors_are_resent, None),
    ("error_without_a_frame_changes_nothing", sc_error_without_a_frame_changes_nothing, None),
    ("closing_error_announces_the_close", sc_closing_error_announces_the_close, None),
    ("slow_down_waits_then_paces", sc_slow_down_waits_then_paces, "pacing"),
    ("frames_fit_max_frame", sc_frames_fit_max_frame, None),
    ("data_frames_are_valid", sc_data_frames_are_valid, None),
    ("data_frames_follow_the_negotiated_encoding", sc_data_frames_follow_the_negotiated_encoding, None),
    ("close_codes", sc_close_codes, "reconnect"),
    ("backoff_grows_and_resets_on_welcome", sc_backoff_grows_and_resets_on_welcome, "reconnect"),
    ("http_refusals", sc_http_refusals, "reconnect"),
    ("stop_lasts_until_the_credential_changes", sc_stop_lasts_until_the_credential_changes, "reconnect"),
    ("expired_credential_is_refreshed", sc_expired_credential_is_refreshed, "reconnect"),
    ("too_big_close_halves_the_batch", sc_too_big_close_halves_the_batch, "reconnect"),
    ("batch_follows_the_welcome", sc_batch_follows_the_welcome, None),
    ("state_keeps_the_backoff", sc_state_keeps_the_backoff, "reconnect"),
    ("state_keeps_a_stop_for_the_same_credential_only", sc_state_keeps_a_stop_for_the_same_credential_only,
     "reconnect"),
    ("unreadable_state_changes_nothing", sc_unreadable_state_changes_nothing, None),
    ("deep_sleep_keeps_the_backoff", sc_deep_sleep_keeps_the_backoff, "sleeps"),
    ("commands_with_good_arguments", sc_commands_with_good_arguments, "commands"),
    ("commands_with_bad_arguments_change_nothing", sc_commands_with_bad_arguments_change_nothing, "commands"),
    ("malformed_commands", sc_malformed_commands, "commands"),
    ("repeated_command_id_is_answered_not_run", sc_repeated_command_id_is_answered_not_run, "commands"),
    ("ota_without_a_key_is_refused", sc_ota_without_a_key_is_refused, "ota"),
    ("never_reconnects", sc_never_reconnects, "!reconnect"),
    ("slow_down_resends_at_once", sc_slow_down_resends_at_once, "!pacing"),
    ("commands_answered_not_run", sc_commands_answered_not_run, "!commands"),
)


DEVICE_FEATURES = ("durable", "reconnect", "pacing", "commands", "sleeps")
_UPDATES = ("ota",)  # (no `(*a, b)`: mpy-cross refuses starred displays)
FIRMWARE_FEATURES = DEVICE_FEATURES + _UPDATES  # the ESP32 firmware's (firmware_adapter.FirmwareAdapter)


def applicable(needs, features):
    """Whether a scenario needing ``needs`` ("feature", "!feature" or None) applies to ``features``."""
    if needs is None:
        return True
    if needs[0] == "!":
        return needs[1:] not in features
    return needs in features


def run_all(make, features, only=None):
    """Run every applicable scenario; print ``PASS name`` / ``FAIL name: why``; return failures."""
    failed = []
    for name, func, needs in SCENARIOS:
        if only is not None and name not in only:
            continue
        if not applicable(needs, features):
            print("N/A", name)
            continue
        try:
            func(make)
            print("PASS", name)
        except Exception as err:  # report and go on: one line per scenario
            failed.append(name)
            print("FAIL", name + ":", repr(err))
    return failed
