"""The gateway's metrics and their Prometheus text output (/metrics, text format 0.0.4).

Counters and histograms are written by the gateway's rooms on their hot paths (plain integer
updates); gauges, process and build information are read when /metrics is scraped. Every
metric has HELP and TYPE lines; error codes the gateway knows are always present, at 0 until
they happen.
"""

from __future__ import annotations

import bisect
import os
import platform
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata

from protocol import wire

# Every error code the gateway can count: the protocol's and the gateway's own.
INTERNAL_ERROR = "internal_error"  # a bug ended a session or request (logged with its traceback)
GATEWAY_ERRORS = (INTERNAL_ERROR, "too_many_connections", "origin_not_allowed", "host_not_allowed")
KNOWN_ERRORS = tuple(sorted({value for name, value in vars(wire).items() if name.startswith("E_")}
                            | set(GATEWAY_ERRORS)))


@dataclass
class Counters:
    connections: int = 0
    auth_failures: int = 0
    frames: int = 0
    readings_stored: int = 0
    duplicates: int = 0
    bad_frames: int = 0
    throttled: int = 0
    storage_errors: int = 0
    replaced: int = 0
    gaps: int = 0
    by_error: dict[str, int] = field(default_factory=dict)


COUNTER_HELP = {
    "connections": "Device connections accepted on /v1/device.",
    "auth_failures": "Device credentials refused.",
    "frames": "Frames received from authenticated devices.",
    "readings_stored": "Readings durably stored and acknowledged.",
    "duplicates": "Data frames whose readings were all stored already (acknowledged again).",
    "bad_frames": "Device frames refused as invalid.",
    "throttled": "Device frames refused by the rate limit.",
    "storage_errors": "Device connections closed with 1013 because a store of their readings failed.",
    "replaced": "Device sessions replaced by a newer connection of the same device.",
    "gaps": "Readings devices never sent (their seq jumped).",
}


class Histogram:
    """A Prometheus histogram with fixed upper bounds (``le``, inclusive)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def observe_n(self, value: float, n: int) -> None:
        """``n`` observations of the same ``value``."""
        self.counts[bisect.bisect_left(self.bounds, value)] += n
        self.sum += value * n
        self.count += n

    def lines(self, name: str) -> list[str]:
        out = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {self.sum:.6f}")
        out.append(f"{name}_count {self.count}")
        return out


LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BOUNDS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)


def package_version(name: str = "edgewire") -> str:
    """The installed version of a package ("unknown" when it is not installed)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _build_labels(event_loop: str) -> str:
    return (f'version="{package_version()}",python="{platform.python_version()}",'
            f'websockets="{package_version("websockets")}",event_loop="{event_loop}"')


def _process_start_time() -> float:
    """Unix time the process started (/proc), or the time this module was imported."""
    try:
        with open("/proc/self/stat") as handle:
            start_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
        return boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def process_samples() -> list[tuple[str, str, str, float]]:
    """(name, type, help, value) of the standard process_* metrics, as far as this OS tells."""
    times = os.times()
    samples = [("process_cpu_seconds_total", "counter", "User and system CPU time spent, in seconds.",
                times.user + times.system)]
    try:
        with open("/proc/self/statm") as handle:
            size, resident = (int(x) for x in handle.read().split()[:2])
        page = os.sysconf("SC_PAGE_SIZE")
        samples += [("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", size * page),
                    ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", resident * page)]
        samples.append(("process_open_fds", "gauge", "Open file descriptors.", len(os.listdir("/proc/self/fd"))))
    except (OSError, ValueError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    samples.append(("process_max_fds", "gauge", "The open-files limit (soft).", soft))
    samples.append(("process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch.",
                    PROCESS_START))
    return samples


PROCESS_START = _process_start_time()


class Metrics:
    """What the gateway counts; ``render`` adds the gauges of the moment and the process's figures."""

    def __init__(self) -> None:
        self.counters = Counters()
        self.commit_latency = Histogram(LATENCY_BOUNDS)
        self.ack_latency = Histogram(LATENCY_BOUNDS)
        self.dashboard_latency = Histogram(LATENCY_BOUNDS)  # observed by the hub (gateway/dashboard/stream.py)
        self.frame_size = Histogram(SIZE_BOUNDS)
        self.listener_errors: dict[str, int] = {}  # commit listener -> batches it failed on (gateway/fanout.py)

    def count_error(self, code: str) -> None:
        by_error = self.counters.by_error
        by_error[code] = by_error.get(code, 0) + 1

    def render(self, gauges: Iterable[tuple[str, str, float]], counters: Iterable[tuple[str, str, float]],
               labelled: Iterable[tuple[str, str, str, dict[str, float]]], event_loop: str,
               extra: Iterable[str] = ()) -> bytes:
        """``gauges`` and ``counters``: (name, help, value); ``labelled`` counters: (name, help, label,
        {label value: count}). Names are given without the ``edgewire_`` prefix and ``_total``.
        ``extra``: complete lines (HELP, TYPE, samples) of a room's own metrics (the alert engine's)."""
        lines: list[str] = []

        def num(value: float) -> str:
            return str(value) if isinstance(value, int) else repr(float(value))

        def metric(name: str, kind: str, text: str, samples: list[str]) -> None:
            lines.extend((f"# HELP {name} {text}", f"# TYPE {name} {kind}", *samples))

        for name, text, value in gauges:
            metric(f"edgewire_{name}", "gauge", text, [f"edgewire_{name} {num(value)}"])
        c = self.counters
        for name, text in COUNTER_HELP.items():
            metric(f"edgewire_{name}_total", "counter", text, [f"edgewire_{name}_total {getattr(c, name)}"])
        for name, text, value in counters:
            metric(f"edgewire_{name}_total", "counter", text, [f"edgewire_{name}_total {num(value)}"])
        errors = dict.fromkeys(KNOWN_ERRORS, 0) | c.by_error
        metric("edgewire_errors_total", "counter", "Errors by code (error frames, refusals, closes).",
               [f'edgewire_errors_total{{code="{code}"}} {n}' for code, n in sorted(errors.items())])
        for name, text, label, values in labelled:
            metric(f"edgewire_{name}_total", "counter", text,
                   [f'edgewire_{name}_total{{{label}="{key}"}} {num(n)}' for key, n in sorted(values.items())])
        metric("edgewire_commit_listener_errors_total", "counter",
               "Committed batches a commit listener (gateway/fanout.py) raised on, by listener.",
               [f'edgewire_commit_listener_errors_total{{listener="{name}"}} {n}'
                for name, n in sorted(self.listener_errors.items())])
        metric("edgewire_commit_latency_seconds", "histogram",
               "Time for a batch of readings to be durably committed (the storage's store call).",
               self.commit_latency.lines("edgewire_commit_latency_seconds"))
        metric("edgewire_ack_latency_seconds", "histogram",
               "Time from receiving a data frame to sending its ack (stored and acknowledged).",
               self.ack_latency.lines("edgewire_ack_latency_seconds"))
        metric("edgewire_dashboard_latency_seconds", "histogram",
               "Time from receiving a reading to the dashboard update that carries it (readings stored while a "
               "dashboard or a peer sees this instance's changes).",
               self.dashboard_latency.lines("edgewire_dashboard_latency_seconds"))
        metric("edgewire_frame_size_bytes", "histogram", "Size of the frames received from devices.",
               self.frame_size.lines("edgewire_frame_size_bytes"))
        metric("edgewire_build_info", "gauge", "The gateway's version and runtime; the value is always 1.",
               [f"edgewire_build_info{{{_build_labels(event_loop)}}} 1"])
        for name, kind, text, value in process_samples():
            metric(name, kind, text, [f"{name} {num(value)}"])
        lines.extend(extra)
        return ("\n".join(lines) + "\n").encode()
