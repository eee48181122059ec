"""A throwaway redis-server on a free loopback port, without persistence unless asked.

    with RedisServer() as redis:
        url = redis.url                   # redis://127.0.0.1:PORT/0
        redis.restart()                   # same port; without persistence, an empty server
        redis.stop("kill")                # a crash
        redis.start()

``RedisServer(persistent=True)`` keeps an append-only file with ``appendfsync always`` in its
directory, so what was written survives a restart (a production-like Redis for durability
tests). ``python -m services.redis`` runs one until Ctrl-C and prints its URL.
"""

from __future__ import annotations

from pathlib import Path

from services.daemon import Daemon, run_until_signal

INSTALL_HINT = "install Redis: apt-get install -y redis-server"


class RedisServer(Daemon):
    name = "redis"
    binary = "redis-server"
    install_hint = INSTALL_HINT

    def __init__(self, port: int | None = None, parent_dir: str | Path | None = None,
                 binary: str | None = None, persistent: bool = False, start_timeout_s: float = 30.0) -> None:
        super().__init__(port, parent_dir, binary, start_timeout_s)
        self.persistent = persistent

    def argv(self, binary: str, base_dir: Path) -> list[str]:
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(base_dir),
                "--daemonize", "no", "--save", "", "--loglevel", "warning"]
        if self.persistent:
            return [*argv, "--appendonly", "yes", "--appendfsync", "always"]
        return [*argv, "--appendonly", "no"]

    def ready(self) -> bool:
        return self._talk(b"PING\r\n").startswith(b"+PONG")

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"


def main(argv: list[str] | None = None) -> int:
    return run_until_signal(RedisServer, argv, "Run a throwaway redis-server on loopback until Ctrl-C.")


if __name__ == "__main__":
    raise SystemExit(main())
