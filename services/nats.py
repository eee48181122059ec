"""A throwaway nats-server with JetStream on a free loopback port, its store in a temporary directory.

    with NatsServer() as nats:
        url = nats.url                    # nats://127.0.0.1:PORT
        nats.restart()                    # same port, same JetStream store: streams and KV survive
        nats.stop("kill")                 # a crash
        nats.start()

``python -m services.nats`` runs one until Ctrl-C and prints its URL.
"""

from __future__ import annotations

import json
from pathlib import Path

from services.daemon import Daemon, run_until_signal

INSTALL_HINT = "install NATS: apt-get install -y nats-server"


class NatsServer(Daemon):
    name = "nats"
    binary = "nats-server"
    install_hint = INSTALL_HINT

    def __init__(self, port: int | None = None, parent_dir: str | Path | None = None,
                 binary: str | None = None, jetstream: bool = True, max_memory: str = "64MB",
                 max_file: str = "1GB", start_timeout_s: float = 30.0) -> None:
        super().__init__(port, parent_dir, binary, start_timeout_s)
        self.jetstream = jetstream
        self.max_memory = max_memory
        self.max_file = max_file

    def prepare(self, base_dir: Path) -> None:
        lines = ["# written by services.nats", 'host: "127.0.0.1"', "max_payload: 1MB"]
        if self.jetstream:
            store = base_dir / "jetstream"
            lines += ["jetstream {", f"  store_dir: {json.dumps(str(store))}",
                      f"  max_memory_store: {self.max_memory}", f"  max_file_store: {self.max_file}", "}"]
        (base_dir / "nats.conf").write_text("\n".join(lines) + "\n")

    def argv(self, binary: str, base_dir: Path) -> list[str]:
        return [binary, "--config", str(base_dir / "nats.conf"), "--addr", "127.0.0.1", "--port", str(self.port)]

    def ready(self) -> bool:
        # The server greets every client with INFO {...}; with JetStream on, the INFO says so.
        greeting = self._talk(b"").split(b"\r\n", 1)[0]
        if not greeting.startswith(b"INFO {"):
            return False
        try:
            return not self.jetstream or bool(json.loads(greeting[5:]).get("jetstream"))
        except ValueError:
            return False

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:PORT``."""
        return f"nats://127.0.0.1:{self.port}"


def main(argv: list[str] | None = None) -> int:
    return run_until_signal(NatsServer, argv, "Run a throwaway nats-server with JetStream on loopback until Ctrl-C.")


if __name__ == "__main__":
    raise SystemExit(main())
