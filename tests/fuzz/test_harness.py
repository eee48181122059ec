"""The fuzzer's own parts (make fuzz runs it at volume; here only that it works and can fail)."""

from __future__ import annotations

import json

import pytest

from fuzz import core
from fuzz.mutate import BOUNDARIES, Mutator

CORPUS: list[str | bytes] = [
    json.dumps({"t": "data", "seq": 1, "r": [{"m": {"temperature": 20.5}}]}),
    json.dumps({"t": "status", "rssi": -60, "nested": {"a": [1, 2, 3]}}),
    json.dumps({"t": "result", "id": "c1", "ok": True, "data": {"x": 1}}),
    b"\x00\x01", "not json",
]


def test_the_mutator_is_deterministic_and_never_changes_its_vocabulary() -> None:
    before = json.dumps(BOUNDARIES)
    first = [Mutator(CORPUS, 7).frame(i) for i in range(1)]
    a, b = Mutator(CORPUS, 7), Mutator(CORPUS, 7)
    frames_a = [a.frame(i) for i in range(3000)]
    assert frames_a == [b.frame(i) for i in range(3000)]
    assert frames_a[:1] == first
    assert len(set(map(repr, frames_a))) > 1000  # varied
    assert json.dumps(BOUNDARIES) == before
    assert max(len(f) for f in frames_a) < 2_000_000


def test_the_core_target_runs_clean_and_reports_what_it_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    report = core.fuzz_gateway_session(Mutator(CORPUS, 1), 3000)
    assert report.frames == 3000 and report.crashes == {} and report.events.get("data", 0) > 500
    real = core.GatewaySession.receive

    def planted(self: core.GatewaySession, frame: str | bytes, now: float, wall_ms: int | None = None) -> object:
        if isinstance(frame, str) and '"status"' in frame:
            raise KeyError("planted")
        return real(self, frame, now, wall_ms)

    monkeypatch.setattr(core.GatewaySession, "receive", planted)
    report = core.fuzz_gateway_session(Mutator(CORPUS, 1), 3000)
    assert report.as_dict()["crash_count"] > 0
    assert any(name.startswith("KeyError") for name in report.crashes)
