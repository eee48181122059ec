"""Structure-aware frame strategies (hypothesis): what a device, a broken firmware or an attacker
could send, built from the protocol's own shapes and the boundaries docs/protocol.md sets."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from protocol import wire

MAX_SEQ = wire.MAX_SEQ
NOW_MS = 1_764_080_000_000

ints = st.one_of(
    st.integers(-3, 3), st.integers(1, 10_000), st.sampled_from([MAX_SEQ - 1, MAX_SEQ, MAX_SEQ + 1, 2**63, 2**64,
                                                                 -(2**63), 2**31]),
    st.integers())
numbers = st.one_of(ints, st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1e308, -1e308, 5e-324,
                                                                                             -0.0, 1e9, 1e9 + 1]))
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=40))
names = st.one_of(st.sampled_from(sorted(wire.METRICS)), st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True),
                  st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                            st.dictionaries(st.text(max_size=12), inner, max_size=6)),
                           max_leaves=40)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``strategy`` or None (None: the key is left out)."""
    return st.one_of(st.just(None), strategy)


@st.composite
def readings(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 20)) == 0:
        return draw(json_values)  # not a reading at all
    metrics = draw(st.one_of(
        st.dictionaries(names, numbers, min_size=1, max_size=4),
        st.dictionaries(names, scalars, max_size=20),
        json_values))
    reading: dict[str, Any] = {"m": metrics}
    for key, strategy in (("ts", st.one_of(ints, st.integers(NOW_MS - 10**9, NOW_MS + 10**11))),
                          ("up", ints), ("q", st.one_of(st.sampled_from(wire.QUALITIES), scalars))):
        value = draw(maybe(strategy))
        if value is not None:
            reading[key] = value
    return reading


@st.composite
def data_frames(draw: st.DrawFn, seq: int) -> dict[str, Any]:
    frame: dict[str, Any] = {"t": "data"}
    frame["seq"] = draw(st.one_of(st.just(seq), st.just(seq), st.integers(max(1, seq - 5), seq + 5), ints, scalars))
    frame["r"] = draw(st.one_of(st.lists(readings(), min_size=1, max_size=3),
                                st.lists(readings(), max_size=wire.MAX_BATCH + 2), scalars))
    for key, strategy in (("boot", st.one_of(st.text(max_size=70), scalars)), ("up", ints),
                          ("device_id", st.one_of(st.just("FUZZ-0"), st.text(max_size=8)))):
        if draw(st.integers(0, 4)) == 0:
            frame[key] = draw(strategy)
    return frame


def deep(kind: str, depth: int) -> str:
    return "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth


@st.composite
def text_frames(draw: st.DrawFn, seq: int) -> str | bytes:
    """One frame as sent on the wire: mostly JSON objects of the protocol's types, sometimes
    mutated text, deep nesting, huge numbers or binary."""
    kind = draw(st.sampled_from(["data", "data", "data", "status", "result", "auth", "other", "raw", "deep",
                                 "mutated", "binary"]))
    if kind == "data":
        return json.dumps(draw(data_frames(seq)))
    if kind == "status":
        fields = draw(st.dictionaries(st.text(max_size=10), json_values, max_size=40))
        return json.dumps(dict(fields, t="status"))
    if kind == "result":
        frame = {"t": "result", "id": draw(st.one_of(st.sampled_from(["c1", "c-x"]), scalars)),
                 "ok": draw(st.one_of(st.booleans(), scalars)), "msg": draw(scalars), "data": draw(json_values)}
        return json.dumps(frame)
    if kind == "auth":
        return json.dumps({"t": "auth", "device_id": draw(scalars), "token": draw(scalars), "jwt": draw(scalars)})
    if kind == "other":
        return json.dumps(draw(st.one_of(json_values, st.dictionaries(st.text(max_size=4), json_values, max_size=4)
                                         .map(lambda d: dict(d, t=draw(scalars))))))
    if kind == "raw":
        return draw(st.one_of(st.text(max_size=200), st.sampled_from([
            '{"t":"data","seq":1,"r":[{"m":{"temperature":NaN}}]}', '{"t":"data","seq":1e400}',
            '{"t":"data","seq":1,"r":[{"m":{"temperature":1e400}}]}', '{"t":"status","a":"\\ud800"}',
            '{"t":"data","t":"status"}', '{"t":"status"', "", "null", "[]", '"t"', "{}",
            '{"t":"data","seq":1,"r":[{"m":{"temperature":20}}],"seq":2}'])))
    if kind == "deep":
        depth = draw(st.sampled_from([5, 9, 64, 255, 256, 300, 1000, 5000]))
        where = draw(st.sampled_from(["status", "result", "data", "bare"]))
        inner = deep(draw(st.sampled_from(["list", "dict"])), depth)
        return {"status": '{"t":"status","x":' + inner + "}",
                "result": '{"t":"result","id":"c1","ok":true,"data":' + inner + "}",
                "data": '{"t":"data","seq":1,"r":[{"m":' + inner + "}]}", "bare": inner}[where]
    if kind == "mutated":
        text = json.dumps(draw(data_frames(seq)))
        position = draw(st.integers(0, max(0, len(text) - 1)))
        action = draw(st.sampled_from(["cut", "flip", "insert"]))
        if action == "cut":
            return text[:position]
        if action == "flip":
            return text[:position] + chr((ord(text[position]) ^ (1 << draw(st.integers(0, 6)))) or 32) \
                + text[position + 1:]
        return text[:position] + draw(st.text(min_size=1, max_size=8)) + text[position:]
    return draw(st.binary(max_size=64))


@st.composite
def frame_batches(draw: st.DrawFn, size: int) -> list[str | bytes]:
    """``size`` frames for one connection; data frames mostly continue the sequence."""
    seq = 1
    frames = []
    for _ in range(size):
        frames.append(draw(text_frames(seq)))
        seq += 1
    return frames


@st.composite
def gateway_frames(draw: st.DrawFn) -> str | bytes:
    """What a gateway (or something pretending to be one) sends a device."""
    kind = draw(st.sampled_from(["welcome", "ack", "cmd", "slow", "error", "other", "raw"]))
    if kind == "welcome":
        frame = {"t": "welcome", "v": draw(scalars), "device": draw(scalars),
                 "last_seq": draw(st.one_of(ints, scalars)), "rate": draw(st.one_of(numbers, scalars)),
                 "burst": draw(numbers), "max_batch": draw(st.one_of(ints, scalars)), "max_frame": draw(ints),
                 "time": draw(st.one_of(ints, scalars))}
    elif kind == "ack":
        frame = {"t": "ack", "seq": draw(st.one_of(ints, scalars))}
    elif kind == "cmd":
        frame = {"t": "cmd", "id": draw(st.one_of(st.text(max_size=20), scalars)),
                 "name": draw(st.one_of(st.sampled_from(["set_interval", "set_thresholds", "set_output", "reboot",
                                                         "ping"]), scalars)),
                 "args": draw(st.one_of(st.dictionaries(st.sampled_from(["seconds", "metric", "high", "low", "output",
                                                                         "on"]), scalars, max_size=4), json_values))}
    elif kind == "slow":
        frame = {"t": "slow", "rate": draw(st.one_of(numbers, scalars)), "retry_ms": draw(st.one_of(ints, scalars)),
                 "seq": draw(st.one_of(ints, scalars))}
    elif kind == "error":
        frame = {"t": "error", "code": draw(st.one_of(st.sampled_from(sorted(wire.CLOSE_FOR_ERROR)), scalars)),
                 "msg": draw(scalars), "seq": draw(st.one_of(ints, scalars))}
    elif kind == "other":
        return json.dumps(draw(json_values))
    else:
        return draw(st.one_of(st.text(max_size=80), st.binary(max_size=32)))
    return json.dumps(frame)


def corpus(strategy: st.SearchStrategy[list[str | bytes]], count: int, seed: int) -> list[str | bytes]:
    """``count`` frames drawn by hypothesis from ``strategy`` (lists of frames), reproducibly."""
    frames: list[str | bytes] = []

    @hypothesis_seed(seed)
    @settings(max_examples=max(1, count // 20 + 1), database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(batch: list[str | bytes]) -> None:
        frames.extend(batch)

    collect()
    return frames[:count]


def device_corpus(count: int, seed: int) -> list[str | bytes]:
    return corpus(frame_batches(20), count, seed)


def gateway_corpus(count: int, seed: int) -> list[str | bytes]:
    return corpus(st.lists(gateway_frames(), min_size=20, max_size=20), count, seed)
