"""``forward status|forget`` on a real SQLite database."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest

from gateway.cli.forward import add_forward_command, run_forward_command
from gateway.storage.sqlite import SQLiteStorage


def forward(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_forward_command(parser.add_subparsers(dest="cmd", required=True))
    return run_forward_command(parser.parse_args(["forward", *argv]))


def test_status_and_forget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def make() -> None:
        storage = SQLiteStorage(tmp_path / "edgewire.db")
        await storage.open()
        await storage.claim_sink("mqtt", "gw1", 1_764_080_000_000, 15_000)
        await storage.close()

    assert forward("status", "--data-dir", str(tmp_path / "missing")) == 2
    assert "no database at" in capsys.readouterr().err
    asyncio.run(make())
    assert forward("status", "--json", "--data-dir", str(tmp_path)) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(c["sink"], c["owner"], c["lease_held"], c["trimmed"]) for c in listed] == [("mqtt", "gw1", False, 0)]
    assert forward("status", "--data-dir", str(tmp_path)) == 0
    assert "mqtt  gw1  free" in capsys.readouterr().out
    assert forward("forget", "mqtt", "--data-dir", str(tmp_path)) == 0
    assert forward("forget", "mqtt", "--data-dir", str(tmp_path)) == 2
    assert "no cursor for sink 'mqtt'" in capsys.readouterr().err
