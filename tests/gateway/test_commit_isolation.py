"""Per-caller failure isolation of a group commit (gateway/storage/isolation.py)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import StorageError
from gateway.storage.base import ReadingRow
from gateway.storage.isolation import commit_apart, group_commit, run_now


def rows(device: str, *values: float) -> list[ReadingRow]:
    return [ReadingRow(device, seq, 1000 + seq, 1000 + seq, {"t": v}) for seq, v in enumerate(values, 1)]


class Refuses:
    """A commit that refuses any group holding a value over 100 (as a database refuses a value)."""

    def __init__(self) -> None:
        self.commits: list[list[str]] = []

    async def __call__(self, group: list[ReadingRow]) -> list[ReadingRow]:
        self.commits.append(sorted({row.device_id for row in group}))
        if any(row.metrics["t"] > 100 for row in group):
            raise OverflowError("value out of range")
        return group


def failed(err: BaseException) -> StorageError:
    return StorageError(f"down: {err}")


def test_a_refused_group_is_committed_apart_and_only_the_refused_caller_fails() -> None:
    commit = Refuses()
    good, bad, other = rows("A", 1.0, 2.0), rows("B", 500.0), rows("C", 3.0)
    outcomes = asyncio.run(group_commit([good, bad, other], commit, isolate=(OverflowError,), failed=failed,
                                        errors=(Exception,)))
    assert commit.commits == [["A", "B", "C"], ["A"], ["B"], ["C"]]
    assert [(error is None, stored) for error, stored in outcomes] == [(True, good), (False, []), (True, other)]
    assert isinstance(outcomes[1][0], StorageError) and "readings not stored: value out of range" in str(outcomes[1][0])


def test_invalid_rows_fail_alone_before_the_commit_and_other_failures_fail_the_whole_group() -> None:
    nan = rows("N", float("nan"))

    async def down(group: list[ReadingRow]) -> list[ReadingRow]:
        raise ConnectionError("gone")

    outcomes = asyncio.run(group_commit([rows("A", 1.0), nan, rows("C", 2.0)], down, isolate=(OverflowError,),
                                        failed=failed, errors=(ConnectionError,)))
    assert [str(error) for error, _ in outcomes][::2] == ["down: gone", "down: gone"]
    assert "readings not stored: invalid row" in str(outcomes[1][0])
    with pytest.raises(KeyError):  # not one of ``errors``: a bug propagates
        asyncio.run(group_commit([rows("A", 1.0)], _bug, isolate=(OverflowError,), failed=failed,
                                 errors=(ConnectionError,)))


async def _bug(group: list[ReadingRow]) -> list[ReadingRow]:
    raise KeyError("bug")


def test_one_caller_fails_with_the_groups_error_and_concurrent_apart_commits_settle_each() -> None:
    err = OverflowError("x")
    assert asyncio.run(commit_apart([rows("A", 1.0)], Refuses(), err)) == [(err, [])]
    outcomes = asyncio.run(commit_apart([rows("A", 1.0), rows("B", 500.0)], Refuses(), err, concurrently=True))
    assert [error is None for error, _ in outcomes] == [True, False]


def test_run_now_runs_a_coroutine_that_never_waits_and_refuses_one_that_does() -> None:
    async def now() -> int:
        return 7

    assert run_now(now()) == 7
    with pytest.raises(RuntimeError):
        run_now(asyncio.sleep(0))
