"""``python -m gateway forward status|forget``: the forwarding sinks' cursors in storage.

- ``forward status [--json]``: each sink (mqtt, nats) with its cursor, the instance holding
  its lease and until when, when it last moved, and the readings trimmed before it passed
  them (forced drops).
- ``forward forget SINK``: delete a sink's cursor. A sink removed from the configuration keeps
  its cursor, and the forward log is kept from that cursor on; forgetting it lets the log be
  trimmed. If the sink comes back it starts at the end (readings stored from then on).

Works on the gateway's storage directly (``--config``/``--data-dir``/``--storage``), also while
the gateway runs. Errors print ``error: ...`` on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from gateway.cli.common import iso_seconds, one_line_errors
from gateway.errors import RegistryError
from gateway.storage.backends import cli_config, open_storage, storage_arguments
from gateway.storage.base import SinkCursor

COMMAND = "forward"


def add_forward_command(subparsers: Any) -> None:
    common = storage_arguments()
    forward = subparsers.add_parser("forward", help="show or forget the forwarding sinks' cursors",
                                    description="The MQTT and NATS sinks' cursors, kept in storage.")
    actions = forward.add_subparsers(dest="forward_action", required=True, metavar="ACTION")
    p = actions.add_parser("status", parents=[common], help="each sink's cursor, lease and trimmed readings")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p = actions.add_parser("forget", parents=[common], help="delete a sink's cursor (it no longer holds the log)")
    p.add_argument("sink", help="mqtt or nats")


def _public(cursor: SinkCursor, now_ms: int) -> dict[str, Any]:
    return {"sink": cursor.sink, "position": [cursor.position.tx, cursor.position.commit, cursor.position.index],
            "owner": cursor.owner, "lease_held": cursor.lease_until_ms > now_ms,
            "lease_until_ms": cursor.lease_until_ms, "updated_ms": cursor.updated_ms, "trimmed": cursor.expired}


def run_forward_command(args: argparse.Namespace) -> int:
    return one_line_errors(lambda: asyncio.run(_forward(args)))


async def _forward(args: argparse.Namespace) -> int:
    config = cli_config(args)
    if config.storage_kind != "postgresql" and not config.database.exists():
        raise RegistryError(f"no database at {config.database}; check --data-dir/--db/--config")
    storage = open_storage(config, commit_interval_ms=0)
    await storage.open()
    try:
        if args.forward_action == "forget":
            if not await storage.forget_sink(args.sink):
                raise RegistryError(f"no cursor for sink {args.sink!r}; `forward status` lists them")
            print(f"sink {args.sink}: cursor deleted; the forward log behind it is trimmed within an hour "
                  "(or by the sink's next run)", file=sys.stderr)
            return 0
        now_ms = int(time.time() * 1000)
        cursors = [_public(c, now_ms) for c in await storage.sink_cursors()]
        if args.json:
            print(json.dumps(cursors, indent=2))
        elif not cursors:
            print("no sink has a cursor (set mqtt_url or nats_url and start the gateway)", file=sys.stderr)
        else:
            print("SINK  OWNER  LEASE  UPDATED  TRIMMED  POSITION")
            for c in cursors:
                lease = f"held until {iso_seconds(c['lease_until_ms'])}" if c["lease_held"] else "free"
                print(f"{c['sink']}  {c['owner'] or '-'}  {lease}  {iso_seconds(c['updated_ms'])}  {c['trimmed']}  "
                      f"{c['position']}")
    finally:
        await storage.close()
    return 0
