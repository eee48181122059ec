"""Per-caller failure isolation of a group commit: one helper for SQLite's and PostgreSQL's group
commits (gateway/storage/sqlite_core.py, postgresql_core.py) and the flusher's (gateway/flusher.py).

A group commit stores the rows of several callers in one transaction. A caller whose rows are
not numbers fails alone, before the transaction. When the storage refuses the group for the
sake of some rows (a value the database will not take), each caller's rows are committed on
their own, so that only the caller whose rows were refused fails and the others are stored
(storing is idempotent per (device_id, seq): a retry is harmless). A group of one caller
simply fails with the group's error; any other failure (the database is down) fails them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from gateway.errors import StorageError
from gateway.storage.base import ReadingRow
from gateway.storage.ingest import check_rows, shares

T = TypeVar("T")
Commit = Callable[[list[ReadingRow]], Awaitable[list[ReadingRow]]]
# Per caller, in the callers' order: (None, the caller's rows inserted) or (why it failed, []).
Outcome = tuple[BaseException | None, list[ReadingRow]]


def not_stored(err: BaseException) -> StorageError:
    """The error of one caller whose rows the storage refused."""
    return err if isinstance(err, StorageError) else StorageError(f"readings not stored: {err}")


async def group_commit(callers: Sequence[list[ReadingRow]], commit: Commit, *, isolate: tuple[type[BaseException], ...],
                       failed: Callable[[BaseException], BaseException], errors: tuple[type[BaseException], ...],
                       refused: Callable[[BaseException], BaseException] = not_stored) -> list[Outcome]:
    """Commit the callers' rows in one ``commit`` and return each caller's outcome (its share of
    the inserted rows, ``ingest.shares``). A caller whose rows fail ``check_rows`` is left out
    and fails alone; a group refused with one of ``isolate`` is committed apart (``commit_apart``,
    each failure there as ``refused(err)``; a failure of the group of one of ``errors`` fails every
    caller in it with ``failed(err)``. Anything else propagates (a bug)."""
    outcomes: list[Outcome | None] = []
    valid: list[list[ReadingRow]] = []
    for rows in callers:
        try:
            check_rows(rows)
        except Exception as err:  # not numbers, not finite: only this caller fails
            outcomes.append((StorageError(f"readings not stored: invalid row ({err})"), []))
        else:
            outcomes.append(None)
            valid.append(rows)
    if valid:
        try:
            new = await commit([row for rows in valid for row in rows])
            results: list[Outcome] = [(None, share) for share in shares(valid, new)]
        except isolate as err:
            results = [(error if error is None else refused(error), rows)
                       for error, rows in await commit_apart(valid, commit, err, errors=errors)]
        except errors as err:
            error = failed(err)
            results = [(error, [])] * len(valid)
        fill = iter(results)
        outcomes = [next(fill) if outcome is None else outcome for outcome in outcomes]
    return [outcome for outcome in outcomes if outcome is not None]


async def commit_apart(callers: Sequence[list[ReadingRow]], commit: Commit, error: BaseException, *,
                       errors: tuple[type[BaseException], ...] = (Exception,), concurrently: bool = False
                       ) -> list[Outcome]:
    """The group commit of ``callers`` failed with ``error``: commit each caller's rows apart with
    ``commit``, one after another, or ``concurrently`` (the storage's next group commit takes
    them together and isolates them itself). A failure of one of ``errors`` fails only its caller;
    another one propagates. A group of one caller fails with ``error``."""
    if len(callers) == 1:
        return [(error, [])]
    if concurrently:
        results: list[list[ReadingRow] | BaseException] = list(await asyncio.gather(
            *(commit(rows) for rows in callers), return_exceptions=True))
    else:
        results = []
        for rows in callers:
            try:
                results.append(await commit(rows))
            except errors as err:
                results.append(err)
    return [(result, []) if isinstance(result, BaseException) else (None, shares([rows], result)[0])
            for rows, result in zip(callers, results, strict=True)]


def run_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never waits: SQLite's writer thread has no event loop, so its
    ``commit`` for ``group_commit`` is a coroutine around a synchronous transaction."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("run_now: the coroutine waited for something")
