"""The load generator against the real gateway and the benchmark end to end (tiny sizes)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bench import loadgen as lg
from bench import run as bench_run
from tests.helpers.gateway import GatewayProcess

pytestmark = pytest.mark.timeout(180)


def test_devices_are_acked_stored_and_seen_on_the_dashboard(gateway: GatewayProcess) -> None:
    tokens = gateway.register_many([f"lg-{i}" for i in range(6)])
    watcher = lg.Watcher("dashboard", gateway.url + "/v1/dashboard")
    gen = lg.LoadGen("edgewire", gateway.device_url, list(tokens.items()), workers=2)
    try:
        conn = gen.connect(concurrency=4, timeout=30)
        assert conn["connected"] == 6, conn
        assert conn["failures"] == 0
        watcher.mark()
        gen.start(start_at=time.time() + 0.2, hold_s=2.0, rate=2.0, drain_s=10.0)
        results = gen.results(60)
        stats = watcher.stats()
    finally:
        gen.close()
        gen.stop()
        watcher.stop()
    generated = sum(r["generated"] for r in results)
    assert generated == 24  # 6 devices x 2/s x 2 s
    assert sum(r["acked"] for r in results) == generated
    assert sum(r["rejected"] for r in results) == 0
    counts = gateway.storage_counts()
    assert counts == {device: 4 for device in tokens}
    for device in tokens:
        assert gateway.seqs(device) == [1, 2, 3, 4]
    assert 1 <= stats["delivered"] <= generated
    assert len(stats["latencies"]) == stats["delivered"]
    assert all(lat >= 0 for lat in stats["latencies"])


def test_second_run_continues_the_stored_sequence(gateway: GatewayProcess) -> None:
    tokens = gateway.register_many(["lg-seq"])
    for _ in range(2):
        gen = lg.LoadGen("edgewire", gateway.device_url, list(tokens.items()), workers=1)
        try:
            assert gen.connect(timeout=30)["connected"] == 1
            gen.start(time.time() + 0.1, 1.0, 3.0, 10.0)
            (result,) = gen.results(60)
        finally:
            gen.close()
            gen.stop()
        assert result["acked"] == result["generated"] == 3
    assert gateway.seqs("lg-seq") == [1, 2, 3, 4, 5, 6]


def test_cbor_devices_are_acked_and_stored(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path, cbor=True) as gateway:
        tokens = gateway.register_many(["lg-cbor-0", "lg-cbor-1"])
        gen = lg.LoadGen("edgewire", gateway.device_url, list(tokens.items()), workers=1, encoding="cbor")
        try:
            assert gen.connect(timeout=30)["connected"] == 2
            gen.start(time.time() + 0.1, 1.0, 3.0, 10.0)
            (result,) = gen.results(60)
        finally:
            gen.close()
            gen.stop()
        assert result["acked"] == result["generated"] == 6 and result["rejected"] == 0
        assert all(gateway.seqs(device) == [1, 2, 3] for device in tokens)
        online = [json.loads(line) for line in gateway.log_text().splitlines() if '"device_online"' in line]
        assert {entry["encoding"] for entry in online} == {"cbor"}
    with pytest.raises(lg.LoadgenError):
        lg.LoadGen("edgewire", gateway.device_url, [], encoding="xml")


def test_wrong_token_is_reported_not_counted_as_connected(gateway: GatewayProcess) -> None:
    gateway.register_many(["lg-bad"])
    gen = lg.LoadGen("edgewire", gateway.device_url, [("lg-bad", "ewt_" + "A" * 32)], workers=1)
    try:
        conn = gen.connect(timeout=20)
    finally:
        gen.close()
        gen.stop()
    assert conn["connected"] == 0
    assert conn["failures"] == 1


def test_bench_run_end_to_end_tiny(tmp_path: Path) -> None:
    code = bench_run.main(["--steps", "20", "--hold", "2", "--gen-workers", "1", "--drain", "10", "--no-capacity",
                           "--out", str(tmp_path), "--require-zero-loss"])
    assert code == 0
    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["schema"] == bench_run.SCHEMA
    (step,) = report["steps"]
    assert set(step["systems"]) == {"gateway", "gateway-storage-none", "mosquitto"}
    gw = step["systems"]["gateway"]
    assert gw["connected"] == 20 and gw["lost"] == 0 and gw["stored"] == gw["generated"] == 40
    mq = step["systems"]["mosquitto"]
    assert mq["connected"] == 20 and mq["generated"] == 40 and mq["delivered"] <= 40
    for system in step["systems"].values():
        assert system["server"]["cpu_per_1000"] is not None
        assert system["latency"]["count"] > 0
        server = system["server"]  # the server's process tree: today one process, the parent
        assert server["processes"] >= 1 and server["per_process"][0]["role"] == "parent"
        assert server["machine_share_pct"] is not None and system["generator"]["machine_share_pct"] is not None
    assert "gateway/mosquitto" in step["ratios"]
    assert report["config"]["gateway_workers"] is None  # not given: left out of the gateway's command line
    rows = report["targets"]["rows"]
    assert {row["target"] for row in rows} >= {"lost", "ack_p99", "machine_share"}
    assert all(row["measured_at"] == 20 for row in rows)
    assert any(p.name.startswith("bench-") for p in tmp_path.iterdir())


def test_cli_runs_a_load_and_prints_json(gateway: GatewayProcess, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    tokens = gateway.register_many(["lg-cli-1", "lg-cli-2"])
    devices = tmp_path / "devices.txt"
    devices.write_text("# id,token\n" + "".join(f"{d},{t}\n" for d, t in tokens.items()))
    code = lg.main(["--url", gateway.device_url, "--devices-file", str(devices), "--duration", "1",
                    "--rate", "2", "--drain", "10"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["connect"]["connected"] == 2
    (worker,) = out["workers"]
    assert worker["generated"] == worker["acked"] == 4
    assert worker["ack_latency"]["count"] == 4
    assert gateway.storage_counts() == {"lg-cli-1": 2, "lg-cli-2": 2}


def test_cli_expected_failures_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.txt"
    assert lg.main(["--url", "ws://127.0.0.1:9/v1/device", "--devices-file", str(missing)]) == 2
    assert capsys.readouterr().err.startswith("error: cannot read --devices-file")
    bad = tmp_path / "bad.txt"
    bad.write_text("only-an-id\n")
    assert lg.main(["--url", "ws://127.0.0.1:9/v1/device", "--devices-file", str(bad)]) == 2
    assert "expected 'device_id,token'" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    assert lg.main(["--url", "ws://127.0.0.1:9/v1/device", "--devices-file", str(empty)]) == 2
    assert "lists no devices" in capsys.readouterr().err
    assert lg.main(["--url", "ws://192.0.2.1:80/v1/device", "--devices-file", str(empty)]) == 2
    assert "127.0.0.x" in capsys.readouterr().err
    with pytest.raises(lg.LoadgenError, match=r"127\.0\.0\.x"):
        lg.LoadGen("edgewire", "ws://192.0.2.1:80/v1/device", [("d", "t")])
