"""``python -m gateway.worker``: one worker process of a gateway host (gateway/workers.py).

It reads its ``WorkerSpec`` (a pickle) from stdin, builds a whole gateway (gateway/factory.py) on
its inherited listening socket and the host bus, prints ``ready PORT`` on stdout once it serves,
and runs until SIGTERM/SIGINT or until its stdin ends (the host process is gone): then it
drains as a single gateway does.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import sys

from gateway.bus import Bus, open_bus
from gateway.bus.local import LocalTransport
from gateway.cli.common import use_uvloop
from gateway.commit_link import CommitClient
from gateway.errors import GatewayError
from gateway.factory import build_gateway
from gateway.ipc import stdin_closed
from gateway.logs import setup_logging
from gateway.secret_files import private_umask
from gateway.workers import WorkerSpec


def _bus(spec: WorkerSpec) -> Bus:
    config = spec.config
    if spec.bus_path:
        return Bus(LocalTransport(spec.bus_path), spec.instance_id, display="host", lease_ttl_s=config.lease_ttl_s,
                   max_pending_commands=config.command_max_pending)
    return open_bus(config.bus, spec.instance_id, lease_ttl_s=config.lease_ttl_s,
                    max_pending_commands=config.command_max_pending)


async def run_worker(spec: WorkerSpec) -> int:
    sock = socket.socket(fileno=spec.fd)
    committer = CommitClient(spec.commit_path) if spec.commit_path else None
    gateway = await build_gateway(spec.config, bus=_bus(spec), sock=sock, worker=(spec.index, spec.count),
                                  siblings=list(spec.siblings), store=committer.store if committer else None,
                                  alert_owner=spec.alert_owner or None)
    await gateway.start()
    print(f"ready {gateway.port}", flush=True)
    async def host_gone() -> None:
        await stdin_closed()
        await gateway.shutdown()

    watcher = asyncio.get_running_loop().create_task(host_gone())
    await gateway.run_forever()
    watcher.cancel()
    if committer is not None:
        await committer.close()
    return gateway.exit_code


def main() -> int:
    private_umask()
    spec = pickle.load(sys.stdin.buffer)
    if not isinstance(spec, WorkerSpec):
        print("error: gateway.worker is started by `gateway serve` (workers > 1), not by hand", file=sys.stderr)
        return 2
    config = spec.config
    setup_logging(config.log_level, config.log_format)
    os.environ.pop("NOTIFY_SOCKET", None)  # only the host process notifies systemd
    use_uvloop(config.uvloop)
    try:
        return asyncio.run(run_worker(spec))
    except GatewayError as err:
        print(f"error: worker {spec.index}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
