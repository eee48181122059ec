"""``python -m gateway command --group G NAME ...``: one admin ``group_command`` request, one line per
device and a summary (docs/protocol.md section 10).

Output: ``DEVICE  CODE  MESSAGE`` per member on stdout (``ok`` or the failure's code), then the
summary: on stdout when every member answered ok (exit status 0), else as the one ``error:``
line on stderr (exit status 1). ``--json``: the reply's ``results`` and ``summary`` as one JSON
object on stdout instead of the lines. A request that fails as a whole (bad group, no gateway)
is one ``error:`` line and status 2, as every CLI failure.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from gateway.cli.admin_client import admin_call

SOME_FAILED = 1
MAX_REPLY = 64 * 2**20  # a group of MAX_GROUP_DEVICES members, each with its device's result (<= 8 KiB of data)


def summary_text(name: str, counts: dict[str, int]) -> str:
    """``ping: 3 devices: 2 ok, 1 device_offline``."""
    total = counts.get("total", 0)
    parts = [f"{n} {code}" for code, n in sorted(counts.items(), key=lambda kv: (kv[0] != "ok", kv[0]))
             if code != "total"]
    return f"{name}: {total} device{'s' if total != 1 else ''}: {', '.join(parts)}"


def result_line(entry: dict[str, Any], width: int) -> str:
    msg = str(entry.get("msg") or "").replace("\n", " ")
    return f"{str(entry.get('device')).ljust(width)}  {str(entry.get('code')).ljust(15)}  {msg}".rstrip()


def run_group_command(url: str, token: str, group: str, name: str, args: dict[str, Any], timeout: float,
                      parallel: int, as_json: bool) -> int:
    """Send the request, print the results; the exit status (0 all ok, 1 some not)."""
    reply = asyncio.run(admin_call(url, token, {"t": "group_command", "group": group, "name": name, "args": args,
                                                "timeout": timeout, "parallel": parallel}, timeout + 10,
                                 max_size=MAX_REPLY))
    results: list[dict[str, Any]] = reply.get("results") or []
    counts: dict[str, int] = reply.get("summary") or {}
    if as_json:
        print(json.dumps({"name": name, "group": reply.get("group", group), "results": results, "summary": counts}))
    else:
        width = max((len(str(entry.get("device"))) for entry in results), default=0)
        for entry in results:
            print(result_line(entry, width))
    text = summary_text(name, counts)
    if all(entry.get("ok") for entry in results):
        if not as_json:
            print(text)
        return 0
    sys.stdout.flush()
    print(f"error: {text}", file=sys.stderr)
    return SOME_FAILED
