"""Metrics maths for the benchmark: percentiles, /proc sampling, derived per-step figures.

Pure functions (no I/O) except ``ProcSample.take``, so tests can check the maths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.proc import cpu_seconds_from_stat, parse_status_memory

__all__ = ["HostSample", "ProcSample", "cpu_per_1000", "cpu_seconds_from_stat", "latency_summary",
           "machine_share_pct", "parse_proc_stat_cpu", "parse_status_memory", "percentile", "ratio",
           "rss_per_connection_kib"]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks; None if empty.

    Same definition as numpy's default ("linear"): rank = q/100 * (n-1).
    """
    if not 0 <= q <= 100:
        raise ValueError("percentile q must be within 0..100")
    n = len(values)
    if n == 0:
        return None
    data = sorted(values)
    rank = q / 100.0 * (n - 1)
    low = math.floor(rank)
    high = min(low + 1, n - 1)
    frac = rank - low
    return data[low] + (data[high] - data[low]) * frac


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | int | None]:
    """count, p50, p99, max, mean in ms (rounded to 0.1 ms); None values when there are no samples."""
    n = len(latencies_ms)
    if not n:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    data = sorted(latencies_ms)

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 1)

    return {"count": n, "p50_ms": r(percentile(data, 50)), "p99_ms": r(percentile(data, 99)),
            "max_ms": r(data[-1]), "mean_ms": r(sum(data) / n)}


@dataclass
class ProcSample:
    """CPU seconds (utime+stime, all threads) and memory (KiB) of one process at one instant."""

    cpu_s: float
    rss_kib: int
    hwm_kib: int

    @classmethod
    def take(cls, pid: int) -> ProcSample:
        with open(f"/proc/{pid}/stat") as handle:
            cpu = cpu_seconds_from_stat(handle.read())
        with open(f"/proc/{pid}/status") as handle:
            mem = parse_status_memory(handle.read())
        return cls(cpu, mem["rss"], mem["hwm"])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_per_1000(cpu_s: float, messages: int) -> float | None:
    """CPU seconds per 1,000 messages; None when nothing was processed."""
    if messages <= 0:
        return None
    return cpu_s / messages * 1000.0


def machine_share_pct(cpu_s: float, wall_s: float, cpus: int) -> float | None:
    """CPU seconds as % of the whole machine over ``wall_s``: cpu_s / (wall_s * cpus) * 100."""
    if wall_s <= 0 or cpus <= 0:
        return None
    return 100.0 * cpu_s / (wall_s * cpus)


def rss_per_connection_kib(rss_loaded_kib: int, rss_idle_kib: int, connections: int) -> float | None:
    """(RSS with the connections held - RSS before they opened) / connections, in KiB."""
    if connections <= 0:
        return None
    return (rss_loaded_kib - rss_idle_kib) / connections


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def parse_proc_stat_cpu(text: str) -> tuple[float, float]:
    """(busy ticks, total ticks) over all CPUs from /proc/stat's first ``cpu`` line.

    Idle = idle + iowait; busy = everything else (user, nice, system, irq, softirq, steal).
    """
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [float(v) for v in line.split()[1:]]
            # guest and guest_nice (fields 9, 10) are already counted in user and nice
            values = values[:8]
            idle = values[3] + (values[4] if len(values) > 4 else 0.0)
            total = sum(values)
            return total - idle, total
    raise ValueError("no aggregate 'cpu' line in /proc/stat text")


@dataclass
class HostSample:
    """Machine-wide CPU ticks at one instant (all cores), to see how busy the host was."""

    busy: float
    total: float

    @classmethod
    def take(cls) -> HostSample:
        with open("/proc/stat") as handle:
            busy, total = parse_proc_stat_cpu(handle.read())
        return cls(busy, total)

    def busy_cores(self, later: HostSample, cpus: int) -> float | None:
        """Average number of busy cores between this sample and ``later``."""
        total = later.total - self.total
        if total <= 0:
            return None
        return (later.busy - self.busy) / total * cpus
