"""The gateway core's OTA frames (docs/ota.md): ota_get and ota parsed into events, refused with
bad_request (the connection stays open), and the ota_chunk frame the driver answers with."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from protocol.gateway import (
    EV_OTA_GET,
    EV_OTA_STATE,
    EV_REJECT,
    OTA_MAX_CHUNK,
    OTA_STATES,
    ST_ACTIVE,
    GatewaySession,
    valid_release_id,
)
from protocol.wire import E_BAD_REQUEST

versions = st.text(alphabet="0123456789abcXYZ.+-", min_size=1, max_size=32)
releases = st.builds(lambda kind, version: f"{kind}-{version}", st.sampled_from(["esp32", "pi"]), versions)
names = st.text(alphabet="abcdefXYZ0123456789_.-", min_size=1, max_size=64)


def session() -> GatewaySession:
    s = GatewaySession()
    s.accept("d1", 0, 0)
    return s


@given(release=releases, name=names, off=st.integers(0, 2**40), length=st.integers(1, OTA_MAX_CHUNK))
def test_valid_ota_get_is_an_event(release: str, name: str, off: int, length: int) -> None:
    s = session()
    event = s.receive(json.dumps({"t": "ota_get", "release": release, "file": name, "off": off, "len": length}), 1.0)
    assert event.kind == EV_OTA_GET
    assert event.payload == {"release": release, "file": name, "off": off, "len": length}
    assert event.reply is None


bad_fields = st.one_of(
    st.fixed_dictionaries({"release": st.sampled_from(["", "esp8266-1.0", "esp32-", "esp32-a/b", "pi-" + "1" * 33,
                                                       None, 5])}),
    st.fixed_dictionaries({"file": st.sampled_from(["", "../boot.py", "a/b.py", "x" * 65, None, 3, "é.py"])}),
    st.fixed_dictionaries({"off": st.one_of(st.integers(max_value=-1), st.just(1.5), st.just("0"), st.none(),
                                            st.just(True), st.integers(min_value=2**40 + 1))}),
    st.fixed_dictionaries({"len": st.one_of(st.integers(max_value=0), st.integers(min_value=OTA_MAX_CHUNK + 1),
                                            st.just(2048.0), st.none(), st.just(False))}),
)


@given(bad=bad_fields)
def test_bad_ota_get_is_refused_and_the_session_goes_on(bad: dict[str, Any]) -> None:
    s = session()
    msg = {"t": "ota_get", "release": "esp32-1.2.0", "file": "app.mpy", "off": 0, "len": 2048, **bad}
    msg = {k: v for k, v in msg.items() if v is not None}
    event = s.receive(json.dumps(msg), 1.0)
    assert event.kind == EV_REJECT
    assert event.payload.code == E_BAD_REQUEST
    assert event.reply is not None and json.loads(event.reply)["code"] == E_BAD_REQUEST
    assert s.state == ST_ACTIVE
    good = s.receive(json.dumps({"t": "ota_get", "release": "esp32-1.2.0", "file": "app.mpy", "off": 0,
                                 "len": 2048}), 1.0)
    assert good.kind == EV_OTA_GET and s.strikes == 0


@given(release=releases, state=st.sampled_from(OTA_STATES), reason=st.sampled_from(["", "bad_hash", "crashed"]),
       done=st.none() | st.integers(0, 2**32), total=st.none() | st.integers(0, 2**32))
def test_ota_state_is_an_event(release: str, state: str, reason: str, done: int | None, total: int | None) -> None:
    s = session()
    msg: dict[str, Any] = {"t": "ota", "release": release, "state": state, "reason": reason}
    if done is not None:
        msg["done"] = done
    if total is not None:
        msg["total"] = total
    event = s.receive(json.dumps(msg), 1.0)
    assert event.kind == EV_OTA_STATE
    assert event.payload == {"release": release, "state": state, "reason": reason, "done": done, "total": total}
    assert event.reply is None


@given(bad=st.one_of(
    st.fixed_dictionaries({"state": st.sampled_from(["pending", "", "GOOD", None, 1])}),
    st.fixed_dictionaries({"reason": st.sampled_from(["x" * 33, "no space", 7])}),
    st.fixed_dictionaries({"done": st.sampled_from([-1, 1.5, "3"])}),
    st.fixed_dictionaries({"release": st.sampled_from(["", "esp32", "x-1"])})))
def test_bad_ota_state_is_refused(bad: dict[str, Any]) -> None:
    s = session()
    msg = {"t": "ota", "release": "pi-2.0.0", "state": "trial", **bad}
    event = s.receive(json.dumps({k: v for k, v in msg.items() if v is not None}), 1.0)
    assert event.kind == EV_REJECT and event.payload.code == E_BAD_REQUEST
    assert s.state == ST_ACTIVE


@given(data=st.binary(max_size=OTA_MAX_CHUNK), off=st.integers(0, 2**30))
def test_ota_chunk_frame_carries_the_bytes(data: bytes, off: int) -> None:
    frame = json.loads(session().ota_chunk("esp32-1.2.0", "app.mpy", off, data, off + len(data)))
    assert frame["t"] == "ota_chunk" and frame["off"] == off and frame["size"] == off + len(data)
    assert base64.b64decode(frame["data"]) == data


def test_ota_frames_before_auth_close_the_connection() -> None:
    s = GatewaySession()
    event = s.receive(json.dumps({"t": "ota_get", "release": "esp32-1.0", "file": "a", "off": 0, "len": 1}), 1.0)
    assert event.kind == "close"


def test_release_ids() -> None:
    assert valid_release_id("esp32-1.2.0") and valid_release_id("pi-2.0.0+build.5")
    assert not valid_release_id("esp32-") and not valid_release_id("pi") and not valid_release_id(None)
