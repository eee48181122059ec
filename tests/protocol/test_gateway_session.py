"""GatewaySession decisions the gateway driver relies on (issue 8 and 15)."""

from __future__ import annotations

import json

from protocol.gateway import EV_DATA, GatewaySession


def data(seq: int, n: int = 1) -> str:
    return json.dumps({"t": "data", "seq": seq, "r": [{"m": {"temperature": 20}}] * n})


def active(last_seq: int = 0) -> GatewaySession:
    session = GatewaySession(rate=1000, burst=1000)
    session.accept("S-1", last_seq, 0)
    return session


def test_gaps_are_counted_next_to_accepted_seq() -> None:
    session = active(last_seq=10)
    assert session.receive(data(11, 2), 0).kind == EV_DATA and session.last_gap == 0
    event = session.receive(data(20), 0)  # 13..19 never sent
    assert event.kind == EV_DATA and session.last_gap == 7 and session.gaps == 7
    session.receive(data(20), 0)  # a duplicate is not a gap
    assert session.last_gap == 0 and session.gaps == 7
    session.receive(data(19, 3), 0)  # overlap: only 21 is new, no gap
    assert session.last_gap == 0 and session.gaps == 7 and session.accepted_seq == 21
