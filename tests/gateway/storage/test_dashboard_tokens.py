"""Conformance: dashboard tokens (names, roles, digests; created at every open, idempotently)."""

from __future__ import annotations

import pytest

from gateway.errors import StorageError
from gateway.storage.base import DashboardToken, Storage
from tests.gateway.storage.conftest import Backend


def test_dashboard_tokens(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        alice = DashboardToken("alice", "operator", b"\x01" * 32, 1000)
        assert await s.list_dashboard_tokens() == []
        assert await s.add_dashboard_token(alice) is True
        assert await s.add_dashboard_token(DashboardToken("alice", "viewer", b"\x02" * 32, 2000)) is False
        assert await s.add_dashboard_token(DashboardToken("bob", "viewer", b"\x02" * 32, 2000)) is True
        with pytest.raises(StorageError):  # a digest names one token only
            await s.add_dashboard_token(DashboardToken("carol", "viewer", b"\x01" * 32, 3000))
        with pytest.raises(StorageError):  # only the two roles exist
            await s.add_dashboard_token(DashboardToken("dave", "admin", b"\x03" * 32, 3000))
        assert await s.dashboard_token_by_digest(b"\x01" * 32) == alice
        assert await s.dashboard_token_by_digest(b"\x09" * 32) is None
        assert [t.name for t in await s.list_dashboard_tokens()] == ["alice", "bob"]
        assert await s.delete_dashboard_token("alice") is True
        assert await s.delete_dashboard_token("alice") is False
        assert await s.dashboard_token_by_digest(b"\x01" * 32) is None

    backend.run(body)


def test_dashboard_tokens_survive_reopen(backend: Backend) -> None:
    async def first(s: Storage) -> None:
        await s.add_dashboard_token(DashboardToken("ops", "operator", b"\x05" * 32, 5))

    async def second(s: Storage) -> None:  # the idempotent DDL runs again and keeps the rows
        assert await s.list_dashboard_tokens() == [DashboardToken("ops", "operator", b"\x05" * 32, 5)]

    backend.run(first)
    backend.run(second)
