"""A small HTTP/1.1 POST client on asyncio streams (the webhook notifier's only need).

One request per connection (``Connection: close``), http:// or https:// (the system's CA
store, host name checked). The answer's status and headers are read; its body is not.
Everything is bounded: the whole exchange by ``timeout``, the status line and headers by
size. Errors are ``OSError`` (refused, reset, TLS) or ``TimeoutError``; a reply that is not
HTTP is ``ValueError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.parse

MAX_HEADER_LINE = 8192
MAX_HEADERS = 100


def check_url(url: str) -> urllib.parse.SplitResult:
    """The URL's parts, or ValueError saying what is wrong with it."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry a user or password (use the webhook's secret)")
    if parts.fragment:
        raise ValueError("must not have a #fragment")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    return parts


async def post(url: str, body: bytes, headers: dict[str, str], timeout: float,
               ssl_context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str]]:
    """POST ``body``; return (status, headers with lower-case names)."""
    parts = check_url(url)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"POST {target} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}",
             "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    async with asyncio.timeout(timeout):
        context = (ssl_context or ssl.create_default_context()) if secure else None
        reader, writer = await asyncio.open_connection(host, port, ssl=context,
                                                       server_hostname=host if secure else None,
                                                       limit=MAX_HEADER_LINE)
        try:
            writer.write(request)
            await writer.drain()
            status_line = await reader.readline()
            fields = status_line.decode("latin-1").split(" ", 2)
            if len(fields) < 2 or not fields[0].startswith("HTTP/1.") or not fields[1].isdigit():
                raise ValueError(f"not an HTTP reply: {status_line[:60]!r}")
            status = int(fields[1])
            answer: dict[str, str] = {}
            for _ in range(MAX_HEADERS):
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                answer[name.strip().lower()] = value.strip()
            return status, answer
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
