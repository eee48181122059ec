"""make flash's firmware download: verified by SHA-256, cached, and refused when it does not match."""

from __future__ import annotations

import functools
import hashlib
import http.server
import importlib.util
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("edgewire_flash", ROOT / "firmware" / "flash.py")
assert _spec is not None and _spec.loader is not None
flash = importlib.util.module_from_spec(_spec)
sys.modules["edgewire_flash"] = flash  # dataclasses resolve annotations through sys.modules
_spec.loader.exec_module(flash)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A loopback HTTP server serving a generated ESP32 image; yields (url, image, request log)."""
    served = tmp_path / "mirror"
    served.mkdir()
    image = served / "ESP32_TEST.bin"
    subprocess.run([sys.executable, str(ROOT / "firmware" / "tools" / "make_test_image.py"), str(image)], check=True)
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt: str, *args: object) -> None:
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ESP32_TEST.bin", image, requests
    finally:
        server.shutdown()
        server.server_close()


def settings(tmp_path: Path, url: str, sha: str) -> flash.Settings:
    return flash.load_settings({
        "PORT": "socket://127.0.0.1:9", "DEVICE_ID": "DL-1", "WIFI_SSID": "lab", "WIFI_PASSWORD": "",
        "GATEWAY_URL": "ws://127.0.0.1:9/v1/device", "TOKEN": "ewt_" + "a" * 32,
        "MICROPYTHON_URL": url, "MICROPYTHON_SHA256": sha, "EDGEWIRE_CACHE": str(tmp_path / "cache")})


def test_download_is_verified_and_cached(tmp_path: Path, mirror: tuple[str, Path, list[str]]) -> None:
    url, image, requests = mirror
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    path, data = flash.resolve_firmware(settings(tmp_path, url, sha))
    assert data == image.read_bytes() and path.parent == tmp_path / "cache"
    again, _ = flash.resolve_firmware(settings(tmp_path, url, sha))
    assert again == path and requests == ["/ESP32_TEST.bin"]  # the second call used the cache


def test_mismatching_download_is_refused_and_not_cached(tmp_path: Path, mirror: tuple[str, Path, list[str]]) -> None:
    url, _, _ = mirror
    with pytest.raises(flash.FirmwareError, match="refusing it"):
        flash.resolve_firmware(settings(tmp_path, url, "0" * 64))
    assert not any((tmp_path / "cache").iterdir())


def test_corrupted_cache_is_replaced(tmp_path: Path, mirror: tuple[str, Path, list[str]]) -> None:
    url, image, requests = mirror
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "ESP32_TEST.bin").write_bytes(b"\xe9truncated")
    _, data = flash.resolve_firmware(settings(tmp_path, url, sha))
    assert data == image.read_bytes() and len(requests) == 1
