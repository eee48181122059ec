"""Fuzz protocol/ in process: GatewaySession (device frames in) and DeviceSession (gateway frames in).

A crash is any exception the core should not raise (GatewaySession.receive raises none;
DeviceSession.receive only ProtocolError), or a broken invariant: a reply that is not a JSON
object, an accepted status or result the gateway could not encode, readings that are not
consecutive or not finite, accepted_seq going backwards, a ts beyond the allowed skew.
"""

from __future__ import annotations

import math
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from fuzz.mutate import Mutator
from protocol import wire
from protocol.device import DeviceSession
from protocol.gateway import (
    EV_AUTH,
    EV_CLOSE,
    EV_DATA,
    EV_REJECT,
    EV_RESULT,
    EV_STATUS,
    EV_THROTTLE,
    MAX_STATUS_BYTES,
    GatewaySession,
)
from protocol.outbox import MemoryOutbox

KINDS = {EV_AUTH, EV_DATA, EV_RESULT, EV_STATUS, EV_REJECT, EV_THROTTLE, EV_CLOSE}
CODES = {value for name, value in vars(wire).items() if name.startswith("E_")}
CLOSE_CODES = set(wire.CLOSE_FOR_ERROR.values()) | {wire.CLOSE_POLICY}
WALL_MS = 1_764_080_000_000
SESSION_FRAMES = 500  # frames per session before a fresh one (a reconnect)
VALID_EVERY = 3


def valid_data_frame(rng: random.Random, seq: int, wall_ms: int) -> str:
    """A data frame the gateway accepts: 1-5 readings of known metrics within their ranges."""
    readings = []
    for _ in range(rng.randint(1, 5)):
        names = rng.sample(sorted(wire.METRICS), rng.randint(1, 3))
        reading: dict[str, Any] = {"m": {n: round(rng.uniform(*wire.metric_range(n)), 3) for n in names}}
        if rng.random() < 0.5:
            reading["ts"] = wall_ms - rng.randint(0, 10**7)
        readings.append(reading)
    return orjson.dumps({"t": "data", "seq": seq, "r": readings}).decode()


@dataclass
class Report:
    target: str
    frames: int = 0
    sessions: int = 0
    events: dict[str, int] = field(default_factory=dict)
    crashes: dict[str, dict[str, Any]] = field(default_factory=dict)  # signature -> first example, count
    seconds: float = 0.0

    def crash(self, error: BaseException | str, frame: str | bytes) -> None:
        if isinstance(error, BaseException):
            where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
            signature = f"{type(error).__name__} at {where.filename}:{where.lineno}" if where else type(error).__name__
            detail = f"{type(error).__name__}: {error}"[:300]
        else:
            signature = detail = error[:300]
        entry = self.crashes.setdefault(signature, {"count": 0, "detail": detail, "frame": repr(frame[:300])})
        entry["count"] += 1

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "frames": self.frames, "sessions": self.sessions,
                "frames_per_s": round(self.frames / self.seconds) if self.seconds else None,
                "crash_count": sum(c["count"] for c in self.crashes.values()),
                "crashes": self.crashes, "events": dict(sorted(self.events.items()))}


def _dumps(msg: Any) -> str:
    return orjson.dumps(msg).decode()


def _check_event(session: GatewaySession, event: Any, before: int, wall_ms: int) -> str | None:
    """What is wrong with ``event``, or None."""
    if event.kind not in KINDS:
        return f"unknown event kind {event.kind!r}"
    if event.reply is not None:
        reply = orjson.loads(event.reply)
        if not isinstance(reply, dict) or not isinstance(reply.get("t"), str):
            return "reply is not a protocol frame"
    if event.kind in (EV_REJECT, EV_THROTTLE, EV_CLOSE) and event.payload.code not in CODES:
        return f"unknown error code {event.payload.code!r}"
    if event.kind == EV_CLOSE and event.close_code not in CLOSE_CODES:
        return f"close code {event.close_code} not in the protocol"
    if event.kind == EV_STATUS and len(_dumps(event.payload)) > MAX_STATUS_BYTES:
        return "accepted status beyond MAX_STATUS_BYTES"
    if event.kind == EV_RESULT:
        _dumps(event.payload)  # raises if the gateway could not forward it
    if event.kind == EV_DATA:
        frame = event.payload
        if session.accepted_seq < before:
            return "accepted_seq went backwards"
        for offset, reading in enumerate(frame.readings):
            if reading.seq != frame.seq + offset or reading.seq > wire.MAX_SEQ:
                return "readings are not consecutive"
            for name, value in reading.metrics.items():
                if not wire.valid_metric_name(name) or type(value) not in (int, float) or not math.isfinite(value):
                    return f"accepted metric {name!r}={value!r}"
            if reading.ts is not None and reading.ts > wall_ms + session.max_future_ms:
                return "accepted a ts beyond the skew"
    return None


def fuzz_gateway_session(mutator: Mutator, frames: int, progress: Callable[[int], None] | None = None) -> Report:
    report = Report("protocol.gateway.GatewaySession")
    started = time.perf_counter()
    session: GatewaySession | None = None
    now = 0.0
    count = 0
    for count in range(1, frames + 1):
        if session is None or session.state == 2 or count % SESSION_FRAMES == 0:
            session = GatewaySession(rate=1000.0, burst=50.0, now=now, loads=orjson.loads, dumps=_dumps)
            session.accept("FUZZ-0", 0, WALL_MS)
            report.sessions += 1
        now += 0.001
        frame: str | bytes
        if count % VALID_EVERY == 0:  # a valid frame now and then: keeps sessions going, drives the data path
            frame = valid_data_frame(mutator.rng, session.accepted_seq + 1, WALL_MS)
        else:
            frame = mutator.frame(session.accepted_seq + 1)
        if count % 7 == 0:
            session.command_frame("c1", "ping")  # so that some results answer a pending command
        before = session.accepted_seq
        try:
            event = session.receive(frame, now, WALL_MS)
            problem = _check_event(session, event, before, WALL_MS)
            if event.kind == EV_DATA and count % 3 == 0:
                session.ack(session.accepted_seq)
        except Exception as err:  # anything raised is a crash of the core
            report.crash(err, frame)
            session = None
            continue
        report.events[event.kind] = report.events.get(event.kind, 0) + 1
        if problem is not None:
            report.crash(problem, frame)
        if progress is not None and count % 100_000 == 0:
            progress(count)
    report.frames = count
    report.seconds = time.perf_counter() - started
    return report


def fuzz_device_session(mutator: Mutator, frames: int) -> Report:
    report = Report("protocol.device.DeviceSession")
    started = time.perf_counter()
    session: DeviceSession | None = None
    count = 0
    for count in range(1, frames + 1):
        if session is None or count % SESSION_FRAMES == 0:
            outbox = MemoryOutbox(first_seq=1)
            for _ in range(8):
                outbox.add({"temperature": 21.5})
            session = DeviceSession("FUZZ-0", token="ewt_" + "A" * 32, boot="f00d", max_batch=5, outbox=outbox)
            report.sessions += 1
        frame = mutator.frame(count)
        try:
            decision = session.handle(frame, count)  # never raises: anything unreadable is a D_NOTE
            report.events[decision.kind] = report.events.get(decision.kind, 0) + 1
            session.next_frame(now_ms=count)  # the decision's effect on what is sent next
        except Exception as err:
            report.crash(err, frame)
            session = None
    report.frames = count
    report.seconds = time.perf_counter() - started
    return report
