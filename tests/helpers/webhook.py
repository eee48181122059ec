"""A real HTTP server on loopback (http.server in a thread) that records webhook POSTs."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """A loopback HTTP server answering each POST with the next scripted status (then 200)."""

    def __init__(self) -> None:
        self.script: list[int | str] = []  # a status, or "hang" (answer after 1 s), or "429:<seconds>"
        self.requests: list[dict[str, Any]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                step = receiver.script.pop(0) if receiver.script else 200
                with receiver.arrived:
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    receiver.arrived.notify_all()
                if step == "hang":
                    time.sleep(1.0)
                    step = 200
                extra = {}
                if isinstance(step, str) and step.startswith("429:"):
                    extra["Retry-After"] = step[4:]
                    step = 429
                self.send_response(int(step))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T0KEN-in-path?x=1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Wait until ``count`` requests arrived (an event, not a sleep); return them."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"{len(self.requests)} webhook requests after {timeout} s, expected {count}")
            return list(self.requests)
