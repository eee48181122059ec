"""bench.preview_bench runs and reports each rule's preview time (a day, one run: a smoke test)."""

from __future__ import annotations

import asyncio

import pytest

from bench import preview_bench


def test_it_reports_every_rule(capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(preview_bench.run(days=1, runs=1))
    out = capsys.readouterr().out
    assert out.startswith("1,440 readings of one device over 1 days")
    for name in preview_bench.RULES:
        assert name in out
    assert out.count(" ms  (") == len(preview_bench.RULES)
