"""The phone page (``/phone``): a phone or a browser as a device, running protocol/device.py itself.

The page loads MicroPython's WebAssembly port (vendored under gateway/dashboard/phone/vendor/, from
npm ``@micropython/micropython-webassembly-pyscript``, the build tests/firmware/node runs the
firmware's logic on) and the protocol package's own source files, served here from ``protocol/``
as they are: the device core is implemented once, for the ESP32, the Pi agent's tests and this
page alike. docs/dashboard.md ("A phone as a device") describes the page.

Served paths: ``/phone`` (the page), ``/phone/<file>`` for every file of gateway/dashboard/phone/
(its script, style, driver ``phone.py`` and the vendored port) and ``/phone/protocol/<file>.py``
for the core's modules. Compiling WebAssembly needs ``'wasm-unsafe-eval'`` in the page's
Content-Security-Policy: it is granted on these paths only; the dashboard keeps its stricter one.
Bodies are read once at start and also kept gzip-compressed (the port is most of the page's bytes);
each has an ETag, so a phone opening the page again revalidates (304) instead of downloading it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

import protocol
from gateway.dashboard.http import CONTENT_TYPES, SECURITY_HEADERS

PHONE_DIR = Path(__file__).parent / "phone"
PROTOCOL_DIR = Path(protocol.__file__).parent  # the package itself, wherever it is installed
# The core's modules the page imports (protocol/cbor.py is left out: the page speaks JSON); the page
# reads their list from /phone/files.json.
PROTOCOL_FILES = (*protocol.DEVICE_CORE, "outbox.py")
PHONE_TYPES = {**CONTENT_TYPES, ".mjs": "text/javascript; charset=utf-8", ".wasm": "application/wasm",
               ".py": "text/x-python; charset=utf-8"}
PHONE_CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'; img-src 'self'; "
             "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
PHONE_HEADERS = {**SECURITY_HEADERS, "Content-Security-Policy": PHONE_CSP}
MIN_GZIP = 512  # smaller bodies go as they are


class PhoneFile:
    """One servable file: its body, content type and gzip-compressed body (None: not worth it)."""

    __slots__ = ("body", "ctype", "etag", "gzipped")

    def __init__(self, body: bytes, ctype: str) -> None:
        self.body = body
        self.ctype = ctype
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'  # a phone revalidates, not downloads again
        packed = gzip.compress(body, 9, mtime=0) if len(body) >= MIN_GZIP else None
        self.gzipped = packed if packed is not None and len(packed) < len(body) else None


def load_phone(root: Path = PHONE_DIR, protocol: Path = PROTOCOL_DIR) -> dict[str, PhoneFile]:
    """URL path -> PhoneFile for the page (``/phone`` is index.html) and the core's modules."""
    files: dict[str, PhoneFile] = {}
    for file in sorted(root.rglob("*")):
        ctype = PHONE_TYPES.get(file.suffix)
        if not file.is_file() or ctype is None:
            continue
        files["/phone/" + file.relative_to(root).as_posix()] = PhoneFile(file.read_bytes(), ctype)
    for name in PROTOCOL_FILES:
        files["/phone/protocol/" + name] = PhoneFile((protocol / name).read_bytes(), PHONE_TYPES[".py"])
    files["/phone"] = files.pop("/phone/index.html")
    listing = ["protocol/" + name for name in PROTOCOL_FILES] + ["phone.py"]
    files["/phone/files.json"] = PhoneFile(json.dumps(listing).encode(), "application/json")
    return files


def accepts_gzip(headers: Headers) -> bool:
    for value in headers.get_all("Accept-Encoding"):
        for part in value.split(","):
            coding, _, params = part.strip().partition(";")
            if coding.strip().lower() == "gzip" and params.replace(" ", "") not in ("q=0", "q=0.0"):
                return True
    return False


def phone_response(file: PhoneFile, request: Request) -> Response:
    """The file, gzip-compressed when the client takes it; 304 when its ETag is the client's."""
    body = file.body
    headers = Headers({"Content-Type": file.ctype, "Cache-Control": "no-cache", "Vary": "Accept-Encoding",
                       "ETag": file.etag, **PHONE_HEADERS})
    tags = ",".join(request.headers.get_all("If-None-Match"))
    if file.etag in (tag.strip().removeprefix("W/") for tag in tags.split(",")):
        return Response(304, "Not Modified", headers, b"")
    if file.gzipped is not None and accepts_gzip(request.headers):
        body = file.gzipped
        headers["Content-Encoding"] = "gzip"
    headers["Content-Length"] = str(len(body))
    return Response(200, "OK", headers, body)
