"""``python -m gateway export`` and the registry commands on both storages (--storage, EDGEWIRE_STORAGE)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.history_api import HistoryApi
from gateway.storage.base import DeviceRecord, ReadingRow
from gateway.storage.sqlite import SQLiteStorage
from tests.helpers.gateway import ROOT

T0 = 1_764_080_000_000


def seed(data_dir: Path) -> None:
    async def run() -> None:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # as the gateway makes it
        s = SQLiteStorage(data_dir / "edgewire.db")
        await s.open()
        await s.put_device(DeviceRecord("SENSOR-01", True, b"\x01" * 32))
        await s.store([ReadingRow("SENSOR-01", i, T0 + i * 1000, T0 + i * 1000 + 3,
                                  {"temperature": 20.0 + i / 100, "humidity": 40.5} if i % 2 else {"humidity": 41.0},
                                  quality="ok") for i in range(1, 12001)])
        await s.close()

    asyncio.run(run())


def export(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["export", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_readings_csv_and_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed(tmp_path / "gw")
    code, out, err = export(capsys, "SENSOR-01", "--from", str(T0), "--to", str(T0 + 10_000_001),
                            "--data-dir", str(tmp_path / "gw"))
    assert code == 0 and err == "exported 10000 readings of SENSOR-01\n"
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["device_id", "seq", "time_ms", "time", "received_ms", "metric", "value", "quality"]
    assert rows[1] == ["SENSOR-01", "1", str(T0 + 1000), "2025-11-25T14:13:21.000Z", str(T0 + 1003), "temperature",
                       "20.01", "ok"]
    assert len(rows) == 1 + 5000 * 2 + 5000  # odd seqs carry two metrics
    # ISO times, one metric, JSON Lines, paged past the page size
    code, out, _ = export(capsys, "SENSOR-01", "--from", "2025-11-25T14:13:20Z", "--to", "2025-11-25T17:33:21+00:00",
                          "--metric", "temperature", "--format", "jsonl", "--data-dir", str(tmp_path / "gw"))
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(lines) == 6000
    assert lines[0] == {"device_id": "SENSOR-01", "seq": 1, "time_ms": T0 + 1000, "received_ms": T0 + 1003,
                        "boot": None, "device_ts": None, "uptime_ms": None, "quality": "ok",
                        "metrics": {"temperature": 20.01}}
    assert [item["seq"] for item in lines] == list(range(1, 12001, 2))


def test_export_points_is_the_same_as_history_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed(tmp_path / "gw")
    out_file = tmp_path / "out.csv"
    code, out, err = export(capsys, "SENSOR-01", "--from", str(T0), "--to", str(T0 + 12_001_000), "--metric",
                            "humidity", "--points", "100", "-o", str(out_file), "--data-dir", str(tmp_path / "gw"))
    # T0 is more than 30 days ago: its raw readings count as expired, so the 5-minute rollups answer
    assert code == 0 and out == "" and "buckets of humidity (5m, step 300000 ms)" in err
    assert out_file.stat().st_mode & 0o777 == 0o600

    async def over_http() -> bytes:
        s = SQLiteStorage(tmp_path / "gw" / "edgewire.db")
        await s.open()
        try:
            reply = await HistoryApi(s, 30, lambda _: False).handle(
                f"/v1/history.csv?device=SENSOR-01&metric=humidity&from={T0}&to={T0 + 12_001_000}&points=100")
            return reply.body
        finally:
            await s.close()

    assert out_file.read_bytes() == asyncio.run(over_http())


@pytest.mark.parametrize(("args", "message"), [
    (["SENSOR-01", "--from", "yesterday"], "error: --from: 'yesterday' is neither Unix ms nor an ISO 8601 time"),
    (["SENSOR-01", "--from", "2000", "--to", "1000"], "error: --from: must be before --to"),
    (["SENSOR-01", "--points", "10"], "error: --points: needs --metric"),
    (["SENSOR-01", "--metric", "humidity", "--points", "0"], "error: --points: must be 1..5000"),
    (["SENSOR-01", "--metric", "Bad"], "error: --metric: 'Bad' is not a metric name"),
    (["SENSOR-01", "--metric", "temprature"],  # issue 20.7: not "exported 0 readings" and status 0
     "error: --metric: device SENSOR-01 has no metric 'temprature'; its metrics: humidity, temperature"),
    (["SENSOR-01", "--metric", "temprature", "--points", "10"], "error: --metric: device SENSOR-01 has no metric"),
    (["GHOST"], "error: DEVICE: no device GHOST in sqlite storage"),
    (["bad id"], "error: DEVICE: 'bad id' is not a device id"),
    (["SENSOR-01", "-o", "/nonexistent/dir/x.csv"], "error: --output: cannot write /nonexistent/dir/x.csv"),
])
def test_export_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                    message: str) -> None:
    seed(tmp_path / "gw")
    code, out, err = export(capsys, *args, "--data-dir", str(tmp_path / "gw"))
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1, err


def test_export_without_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = export(capsys, "SENSOR-01", "--data-dir", str(tmp_path / "empty"))
    assert code == 2 and err.startswith("error: --data-dir: no database at") and err.count("\n") == 1


def test_registry_and_export_on_postgresql(tmp_path: Path, postgres_dsn: str) -> None:
    """Every registry command and export honour --storage and EDGEWIRE_STORAGE."""

    def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=60, env=dict(os.environ, **(env or {})))

    data = str(tmp_path / "gw")
    added = cli("devices", "add", "PG-01", "--label", "cellar", "--storage", postgres_dsn, "--data-dir", data)
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip().startswith("ewt_")
    listed = cli("devices", "list", "--json", "--data-dir", data, env={"EDGEWIRE_STORAGE": postgres_dsn})
    assert [d["device_id"] for d in json.loads(listed.stdout)] == ["PG-01"]
    assert not (tmp_path / "gw" / "edgewire.db").exists()  # nothing went to SQLite
    assert cli("devices", "disable", "PG-01", "--storage", postgres_dsn, "--data-dir", data).returncode == 0
    shown = json.loads(cli("devices", "show", "PG-01", "--storage", postgres_dsn, "--data-dir", data).stdout)
    assert (shown["enabled"], shown["label"]) == (False, "cellar")
    exported = cli("export", "PG-01", "--format", "jsonl", env={"EDGEWIRE_STORAGE": postgres_dsn})
    assert exported.returncode == 0 and exported.stdout == ""
    assert exported.stderr == "exported 0 readings of PG-01\n"
    down = cli("devices", "list", "--storage", "postgresql://edgewire@127.0.0.1:1/nothing")
    assert down.returncode == 2 and down.stderr.startswith("error: cannot connect to PostgreSQL at")
    assert "Traceback" not in down.stderr


def test_export_into_a_reader_that_stops_early_ends_quietly(tmp_path: Path) -> None:
    """``export ... | head -3``: no BrokenPipeError traceback (issue 20.7)."""
    seed(tmp_path / "gw")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "export", "SENSOR-01", "--from", str(T0), "--to",
                             str(T0 + 12_001_000), "--data-dir", str(tmp_path / "gw")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    head = [proc.stdout.readline() for _ in range(3)]
    proc.stdout.close()  # as head does after its lines
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(60) == 141, err  # 128 + SIGPIPE, as other Unix tools end
    assert head[0].startswith(b"device_id,seq,") and err == ""


def test_a_data_directory_records_its_storage_without_a_password(tmp_path: Path) -> None:
    from argparse import Namespace

    from gateway.errors import ConfigError
    from gateway.state_files import record_storage
    from gateway.storage.backends import cli_config

    data = tmp_path / "gw"
    data.mkdir(mode=0o700)
    record_storage(data, "postgresql://edgewire:s3cret@127.0.0.1:5433/edgewire?password=s3cret&sslmode=disable")
    assert (data / "storage").read_text() == "postgresql://edgewire@127.0.0.1:5433/edgewire?sslmode=disable\n"
    assert (data / "storage").stat().st_mode & 0o077 == 0
    config = cli_config(Namespace(data_dir=str(data)))  # no storage given: the recorded one
    assert config.storage == "postgresql://edgewire@127.0.0.1:5433/edgewire?sslmode=disable"
    # the same storage, with its password, is no mismatch
    assert cli_config(Namespace(data_dir=str(data), storage="postgresql://edgewire:pw@127.0.0.1:5433/edgewire"
                                "?sslmode=disable")).storage_kind == "postgresql"
    with pytest.raises(ConfigError) as mismatch:
        cli_config(Namespace(data_dir=str(data), storage="sqlite"))
    assert str(mismatch.value).startswith(f"--storage names sqlite but {data} belongs to postgresql://edgewire@")


def test_registry_commands_follow_the_storage_a_data_directory_records(tmp_path: Path, postgres_dsn: str) -> None:
    """After ``make demo DEMO_STORAGE=postgresql`` in a data directory, ``devices add --data-dir`` writes to
    PostgreSQL, never to an SQLite file there (issue 20.5)."""
    from gateway.state_files import record_storage

    def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("EDGEWIRE_")}
        return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=60, env={**base, **(env or {})})

    data = tmp_path / "demo"
    seed(data)  # an SQLite database from an earlier demo in the same directory
    record_storage(data, postgres_dsn)  # as the PostgreSQL gateway's start does
    added = cli("devices", "add", "PG-01", "--data-dir", str(data))
    assert added.returncode == 0, added.stderr
    listed = cli("devices", "list", "--json", "--storage", postgres_dsn)
    assert [d["device_id"] for d in json.loads(listed.stdout)] == ["PG-01"]
    tokens = cli("tokens", "add", "wall", "--role", "viewer", "--data-dir", str(data))
    assert tokens.returncode == 0, tokens.stderr
    for command in (("devices", "list", "--storage", "sqlite"), ("export", "SENSOR-01")):
        refused = cli(*command, "--data-dir", str(data), env={"EDGEWIRE_STORAGE": "sqlite"}
                      if command[0] == "export" else None)
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 2 and len(lines) == 1, refused.stderr
        assert "sqlite but" in lines[0] and "belongs to postgresql://" in lines[0]
