"""Metrics maths of the benchmark: percentiles, /proc parsing, derived figures."""

from __future__ import annotations

import os
import random
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import metrics
from bench.run import ratios, table


def test_percentile_linear_interpolation_known_values() -> None:
    data = [1.0, 2.0, 3.0, 4.0]
    assert metrics.percentile(data, 0) == 1.0
    assert metrics.percentile(data, 50) == 2.5
    assert metrics.percentile(data, 100) == 4.0
    assert metrics.percentile(data, 99) == pytest.approx(3.97)
    assert metrics.percentile(list(range(101)), 99) == 99
    assert metrics.percentile([7.0], 99) == 7.0
    assert metrics.percentile([], 50) is None
    with pytest.raises(ValueError):
        metrics.percentile(data, 101)


def test_percentile_ignores_input_order() -> None:
    data = [float(x) for x in range(1000)]
    shuffled = data[:]
    random.Random(3).shuffle(shuffled)
    assert metrics.percentile(shuffled, 99) == metrics.percentile(data, 99) == pytest.approx(989.01)


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200), st.floats(0, 100))
def test_percentile_is_bounded_and_monotonic(values: list[float], q: float) -> None:
    p = metrics.percentile(values, q)
    assert p is not None
    assert min(values) <= p <= max(values)
    higher = metrics.percentile(values, min(100.0, q + 1))
    assert higher is not None and higher >= p - 1e-9


def test_latency_summary() -> None:
    summary = metrics.latency_summary([10.0, 20.0, 30.0, 40.0, 1000.0])
    assert summary == {"count": 5, "p50_ms": 30.0, "p99_ms": 961.6, "max_ms": 1000.0, "mean_ms": 220.0}
    assert metrics.latency_summary([])["p99_ms"] is None


def test_stat_parsing_survives_spaces_and_parentheses_in_the_name() -> None:
    tck = os.sysconf("SC_CLK_TCK")
    fields = ["S"] + ["0"] * 10 + [str(3 * tck), str(2 * tck)] + ["0"] * 30
    line = "1234 (we ird) (x) " + " ".join(fields)
    assert metrics.cpu_seconds_from_stat(line) == pytest.approx(5.0)


def test_status_memory_parsing() -> None:
    text = "Name:\tpython\nVmPeak:\t 999 kB\nVmHWM:\t  5000 kB\nVmRSS:\t  4096 kB\nThreads:\t3\n"
    assert metrics.parse_status_memory(text) == {"rss": 4096, "hwm": 5000}
    assert metrics.parse_status_memory("Name:\tkthread\n") == {"rss": 0, "hwm": 0}


def test_live_proc_sample_of_this_process() -> None:
    first = metrics.ProcSample.take(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # bounded busy loop: 0.2 s of CPU
        pass
    grown = bytearray(32 << 20)  # touch 32 MiB so RSS rises
    for i in range(0, len(grown), 4096):
        grown[i] = 1
    second = metrics.ProcSample.take(os.getpid())
    assert second.cpu_s - first.cpu_s >= 0.1
    assert second.rss_kib - first.rss_kib >= 16 * 1024
    assert second.hwm_kib >= second.rss_kib
    del grown


def test_derived_figures() -> None:
    assert metrics.cpu_per_1000(2.0, 10_000) == pytest.approx(0.2)
    assert metrics.cpu_per_1000(2.0, 0) is None
    assert metrics.rss_per_connection_kib(150_000, 50_000, 10_000) == pytest.approx(10.0)
    assert metrics.rss_per_connection_kib(1, 0, 0) is None
    assert metrics.ratio(3.0, 2.0) == 1.5
    assert metrics.ratio(3.0, 0) is None
    assert metrics.ratio(None, 2.0) is None


def _system(cpu: float, rss: float, p99: float, lost: int = 0) -> dict[str, object]:
    return {"system": "x", "devices": 10, "connected": 10, "connect_s": 1.0, "lost": lost, "valid": True,
            "invalid_reasons": [], "latency": {"p50_ms": 1.0, "p99_ms": p99, "max_ms": p99},
            "server": {"cpu_per_1000": cpu, "rss_per_conn_kib": rss, "hwm_kib": 2048, "cpu_pct_hold": 5.0},
            "generator": {"cpu_pct": [1.0]}}


def test_ratios_and_table() -> None:
    step = {"devices": 10, "systems": {"gateway": _system(0.2, 30.0, 80.0),
                                       "gateway-storage-none": _system(0.1, 20.0, 50.0),
                                       "mosquitto": _system(0.1, 5.0, 4.0)}}
    r = ratios(step["systems"])  # type: ignore[arg-type]
    assert r["gateway/mosquitto"] == {"cpu_per_reading": 2.0, "rss_per_conn": 6.0, "p99_latency": 20.0,
                                      "connect_s": 1.0}
    step["ratios"] = r
    text = table({"steps": [step]})
    assert "| 10 " in text and "gateway-storage-none" in text and "cpu_per_reading 2.0" in text


def test_proc_stat_cpu_parsing_and_busy_cores() -> None:
    text = ("cpu  100 0 50 800 50 0 0 0 0 0\n"
            "cpu0 50 0 25 400 25 0 0 0 0 0\n")
    assert metrics.parse_proc_stat_cpu(text) == (150.0, 1000.0)
    with pytest.raises(ValueError):
        metrics.parse_proc_stat_cpu("intr 1 2 3\n")
    before = metrics.HostSample(150.0, 1000.0)
    after = metrics.HostSample(450.0, 1600.0)  # 300 of 600 ticks busy on 2 cpus -> 1 core
    assert before.busy_cores(after, 2) == pytest.approx(1.0)
    assert before.busy_cores(before, 2) is None
    live = metrics.HostSample.take()
    assert 0 <= live.busy <= live.total


def test_profile_summary_of_collapsed_stacks() -> None:
    from bench import profile

    text = ("main (a/b/server.py:10);recv (x/conn.py:5) 30\n"
            "main (a/b/server.py:10);store (a/b/sqlite.py:7) 10\n"
            "garbage line\n")
    stacks = profile.parse_collapsed(text)
    total, self_time, incl = profile.summarise(stacks)
    assert total == 40
    assert self_time["recv (x/conn.py)"] == 30
    assert incl["main (b/server.py)"] == 40
