"""Connections before authentication: a budget in total and per client address, where a newcomer
always gets a slot, and the least advanced, oldest waiting connection gives it up.

A connection *waits* from the moment it is accepted until a device authenticates on it (at the
upgrade or in its first frame), a dashboard or admin upgrade is let through, or it closes. At most
``max_unauthenticated`` connections wait in all and ``max_unauthenticated_per_address`` per TCP
peer address (peers in ``trusted_proxies`` have only the total budget: their clients share the
proxy's address). A new connection is never refused: when a budget is full, one waiting connection
of that budget (of the same address for the per-address one) is closed to make room, in the same
event-loop step that accepted the new one. The one closed is the oldest of the least advanced stage:

- ``silent``: not a byte received yet; answered ``503 too_many_connections`` and closed;
- ``partial``: some bytes, no complete HTTP request yet (a slow sender); answered 503 the same way;
- ``requested``: its HTTP request is complete (a WebSocket handshake under way or done, its first
  frame awaited; a plain HTTP request being answered); reset (``transport.abort()``), oldest first
  by the time its request completed.

So a flood from one address, even the devices' own (a site behind one NAT router), cannot lock
anyone out: once a device's request is in, it outlives any number of silent or slow connections
and ``max_unauthenticated_per_address`` newer complete requests from its address
(``max_unauthenticated`` from anywhere), which cost the attacker a full request each and the
gateway its parsing. Every waiting connection also has one deadline, ``auth_timeout_s`` from accept,
for its handshake and its first-frame authentication together. docs/protocol.md section 1.2 has
the reasoning.

``raise_open_files_limit`` lifts the soft RLIMIT_NOFILE to the hard limit at start: Debian's
default soft limit of 1024 would otherwise cap the gateway near 1000 connections.
"""

from __future__ import annotations

import ipaddress
import logging
import resource
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from gateway.logs import log

TOO_MANY = "too_many_connections"  # the code of the 503 an evicted silent or partial connection gets
_BODY = b'{"code": "too_many_connections", "message": "too many connections waiting to authenticate; retry later"}'
REFUSED_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 5\r\n"
                    b"Connection: close\r\nContent-Length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)
NR_OPEN = "/proc/sys/fs/nr_open"
SILENT, PARTIAL, REQUESTED = 0, 1, 2  # how far a waiting connection got (the order of eviction)
STAGES = ("silent", "partial", "requested")
CAPS = ("per_address", "total")
LOG_EVERY_S = 60.0  # evictions are logged at most this often (one line with the counts since)


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


class Waiting(Protocol):
    """A connection Admission counts (gateway.conn.EdgeConnection); Admission keeps its fields."""

    waiting_address: str | None  # its peer address while it waits, else None
    waiting_stage: int
    waiting_since: float  # when it was accepted (Admission's clock)

    def evict(self, stage: int) -> None:
        """Close at once (Admission no longer counts it): 503 if ``stage`` < REQUESTED, else a reset."""


class Admission:
    """The waiting connections, per stage in the order they reached it, in all and per address.

    Per process: each worker of a multi-process gateway has its own (its budgets are then per
    worker). ``clock`` is the event loop's (``loop.time``), the one websockets' handshake
    timeout runs on, so that a connection closed at its deadline is counted as timed out."""

    def __init__(self, max_total: int, max_per_address: int, trusted_proxies: Iterable[str] = (),
                 deadline_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.deadline_s = deadline_s
        self.clock = clock
        self.proxies = tuple(ipaddress.ip_network(p, strict=False) for p in trusted_proxies)
        self.total = 0
        self.stages: tuple[dict[Waiting, None], ...] = ({}, {}, {})  # oldest first, in all
        self.by_address: dict[str, tuple[dict[Waiting, None], ...]] = {}  # the same per address
        self.evicted = {(cap, stage): 0 for cap in CAPS for stage in STAGES}
        self.timed_out = dict.fromkeys(STAGES, 0)
        self._proxy_cache: dict[str, bool] = {}
        self._log_at = 0.0  # when the next eviction may be logged
        self._unlogged = 0  # evictions since the last log line

    @property
    def waiting(self) -> list[Any]:
        """Every connection waiting now (to abort them at shutdown)."""
        return [conn for stage in self.stages for conn in stage]

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

    def admit(self, conn: Waiting, address: str) -> None:
        """Count a new connection from ``address`` as silent; when a budget is full, evict first."""
        peer = self.by_address.get(address)
        if peer is None:
            peer = self.by_address[address] = ({}, {}, {})
        elif (len(peer[0]) + len(peer[1]) + len(peer[2]) >= self.max_per_address
              and not (self.proxies and self._is_proxy(address))):
            self._evict(peer, "per_address", address)
            self.by_address[address] = peer  # (dropped if that emptied it)
        if self.total >= self.max_total:
            self._evict(self.stages, "total", address)
            self.by_address[address] = peer
        conn.waiting_address = address
        conn.waiting_stage = SILENT
        conn.waiting_since = self.clock()
        peer[SILENT][conn] = None
        self.stages[SILENT][conn] = None
        self.total += 1

    def advance(self, conn: Waiting, stage: int) -> None:
        """``conn`` got to ``stage`` (a later one): it moves to the end of that stage's line."""
        address = conn.waiting_address
        if address is None or stage <= conn.waiting_stage:
            return
        peer = self.by_address[address]
        old = conn.waiting_stage
        del peer[old][conn], self.stages[old][conn]
        peer[stage][conn] = None
        self.stages[stage][conn] = None
        conn.waiting_stage = stage

    def release(self, conn: Waiting) -> None:
        """``conn`` authenticated (or was let through): it no longer waits."""
        address = conn.waiting_address
        if address is None:
            return
        conn.waiting_address = None
        stage = conn.waiting_stage
        peer = self.by_address[address]
        del peer[stage][conn], self.stages[stage][conn]
        if not (peer[0] or peer[1] or peer[2]):
            del self.by_address[address]
        self.total -= 1

    def closed(self, conn: Waiting) -> None:
        """``conn`` closed: released; counted as timed out if it was still waiting at its deadline."""
        if conn.waiting_address is not None:
            if self.clock() - conn.waiting_since >= self.deadline_s:
                self.timed_out[STAGES[conn.waiting_stage]] += 1
            self.release(conn)

    def time_left(self, conn: Waiting) -> float:
        """Seconds until ``conn``'s deadline for authenticating (0 when past; the whole deadline
        for a connection that is not counted)."""
        if conn.waiting_address is None:
            return self.deadline_s
        return max(0.0, conn.waiting_since + self.deadline_s - self.clock())

    def _evict(self, pool: tuple[dict[Waiting, None], ...], cap: str, address: str) -> None:
        """Close the oldest connection of ``pool``'s least advanced stage (the budget ``cap`` is full;
        ``address``: the newcomer's)."""
        stage = SILENT if pool[SILENT] else PARTIAL if pool[PARTIAL] else REQUESTED
        victim = next(iter(pool[stage]))
        self.release(victim)
        self.evicted[cap, STAGES[stage]] += 1
        self._unlogged += 1
        now = self.clock()
        if now >= self._log_at:
            log("connections_evicted", logging.WARNING, evicted=self._unlogged, budget=cap, stage=STAGES[stage],
                address=address, waiting=self.total, per_address_max=self.max_per_address, total_max=self.max_total)
            self._unlogged = 0
            self._log_at = now + LOG_EVERY_S
        victim.evict(stage)

    @property
    def answered(self) -> int:
        """Evicted connections that were answered ``503 too_many_connections``."""
        return sum(n for (_, stage), n in self.evicted.items() if stage != "requested")

    def metric_lines(self) -> list[str]:
        """The admission counters for /metrics (HELP, TYPE and samples)."""
        name, timed = "edgewire_connections_evicted_total", "edgewire_connections_timed_out_total"
        return [f"# HELP {name} Connections closed before authenticating to make room for a newer one: the "
                "budget that was full (max_unauthenticated_per_address, max_unauthenticated) and how far the "
                "closed one had got (silent: no byte; partial: an incomplete HTTP request; requested: a complete "
                "one, not authenticated).", f"# TYPE {name} counter",
                *(f'{name}{{cap="{cap}",stage="{stage}"}} {n}' for (cap, stage), n in self.evicted.items()),
                f"# HELP {timed} Connections closed at their deadline for authenticating (auth_timeout_s from "
                "accept), by how far they had got.", f"# TYPE {timed} counter",
                *(f'{timed}{{stage="{stage}"}} {n}' for stage, n in self.timed_out.items())]
