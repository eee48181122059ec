"""A server's whole process tree under measurement: CPU and memory of the PID the bench started
and of all its descendants, each named by its role.

A multi-process gateway (a supervising parent, worker processes, a commit process) spends its
CPU in several processes, and a supervisor may restart a child mid-step. ``TreeMeter`` therefore
re-scans ``/proc`` in a background thread (every ``interval`` seconds) and keeps, per process
(pid and start time, so a reused pid is another process), the last CPU reading it saw: a child
that exits between two snapshots still counts with what it used up to its last scan (at most one
interval of its CPU is missed), and a child started after a snapshot counts from zero.

``descendants``, ``role_of`` and ``label_roles`` are pure, so tests check them on made-up tables.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.proc import cpu_seconds_from_stat, parse_status_memory

__all__ = ["ProcInfo", "TreeMeter", "TreeSnapshot", "descendants", "label_roles", "read_proc", "role_of",
           "sample_tree"]

Key = tuple[int, int]  # (pid, start time in clock ticks since boot): one process, even if its pid is reused
ROOT_ROLE = "parent"
_WORKER_N = re.compile(r"\bworker[\s=_:#-]*(\d+)")
_WORKER = re.compile(r"\bworker\b")
_COMMIT = re.compile(r"\bcommit(ter)?\b")


@dataclass(frozen=True)
class ProcInfo:
    """One process at one scan: its parent, CPU seconds (utime+stime, all threads), memory (KiB)."""

    pid: int
    ppid: int
    start: int  # start time, clock ticks after boot (/proc/PID/stat field 22)
    cpu_s: float
    rss_kib: int = 0
    hwm_kib: int = 0
    cmdline: tuple[str, ...] = ()

    @property
    def key(self) -> Key:
        return self.pid, self.start


def parse_stat_identity(text: str) -> tuple[int, int]:
    """(ppid, start time in ticks) from a /proc/PID/stat line (fields 4 and 22, counted after the last ')')."""
    rest = text[text.rindex(")") + 2:].split()
    return int(rest[1]), int(rest[19])


def descendants(root: int, parents: Mapping[int, int]) -> list[int]:
    """``root`` and every process below it, from a {pid: ppid} table (root first, then breadth-first)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out = [root]
    seen = {root}
    index = 0
    while index < len(out):
        for child in sorted(children.get(out[index], ())):
            if child not in seen:  # a table read while pids change could hold a cycle: never loop
                seen.add(child)
                out.append(child)
        index += 1
    return out


def role_of(cmdline: Sequence[str]) -> str | None:
    """A child's role from its command line (or process title): "worker N", "worker", "commit", the
    multiprocessing helpers; None when nothing in it says (``label_roles`` numbers those). Options
    (words starting with "-", such as the parent's own ``--workers``) are not read."""
    text = " ".join(arg for arg in cmdline if not arg.startswith("-")).lower()
    if "resource_tracker" in text:
        return "resource tracker"
    if "forkserver" in text:
        return "forkserver"
    numbered = _WORKER_N.search(text)
    if numbered:
        return f"worker {int(numbered.group(1))}"
    if _COMMIT.search(text):
        return "commit"
    if _WORKER.search(text):
        return "worker"
    return None


def label_roles(root: Key, procs: Mapping[Key, tuple[str, ...]]) -> dict[Key, str]:
    """Roles for every process {key: cmdline}: the root is the parent; a child named by its command
    line gets that role; a worker whose command line has no number (``python -m gateway.worker``)
    is numbered in the order the workers started ("worker 1", "worker 2": a restarted one takes the
    next number); the others are "child 1", "child 2"... in start order. Two children with the same
    role (a restarted "worker 2" that says its number) are told apart by a "#2", "#3" suffix."""
    roles: dict[Key, str] = {}
    counters: dict[str, int] = {}
    used: dict[str, int] = {}
    for key in sorted(procs, key=lambda k: (k != root, k[1], k[0])):
        if key == root:
            role = ROOT_ROLE
        else:
            named = role_of(procs[key])
            if named is None or named == "worker":
                base = "child" if named is None else "worker"
                counters[base] = counters.get(base, 0) + 1
                named = f"{base} {counters[base]}"
            role = named
        used[role] = used.get(role, 0) + 1
        roles[key] = role if used[role] == 1 else f"{role} #{used[role]}"
    return roles


def read_proc(pid: int, proc_dir: str = "/proc", memory: bool = True) -> ProcInfo | None:
    """One process from /proc, or None when it is gone (or not readable)."""
    try:
        with open(f"{proc_dir}/{pid}/stat") as handle:
            stat = handle.read()
        ppid, start = parse_stat_identity(stat)
        cpu = cpu_seconds_from_stat(stat)
        mem = {"rss": 0, "hwm": 0}
        if memory:
            with open(f"{proc_dir}/{pid}/status") as handle:
                mem = parse_status_memory(handle.read())
        with open(f"{proc_dir}/{pid}/cmdline", "rb") as handle:
            argv = tuple(part.decode("utf-8", "replace") for part in handle.read().split(b"\0") if part)
    except (OSError, ValueError, IndexError):
        return None
    return ProcInfo(pid, ppid, start, cpu, mem["rss"], mem["hwm"], argv)


def _parents(proc_dir: str) -> dict[int, int]:
    """{pid: ppid} of every process on the machine (threads are not listed in /proc)."""
    table: dict[int, int] = {}
    try:
        names = os.listdir(proc_dir)
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"{proc_dir}/{name}/stat") as handle:
                table[int(name)] = parse_stat_identity(handle.read())[0]
        except (OSError, ValueError, IndexError):
            continue  # exited while we listed
    return table


@dataclass
class TreeSnapshot:
    """The tree at one instant: cumulative CPU of every process seen so far (exited ones frozen at
    their last reading) and the processes alive at this scan."""

    at: float  # time.monotonic()
    cpu: dict[Key, float]
    live: dict[Key, ProcInfo]
    roles: dict[Key, str]

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu.values())

    @property
    def rss_kib(self) -> int:
        """Summed VmRSS of the live processes (pages shared between them count once per process)."""
        return sum(p.rss_kib for p in self.live.values())

    @property
    def hwm_kib(self) -> int:
        """Summed VmHWM (each process's own peak) of the live processes: an upper bound of the tree's peak."""
        return sum(p.hwm_kib for p in self.live.values())

    @property
    def processes(self) -> int:
        return len(self.live)

    def cpu_since(self, earlier: TreeSnapshot) -> float:
        """CPU seconds the tree used between ``earlier`` and this snapshot."""
        return sum(value - earlier.cpu.get(key, 0.0) for key, value in self.cpu.items())

    def per_process(self, earlier: TreeSnapshot, seconds: float) -> list[dict[str, Any]]:
        """Per process, CPU seconds since ``earlier`` and % of one core over ``seconds``; RSS now."""
        rows = []
        for key, value in self.cpu.items():
            used = value - earlier.cpu.get(key, 0.0)
            info = self.live.get(key)
            rows.append({"pid": key[0], "role": self.roles.get(key, "?"), "cpu_s": round(used, 3),
                         "cpu_pct": round(100 * used / seconds, 1) if seconds > 0 else None,
                         "rss_kib": info.rss_kib if info else None, "alive": info is not None,
                         "started_in_window": key not in earlier.cpu})
        rows.sort(key=lambda r: (r["role"] != ROOT_ROLE, r["role"], r["pid"]))
        return rows


class TreeMeter:
    """Scans the tree of ``root`` now and then (background thread) and on demand (``snapshot``)."""

    def __init__(self, root: int, interval: float = 0.5, proc_dir: str = "/proc") -> None:
        self.root = root
        self.interval = interval
        self.proc_dir = proc_dir
        self._lock = threading.Lock()
        self._cpu: dict[Key, float] = {}
        self._cmd: dict[Key, tuple[str, ...]] = {}
        self._root_key: Key | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> TreeMeter:
        self.snapshot()
        self._thread = threading.Thread(target=self._run, name=f"tree-meter-{self.root}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def __enter__(self) -> TreeMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._scan(memory=False)

    def _scan(self, memory: bool) -> dict[Key, ProcInfo]:
        live: dict[Key, ProcInfo] = {}
        for pid in descendants(self.root, _parents(self.proc_dir)):
            info = read_proc(pid, self.proc_dir, memory)
            if info is None:
                continue
            if pid != self.root and info.ppid not in {p.pid for p in live.values()}:
                continue  # reparented between the two reads: no longer ours
            live[info.key] = info
        with self._lock:
            for key, info in live.items():
                self._cpu[key] = max(info.cpu_s, self._cpu.get(key, 0.0))
                self._cmd.setdefault(key, info.cmdline)
                if info.pid == self.root:
                    self._root_key = key
        return live

    def snapshot(self) -> TreeSnapshot:
        """Scan now (with memory) and return the cumulative view."""
        live = self._scan(memory=True)
        with self._lock:
            root = self._root_key or (self.root, 0)
            roles = label_roles(root, self._cmd)
            return TreeSnapshot(time.monotonic(), dict(self._cpu), live, roles)


def sample_tree(root: int) -> TreeSnapshot:
    """One scan of ``root``'s tree, without a background thread: for windows in which no process of
    the tree exits (a child that exits between two such samples takes its CPU with it)."""
    return TreeMeter(root).snapshot()
