"""Webhook notifications: alert events POSTed as JSON, signed, retried, routed, and counted.

Each ``[[webhooks]]`` table (docs/alerts.md) is one target with its own bounded queue and
sender task, so a slow or dead endpoint never delays another or the engine. A target takes
the events its routing selects (``rules``: rule ids or glob patterns, ``severities``,
``events``). A delivery is retried on a connection error, a timeout, 408, 429 or 5xx, after
``backoff_s`` doubling up to ``max_backoff_s`` (or the server's Retry-After, within that
bound), at most ``max_attempts`` times; then it is dropped. Other 4xx answers are not
retried (the receiver refused it). Every drop is counted by reason (``retries``,
``rejected``, ``queue_full``, ``shutdown``) and logged, and shows in /metrics.

Signature: ``X-Edgewire-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``
with ``X-Edgewire-Timestamp: <Unix seconds>`` (a receiver rejects stale timestamps: replays).
The secret comes from ``secret_file`` or the environment variable ``secret_env``; it is never
logged, and neither is the URL (it may hold a token): logs name the webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import hmac
import logging
import os
import random
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from gateway.alerts import http_post
from gateway.alerts.model import CLEARED, EVENT_KINDS, RAISED, AlertEvent
from gateway.alerts.rules.base import SEVERITIES, check_id
from gateway.errors import ConfigError
from gateway.logs import log
from gateway.secret_files import read_secret_bytes

SIGNATURE_HEADER = "X-Edgewire-Signature"
TIMESTAMP_HEADER = "X-Edgewire-Timestamp"
EVENT_HEADER = "X-Edgewire-Event"
DELIVERY_HEADER = "X-Edgewire-Delivery"
RETRY_STATUSES = frozenset({408, 425, 429})
DROP_REASONS = ("retries", "rejected", "queue_full", "shutdown")
Post = Callable[[str, bytes, dict[str, str], float], Awaitable[tuple[int, dict[str, str]]]]


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    name: str
    url: str
    secret_file: str = ""
    secret_env: str = ""
    rules: tuple[str, ...] = ()  # rule ids or glob patterns; empty: every rule
    severities: tuple[str, ...] = ()  # empty: every severity
    events: tuple[str, ...] = (RAISED, CLEARED)
    timeout_s: float = 10.0
    max_attempts: int = 6
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    queue: int = 1000

    def as_dict(self) -> dict[str, Any]:
        """For display (``edgewire-gateway config``): the URL without its path and query, no secret."""
        parts = http_post.check_url(self.url)
        return {"name": self.name, "url": f"{parts.scheme}://{parts.netloc}/...", "rules": list(self.rules),
                "severities": list(self.severities), "events": list(self.events), "signed": bool(
                    self.secret_file or self.secret_env)}


# How each key of a [[webhooks]] table is checked; its default is WebhookConfig's.
_FIELDS: dict[str, str] = {
    "name": "id", "url": "url", "secret_file": "str", "secret_env": "str", "rules": "names",
    "severities": "severities", "events": "events", "timeout_s": "seconds", "max_attempts": "count",
    "backoff_s": "seconds", "max_backoff_s": "seconds", "queue": "count",
}
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(WebhookConfig) if f.default is not MISSING}


def _field(key: str, value: Any, where: str) -> Any:
    kind = _FIELDS[key]
    where = f"{where}: {key}"
    if kind == "id":
        try:
            return check_id(value, where)
        except ConfigError:
            raise ConfigError(f"{where}: must be 1-64 letters, digits, _ - . or :") from None
    if kind == "url":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a URL string")
        try:
            http_post.check_url(value)
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
        return value
    if kind == "str":
        if not isinstance(value, str) or len(value) > 4096:
            raise ConfigError(f"{where}: must be a string")
        return value
    if kind in ("names", "severities", "events"):
        choices = {"severities": SEVERITIES, "events": EVENT_KINDS}.get(kind)
        if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= 64 for v in value):
            raise ConfigError(f"{where}: must be a list of names")
        for item in value:
            if choices and item not in choices:
                raise ConfigError(f"{where}: {item[:40]!r} is not one of {', '.join(choices)}")
        return tuple(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: must be a number, not {str(value)[:40]!r}")
    if kind == "count":
        if value != int(value) or not 1 <= value <= 1_000_000:
            raise ConfigError(f"{where}: must be a whole number from 1 to 1000000")
        return int(value)
    if not 0 < value <= 3600:
        raise ConfigError(f"{where}: must be more than 0 and at most 3600 seconds")
    return float(value)


def parse_webhooks(value: Any, where: str = "webhooks") -> list[WebhookConfig]:
    """The ``[[webhooks]]`` tables, checked; ConfigError naming the webhook and the key."""
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of [[webhooks]] tables (name, url, ...)")
    hooks: list[WebhookConfig] = []
    for index, item in enumerate(value, start=1):
        label = f"{where}: webhook {index}"
        if not isinstance(item, dict):
            raise ConfigError(f"{label}: must be a table (name, url, secret_file, ...)")
        if "name" in item:
            label += f" ({str(item['name'])[:64]})"
        for key in item:
            if key not in _FIELDS:
                raise ConfigError(f"{label}: unknown key {str(key)[:40]!r} (a webhook takes {', '.join(_FIELDS)})")
        for key in ("name", "url"):
            if key not in item:
                raise ConfigError(f"{label}: {key}: missing")
        values = {key: _field(key, item[key], label) if key in item else _DEFAULTS[key] for key in _FIELDS}
        if values["secret_file"] and values["secret_env"]:
            raise ConfigError(f"{label}: secret_file, secret_env: give one of them, not both")
        if values["max_backoff_s"] < values["backoff_s"]:
            raise ConfigError(f"{label}: max_backoff_s: must be at least backoff_s")
        hook = WebhookConfig(**values)
        if any(h.name == hook.name for h in hooks):
            raise ConfigError(f"{label}: name: another webhook is called {hook.name!r}")
        hooks.append(hook)
    return hooks


def load_secret(hook: WebhookConfig, env: Mapping[str, str] | None = None,
                read_file: Callable[[Path, str], bytes] | None = None) -> bytes | None:
    """The webhook's signing secret (None: unsigned, logged as a warning); ConfigError if unreadable."""
    what = f"webhooks: {hook.name}"
    if hook.secret_env:
        value = (os.environ if env is None else env).get(hook.secret_env, "").strip()
        if not value:
            raise ConfigError(f"{what}: secret_env: the environment variable {hook.secret_env} is not set or empty")
        return value.encode()
    if hook.secret_file:
        data = (read_file or read_secret_bytes)(Path(hook.secret_file), f"{what}: secret_file").strip()
        if not data:
            raise ConfigError(f"{what}: secret_file: {hook.secret_file} is empty")
        return data
    log("webhook_unsigned", logging.WARNING, webhook=hook.name,
        hint="set secret_file or secret_env so receivers can check the requests come from this gateway")
    return None


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


@dataclass
class Delivery:
    event: str
    body: bytes
    delivery_id: str


@dataclass
class Target:
    config: WebhookConfig
    secret: bytes | None
    queue: deque[Delivery] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sent: int = 0
    failed_attempts: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))

    def wants(self, event: AlertEvent) -> bool:
        cfg = self.config
        if event.kind not in cfg.events:
            return False
        if cfg.severities and event.alert["severity"] not in cfg.severities:
            return False
        return not cfg.rules or any(fnmatch.fnmatchcase(event.alert["rule"], p) for p in cfg.rules)

    def drop(self, reason: str, delivery: Delivery, **fields: Any) -> None:
        self.dropped[reason] += 1
        log("webhook_dropped", logging.ERROR, webhook=self.config.name, reason=reason, alert_event=delivery.event,
            delivery=delivery.delivery_id, dropped=self.dropped[reason], **fields)


class WebhookNotifier:
    """Listens to the alert engine and delivers to every configured webhook."""

    def __init__(self, hooks: list[WebhookConfig], secrets_by_name: dict[str, bytes | None], *, source: str = "",
                 clock: Callable[[], float] = time.time, post: Post = http_post.post,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.targets = [Target(hook, secrets_by_name.get(hook.name)) for hook in hooks]
        self.source = source  # the gateway's name in the payload
        self.clock = clock
        self.post = post
        self.sleep = sleep

    def on_event(self, event: AlertEvent) -> None:
        """The engine's listener: queue the event for every webhook that routes it (no I/O)."""
        for target in self.targets:
            if not target.wants(event):
                continue
            delivery_id = secrets.token_hex(8)  # the same for every attempt: receivers dedupe on it
            body = orjson.dumps(dict(event.as_dict(), gateway=self.source, delivery=delivery_id))
            if len(target.queue) >= target.config.queue:
                target.drop("queue_full", target.queue.popleft())
            target.queue.append(Delivery(event.kind, body, delivery_id))
            target.wake.set()

    async def run(self) -> None:
        """One sender per webhook, for the gateway's life (a supervised task)."""
        if not self.targets:
            await asyncio.Event().wait()
        async with asyncio.TaskGroup() as group:
            for target in self.targets:
                group.create_task(self._sender(target))

    async def _sender(self, target: Target) -> None:
        while True:
            if not target.queue:
                target.wake.clear()
                await target.wake.wait()
                continue
            await self._next(target)

    async def _next(self, target: Target) -> None:
        """Deliver the head of the queue (under the target's lock: the sender and ``close`` take turns)."""
        async with target.lock:
            if not target.queue:
                return
            delivery = target.queue[0]
            await self._deliver(target, delivery)
            if target.queue and target.queue[0] is delivery:
                target.queue.popleft()

    async def _deliver(self, target: Target, delivery: Delivery) -> None:
        cfg = target.config
        for attempt in range(1, cfg.max_attempts + 1):
            timestamp = str(int(self.clock()))
            headers = {"Content-Type": "application/json", "User-Agent": "edgewire-gateway",
                       EVENT_HEADER: delivery.event, DELIVERY_HEADER: delivery.delivery_id,
                       TIMESTAMP_HEADER: timestamp}
            if target.secret is not None:
                headers[SIGNATURE_HEADER] = sign(target.secret, timestamp, delivery.body)
            retry_after = 0.0
            try:
                status, answer = await self.post(cfg.url, delivery.body, headers, cfg.timeout_s)
            except (OSError, TimeoutError, ValueError) as err:
                problem = f"{type(err).__name__}: {err}"[:200]
            else:
                if 200 <= status < 300:
                    target.sent += 1
                    return
                if 400 <= status < 500 and status not in RETRY_STATUSES:
                    target.drop("rejected", delivery, status=status)
                    return
                problem = f"HTTP {status}"
                retry_after = _retry_after(answer.get("retry-after"))
            target.failed_attempts += 1
            if attempt == cfg.max_attempts:
                target.drop("retries", delivery, attempts=attempt, error=problem)
                return
            delay = min(cfg.max_backoff_s, max(cfg.backoff_s * 2 ** (attempt - 1), retry_after))
            delay *= random.uniform(0.9, 1.0)  # jitter: many gateways do not retry in step
            log("webhook_retry", logging.WARNING, webhook=cfg.name, delivery=delivery.delivery_id, attempt=attempt,
                retry_in_s=round(delay, 2), error=problem)
            await self.sleep(delay)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued within ``timeout_s`` (whether the senders still run or not), then
        drop and count the rest (reason ``shutdown``)."""
        async def deliver_all(target: Target) -> None:
            while target.queue:
                await self._next(target)

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(deliver_all(t) for t in self.targets))
        for target in self.targets:
            while target.queue:
                target.drop("shutdown", target.queue.popleft())

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per webhook: sent, failed attempts, drops by reason, queued (for /metrics)."""
        return {t.config.name: {"sent": t.sent, "failed_attempts": t.failed_attempts, "dropped": dict(t.dropped),
                                "queued": len(t.queue)} for t in self.targets}


def _retry_after(value: str | None) -> float:
    if value is None:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        return 0.0  # an HTTP date: the backoff decides
