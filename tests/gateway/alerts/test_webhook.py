"""The webhook notifier against a real HTTP server on loopback (http.server in a thread):
signature, retries with backoff and their bound, refusals, timeouts, routing, counted drops,
config errors, secrets kept out of the logs."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.alerts.model import AlertEvent
from gateway.alerts.webhook import WebhookConfig, WebhookNotifier, load_secret, parse_webhooks
from gateway.errors import ConfigError
from tests.helpers.waiting import until
from tests.helpers.webhook import Receiver

SECRET = b"whsec-test-4f1d2c"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def event(kind: str = "raised", rule: str = "hot", severity: str = "major", alert_id: int = 7) -> AlertEvent:
    alert = {"id": alert_id, "device": "S-1", "metric": "temperature", "rule": rule, "type": "above",
             "severity": severity, "state": "active", "text": "temperature 31.0 °C above 30.0 °C", "value": 31.0}
    return AlertEvent(kind, alert, 1_764_080_000_000, None)


def hooks(url: str, **extra: Any) -> list[Any]:
    table = {"name": "ops", "url": url, "secret_env": "OPS_SECRET", "backoff_s": 0.5, "max_attempts": 3,
             "timeout_s": 0.3}
    table.update(extra)
    return parse_webhooks([table])


class Sleeps:
    """Records the backoff delays instead of waiting them out (the waits are the notifier's decision)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def notifier(config: list[Any], sleeps: Sleeps | None = None) -> WebhookNotifier:
    return WebhookNotifier(config, {"ops": SECRET}, source="gw-test", clock=lambda: 1_764_080_000.0,
                           sleep=sleeps or Sleeps())


def running(n: WebhookNotifier) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(n.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_a_signed_json_post(receiver: Receiver) -> None:
    async def body() -> None:
        n = notifier(hooks(receiver.url))
        task = running(n)
        n.on_event(event())
        await until(lambda: n.stats()["ops"]["sent"] == 1)
        await stop(task)

    asyncio.run(body())
    (request,) = receiver.requests
    headers = request["headers"]
    assert request["path"] == "/hooks/T0KEN-in-path?x=1"
    assert headers["Content-Type"] == "application/json" and headers["X-Edgewire-Event"] == "raised"
    timestamp = headers["X-Edgewire-Timestamp"]
    assert timestamp == "1764080000"
    expected = hmac.new(SECRET, timestamp.encode() + b"." + request["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Edgewire-Signature"], "sha256=" + expected)
    payload = json.loads(request["body"])
    assert payload["event"] == "raised" and payload["gateway"] == "gw-test" and payload["alert"]["id"] == 7
    assert payload["delivery"] == headers["X-Edgewire-Delivery"]


def test_retries_with_backoff_until_accepted(receiver: Receiver) -> None:
    receiver.script = [503, 500]
    sleeps = Sleeps()

    async def body() -> WebhookNotifier:
        n = notifier(hooks(receiver.url, max_attempts=3), sleeps)
        task = running(n)
        n.on_event(event())
        await until(lambda: n.stats()["ops"]["sent"] == 1)
        await stop(task)
        return n

    n = asyncio.run(body())
    assert len(receiver.requests) == 3
    assert len({r["headers"]["X-Edgewire-Delivery"] for r in receiver.requests}) == 1  # one delivery, 3 attempts
    first, second = sleeps.delays  # 0.5 s then 1 s, less up to 10 % of jitter
    assert 0.45 <= first <= 0.5 and 0.9 <= second <= 1.0
    assert n.stats()["ops"]["failed_attempts"] == 2 and n.stats()["ops"]["dropped"]["retries"] == 0


def test_the_retry_bound_drops_and_counts_then_moves_on(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.script = [500, 500, 500]
    caplog.set_level(logging.INFO, logger="edgewire")

    async def body() -> WebhookNotifier:
        n = notifier(hooks(receiver.url, max_attempts=3))
        task = running(n)
        n.on_event(event(alert_id=1))
        n.on_event(event("cleared", alert_id=1))
        await until(lambda: n.stats()["ops"]["sent"] == 1)
        await stop(task)
        return n

    n = asyncio.run(body())
    stats = n.stats()["ops"]
    assert stats["dropped"]["retries"] == 1 and stats["failed_attempts"] == 3 and stats["queued"] == 0
    assert [r["headers"]["X-Edgewire-Event"] for r in receiver.requests] == ["raised"] * 3 + ["cleared"]
    dropped = [r for r in caplog.records if r.getMessage() == "webhook_dropped"]
    assert len(dropped) == 1 and dropped[0].fields["reason"] == "retries"  # type: ignore[attr-defined]
    logged = " ".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert "T0KEN" not in logged and SECRET.decode() not in logged  # neither the URL's token nor the secret


def test_a_refusal_is_not_retried(receiver: Receiver) -> None:
    receiver.script = [400]

    async def body() -> WebhookNotifier:
        n = notifier(hooks(receiver.url))
        task = running(n)
        n.on_event(event())
        await until(lambda: n.stats()["ops"]["dropped"]["rejected"] == 1)
        await stop(task)
        return n

    n = asyncio.run(body())
    assert len(receiver.requests) == 1 and n.stats()["ops"]["failed_attempts"] == 0


def test_retry_after_is_honoured_within_the_bound(receiver: Receiver) -> None:
    receiver.script = ["429:7", "429:999"]
    sleeps = Sleeps()

    async def body() -> None:
        n = notifier(hooks(receiver.url, max_backoff_s=20), sleeps)
        task = running(n)
        n.on_event(event())
        await until(lambda: n.stats()["ops"]["sent"] == 1)
        await stop(task)

    asyncio.run(body())
    assert 6.3 <= sleeps.delays[0] <= 7.0 and 18.0 <= sleeps.delays[1] <= 20.0


def test_timeouts_and_refused_connections_are_retried_then_dropped(receiver: Receiver) -> None:
    receiver.script = ["hang"]
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"  # bound, never listening: refused

    async def body() -> tuple[WebhookNotifier, WebhookNotifier]:
        slow = notifier(hooks(receiver.url, timeout_s=0.2, max_attempts=2))
        dead = notifier(hooks(dead_url, max_attempts=2))
        tasks = [running(slow), running(dead)]
        slow.on_event(event())
        dead.on_event(event())
        await until(lambda: slow.stats()["ops"]["sent"] == 1 and dead.stats()["ops"]["dropped"]["retries"] == 1)
        for task in tasks:
            await stop(task)
        return slow, dead

    slow, dead = asyncio.run(body())
    assert slow.stats()["ops"]["failed_attempts"] == 1  # the hung attempt timed out, the retry went through
    assert dead.stats()["ops"]["failed_attempts"] == 2


def test_routing_by_rule_severity_and_event(receiver: Receiver) -> None:
    config = parse_webhooks([
        {"name": "pager", "url": receiver.url + "&to=pager", "severities": ["critical"]},
        {"name": "ops", "url": receiver.url + "&to=ops", "rules": ["temperature_*"],
         "events": ["raised", "acknowledged", "cleared"]},
    ])

    async def body() -> WebhookNotifier:
        n = WebhookNotifier(config, {}, sleep=Sleeps())
        task = running(n)
        n.on_event(event(rule="temperature_above_30", severity="critical"))  # both
        n.on_event(event("acknowledged", rule="temperature_above_30", severity="critical"))  # ops only
        n.on_event(event(rule="humidity_above_80", severity="major"))  # nobody
        n.on_event(event("updated", rule="temperature_above_30"))  # nobody
        await until(lambda: sum(s["sent"] for s in n.stats().values()) == 3)
        await stop(task)
        return n

    asyncio.run(body())
    got = sorted((r["path"].rsplit("=", 1)[1], r["headers"]["X-Edgewire-Event"]) for r in receiver.requests)
    assert got == [("ops", "acknowledged"), ("ops", "raised"), ("pager", "raised")]
    assert all("X-Edgewire-Signature" not in r["headers"] for r in receiver.requests)  # no secret: unsigned


def test_a_full_queue_drops_the_oldest_and_counts() -> None:
    async def body() -> WebhookNotifier:
        n = notifier(hooks("http://127.0.0.1:9/x", queue=2))  # not running: nothing is sent
        for i in range(5):
            n.on_event(event(alert_id=i))
        await n.close(timeout_s=0)
        return n

    n = asyncio.run(body())
    assert n.stats()["ops"]["dropped"] == {"retries": 0, "rejected": 0, "queue_full": 3, "shutdown": 2}


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    cases = [
        ([{"url": "http://x"}], "webhooks: webhook 1: name: missing"),
        ([{"name": "a", "url": "ftp://x"}], "webhooks: webhook 1 (a): url: must be an http:// or https:// URL"),
        ([{"name": "a", "url": "https://u:p@x/"}], "url: must not carry a user or password"),
        ([{"name": "a", "url": "http://x", "severities": ["high"]}], "severities: 'high' is not one of critical"),
        ([{"name": "a", "url": "http://x", "max_attempts": 0}], "max_attempts: must be a whole number"),
        ([{"name": "a", "url": "http://x", "retries": 3}], "unknown key 'retries'"),
        ([{"name": "a", "url": "http://x", "secret_file": "f", "secret_env": "E"}], "give one of them"),
        ([{"name": "a", "url": "http://x"}, {"name": "a", "url": "http://y"}], "another webhook is called 'a'"),
    ]
    for tables, message in cases:
        with pytest.raises(ConfigError) as err:
            parse_webhooks(tables)
        assert message in str(err.value), (tables, str(err.value))
    (hook,) = parse_webhooks([{"name": "a", "url": "http://x", "secret_env": "A_SECRET"}])
    with pytest.raises(ConfigError, match="A_SECRET is not set"):
        load_secret(hook, env={})
    assert load_secret(hook, env={"A_SECRET": " s3cret \n"}) == b"s3cret"
    secret_file = tmp_path / "hook.secret"
    secret_file.write_bytes(b"from-a-file\n")
    secret_file.chmod(0o600)
    (hook,) = parse_webhooks([{"name": "a", "url": "http://x", "secret_file": str(secret_file)}])
    assert load_secret(hook) == b"from-a-file"
    (hook,) = parse_webhooks([{"name": "a", "url": "http://x", "secret_file": str(tmp_path / "missing")}])
    with pytest.raises(ConfigError, match="secret_file: cannot read"):
        load_secret(hook)


def test_close_delivers_what_is_queued_even_with_the_senders_stopped(receiver: Receiver) -> None:
    async def body() -> WebhookNotifier:
        n = notifier(hooks(receiver.url))  # never run: as after the gateway stopped its tasks
        n.on_event(event(alert_id=1))
        n.on_event(event("cleared", alert_id=1))
        await n.close(timeout_s=10)
        return n

    n = asyncio.run(body())
    assert n.stats()["ops"]["sent"] == 2 and n.stats()["ops"]["dropped"]["shutdown"] == 0
    assert [r["headers"]["X-Edgewire-Event"] for r in receiver.requests] == ["raised", "cleared"]


def test_a_table_with_only_name_and_url_takes_every_default_of_webhookconfig() -> None:
    (hook,) = parse_webhooks([{"name": "a", "url": "http://x"}])
    assert hook == WebhookConfig("a", "http://x")
    assert (hook.events, hook.timeout_s, hook.max_attempts, hook.queue) == (("raised", "cleared"), 10.0, 6, 1000)
