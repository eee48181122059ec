"""Registry: tokens, digests, add/rotate/revoke/disable/allow, token key and admin token files."""

from __future__ import annotations

import asyncio
import hmac
import os
import re
import stat
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway import registry as reg
from gateway.errors import ConfigError, RegistryError
from gateway.registry import Registry
from gateway.storage.sqlite import SQLiteStorage
from tests.helpers.storage import with_sqlite

KEY = b"k" * 32


def with_registry(tmp_path: Path, body: Callable[[Registry, SQLiteStorage], Awaitable[Any]]) -> Any:
    return with_sqlite(tmp_path / "e.db",
                       lambda storage: body(Registry(storage, KEY, clock=lambda: 1_764_080_000.5), storage))


def test_token_format_and_digest() -> None:
    tokens = {reg.generate_token() for _ in range(100)}
    assert len(tokens) == 100
    for token in tokens:
        assert re.fullmatch(r"ewt_[A-Za-z0-9_-]{32}", token)
    token = tokens.pop()
    digest = reg.token_digest(KEY, token)
    assert len(digest) == 32
    assert digest == hmac.new(KEY, token.encode(), "sha256").digest()
    assert digest != reg.token_digest(b"j" * 32, token)


def test_add_stores_only_the_digest(tmp_path: Path) -> None:
    async def body(r: Registry, s: SQLiteStorage) -> str:
        token = await r.add("S-1", label="bench", allow=["10.1.2.3/8"])
        record = await s.get_device("S-1")
        assert record is not None
        assert record.enabled and record.label == "bench" and record.allow_cidrs == ["10.0.0.0/8"]
        assert record.token_digest == reg.token_digest(KEY, token)
        assert record.created_ms == record.token_created_ms == 1_764_080_000_500
        assert await s.device_by_token_digest(reg.token_digest(KEY, token)) == record
        # Before close the rows may still be in the WAL: check both files.
        for path in tmp_path.glob("e.db*"):
            assert token.encode() not in path.read_bytes()
            assert token[4:].encode() not in path.read_bytes()
        return token

    token = with_registry(tmp_path, body)
    data = b"".join(p.read_bytes() for p in tmp_path.glob("e.db*"))
    assert token.encode() not in data
    assert token[4:].encode() not in data
    assert reg.token_digest(KEY, token) in data


def test_add_refuses_duplicates_and_bad_input(tmp_path: Path) -> None:
    async def body(r: Registry, s: SQLiteStorage) -> None:
        first = await r.add("S-1")
        with pytest.raises(RegistryError, match="already registered"):
            await r.add("S-1")
        record = await s.get_device("S-1")
        assert record is not None and record.token_digest == reg.token_digest(KEY, first)  # unchanged
        for bad in ("", "has space", "x" * 65, "semi;colon", "ünï", 5, None, True, 5.5, ["S-9"]):
            with pytest.raises(RegistryError, match="invalid device id"):
                await r.add(bad)  # type: ignore[arg-type]
        with pytest.raises(RegistryError, match="not an IP address or CIDR"):
            await r.add("S-2", allow=["10.0.0.0/33"])
        with pytest.raises(RegistryError, match="label"):
            await r.add("S-3", label="x" * 1000)
        assert [d.device_id for d in await r.list()] == ["S-1"]

    with_registry(tmp_path, body)


def test_concurrent_adds_of_one_id_yield_one_token(tmp_path: Path) -> None:
    async def body(r: Registry, s: SQLiteStorage) -> None:
        results = await asyncio.gather(*(r.add("S-1") for _ in range(10)), return_exceptions=True)
        tokens = [x for x in results if isinstance(x, str)]
        assert len(tokens) == 1
        assert all(isinstance(x, RegistryError) for x in results if not isinstance(x, str))
        record = await s.get_device("S-1")
        assert record is not None and record.token_digest == reg.token_digest(KEY, tokens[0])

    with_registry(tmp_path, body)


def test_rotate_revoke_disable_enable_allow(tmp_path: Path) -> None:
    async def body(r: Registry, s: SQLiteStorage) -> None:
        old = await r.add("S-1")
        new = await r.rotate("S-1")
        assert new != old
        assert await s.device_by_token_digest(reg.token_digest(KEY, old)) is None
        found = await s.device_by_token_digest(reg.token_digest(KEY, new))
        assert found is not None and found.device_id == "S-1"

        await r.disable("S-1")
        assert not (await r.get("S-1")).enabled
        await r.enable("S-1")
        assert (await r.get("S-1")).enabled

        assert await r.set_allow("S-1", ["192.168.1.7", "10.9.8.7/8", "10.0.0.0/8"]) == [
            "192.168.1.7/32", "10.0.0.0/8"]
        with pytest.raises(RegistryError):
            await r.set_allow("S-1", ["not-an-address"])
        assert (await r.get("S-1")).allow_cidrs == ["192.168.1.7/32", "10.0.0.0/8"]
        assert await r.set_allow("S-1", []) == []

        await r.revoke("S-1")
        record = await r.get("S-1")
        assert record.token_digest is None and record.token_created_ms is None
        assert await s.device_by_token_digest(reg.token_digest(KEY, new)) is None
        assert [d.device_id for d in await r.list()] == ["S-1"]  # history stays

        for op in (r.disable, r.enable, r.rotate, r.revoke, r.get):
            with pytest.raises(RegistryError, match="unknown device"):
                await op("S-9")
        with pytest.raises(RegistryError, match="unknown device"):
            await r.set_allow("S-9", [])

    with_registry(tmp_path, body)


def test_token_key_file_is_created_once_with_mode_0600(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(reg.KEY_ENV, raising=False)
    data_dir = tmp_path / "state"
    key = reg.load_or_create_key(data_dir)
    path = data_dir / reg.KEY_FILE
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert reg.load_or_create_key(data_dir) == key
    assert [p.name for p in data_dir.iterdir()] == [reg.KEY_FILE]  # no temporary files left


def test_token_key_concurrent_creation_agrees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(reg.KEY_ENV, raising=False)
    keys: list[bytes] = []
    start = threading.Barrier(8)

    def create() -> None:
        start.wait()
        keys.append(reg.load_or_create_key(tmp_path))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert (tmp_path / reg.KEY_FILE).read_bytes() == keys[0]


def test_token_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(reg.KEY_ENV, "ab" * 32)
    assert reg.load_or_create_key(tmp_path) == bytes.fromhex("ab" * 32)
    assert not (tmp_path / reg.KEY_FILE).exists()
    monkeypatch.setenv(reg.KEY_ENV, "ab" * 8)
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        reg.load_or_create_key(tmp_path)
    monkeypatch.setenv(reg.KEY_ENV, "zz" * 32)
    with pytest.raises(ConfigError, match="hex"):
        reg.load_or_create_key(tmp_path)


def test_damaged_token_key_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(reg.KEY_ENV, raising=False)
    (tmp_path / reg.KEY_FILE).write_bytes(b"short")
    with pytest.raises(ConfigError, match="expected 32"):
        reg.load_or_create_key(tmp_path)


def test_admin_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = reg.load_or_create_admin_token(tmp_path)
    path = tmp_path / reg.ADMIN_TOKEN_FILE
    assert token.startswith("ewa_") and len(token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert reg.load_or_create_admin_token(tmp_path) == token
    assert path.read_text().strip() == token

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert reg.verify_admin_token(token, token)
    assert not reg.verify_admin_token(token, token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert not reg.verify_admin_token(token, None)
    assert not reg.verify_admin_token(token, "ünïcode")
    assert len(calls) == 3


def test_secret_files_are_not_world_readable_even_with_a_lax_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        reg.load_or_create_admin_token(tmp_path / "a")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / reg.ADMIN_TOKEN_FILE).stat().st_mode) == 0o600
