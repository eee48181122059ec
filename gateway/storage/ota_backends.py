"""The OTA store of a storage backend (gateway/storage/ota_base.py)."""

from __future__ import annotations

from gateway.errors import OtaError
from gateway.storage.ota_base import OtaStore
from gateway.storage.postgresql import PostgresStorage
from gateway.storage.postgresql_ota import PostgresOta
from gateway.storage.sqlite import SQLiteStorage
from gateway.storage.sqlite_ota import SQLiteOta

UNAVAILABLE = ("OTA needs storage (sqlite or postgresql); this gateway runs with storage = none, which keeps no "
               "releases or rollouts")


def ota_store(storage: object) -> OtaStore:
    """The OTA store of a storage backend (the same connections); OtaError for the ``none`` backend."""
    if isinstance(storage, SQLiteStorage):
        return SQLiteOta(storage)
    if isinstance(storage, PostgresStorage):
        return PostgresOta(storage)
    raise OtaError("ota_unavailable", UNAVAILABLE)
