"""Connections before authentication: capped in total and per client address, refused at accept.

A connection is *unauthenticated* from the moment it is accepted until a device authenticates
on it (at the upgrade or in its first frame) or a dashboard or admin upgrade is let through.
Beyond ``max_unauthenticated`` such connections in all, or ``max_unauthenticated_per_address``
from one TCP peer, a new connection is answered ``503`` with ``Connection: close`` in the
same event-loop step that accepted it: no HTTP parsing, no task, no timer. Authenticated
devices are not counted, so a flood from one address never locks out the fleet. Peers in
``trusted_proxies`` have only the total cap (their clients share the proxy's address).

``raise_open_files_limit`` lifts the soft RLIMIT_NOFILE to the hard limit at start: Debian's
default soft limit of 1024 would otherwise cap the gateway near 1000 connections.
"""

from __future__ import annotations

import ipaddress
import resource
from collections.abc import Iterable
from typing import Any

TOO_MANY = "too_many_connections"  # the refusal's code; /metrics counts refusals per reason
_BODY = b'{"code": "too_many_connections", "message": "too many connections waiting to authenticate; retry later"}'
REFUSED_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 5\r\n"
                    b"Connection: close\r\nContent-Length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)
NR_OPEN = "/proc/sys/fs/nr_open"


def raise_open_files_limit() -> tuple[int, int, int]:
    """Set the soft open-files limit to the hard one; return (soft before, soft now, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open(NR_OPEN) as handle:
                target = int(handle.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft, hard
        return soft, target, hard
    return soft, soft, hard


class Admission:
    """Counts unauthenticated connections per peer address; says which new ones to refuse."""

    def __init__(self, max_total: int, max_per_address: int, trusted_proxies: Iterable[str] = ()) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.proxies = tuple(ipaddress.ip_network(p, strict=False) for p in trusted_proxies)
        self.total = 0
        self.by_address: dict[str, int] = {}
        self.refused = {"total": 0, "per_address": 0}
        self.waiting: set[Any] = set()  # the connections counted now (gateway.conn.EdgeConnection)
        self._proxy_cache: dict[str, bool] = {}

    def _is_proxy(self, address: str) -> bool:
        known = self._proxy_cache.get(address)
        if known is None:
            try:
                ip = ipaddress.ip_address(address)
                known = any(ip.version == net.version and ip in net for net in self.proxies)
            except ValueError:
                known = False
            if len(self._proxy_cache) < 4096:
                self._proxy_cache[address] = known
        return known

    def admit(self, address: str) -> str | None:
        """Count a new connection from ``address``; or return why it is refused (not counted)."""
        if self.total >= self.max_total:
            self.refused["total"] += 1
            return "total"
        count = self.by_address.get(address, 0)
        if count >= self.max_per_address and not (self.proxies and self._is_proxy(address)):
            self.refused["per_address"] += 1
            return "per_address"
        self.total += 1
        self.by_address[address] = count + 1
        return None

    def release(self, address: str) -> None:
        """The connection authenticated or closed: it no longer counts."""
        self.total -= 1
        count = self.by_address.get(address, 0) - 1
        if count > 0:
            self.by_address[address] = count
        else:
            self.by_address.pop(address, None)
