"""The phone page's static side: the device core is protocol/ as it is (no copy), the vendored
MicroPython port matches its pinned hashes, 'wasm-unsafe-eval' is granted on /phone only."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import subprocess
from pathlib import Path

from websockets.datastructures import Headers
from websockets.http11 import Request

from gateway.dashboard import http as dashboard_http
from gateway.dashboard.phone_page import PHONE_DIR, PROTOCOL_FILES, accepts_gzip, load_phone, phone_response

ROOT = Path(__file__).resolve().parents[3]
VENDOR = PHONE_DIR / "vendor"


def request(path: str, accept: str | None = None) -> Request:
    headers = Headers({"Host": "127.0.0.1"})
    if accept is not None:
        headers["Accept-Encoding"] = accept
    return Request(path, headers)


def test_vendored_micropython_matches_sha256sums_and_the_tests_npm_pin() -> None:
    lines = (VENDOR / "SHA256SUMS").read_text().splitlines()
    assert {line.split()[1] for line in lines} == {"micropython.mjs", "micropython.wasm"}
    for line in lines:
        digest, name = line.split()
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    assert "MIT" in (VENDOR / "micropython.LICENSE").read_text()
    package, version, integrity = (VENDOR / "VERSION").read_text().split()
    lock = json.loads((ROOT / "tests" / "firmware" / "node" / "package-lock.json").read_text())
    pinned = lock["packages"][f"node_modules/{package}"]
    assert (pinned["version"], pinned["integrity"]) == (version, integrity)  # the build the firmware tests run
    check = subprocess.run([str(ROOT / "scripts" / "vendor-micropython"), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_the_core_is_served_from_protocol_as_it_is() -> None:
    files = load_phone()
    for name in PROTOCOL_FILES:
        assert files[f"/phone/protocol/{name}"].body == (ROOT / "protocol" / name).read_bytes(), name
    listing = json.loads(files["/phone/files.json"].body)  # the page writes every one into MicroPython's FS
    assert listing == [f"protocol/{name}" for name in PROTOCOL_FILES] + ["phone.py"]
    for name in ("device.py", "decisions.py", "device_frames.py", "wire.py", "outbox.py"):  # what device.py imports
        assert name in PROTOCOL_FILES, name
    assert not re.search(r"class DeviceSession|def handle\(", files["/phone/phone.py"].body.decode())


def test_page_references_resolve_and_nothing_leaves_the_origin() -> None:
    files = load_phone()
    html = files["/phone"].body.decode()
    refs = re.findall(r'(?:src|href)="([^"#]+)"', html)
    assert "/phone/phone.js" in refs
    static = dashboard_http.load_static()
    for ref in refs:
        assert ref in files or ref in static, ref
    assert "/phone/vendor/micropython.wasm" in files and "/phone/phone.py" in files
    assert "/phone/vendor/SHA256SUMS" not in files and "/phone/index.html" not in files
    for path, file in files.items():
        if path.endswith((".js", ".py", "/phone")) and "vendor" not in path and "protocol" not in path:
            text = file.body.decode()
            assert "http://" not in text and "https://" not in text, path


def test_wasm_unsafe_eval_only_on_the_phone_page() -> None:
    files = load_phone()
    for path in ("/phone", "/phone/phone.js", "/phone/vendor/micropython.wasm"):
        response = phone_response(files[path], request(path))
        csp = response.headers["Content-Security-Policy"]
        assert "'wasm-unsafe-eval'" in csp and "'unsafe-eval'" not in csp.replace("'wasm-unsafe-eval'", "")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    assert phone_response(files["/phone/vendor/micropython.wasm"],
                          request("/")).headers["Content-Type"] == "application/wasm"
    body, ctype = dashboard_http.load_static()["/"]
    assert "wasm-unsafe-eval" not in dashboard_http.static_response(body, ctype).headers["Content-Security-Policy"]


def test_gzip_only_when_the_client_accepts_it() -> None:
    wasm = load_phone()["/phone/vendor/micropython.wasm"]
    plain = phone_response(wasm, request("/phone/vendor/micropython.wasm"))
    assert "Content-Encoding" not in plain.headers and plain.body == wasm.body
    packed = phone_response(wasm, request("/phone/vendor/micropython.wasm", "gzip, deflate, br"))
    assert packed.headers["Content-Encoding"] == "gzip"
    assert int(packed.headers["Content-Length"]) == len(packed.body) < len(wasm.body)
    assert gzip.decompress(packed.body) == wasm.body
    assert not accepts_gzip(Headers({"Accept-Encoding": "gzip;q=0, br"}))
    assert accepts_gzip(Headers({"Accept-Encoding": "GZIP;q=0.5"}))


def test_a_phone_that_holds_the_file_gets_304() -> None:
    page = load_phone()["/phone/vendor/micropython.wasm"]
    first = phone_response(page, request("/phone/vendor/micropython.wasm", "gzip"))
    etag = first.headers["ETag"]
    again = request("/phone/vendor/micropython.wasm", "gzip")
    again.headers["If-None-Match"] = f'W/"other", {etag}'
    answer = phone_response(page, again)
    assert answer.status_code == 304 and answer.body == b"" and answer.headers["ETag"] == etag
    stale = request("/phone/vendor/micropython.wasm")
    stale.headers["If-None-Match"] = '"0123"'
    assert phone_response(page, stale).status_code == 200
