"""Conformance: the device registry (alerts: test_alerts.py)."""

from __future__ import annotations

import pytest

from gateway.errors import StorageError
from gateway.storage.base import DeviceRecord, Storage
from tests.gateway.storage.conftest import Backend


def test_registry_rows(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        rec = DeviceRecord("S-1", True, b"\xaa" * 32, [], "", 10, 10)
        assert await s.create_device(rec) is True
        assert await s.create_device(DeviceRecord("S-1", True, b"\xbb" * 32)) is False
        assert await s.get_device("S-1") == rec
        assert await s.device_by_token_digest(b"\xaa" * 32) == rec
        assert await s.device_by_token_digest(b"\xbb" * 32) is None
        rec.token_digest = None
        rec.enabled = False
        await s.put_device(rec)
        await s.put_device(DeviceRecord("S-0", True, None))  # two revoked devices: NULL is not unique
        assert await s.device_by_token_digest(b"\xaa" * 32) is None
        assert [d.device_id for d in await s.list_devices()] == ["S-0", "S-1"]
        assert (await s.get_device("S-1")) == rec
        await s.put_device(DeviceRecord("S-2", True, b"\xcc" * 32, ["10.0.0.0/8", "192.168.1.7/32"], "hall", 3, 4))
        assert (await s.get_device("S-2")) == DeviceRecord("S-2", True, b"\xcc" * 32,
                                                           ["10.0.0.0/8", "192.168.1.7/32"], "hall", 3, 4)
        with pytest.raises(StorageError):  # a digest names one device only
            await s.put_device(DeviceRecord("S-3", True, b"\xcc" * 32))
        assert await s.get_device("S-3") is None

    backend.run(body)

