"""Background tasks that must not die silently: each is restarted when it fails, /healthz reports
its state, and one that keeps failing stops the gateway (so systemd restarts the process).

A task is a coroutine function that runs for the process's life. If it raises (or returns),
its state is ``failed`` (and /healthz answers 503) until it is started again after
``restart_delay_s``; after ``max_restarts`` failures within ``window_s`` the supervisor gives up
and calls ``on_give_up``. ``stop`` cancels every task and never raises.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from gateway.logs import log

RUNNING = "running"
FAILED = "failed"  # died; restart pending
GAVE_UP = "gave_up"  # died too often; the gateway stops
STOPPED = "stopped"


@dataclass
class TaskState:
    name: str
    factory: Callable[[], Awaitable[None]]
    state: str = RUNNING
    restarts: int = 0
    last_error: str | None = None
    failures: deque[float] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "restarts": self.restarts, "last_error": self.last_error}


class Supervisor:
    def __init__(self, *, restart_delay_s: float = 1.0, max_restarts: int = 5, window_s: float = 60.0,
                 on_give_up: Callable[[str, BaseException], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.restart_delay_s = restart_delay_s
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.on_give_up = on_give_up
        self.clock = clock
        self.tasks: dict[str, TaskState] = {}
        self._stopping = False

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run ``factory()`` as the background task ``name`` for as long as the gateway runs."""
        state = self.tasks[name] = TaskState(name, factory)
        state.task = asyncio.get_running_loop().create_task(self._run(state), name=f"edgewire-{name}")

    @property
    def healthy(self) -> bool:
        return all(s.state == RUNNING for s in self.tasks.values())

    def health(self) -> dict[str, dict[str, Any]]:
        return {name: s.as_dict() for name, s in self.tasks.items()}

    async def _run(self, state: TaskState) -> None:
        while not self._stopping:
            state.state = RUNNING
            try:
                await state.factory()
                error: BaseException = RuntimeError("returned; it should run until the gateway stops")
            except asyncio.CancelledError:
                raise
            except Exception as err:  # any failure: reported and restarted, never silent
                error = err
            if self._stopping:
                break
            now = self.clock()
            state.failures.append(now)
            while state.failures and now - state.failures[0] > self.window_s:
                state.failures.popleft()
            state.last_error = f"{type(error).__name__}: {error}"[:300]
            log("task_failed", logging.ERROR, task=state.name, error=state.last_error,
                failures_in_window=len(state.failures),
                traceback="".join(traceback.format_exception(error))[-4000:])
            if len(state.failures) > self.max_restarts:
                state.state = GAVE_UP
                log("task_gave_up", logging.CRITICAL, task=state.name,
                    hint=f"failed {len(state.failures)} times in {self.window_s:g} s; stopping the gateway")
                if self.on_give_up is not None:
                    self.on_give_up(state.name, error)
                return
            state.state = FAILED
            await asyncio.sleep(self.restart_delay_s)
            state.restarts += 1
            log("task_restarted", logging.WARNING, task=state.name, restarts=state.restarts)

    async def stop(self) -> None:
        """Cancel every task and wait for them; never raises (shutdown goes on whatever failed)."""
        self._stopping = True
        tasks = [s.task for s in self.tasks.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for state in self.tasks.values():
            if state.state != GAVE_UP:
                state.state = STOPPED


_SPAWNED: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any]:
    """Run ``coro`` as a one-off task, kept referenced until it is done (asyncio holds only weak
    references) and whose failure is logged with its traceback instead of vanishing."""
    task = asyncio.get_running_loop().create_task(coro)
    _SPAWNED.add(task)
    task.add_done_callback(lambda done: _spawned_done(done, what))
    return task


def _spawned_done(task: asyncio.Task[Any], what: str) -> None:
    _SPAWNED.discard(task)
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log("task_failed", logging.ERROR, task=what, error=f"{type(error).__name__}: {error}"[:300],
            traceback="".join(traceback.format_exception(error))[-4000:])
