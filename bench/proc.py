"""What the bench reads of processes and of the host: CPU seconds and memory from /proc, the
open-file limit, the ephemeral port range.

The parsers take the file's text, so tests check them without a live process.
"""

from __future__ import annotations

import math
import os
import resource

from services.process import raise_nofile_limit

__all__ = ["PORT_RANGE", "cpu_seconds_from_stat", "ensure_nofile", "parse_status_memory", "port_range",
           "process_cpu_seconds", "raise_nofile_limit", "rss_kib", "sources_needed"]

PORT_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
PORT_SHARE = 0.8  # of the ephemeral range one source address may use towards one server port


def ensure_nofile(need: int) -> int:
    """Open-file limit of at least ``need`` for this process and every process it starts (they
    inherit it): the soft limit goes to the hard one, and the hard one up to ``need`` when this
    process may (root or CAP_SYS_RESOURCE; never above fs.nr_open). Returns the soft limit now;
    below ``need`` when it could not be raised."""
    soft = raise_nofile_limit()
    if soft >= need:
        return soft
    with open("/proc/sys/fs/nr_open") as handle:
        ceiling = int(handle.read())
    target = min(need, ceiling)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
    except (ValueError, OSError):
        return soft
    return target


def port_range(text: str) -> tuple[int, int]:
    """(low, high) from the text of /proc/sys/net/ipv4/ip_local_port_range."""
    low, high = (int(v) for v in text.split()[:2])
    if not 0 < low <= high <= 65535:
        raise ValueError(f"ip_local_port_range {text.strip()!r} is not a port range")
    return low, high


def sources_needed(connections: int, ports: tuple[int, int]) -> int:
    """Source addresses (127.0.0.1, .2, ...) for ``connections`` to one server port: each address
    takes at most ``PORT_SHARE`` of the ephemeral range (a source port is unique per 4-tuple)."""
    per_source = max(1, int((ports[1] - ports[0] + 1) * PORT_SHARE))
    return max(1, math.ceil(connections / per_source))


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
