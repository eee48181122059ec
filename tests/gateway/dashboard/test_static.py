"""The dashboard's static side: vendored uPlot matches its pinned hashes, the metric and command
tables are served from protocol.wire (no copy in the page), every page file is served."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

from gateway.dashboard import http as dashboard_http
from protocol import wire

ROOT = Path(__file__).resolve().parents[3]
STATIC = ROOT / "gateway" / "dashboard" / "static"


def test_vendored_uplot_matches_sha256sums() -> None:
    lines = (STATIC / "vendor" / "SHA256SUMS").read_text().splitlines()
    assert {line.split()[1] for line in lines} == {"uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE",
                                                   "qrcode.mjs", "qrcode.LICENSE"}
    for line in lines:
        digest, name = line.split()
        assert hashlib.sha256((STATIC / "vendor" / name).read_bytes()).hexdigest() == digest, name
    assert "MIT" in (STATIC / "vendor" / "uPlot.LICENSE").read_text()
    versions = {line.split()[0]: line.split() for line in (STATIC / "vendor" / "VERSION").read_text().splitlines()}
    script = (ROOT / "scripts" / "vendor-uplot").read_text()
    assert f"VERSION={versions['uplot'][1]}" in script and f'INTEGRITY="{versions["uplot"][2]}"' in script
    check = subprocess.run([str(ROOT / "scripts" / "vendor-uplot"), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_vendored_qr_libraries_match_their_pins() -> None:
    """The console's QR encoder (MIT) and the tests' independent decoder (jsQR, Apache-2.0)."""
    assert "MIT" in (STATIC / "vendor" / "qrcode.LICENSE").read_text()
    assert "Apache License" in (ROOT / "tests" / "browser" / "vendor" / "jsQR.LICENSE").read_text()
    script = (ROOT / "scripts" / "vendor-qr").read_text()
    versions = {line.split()[0]: line.split() for line in (STATIC / "vendor" / "VERSION").read_text().splitlines()}
    assert f"QR_VERSION={versions['qrcode-generator'][1]}" in script
    assert f'QR_INTEGRITY="{versions["qrcode-generator"][2]}"' in script
    jsqr = (ROOT / "tests" / "browser" / "vendor" / "VERSION").read_text().split()
    assert f"JSQR_VERSION={jsqr[1]}" in script and f'JSQR_INTEGRITY="{jsqr[2]}"' in script
    check = subprocess.run([str(ROOT / "scripts" / "vendor-qr"), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_every_page_file_is_served_and_nothing_from_elsewhere() -> None:
    files = dashboard_http.load_static()
    assert files["/"] == files["/index.html"]
    for path in ("/app.js", "/store.js", "/fleet.js", "/device.js", "/charts.js", "/alerts.js", "/util.js",
                 "/status.js", "/history.js", "/commands.js", "/console.js", "/rules.js", "/ota.js", "/style.css",
                 "/favicon.svg", "/vendor/qrcode.mjs",
                 "/vendor/uPlot.iife.min.js", "/vendor/uPlot.min.css"):
        assert path in files, path
    assert files["/app.js"][1].startswith("text/javascript")
    assert "/vendor/SHA256SUMS" not in files and "/vendor/VERSION" not in files
    html = files["/"][0].decode()
    for ref in re.findall(r'(?:src|href)="([^"#]+)"', html):
        assert ref.startswith("/") and ref in files, ref  # no CDN, no missing file
    for path, (body, _) in files.items():
        if path.endswith(".js") and "vendor" not in path:
            text = body.decode()
            for module in re.findall(r'from "\./([^"]+)"', text):
                assert f"/{module}" in files, (path, module)
            assert "http://" not in text and "https://" not in text, path


def test_meta_document_is_the_wire_tables() -> None:
    meta = dashboard_http.meta_document()
    assert set(meta["metrics"]) == set(wire.METRICS)
    assert meta["metrics"]["humidity"] == {"unit": "%", "low": 0.0, "high": 100.0, "device_class": "humidity",
                                           "label": "Humidity"}
    assert set(meta["commands"]) == set(wire.COMMANDS)
    assert meta["commands"]["set_output"]["args"] == [{"name": "output", "kind": "name", "required": True},
                                                      {"name": "on", "kind": "bool", "required": True}]
    page = "".join(body.decode() for path, (body, _) in dashboard_http.load_static().items()
                   if path.endswith(".js") and "vendor" not in path)
    for unit in ("hPa", "ppm", "dBm"):  # the page has no copy of the metric table
        assert not re.search(rf"\b{unit}\b", page), unit
    assert "°C" not in page and "Soil moisture" not in page
