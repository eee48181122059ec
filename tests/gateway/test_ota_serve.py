"""gateway/ota/serve.py: chunks only for offered releases, the permission remembered a few seconds,
storage failures answered without closing, reports kept; without a store everything is ota_unknown."""

from __future__ import annotations

import asyncio
import base64

from gateway.errors import StorageError
from gateway.ota.serve import OtaFrames
from gateway.storage.ota_base import DeviceReport
from protocol.gateway import EV_OTA_GET, EV_OTA_STATE, Event
from tests.gateway.test_cluster import Target as Conn

DATA = bytes(range(256)) * 20


class FakeStore:
    def __init__(self) -> None:
        self.offers = {("d1", "esp32-1.0")}
        self.asked = 0
        self.fail = False
        self.reports: list[DeviceReport] = []

    async def offered(self, device_id: str, release_id: str) -> bool:
        self.asked += 1
        if self.fail:
            raise StorageError("down")
        return (device_id, release_id) in self.offers

    async def chunk(self, release_id: str, name: str, offset: int, length: int) -> tuple[bytes, int] | None:
        if name != "app.mpy":
            return None
        return DATA[offset:offset + length], len(DATA)

    async def record_report(self, report: DeviceReport) -> int:
        if self.fail:
            raise StorageError("down")
        self.reports.append(report)
        return 1



def get(off: int, name: str = "app.mpy", release: str = "esp32-1.0") -> Event:
    return Event(EV_OTA_GET, {"release": release, "file": name, "off": off, "len": 2048})


def test_chunks_permission_and_refusals() -> None:
    async def main() -> None:
        store, now = FakeStore(), [0.0]
        frames = OtaFrames(store, clock=lambda: 1000.0, monotonic=lambda: now[0])  # type: ignore[arg-type]
        d1, d2 = Conn("d1"), Conn("d2")
        data = b""
        for off in (0, 2048, 4096, len(DATA)):  # the last: at the end, no bytes
            await frames.handle(d1, get(off))
            data += base64.b64decode(d1.sent[-1]["data"])
        assert data == DATA and d1.sent[-1]["data"] == "" and d1.sent[0]["size"] == len(DATA)
        assert store.asked == 1  # remembered while the permission is fresh
        await frames.handle(d1, get(len(DATA) + 1))
        assert d1.sent[-1]["code"] == "ota_unknown"
        await frames.handle(d1, get(0, name="other.mpy"))
        assert d1.sent[-1]["code"] == "ota_unknown"
        await frames.handle(d2, get(0))
        assert d2.sent[-1] == {"t": "error", "code": "ota_unknown", "msg": "release esp32-1.0 is not offered to "
                               "this device"}
        store.offers.clear()  # the rollout was aborted: refused once the permission is stale
        await frames.handle(d1, get(0))
        assert d1.sent[-1]["t"] == "ota_chunk"
        now[0] += 6
        await frames.handle(d1, get(0))
        assert d1.sent[-1]["code"] == "ota_unknown"
        store.fail = True
        await frames.handle(d1, get(0))
        assert d1.sent[-1]["code"] == "storage_unavailable"
        await frames.handle(d1, Event(EV_OTA_STATE, {"release": "esp32-1.0", "state": "good", "reason": "",
                                                     "done": None, "total": None}))
        assert store.reports == []  # logged; the device reports again
        store.fail = False
        await frames.handle(d1, Event(EV_OTA_STATE, {"release": "esp32-1.0", "state": "failed", "reason": "bad_hash",
                                                     "done": None, "total": None}))
        assert store.reports == [DeviceReport("d1", "esp32-1.0", "failed", "bad_hash", None, None, 1_000_000)]
        assert frames.refused == 5 and frames.reports == 1

    asyncio.run(main())


def test_without_a_store_every_request_is_ota_unknown() -> None:
    async def main() -> None:
        frames, conn = OtaFrames(None), Conn("d1")
        await frames.handle(conn, get(0))
        assert conn.sent[-1]["code"] == "ota_unknown" and "storage = none" in conn.sent[-1]["msg"]
        await frames.handle(conn, Event(EV_OTA_STATE, {"release": "esp32-1.0", "state": "good", "reason": "",
                                                       "done": None, "total": None}))
        assert len(conn.sent) == 1

    asyncio.run(main())
