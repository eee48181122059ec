"""The process-tree accounting of bench/proctree.py: a server's CPU and memory are those of the PID
the bench started and of all its descendants, each named by its role, restarted children included.

The live tests run a small parent process that starts children on command; each child burns a
bounded amount of CPU, reports what it used (read from /proc, as the meter reads it) and stays
alive until told to stop. Nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.proc import ensure_nofile, port_range, sources_needed
from bench.proctree import TreeMeter, descendants, label_roles, role_of
from bench.servers import GatewayServer

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import os, sys
from bench.proc import process_cpu_seconds
x = 0
while process_cpu_seconds() < 0.2:  # bounded: 0.2 s of this process's own CPU
    for i in range(20000):
        x += i
print(os.getpid(), process_cpu_seconds(), flush=True)
sys.stdin.read()  # alive until the parent closes our stdin
"""

PARENT = """
import subprocess, sys
children = {}
for line in sys.stdin:
    cmd, _, name = line.strip().partition(" ")
    if cmd == "spawn":
        child = subprocess.Popen([sys.executable, "-c", sys.argv[1], name], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        children[name] = child
        print(child.stdout.readline().strip(), flush=True)
    elif cmd == "stop":
        child = children.pop(name)
        child.stdin.close()
        child.wait()
        print("stopped", flush=True)
for child in children.values():
    child.stdin.close()
    child.wait()
"""


class Parent:
    """The parent process under measurement, driven line by line."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-c", PARENT, CHILD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def spawn(self, name: str) -> tuple[int, float]:
        """Start a child named ``name`` in its command line; (its pid, the CPU seconds it reported)."""
        pid, cpu = self.ask(f"spawn {name}").split()
        return int(pid), float(cpu)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def parent() -> Iterator[Parent]:
    process = Parent()
    try:
        yield process
    finally:
        process.close()


@pytest.mark.timeout(120)
def test_the_tree_holds_the_parent_and_its_child_and_sums_their_cpu(parent: Parent) -> None:
    with TreeMeter(parent.proc.pid, interval=0.05) as meter:
        before = meter.snapshot()
        child_pid, child_cpu = parent.spawn("worker 1")
        after = meter.snapshot()
    pids = {key[0]: key for key in after.live}
    assert set(pids) == {parent.proc.pid, child_pid}  # not this test's process, not a sibling
    assert after.roles[pids[parent.proc.pid]] == "parent"
    assert after.roles[pids[child_pid]] == "worker 1"
    assert after.cpu_since(before) >= child_cpu  # the child started after `before`: all its CPU counts
    assert after.cpu_s >= child_cpu + after.cpu[pids[parent.proc.pid]]
    assert after.rss_kib > 0 and after.processes == 2
    rows = after.per_process(before, 1.0)
    assert [row["role"] for row in rows] == ["parent", "worker 1"]
    assert rows[1]["started_in_window"] and rows[1]["cpu_s"] >= round(child_cpu, 3) - 0.001


@pytest.mark.timeout(120)
def test_a_restarted_child_counts_with_the_one_it_replaced(parent: Parent) -> None:
    with TreeMeter(parent.proc.pid, interval=0.05) as meter:
        before = meter.snapshot()
        first_pid, first_cpu = parent.spawn("worker 1")
        meter.snapshot()  # the first child seen alive
        assert parent.ask("stop worker 1") == "stopped"
        second_pid, second_cpu = parent.spawn("worker 1")
        commit_pid, commit_cpu = parent.spawn("commit")
        after = meter.snapshot()
    assert after.cpu_since(before) >= first_cpu + second_cpu + commit_cpu
    rows = {row["pid"]: row for row in after.per_process(before, 1.0)}
    assert rows[first_pid]["alive"] is False and rows[first_pid]["cpu_s"] >= round(first_cpu, 3) - 0.001
    assert rows[second_pid]["alive"] is True and rows[second_pid]["role"] == "worker 1 #2"
    assert rows[commit_pid]["role"] == "commit"
    assert after.processes == 3 and len(after.cpu) == 4


def test_descendants_follow_the_ppid_table_only() -> None:
    table = {10: 1, 11: 10, 12: 10, 13: 11, 20: 1, 21: 20, 30: 31, 31: 30}  # 30 <-> 31: a cycle
    assert descendants(10, table) == [10, 11, 12, 13]
    assert descendants(30, table) == [30, 31]
    assert descendants(99, table) == [99]


def test_roles_come_from_the_command_line() -> None:
    assert role_of(["python", "-m", "gateway", "worker", "--index", "3"]) == "worker 3"
    assert role_of(["python", "-m", "gateway", "worker"]) == "worker"
    assert role_of(["edgewire: worker 2"]) == "worker 2"
    assert role_of(["python", "-m", "gateway", "serve", "--workers", "2"]) is None  # options are not roles
    assert role_of(["python", "-m", "gateway", "serve", "--commit-interval-ms", "5"]) is None
    assert role_of(["edgewire: commit"]) == "commit"
    assert role_of(["python", "-c", "from multiprocessing.resource_tracker import main;main(5)"]) == "resource tracker"
    assert role_of(["python", "-c", "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5)"]) is None
    root = (1, 100)
    roles = label_roles(root, {root: ("gateway",), (3, 300): ("spawn_main",), (2, 200): ("spawn_main",),
                               (4, 400): ("edgewire: worker 1",), (5, 500): ("edgewire: worker 1",)})
    assert roles == {root: "parent", (2, 200): "child 1", (3, 300): "child 2", (4, 400): "worker 1",
                     (5, 500): "worker 1 #2"}
    worker, committer = ("python", "-m", "gateway.worker"), ("python", "-m", "gateway.committer")
    roles = label_roles(root, {root: ("gateway",), (7, 700): worker, (6, 600): worker, (8, 800): committer,
                               (9, 900): worker})  # 9: a worker started after the others (a restart)
    assert roles == {root: "parent", (6, 600): "worker 1", (7, 700): "worker 2", (8, 800): "commit",
                     (9, 900): "worker 3"}


def test_ports_sources_and_open_files() -> None:
    assert port_range("32768\t60999\n") == (32768, 60999)
    with pytest.raises(ValueError):
        port_range("60999 32768")
    assert sources_needed(20_000, (32768, 60999)) == 1  # 28,232 ports: 20k fit one address
    assert sources_needed(30_000, (32768, 60999)) == 2
    assert sources_needed(20_000, (50000, 59999)) == 3  # 8,000 per address
    soft = ensure_nofile(64)
    assert soft >= 64


def test_gateway_workers_are_passed_only_when_given(tmp_path: Path) -> None:
    assert "--workers" not in GatewayServer(tmp_path).argv()
    argv = GatewayServer(tmp_path, workers=3).argv()
    assert argv[argv.index("--workers") + 1] == "3"
