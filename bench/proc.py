"""What the bench reads of processes: CPU seconds and memory from /proc, the open-file limit.

The parsers take the file's text, so tests check them without a live process.
"""

from __future__ import annotations

import os

from services.process import raise_nofile_limit

__all__ = ["cpu_seconds_from_stat", "parse_status_memory", "process_cpu_seconds", "raise_nofile_limit",
           "rss_kib"]


def cpu_seconds_from_stat(text: str) -> float:
    """Parse utime+stime (fields 14 and 15) from a /proc/PID/stat line.

    The command name (field 2) is in parentheses and may contain spaces or ')', so
    fields are counted from the LAST ')'.
    """
    rest = text[text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); utime is field 14 -> rest[11], stime field 15 -> rest[12]
    ticks = int(rest[11]) + int(rest[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of a process (all its threads) from /proc/PID/stat, in seconds."""
    with open(f"/proc/{pid}/stat") as handle:
        return cpu_seconds_from_stat(handle.read())


def parse_status_memory(text: str) -> dict[str, int]:
    """{"rss": VmRSS, "hwm": VmHWM} in KiB from /proc/PID/status text (0 when absent)."""
    out = {"rss": 0, "hwm": 0}
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            out["rss"] = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            out["hwm"] = int(line.split()[1])
    return out


def rss_kib(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process in KiB from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as handle:
        return parse_status_memory(handle.read())
