"""The gateway's one reconnect backoff (gateway/backoff.py): exact doubling to a cap, reset."""

from __future__ import annotations

from gateway.backoff import Backoff


def test_doubles_from_first_to_cap_exactly_and_starts_over_after_reset() -> None:
    backoff = Backoff(0.2, 5.0)
    assert backoff.delay_s == 0.0
    assert [backoff.next_s() for _ in range(8)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert backoff.delay_s == 5.0
    backoff.reset()
    assert backoff.delay_s == 0.0
    assert [backoff.next_s() for _ in range(3)] == [0.2, 0.4, 0.8]


def test_a_cap_below_first_waits_first_and_a_cap_off_the_grid_is_reached() -> None:
    assert [Backoff(1.0, 0.5).next_s() for _ in range(2)] == [1.0, 1.0]
    backoff = Backoff(1.0, 30.0)
    assert [backoff.next_s() for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
