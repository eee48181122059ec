"""The pre-authentication budget (gateway/admission.py): who is evicted when a budget is full, the
auth deadline, and what /metrics and the log say; with fake connections and an injected clock."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from gateway.admission import LOG_EVERY_S, PARTIAL, REQUESTED, SILENT, STAGES, Admission


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Conn:
    """What Admission needs of a connection; remembers how it was evicted."""

    waiting_address: str | None = None
    waiting_stage = SILENT
    waiting_since = 0.0

    def __init__(self, name: str) -> None:
        self.name = name
        self.evicted_as: str | None = None

    def evict(self, stage: int) -> None:
        assert self.evicted_as is None, f"{self.name} evicted twice"
        self.evicted_as = STAGES[stage]

    def __repr__(self) -> str:
        return self.name


def admission(total: int = 100, per_address: int = 3, proxies: tuple[str, ...] = (),
              clock: Clock | None = None) -> Admission:
    return Admission(total, per_address, proxies, deadline_s=5.0, clock=clock or Clock())


def admit(adm: Admission, address: str, *names: str) -> list[Conn]:
    conns = [Conn(name) for name in names]
    for conn in conns:
        adm.admit(conn, address)
    return conns


def evicted(*conns: Conn) -> list[str | None]:
    return [conn.evicted_as for conn in conns]


def test_a_full_address_budget_evicts_its_own_oldest_silent_connection() -> None:
    adm = admission(per_address=3)
    a, b, c = admit(adm, "10.0.0.1", "a", "b", "c")
    (other,) = admit(adm, "10.0.0.2", "other")
    (d,) = admit(adm, "10.0.0.1", "d")
    assert evicted(a, b, c, d, other) == ["silent", None, None, None, None]
    assert a.waiting_address is None and adm.total == 4
    assert adm.evicted["per_address", "silent"] == 1 and adm.answered == 1
    admit(adm, "10.0.0.1", "e")
    assert evicted(b) == ["silent"] and other.evicted_as is None


def test_silent_go_first_then_partial_then_requested_each_oldest_first() -> None:
    adm = admission(per_address=3)
    device, slow, silent = admit(adm, "10.0.0.1", "device", "slow", "silent")
    adm.advance(slow, PARTIAL)  # sent a few bytes of its request
    adm.advance(device, REQUESTED)  # its request is complete: a handshake under way
    flood = admit(adm, "10.0.0.1", *(f"s{i}" for i in range(1000)))  # a silent flood, however long
    assert evicted(device, slow, silent) == [None, None, "silent"]
    assert all(conn.evicted_as == "silent" for conn in flood[:-1]) and flood[-1].evicted_as is None
    (talker,) = admit(adm, "10.0.0.1", "talker")  # evicts the last silent one
    adm.advance(talker, PARTIAL)
    admit(adm, "10.0.0.1", "next")  # no silent one left but itself (not yet counted): the oldest partial
    assert evicted(slow, talker, device) == ["partial", None, None]
    assert adm.evicted["per_address", "partial"] == 1


def test_requested_connections_are_evicted_by_when_their_request_completed() -> None:
    adm = admission(per_address=2)
    first, second = admit(adm, "10.0.0.1", "first", "second")
    adm.advance(second, REQUESTED)
    adm.advance(first, PARTIAL)
    adm.advance(first, REQUESTED)  # later than second
    adm.advance(first, PARTIAL)  # never back
    assert first.waiting_stage == REQUESTED
    (third,) = admit(adm, "10.0.0.1", "third")
    assert evicted(first, second, third) == [None, "requested", None]
    assert adm.answered == 0  # a requested one is reset, not answered 503


def test_a_full_total_budget_evicts_the_least_advanced_oldest_anywhere() -> None:
    adm = admission(total=4, per_address=3)
    a1, a2 = admit(adm, "10.0.0.1", "a1", "a2")
    b1, b2 = admit(adm, "10.0.0.2", "b1", "b2")
    adm.advance(a1, REQUESTED)
    (c1,) = admit(adm, "10.0.0.3", "c1")  # total full: the oldest silent anywhere is a2
    assert evicted(a1, a2, b1, b2, c1) == [None, "silent", None, None, None]
    assert adm.evicted["total", "silent"] == 1 and adm.total == 4


def test_an_address_at_its_budget_evicts_its_own_even_when_the_total_is_full() -> None:
    adm = admission(total=4, per_address=2)
    a1, a2 = admit(adm, "10.0.0.1", "a1", "a2")
    b1, b2 = admit(adm, "10.0.0.2", "b1", "b2")
    adm.advance(a1, PARTIAL)
    (b3,) = admit(adm, "10.0.0.2", "b3")  # one eviction, of its own (a2 is older and silent)
    assert evicted(a1, a2, b1, b2, b3) == [None, None, "silent", None, None]
    assert adm.evicted["per_address", "silent"] == 1 and adm.evicted["total", "silent"] == 0 and adm.total == 4


def test_trusted_proxies_have_only_the_total_budget() -> None:
    adm = admission(total=10, per_address=2, proxies=("10.9.0.0/16",))
    behind = admit(adm, "10.9.0.1", *(f"p{i}" for i in range(10)))
    assert evicted(*behind) == [None] * 10 and adm.total == 10
    admit(adm, "10.9.0.1", "extra")
    assert evicted(behind[0]) == ["silent"] and adm.evicted["total", "silent"] == 1


def test_authenticated_connections_no_longer_count_and_nothing_is_released_twice() -> None:
    adm = admission(per_address=2)
    a, b = admit(adm, "10.0.0.1", "a", "b")
    adm.release(a)  # authenticated
    adm.release(a)
    adm.advance(a, REQUESTED)  # (no effect once released)
    adm.closed(a)
    (c,) = admit(adm, "10.0.0.1", "c")
    assert evicted(a, b, c) == [None, None, None] and adm.total == 2
    (d,) = admit(adm, "10.0.0.1", "d")
    assert evicted(b) == ["silent"]
    adm.closed(b)  # its close arrives after the eviction: not counted again
    adm.closed(c)
    adm.closed(d)
    assert adm.total == 0 and adm.by_address == {} and adm.waiting == []
    assert all(not stage for stage in adm.stages)


def test_budgets_of_one_keep_the_books_straight() -> None:
    adm = admission(total=1, per_address=1)
    (a,) = admit(adm, "10.0.0.1", "a")
    (b,) = admit(adm, "10.0.0.1", "b")  # evicts a: its address's entry emptied, then b's again
    (c,) = admit(adm, "10.0.0.2", "c")  # evicts b by the total budget
    assert evicted(a, b, c) == ["silent", "silent", None]
    assert list(adm.by_address) == ["10.0.0.2"] and adm.total == 1 and adm.waiting == [c]


def test_one_deadline_from_accept_and_closes_at_it_count_as_timed_out() -> None:
    clock = Clock()
    adm = admission(clock=clock)
    early, late, gone = admit(adm, "10.0.0.1", "early", "late", "gone")
    assert adm.time_left(early) == 5.0
    clock.now += 3.0
    adm.advance(late, REQUESTED)  # the handshake took 3 s: 2 s left for the first frame
    assert adm.time_left(late) == pytest.approx(2.0)
    adm.closed(gone)  # the client left before its deadline
    clock.now += 2.0
    assert adm.time_left(late) == 0.0
    adm.closed(early)  # websockets' handshake timeout
    adm.closed(late)  # the first-frame auth timeout
    assert adm.timed_out == {"silent": 1, "partial": 0, "requested": 1}
    assert adm.time_left(late) == 5.0  # not waiting (any more): the whole deadline


def test_evictions_are_logged_at_most_once_a_minute_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    adm = admission(per_address=1, clock=clock)
    caplog.set_level(logging.WARNING, logger="edgewire")
    admit(adm, "10.0.0.1", *(f"c{i}" for i in range(4)))  # 3 evictions
    clock.now += LOG_EVERY_S - 1
    admit(adm, "10.0.0.1", "c4")
    clock.now += 1
    admit(adm, "10.0.0.7", "d0", "d1")
    lines = [(r.getMessage(), getattr(r, "fields", {})) for r in caplog.records]
    assert [(event, fields["evicted"], fields["address"]) for event, fields in lines] == [
        ("connections_evicted", 1, "10.0.0.1"), ("connections_evicted", 4, "10.0.0.7")]


def test_metric_lines_parse_and_name_every_budget_and_stage() -> None:
    adm = admission(per_address=1)
    admit(adm, "10.0.0.1", "a", "b")
    text = "\n".join(adm.metric_lines()) + "\n"
    families = {f.name: f for f in text_string_to_metric_families(text)}
    evictions = {(s.labels["cap"], s.labels["stage"]): s.value
                 for s in families["edgewire_connections_evicted"].samples}
    assert evictions == {(cap, stage): float(cap == "per_address" and stage == "silent")
                         for cap in ("per_address", "total") for stage in STAGES}
    assert {s.labels["stage"]: s.value for s in families["edgewire_connections_timed_out"].samples} == dict.fromkeys(
        STAGES, 0.0)
    assert all(f.documentation and f.type == "counter" for f in families.values())


OPS = st.lists(st.tuples(st.sampled_from(["admit", "advance", "release", "close"]), st.integers(0, 3),
                         st.integers(0, 40)), max_size=120)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_books_balance_and_the_victim_is_always_the_least_advanced_oldest(ops: list[tuple[str, int, int]]) -> None:
    """Random admits, advances, releases and closes: the budgets hold, the counts add up, and each
    victim is the first of the lowest non-empty stage of the budget that was full."""
    adm = admission(total=6, per_address=3)
    live: list[Conn] = []
    for n, (op, address, pick) in enumerate(ops):
        waiting = [c for c in live if c.waiting_address is not None]
        if op == "admit":
            ip = f"10.0.0.{address}"
            mine = adm.by_address.get(ip, ({}, {}, {}))
            pool = mine if sum(map(len, mine)) >= 3 else adm.stages if adm.total >= 6 else None
            expected = None
            if pool is not None:
                expected = next(iter(next(stage for stage in pool if stage)))
            conn = Conn(f"c{n}")
            adm.admit(conn, ip)
            live.append(conn)
            if expected is not None:
                assert isinstance(expected, Conn) and expected.evicted_as is not None
            assert sum(c.evicted_as is not None for c in live) == sum(adm.evicted.values())
        elif waiting:
            conn = waiting[pick % len(waiting)]
            if op == "advance":
                adm.advance(conn, min(REQUESTED, conn.waiting_stage + 1))
            elif op == "release":
                adm.release(conn)
            else:
                adm.closed(conn)
        counted = [c for c in live if c.waiting_address is not None]
        assert adm.total == len(counted) == sum(map(len, adm.stages)) <= 6
        assert sum(sum(map(len, peer)) for peer in adm.by_address.values()) == adm.total
        assert all(0 < sum(map(len, peer)) <= 3 for peer in adm.by_address.values())
        assert all(c in adm.stages[c.waiting_stage] for c in counted)
