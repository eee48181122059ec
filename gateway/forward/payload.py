"""The JSON of one forwarded reading, the same on every sink.

    {"device": "S-1", "seq": 1041, "ts": 1764080000000, "received": 1764080000042,
     "quality": "ok", "metrics": {"temperature": 21.5, "humidity": 40.1}}

``device`` and ``seq`` identify the reading: a consumer drops a (device, seq) it has seen
(delivery is at least once). ``ts`` is when it was read (Unix ms, the device's clock when it
had one), ``received`` when the gateway got it; ``quality`` is null when the device sent none.
"""

from __future__ import annotations

import orjson

from gateway.storage.base import ReadingRow


def reading_json(reading: ReadingRow) -> bytes:
    return orjson.dumps({"device": reading.device_id, "seq": reading.seq, "ts": reading.time_ms,
                         "received": reading.received_ms, "quality": reading.quality, "metrics": reading.metrics})
