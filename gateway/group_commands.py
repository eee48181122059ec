"""A command to a group of devices (docs/protocol.md sections 8 and 10): one command per member, each
on the one command path (gateway/device_commands.py), with one result per member.

- Members online now (on any instance) get the command, ``parallel`` at a time (default
  ``DEFAULT_PARALLEL``), each through ``Commands.run(..., queue=False)``: as the dashboard's and the
  MQTT bridge's commands, a member offline now is reported ``device_offline`` at once and nothing
  is queued for it (a queued command would run whenever the device comes back, long after the
  operator read the report; send it again, or to that device alone, which queues it).
- Disabled members are skipped: ``device_disabled``, nothing sent.
- The request's ``timeout`` is one deadline for the whole group: a member still waiting for its
  turn when it passes is reported ``not_sent`` (nothing sent); one whose command is out reports
  ``timeout``.

Each member's outcome is ``{"device", "ok", "code", "msg", "result"}``: ``code`` ``ok``, the
device's refusal ``refused`` (``result`` holds its answer), or a command error code
(``device_offline``, ``timeout``, ``too_many_commands``, ``bus_unavailable``, ...). The summary
counts members by code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from gateway.device_commands import Commands
from gateway.errors import BusError, CommandError, DeviceOffline, TooManyCommands
from gateway.storage.base import DeviceRecord

DEFAULT_PARALLEL = 16
MAX_PARALLEL = 64


def outcome(device_id: str, code: str, msg: str, result: dict[str, Any] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"device": device_id, "ok": code == "ok", "code": code, "msg": msg}
    if result is not None:
        entry["result"] = result
    return entry


def summary(results: list[dict[str, Any]]) -> dict[str, int]:
    """Members by code, ``total`` included."""
    counts: dict[str, int] = {"total": len(results)}
    for entry in results:
        counts[entry["code"]] = counts.get(entry["code"], 0) + 1
    return counts


async def run_group(commands: Commands, records: list[DeviceRecord], name: str, args: dict[str, Any],
                    timeout: float, parallel: int = DEFAULT_PARALLEL,
                    clock: Callable[[], float] = time.monotonic) -> list[dict[str, Any]]:
    """Send ``name`` to every member of ``records`` (see the module docstring); the outcomes in
    ``records`` order."""
    deadline = clock() + timeout
    slots = asyncio.Semaphore(max(1, min(parallel, MAX_PARALLEL)))

    async def one(record: DeviceRecord) -> dict[str, Any]:
        device_id = record.device_id
        if not record.enabled:
            return outcome(device_id, "device_disabled", "the device is disabled: skipped")
        async with slots:
            left = deadline - clock()
            if left <= 0:
                return outcome(device_id, "not_sent", f"not sent: the group's {timeout:g} s passed before its turn")
            try:
                result = await commands.run(device_id, name, args, left, queue=False)
            except (CommandError, DeviceOffline, BusError, TooManyCommands) as err:
                return outcome(device_id, err.code, str(err)[:300] or err.code)
            except TimeoutError as err:
                return outcome(device_id, "timeout", str(err)[:300] or "no result in time")
        msg = str(result.get("msg") or "")
        if result.get("ok") is True:
            return outcome(device_id, "ok", msg, result)
        return outcome(device_id, "refused", msg or "the device refused it", result)

    return list(await asyncio.gather(*(one(record) for record in records)))
