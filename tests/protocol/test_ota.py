"""protocol/ota.py: the ECDSA P-256 verifier cross-checked against `cryptography`, the manifest's
checks, and the download core (offer, requests, chunks, hashes, reconnect, power cut), alone and
wired into DeviceSession. The same verifier under real MicroPython: tests/firmware/test_ota_micropython.py."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from protocol import ota, wire
from protocol.device import D_COMMAND, D_NOTE, D_OTA_CHUNK, DeviceSession
from tests.helpers.ota_release import ReleaseKey, manifest_text, offer_args

KEY = ReleaseKey()
OTHER = ReleaseKey()
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
FILES = {"app.mpy": bytes(range(256)) * 20, "boot_hook.mpy": b"x" * 100, "empty.mpy": b""}


def core(**kw: Any) -> ota.OtaCore:
    args: dict[str, Any] = {"kind": "esp32", "running": "1.0.0", "runtime": (1, 27, 0), "pubkey": KEY.pubkey}
    args.update(kw)
    return ota.OtaCore(**args)


# ---------------------------------------------------------------- the verifier


def test_verify_accepts_what_cryptography_signs() -> None:
    for i in range(12):
        message = f"manifest {i} " * i
        assert ota.verify(KEY.pubkey, message, KEY.sign(message))
        assert ota.verify(KEY.pubkey, message.encode(), KEY.sign(message))


def test_verify_refuses_bad_signatures() -> None:
    text = manifest_text("1.2.0", FILES)
    sig = KEY.sign(text)
    r, s = int(sig[:64], 16), int(sig[64:], 16)
    flipped = sig[:10] + ("0" if sig[10] != "0" else "1") + sig[11:]
    bad = [
        flipped,  # one digit of r changed
        sig[:-1] + ("0" if sig[-1] != "0" else "1"),  # one digit of s changed
        OTHER.sign(text),  # another key's signature
        "0" * 64 + sig[64:],  # r = 0
        sig[:64] + "0" * 64,  # s = 0
        f"{N:064x}" + sig[64:],  # r = n
        sig[:64] + f"{N:064x}",  # s = n
        f"{r + N:064x}"[-64:] + sig[64:] if r + N < 2**256 else "f" * 128,  # r + n: same point, other integer
        sig.upper(),  # not lowercase hex
        sig[:-2],  # too short
        sig + "00",  # too long
        "g" * 128,
    ]
    for candidate in bad:
        assert not ota.verify(KEY.pubkey, text, candidate), candidate
    assert not ota.verify(KEY.pubkey, text + " ", sig)  # the exact text is signed
    assert not ota.verify(OTHER.pubkey, text, sig)
    assert ota.verify(KEY.pubkey, text, f"{r:064x}{N - s:064x}")  # (r, n - s) is valid ECDSA too
    for value in (None, 12, b"x" * 128):
        assert not ota.verify(KEY.pubkey, text, value)


def test_pubkeys_that_are_not_a_curve_point_are_refused() -> None:
    pub = KEY.pubkey
    assert ota.parse_pubkey(pub) is not None
    assert ota.parse_pubkey(pub.upper()) is not None  # hex case does not matter for a configured key
    not_on_curve = pub[:-1] + ("0" if pub[-1] != "0" else "1")
    for text in (not_on_curve, "02" + pub[2:], pub[:-2], "", None, 5, "04" + "z" * 128):
        assert ota.parse_pubkey(text) is None, text
        assert not ota.verify(text, "m", KEY.sign("m"))  # type: ignore[arg-type]


# ---------------------------------------------------------------- the manifest


def test_a_manifest_in_the_contracts_shape_parses() -> None:
    text = manifest_text("1.2.0+b7", FILES)
    m = ota.parse_manifest(text)
    assert (m.release, m.kind, m.version, m.min_runtime, m.text) == ("esp32-1.2.0+b7", "esp32", "1.2.0+b7",
                                                                     (1, 22, 0), text)
    assert m.files[0] == ("app.mpy", 5120, hashlib.sha256(FILES["app.mpy"]).hexdigest())
    assert m.total == 5220


def _with(**changes: Any) -> str:
    msg = json.loads(manifest_text("1.2.0", FILES))
    msg.update(changes)
    return json.dumps({k: v for k, v in msg.items() if v is not ...})


def _file(**changes: Any) -> str:
    entry = {"name": "app.mpy", "size": 3, "sha256": "a" * 64}
    entry.update(changes)
    return _with(files=[entry])


@pytest.mark.parametrize("text", [
    "", "[]", "{", "x" * 12001, _with(v=2), _with(v=True), _with(v=...), _with(kind="esp8266"),
    _with(release="esp32-1.2.1"), _with(version="1.2.0/x", release="esp32-1.2.0/x"), _with(version=""),
    _with(version="1" * 33, release="esp32-" + "1" * 33), _with(min_runtime="1.x"), _with(min_runtime=122),
    _with(created_ms=-1), _with(created_ms=1.5), _with(files=[]), _with(files={}), _with(files=[1]),
    _with(files=[{"name": f"f{i}", "size": 1, "sha256": "a" * 64} for i in range(65)]),
    _file(name="../boot.py"), _file(name="lib/app.mpy"), _file(name=".."), _file(name="."), _file(name=""),
    _file(name="a" * 65), _file(size=-1), _file(size=256 * 1024 + 1), _file(size="3"), _file(sha256="A" * 64),
    _file(sha256="a" * 63), _with(files=[{"name": "a", "size": 1, "sha256": "a" * 64}] * 2),
])
def test_bad_manifests_are_refused_with_a_stable_code(text: str) -> None:
    with pytest.raises(ota.OtaError) as err:
        ota.parse_manifest(text)
    assert err.value.code == ota.C_BAD_MANIFEST and err.value.message.startswith("bad manifest: ")


def test_size_limits_depend_on_the_kind() -> None:
    big = json.loads(manifest_text("2.0", {"edgewire.whl": b"x"}, kind="pi", min_runtime="3.11"))
    big["files"][0]["size"] = 64 * 1024 * 1024
    assert ota.parse_manifest(json.dumps(big)).files[0][1] == 64 * 1024 * 1024
    big["files"][0]["size"] += 1
    with pytest.raises(ota.OtaError):
        ota.parse_manifest(json.dumps(big))


def test_runtime_comparison() -> None:
    assert ota.runtime_ok((1, 27, 0), (1, 22, 0)) and ota.runtime_ok((1, 22, 0, ""), (1, 22))
    assert not ota.runtime_ok((1, 21, 9), (1, 22, 0)) and not ota.runtime_ok((3, 11, 2, "final", 0), (3, 12))


# ---------------------------------------------------------------- the offer


@pytest.mark.parametrize(("device", "args", "code"), [
    ({"pubkey": None}, offer_args(KEY, "1.2.0", FILES), ota.C_DISABLED),
    ({}, offer_args(OTHER, "1.2.0", FILES), ota.C_BAD_SIGNATURE),
    ({}, {"manifest": manifest_text("1.2.0", FILES), "sig": "ab"}, ota.C_BAD_SIGNATURE),
    ({}, {"manifest": "{}", "sig": KEY.sign("{}")}, ota.C_BAD_MANIFEST),
    ({"kind": "pi"}, offer_args(KEY, "1.2.0", FILES), ota.C_WRONG_KIND),
    ({"runtime": (1, 20, 0)}, offer_args(KEY, "1.2.0", FILES), ota.C_RUNTIME_TOO_OLD),
    ({"free": lambda: 5000}, offer_args(KEY, "1.2.0", FILES), ota.C_NO_SPACE),
])
def test_offers_are_refused_with_the_contracts_codes(device: dict[str, Any], args: dict[str, str],
                                                     code: str) -> None:
    c = core(**device)
    ok, msg, data = c.offer(args)
    assert (ok, data) == (False, {"code": code}), msg
    assert c.stage is None and c.next_frame() is None  # nothing started, nothing to send


def test_an_offer_of_the_running_version_is_answered_good() -> None:
    assert core(running="1.2.0").offer(offer_args(KEY, "1.2.0", FILES)) == (
        True, "already running 1.2.0", {"state": "good"})


def test_a_second_release_while_busy_is_refused_and_the_same_offer_goes_on() -> None:
    c = core()
    args = offer_args(KEY, "1.2.0", FILES)
    assert c.offer(args) == (True, "downloading esp32-1.2.0", None)
    assert c.begin_due
    assert c.offer(args) == (True, "downloading esp32-1.2.0", None)
    ok, _msg, data = c.offer(offer_args(KEY, "1.3.0", FILES))
    assert (ok, data) == (False, {"code": "busy"})
    c.set_state(ota.S_TRIAL)
    assert c.offer(args)[2] == {"code": "busy"}  # on trial the other slot is the fallback: never touched


# ---------------------------------------------------------------- the download


def chunk_for(request: dict[str, Any], files: dict[str, bytes], release: str = "esp32-1.2.0") -> dict[str, Any]:
    data = files[request["file"]][request["off"]:request["off"] + request["len"]]
    return {"t": "ota_chunk", "release": release, "file": request["file"], "off": request["off"],
            "data": base64.b64encode(data).decode(), "size": len(files[request["file"]])}


def run_download(c: ota.OtaCore, files: dict[str, bytes], written: dict[str, bytearray],
                 corrupt: int = -1) -> list[dict[str, Any]]:
    """Answer the core's requests from ``files`` until it stops asking; return every frame it sent."""
    sent = []
    count = 0
    while (frame := c.next_frame()) is not None:
        msg = json.loads(frame)
        sent.append(msg)
        if msg["t"] != "ota_get":
            continue
        chunk = chunk_for(msg, files)
        if count == corrupt:
            raw = bytearray(base64.b64decode(chunk["data"]))
            raw[0] ^= 1
            chunk["data"] = base64.b64encode(bytes(raw)).decode()
        count += 1
        got = c.on_chunk(chunk)
        if got is not None:
            name, off, data = got
            buf = written.setdefault(name, bytearray())
            assert off == len(buf)
            buf += data
    return sent


def test_a_download_requests_each_chunk_once_and_ends_verifying() -> None:
    c = core(chunk=1024)
    c.offer(offer_args(KEY, "1.2.0", FILES))
    assert c.next_frame() is not None  # the downloading state
    assert c.next_frame() is None  # not before the driver has emptied the slot
    c.begun()
    written: dict[str, bytearray] = {}
    sent = run_download(c, FILES, written)
    gets = [m for m in sent if m["t"] == "ota_get"]
    assert [(m["file"], m["off"], m["len"]) for m in gets] == [
        ("app.mpy", 0, 1024), ("app.mpy", 1024, 1024), ("app.mpy", 2048, 1024), ("app.mpy", 3072, 1024),
        ("app.mpy", 4096, 1024), ("boot_hook.mpy", 0, 100)]  # the empty file needs no request
    assert sent[-1] == {"t": "ota", "release": "esp32-1.2.0", "state": "verifying"}
    assert {k: bytes(v) for k, v in written.items()} == {k: v for k, v in FILES.items() if v}
    assert c.stage == ota.S_VERIFYING and c.state() is None


def test_one_request_outstanding_and_a_reconnect_asks_again_at_the_same_offset() -> None:
    c = core()
    c.offer(offer_args(KEY, "1.2.0", FILES))
    c.begun()
    assert json.loads(c.next_frame() or "")["state"] == "downloading"
    first = json.loads(c.next_frame() or "")
    assert first == {"t": "ota_get", "release": "esp32-1.2.0", "file": "app.mpy", "off": 0, "len": 2048}
    assert c.next_frame() is None  # one outstanding
    assert c.on_chunk(chunk_for(first, FILES)) is not None
    second = json.loads(c.next_frame() or "")
    assert second["off"] == 2048
    c.connection_lost()
    c.online()
    again = json.loads(c.next_frame() or "")
    assert again == {"t": "ota", "release": "esp32-1.2.0", "state": "downloading", "done": 2048, "total": 5220}
    assert json.loads(c.next_frame() or "") == second
    assert c.on_chunk(chunk_for(first, FILES)) is None  # a late answer to an old request: ignored
    assert c.stage == ota.S_DOWNLOADING


def test_a_corrupted_chunk_fails_the_file_bad_hash() -> None:
    c = core()
    c.offer(offer_args(KEY, "1.2.0", FILES))
    c.begun()
    sent = run_download(c, FILES, {}, corrupt=1)
    assert sent[-1] == {"t": "ota", "release": "esp32-1.2.0", "state": "failed", "reason": "bad_hash"}
    assert c.stage == ota.S_FAILED and not c.busy()


@pytest.mark.parametrize("change", [{"size": 1}, {"data": "!!!"}, {"data": ""}])
def test_a_chunk_that_contradicts_the_manifest_fails_bad_hash(change: dict[str, Any]) -> None:
    c = core()
    c.offer(offer_args(KEY, "1.2.0", FILES))
    c.begun()
    c.next_frame()
    request = json.loads(c.next_frame() or "")
    assert c.on_chunk({**chunk_for(request, FILES), **change}) is None
    assert (c.stage, c.reason) == ("failed", "bad_hash")


def test_a_withdrawn_release_aborts_the_download() -> None:
    c = core()
    c.offer(offer_args(KEY, "1.2.0", FILES))
    c.begun()
    c.next_frame()
    assert not c.refused("ota_unknown")  # no request outstanding yet
    c.next_frame()
    assert not c.refused("rate_limited")  # about something else
    assert c.refused("ota_unknown")
    assert json.loads(c.next_frame() or "") == {"t": "ota", "release": "esp32-1.2.0", "state": "failed",
                                                "reason": "aborted"}


def test_after_a_power_cut_the_download_resumes_from_what_storage_holds() -> None:
    c = core(chunk=1000)
    c.offer(offer_args(KEY, "1.2.0", FILES))
    snapshot = c.state()
    c.begun()
    written: dict[str, bytearray] = {}
    c.next_frame()
    for _ in range(3):
        got = c.on_chunk(chunk_for(json.loads(c.next_frame() or ""), FILES))
        assert got is not None
        written.setdefault(got[0], bytearray()).extend(got[2])
    # power cut: a new core from the snapshot, fed what the slot holds
    again = core(chunk=1000)
    assert again.restore(json.loads(json.dumps(snapshot)))
    assert again.position() == ("app.mpy", 0)
    assert again.absorb(bytes(written["app.mpy"])) == 3000
    assert again.position() == ("app.mpy", 3000)
    again.begun()
    sent = run_download(again, FILES, written)
    assert next(m for m in sent if m["t"] == "ota_get")["off"] == 3000
    assert again.stage == ota.S_VERIFYING
    assert bytes(written["app.mpy"]) == FILES["app.mpy"]


def test_restore_refuses_what_is_not_a_signed_snapshot() -> None:
    c = core()
    c.offer(offer_args(KEY, "1.2.0", FILES))
    snapshot = c.state()
    assert snapshot is not None
    bad: object
    for bad in (None, [], {**snapshot, "v": 2}, {**snapshot, "sig": OTHER.sign(snapshot["manifest"])},
                {**snapshot, "manifest": snapshot["manifest"] + " "}):
        fresh = core()
        assert not fresh.restore(bad) and fresh.stage is None
    assert not core(pubkey=None).restore(snapshot)


def test_a_restored_file_that_does_not_match_fails() -> None:
    c = core()
    c.offer(offer_args(KEY, "1.2.0", FILES))
    again = core()
    assert again.restore(c.state())
    again.absorb(b"\0" * len(FILES["app.mpy"]))
    assert (again.stage, again.reason) == ("failed", "bad_hash")


# ---------------------------------------------------------------- in DeviceSession


def test_the_session_routes_the_offer_the_chunks_and_the_frames() -> None:
    c = core()
    session = DeviceSession("D-1", token="ewt_" + "t" * 32, ota=c, handlers={"ping": lambda a: (True, "pong", None)})
    assert session.ota_frame() is None  # offline
    session.handle(json.dumps({"t": "welcome", "last_seq": 0}))
    cmd = {"t": "cmd", "id": "c-1", "name": "ota", "args": offer_args(KEY, "1.2.0", FILES)}
    d = session.handle(json.dumps(cmd))
    assert d.kind == D_COMMAND and d.ok and d.name == "ota"
    assert json.loads(d.reply or "") == {"t": "result", "id": "c-1", "ok": True, "msg": "downloading esp32-1.2.0"}
    c.begun()
    assert json.loads(session.ota_frame() or "")["state"] == "downloading"
    request = json.loads(session.ota_frame() or "")
    d = session.handle(json.dumps(chunk_for(request, FILES)))
    assert (d.kind, d.name, d.seq, d.data) == (D_OTA_CHUNK, "app.mpy", 0, FILES["app.mpy"][:2048])
    session.ota_frame()
    d = session.handle(json.dumps({"t": "error", "code": "ota_unknown", "msg": "no such release"}))
    assert d.kind == D_NOTE and c.stage == "failed" and c.reason == "aborted"
    d = session.handle(json.dumps(chunk_for(request, FILES)))
    assert d.kind == D_NOTE
    bad = session.handle(json.dumps({"t": "cmd", "id": "c-2", "name": "ota", "args": {"manifest": "x", "sig": "A"}}))
    assert not bad.ok and "sig must be 128" in bad.message


def test_without_a_core_the_ota_command_is_not_supported() -> None:
    session = DeviceSession("D-1", token="ewt_" + "t" * 32)
    session.handle(json.dumps({"t": "welcome", "last_seq": 0}))
    d = session.handle(json.dumps({"t": "cmd", "id": "c-1", "name": "ota", "args": offer_args(KEY, "1", FILES)}))
    assert not d.ok and "not supported" in d.message
    assert session.handle(json.dumps({"t": "ota_chunk", "release": "x"})).kind == D_NOTE
    assert session.ota_frame() is None


def test_the_ota_command_row_checks_the_argument_limits() -> None:
    args = offer_args(KEY, "1.2.0", FILES)
    assert wire.parse_command("ota", args) == args
    for bad in ({**args, "sig": args["sig"].upper()}, {**args, "manifest": "x" * 12001}, {"sig": args["sig"]},
                {**args, "manifest": 5}):
        with pytest.raises(wire.ProtocolError):
            wire.parse_command("ota", bad)
