"""Shared state of the simulated board: flash directory and the sim.json control file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FS_DIR = Path(os.environ.get("EW_SIM_FS", ".")).resolve()
CONTROL = FS_DIR / "sim.json"
RTC_MEMORY = FS_DIR / ".rtc_memory"

_cache: dict[str, Any] = {}
_mtime: float = -1.0


def control() -> dict[str, Any]:
    """The current sim.json (empty if absent or unreadable); cheap to call often."""
    global _mtime, _cache
    try:
        mtime = CONTROL.stat().st_mtime_ns / 1e9
    except OSError:
        return {}
    if mtime != _mtime:
        try:
            loaded = json.loads(CONTROL.read_text())
        except (OSError, ValueError):
            return _cache
        _cache = loaded if isinstance(loaded, dict) else {}
        _mtime = mtime
    return _cache


def setting(name: str, default: Any) -> Any:
    return control().get(name, default)
