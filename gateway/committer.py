"""``python -m gateway.committer``: the commit process of a gateway host (``commit_process = true``,
gateway/workers.py, gateway/commit_link.py).

It reads ``(config, socket path)`` (a pickle) from stdin, opens the storage, serves the workers'
``store()`` requests on the socket, prints ``ready 0`` once it serves, and runs until SIGTERM or
until its stdin ends (the host is gone): then it stops accepting, finishes the commits in
flight and closes the storage.
"""

from __future__ import annotations

import asyncio
import pickle
import signal
import sys

from gateway.commit_link import CommitServer
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.ipc import stdin_closed
from gateway.logs import log, setup_logging
from gateway.secret_files import private_umask
from gateway.storage.backends import open_storage


async def run(config: GatewayConfig, path: str) -> int:
    storage = open_storage(config)
    await storage.open()
    server = CommitServer(storage, path)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def host_gone() -> None:
        await stdin_closed()
        stop.set()

    watcher = loop.create_task(host_gone())
    print("ready 0", flush=True)
    log("commit_process_started", storage=config.storage_kind)
    await stop.wait()
    watcher.cancel()
    await server.close()
    await storage.close()
    log("commit_process_stopped", requests=server.requests)
    return 0


def main() -> int:
    private_umask()
    config, path = pickle.load(sys.stdin.buffer)
    if not isinstance(config, GatewayConfig):
        print("error: gateway.committer is started by `gateway serve`, not by hand", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)
    try:
        return asyncio.run(run(config, path))
    except GatewayError as err:
        print(f"error: commit process: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
