"""The capacity step (bench/capacity.py): its decisions on made-up step figures, and one tiny real ramp."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from bench import capacity
from bench import run as bench_run
from bench.errors import BenchError, LoadgenError
from bench.loadgen import LoadGen, reading_slot


def _step(rate: int, **changes: Any) -> dict[str, Any]:
    step: dict[str, Any] = {"rate": rate, "generated": rate * 5, "acked": rate * 5, "lost": 0,
                            "offered_per_s": float(rate), "rejected": 0, "slowed": 0, "closed_during_run": 0,
                            "ack_latency": {"count": rate * 5, "p50_ms": 20.0, "p99_ms": 120.0},
                            "generator": {"cpu_pct": [40.0, 42.0], "late_max_s": 0.05}}
    step.update(changes)
    return step


def _judged(*steps: dict[str, Any]) -> list[dict[str, Any]]:
    for step in steps:
        step["verdict"], step["reason"] = capacity.judge(step)
    return list(steps)


def test_judge_passes_a_clean_step() -> None:
    assert capacity.judge(_step(50_000)) == ("pass", "0 lost, ack p99 120 ms")


@pytest.mark.parametrize(("changes", "verdict", "words"), [
    ({"lost": 3}, "fail", "3 readings not acknowledged"),
    ({"closed_during_run": 2}, "fail", "2 device connections closed"),
    ({"rejected": 1}, "fail", "refused 1 frames"),
    ({"ack_latency": {"count": 10, "p50_ms": 400.0, "p99_ms": 1000.1}}, "fail", "ack p99 1,000 ms > 1,000 ms"),
    ({"ack_latency": {"count": 0, "p50_ms": None, "p99_ms": None}}, "fail", "no reading was acknowledged"),
    ({"generator": {"cpu_pct": [91.0, 40.0], "late_max_s": 0.1}}, "generator-bound", "91 % of a core"),
    ({"generator": {"cpu_pct": [50.0], "late_max_s": 1.5}}, "generator-bound", "1.5 s behind"),
    ({"offered_per_s": 40_000.0}, "generator-bound", "offered 40,000 of 50,000"),
    ({"error": "gateway exited"}, "error", "gateway exited"),
    # a loss fails the step even when the generator also saturated: loss is never excused
    ({"lost": 1, "generator": {"cpu_pct": [99.0], "late_max_s": 3.0}}, "fail", "1 readings"),
    # a saturated generator makes a slow ack p99 say nothing about the gateway
    ({"generator": {"cpu_pct": [95.0], "late_max_s": 0.0},
      "ack_latency": {"count": 5, "p50_ms": 900.0, "p99_ms": 4000.0}}, "generator-bound", "95 %"),
])
def test_judge_fails_or_stops(changes: dict[str, Any], verdict: str, words: str) -> None:
    got, reason = capacity.judge(_step(50_000, **changes))
    assert got == verdict and words in reason


def test_summarize_the_gateway_bound_capacity_is_the_last_passing_rate() -> None:
    steps = _judged(_step(10_000), _step(20_000), _step(35_000, lost=7), _step(50_000))
    summary = capacity.summarize("sqlite", steps[:3], 150_000)
    assert summary["capacity_per_s"] == 20_000 and summary["bound"] == "gateway" and summary["exact"]
    assert summary["stopped_at_per_s"] == 35_000 and "7 readings" in summary["stop_reason"]
    assert summary["goal_per_s"] == 50_000 and summary["goal_met"] is False
    assert summary["text"] == "20,000 readings/s"


def test_summarize_generator_bound_and_ramp_top_are_lower_bounds() -> None:
    steps = _judged(_step(50_000), _step(75_000), _step(100_000, offered_per_s=60_000.0))
    summary = capacity.summarize("sqlite", steps, 150_000)
    assert summary["capacity_per_s"] == 75_000 and summary["bound"] == "generator" and not summary["exact"]
    assert summary["goal_met"] is True and summary["text"].startswith("at least 75,000 readings/s (generator-bound")
    below = capacity.summarize("postgresql", steps, 150_000)
    assert below["goal_per_s"] == 100_000 and below["goal_met"] is None  # not shown either way
    everything = capacity.summarize("sqlite", _judged(_step(10_000), _step(20_000)), 20_000)
    assert everything["bound"] == "ramp" and everything["capacity_per_s"] == 20_000
    assert "every rate of the ramp passed" in everything["text"]


def test_summarize_nothing_passed_or_nothing_ran() -> None:
    failed = capacity.summarize("sqlite", _judged(_step(10_000, ack_latency={"p99_ms": 2000.0})), 150_000)
    assert failed["capacity_per_s"] is None and failed["text"] == "no rate passed" and failed["goal_met"] is False
    empty = capacity.summarize("sqlite", [], 150_000)
    assert empty["bound"] == "error" and empty["capacity_per_s"] is None


def test_options_are_checked() -> None:
    capacity.CapacityOptions().check()  # the defaults run
    with pytest.raises(BenchError, match=r"12 frames/s.*at least 1,500 devices"):
        capacity.CapacityOptions(devices=1000, rates=[120_000]).check()
    with pytest.raises(BenchError, match="ascending"):
        capacity.CapacityOptions(rates=[20_000, 10_000]).check()
    with pytest.raises(BenchError, match="hold"):
        capacity.CapacityOptions(hold_s=0).check()


def test_summary_lines_show_each_backend() -> None:
    steps = _judged(_step(10_000), _step(20_000, lost=2))
    report = {"config": {"devices": 2000, "batch": 10, "hold_s": 5.0},
              "backends": {"sqlite": {"steps": steps, "summary": capacity.summarize("sqlite", steps, 20_000),
                                      "stored": 150_000, "acked": 150_000},
                           "postgresql": {"skipped": "install PostgreSQL 15"}}}
    text = "\n".join(capacity.summary_lines(report))
    assert ("- sqlite: 10,000 readings/s; target >= 50,000 readings/s: MISSED by 40,000; stopped at 20,000: 2 readings"
            in text)
    assert "- postgresql: skipped (install PostgreSQL 15)" in text
    assert "stored 150,000 rows for 150,000 readings acknowledged" in text


def test_bench_cli_refuses_bad_capacity_options(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--capacity-rates", "10k"], ["--capacity-backends", "oracle"],
                 ["--capacity-devices", "100", "--capacity-rates", "50000"]):
        with pytest.raises(SystemExit) as exc:
            bench_run.main(["--capacity-only", *args])
        assert exc.value.code == 2
    assert "frames/s" in capsys.readouterr().err


def test_loadgen_batch_is_checked() -> None:
    with pytest.raises(LoadgenError, match="batch 0"):
        LoadGen("edgewire", "ws://127.0.0.1:9/v1/device", [("d", "t")], batch=0)
    with pytest.raises(LoadgenError, match="1 for MQTT"):
        LoadGen("mqtt", "ws://127.0.0.1:9/mqtt", [("d", "")], batch=10)


@pytest.mark.timeout(180)
def test_capacity_only_tiny_real_ramp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_run.main(["--capacity-only", "--capacity-devices", "20", "--capacity-rates", "100,200",
                           "--capacity-hold", "2", "--capacity-backends", "sqlite", "--gen-workers", "1",
                           "--drain", "10", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["steps"] == [] and report["config"]["capacity_only"]
    result = report["capacity"]["backends"]["sqlite"]
    assert [step["rate"] for step in result["steps"]] == [100, 200]
    for step in result["steps"]:
        assert step["verdict"] == "pass", step
        assert step["lost"] == 0 and step["acked"] == step["generated"] == step["rate"] * 2
        assert step["readings_per_frame"] == 10.0  # the devices batched 10 readings per frame
        assert step["ack_latency"]["count"] == step["generated"]
        assert step["gateway"]["ack_mean_ms"] > 0 and step["gateway"]["commit_mean_ms"] > 0  # the gateway's view
    assert result["stored"] == result["acked"] == 600
    summary = result["summary"]
    assert summary["capacity_per_s"] == 200 and summary["bound"] == "ramp"
    assert report["targets"]["capacity"]["sqlite"] == {"value": 200, "goal": 50_000, "met": None, "bound": "ramp"}
    assert "- sqlite: at least 200 readings/s (every rate of the ramp passed)" in capsys.readouterr().out
    assert bench_run.main(["--show", str(tmp_path / "latest.json")]) == 0  # an earlier result, printed again
    assert "- sqlite: at least 200 readings/s" in capsys.readouterr().out


def test_batching_devices_complete_their_batches_in_turn() -> None:
    # 4 devices, 3 readings per frame, 2 readings/s each: every device gets whole batches, and
    # the fleet completes one batch every 3 readings, not all 4 batches within the same 4 readings.
    devices, batch, rate = 4, 3, 2.0
    total = devices * batch * 2
    slots = [reading_slot(i, devices, batch, rate) for i in range(total)]
    per_device: dict[int, list[int]] = {}
    for index, (device, _) in enumerate(slots):
        per_device.setdefault(device, []).append(index)
    assert sorted(per_device) == list(range(devices))
    assert all(len(indexes) == 2 * batch for indexes in per_device.values())
    completed = sorted(indexes[k * batch + batch - 1] for indexes in per_device.values() for k in range(2))
    assert [b - a for a, b in itertools.pairwise(completed)] == [batch] * (len(completed) - 1)
    # each reading dated back as if sampled at the device's own rate; the batch's last one is now
    assert [ago for _, ago in slots[:batch]] == [1000, 500, 0]


def test_unbatched_devices_take_readings_round_robin() -> None:
    assert [reading_slot(i, 3, 1, 5.0) for i in range(6)] == [(0, 0), (1, 0), (2, 0), (0, 0), (1, 0), (2, 0)]


def test_gateway_histogram_means_between_two_samples() -> None:
    m0 = {"ack_latency_seconds_sum": 1.0, "ack_latency_seconds_count": 10.0}
    m1 = {"ack_latency_seconds_sum": 1.5, "ack_latency_seconds_count": 20.0}
    assert capacity.histogram_mean_ms(m0, m1, "ack_latency_seconds") == 50.0
    assert capacity.histogram_mean_ms(m1, m1, "ack_latency_seconds") is None  # no samples in between
    assert capacity.histogram_mean_ms({}, {}, "commit_latency_seconds") is None
