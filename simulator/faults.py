"""Fault injection for virtual devices, described by one ``FaultPlan`` (frozen, seeded).

- ``drop_mean_s``: network drops. The TCP connection is aborted (no close frame) at seeded
  random times, exponentially distributed with this mean (0: off).
- ``send_delay_s``, ``send_jitter_s``: slow link. Every send waits ``delay + uniform(0, jitter)`` s.
- ``clock_skew_s``, ``clock_drift_ppm``: the device clock (reading ``ts``) is off and drifts.
- ``malformed_rate``, ``malformed_kinds``: malformed-frame mode. After a data frame, with this
  probability, one extra malformed frame of a seeded kind from MALFORMED_KINDS is sent (real
  readings are unaffected).
- ``jwt_secret``, ``jwt_ttl_s``: expiring credentials. The device authenticates with an HS256 JWT
  (``sub`` = device id) it mints itself, valid ``jwt_ttl_s``; the gateway ends the session at
  ``exp`` (close credential_expired) and the device mints a new one through its credential-refresh hook.
- ``fraction``: share of a fleet's devices the plan applies to (seeded choice).

Gateway restarts need no field: the harness restarts the gateway; devices reconnect with backoff.
``FaultPlan.parse("drop=5,delay=0.05,skew=30,malformed=0.1,jwt_ttl=10,jwt_secret=S,fraction=0.5")``
reads the CLI form.
"""

from __future__ import annotations

import dataclasses
import math
import random
import zlib
from dataclasses import dataclass

from simulator.errors import SimConfigError

MALFORMED_KINDS = ("not_json", "wrong_types", "nan", "oversized", "binary", "unknown_type")

# CLI key -> FaultPlan field
_KEYS = {
    "seed": "seed", "drop": "drop_mean_s", "delay": "send_delay_s", "jitter": "send_jitter_s",
    "skew": "clock_skew_s", "drift": "clock_drift_ppm", "malformed": "malformed_rate",
    "kinds": "malformed_kinds", "jwt_secret": "jwt_secret", "jwt_ttl": "jwt_ttl_s", "fraction": "fraction",
}


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What goes wrong, for which share of devices. All randomness derives from ``seed``."""

    seed: int = 0
    drop_mean_s: float = 0.0
    send_delay_s: float = 0.0
    send_jitter_s: float = 0.0
    clock_skew_s: float = 0.0
    clock_drift_ppm: float = 0.0
    malformed_rate: float = 0.0
    malformed_kinds: tuple[str, ...] = MALFORMED_KINDS
    jwt_secret: str | None = None
    jwt_ttl_s: float = 0.0
    fraction: float = 1.0

    def __post_init__(self) -> None:
        for name in ("drop_mean_s", "send_delay_s", "send_jitter_s", "jwt_ttl_s"):
            if getattr(self, name) < 0:
                raise SimConfigError(f"FaultPlan.{name} must be >= 0")
        if not 0.0 <= self.malformed_rate <= 1.0 or not 0.0 <= self.fraction <= 1.0:
            raise SimConfigError("FaultPlan.malformed_rate and .fraction must be within 0..1")
        unknown = [k for k in self.malformed_kinds if k not in MALFORMED_KINDS]
        if unknown or not self.malformed_kinds:
            raise SimConfigError(
                f"malformed kinds {unknown} unknown; choose from {', '.join(MALFORMED_KINDS)}")
        if self.jwt_ttl_s > 0 and not self.jwt_secret:
            raise SimConfigError("FaultPlan.jwt_ttl_s needs jwt_secret (the gateway's jwt_secret)")

    @classmethod
    def parse(cls, spec: str) -> FaultPlan:
        """Read ``key=value,...``: keys seed, drop, delay, jitter, skew, drift, malformed,
        kinds (joined by ``+``), jwt_secret, jwt_ttl, fraction (see the module docstring)."""
        values: dict[str, object] = {}
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            key, sep, raw = part.partition("=")
            field_name = _KEYS.get(key.strip())
            if field_name is None or not sep:
                raise SimConfigError(f"fault {part!r}: use key=value with key one of {', '.join(_KEYS)}")
            raw = raw.strip()
            if field_name == "malformed_kinds":
                values[field_name] = tuple(k for k in raw.split("+") if k)
            elif field_name == "jwt_secret":
                values[field_name] = raw
            elif field_name == "seed":
                values[field_name] = int(raw)
            else:
                try:
                    values[field_name] = float(raw)
                except ValueError:
                    raise SimConfigError(f"fault {part!r}: {key} needs a number") from None
        return cls(**values)  # type: ignore[arg-type]

    def applies_to(self, index: int) -> bool:
        """Whether device number ``index`` of a fleet gets this plan (seeded, stable)."""
        if self.fraction >= 1.0:
            return True
        return random.Random(self._device_seed(index)).random() < self.fraction

    def _device_seed(self, index: int) -> int:
        return zlib.crc32(f"{self.seed}:{index}".encode())

    def injector(self, index: int) -> FaultInjector:
        return FaultInjector(self, random.Random(self._device_seed(index) ^ 0x5EED))

    def replace(self, **changes: object) -> FaultPlan:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


class FaultInjector:
    """One device's faults at run time (its own seeded generator). Times are loop seconds."""

    __slots__ = ("malformed_sent", "next_drop_at", "plan", "rng")

    def __init__(self, plan: FaultPlan, rng: random.Random) -> None:
        self.plan = plan
        self.rng = rng
        self.next_drop_at = math.inf
        self.malformed_sent = 0

    def schedule_drop(self, now: float) -> None:
        """Pick the time of the next abrupt disconnect (called when a connection opens)."""
        if self.plan.drop_mean_s > 0:
            self.next_drop_at = now + self.rng.expovariate(1.0 / self.plan.drop_mean_s)
        else:
            self.next_drop_at = math.inf

    def send_delay(self) -> float:
        plan = self.plan
        if plan.send_jitter_s > 0:
            return plan.send_delay_s + self.rng.uniform(0.0, plan.send_jitter_s)
        return plan.send_delay_s

    def clock_offset_s(self, elapsed_s: float) -> float:
        """Device clock minus true time after ``elapsed_s`` of running."""
        return self.plan.clock_skew_s + elapsed_s * self.plan.clock_drift_ppm * 1e-6

    def want_malformed(self) -> bool:
        return self.plan.malformed_rate > 0 and self.rng.random() < self.plan.malformed_rate

    def malformed_frame(self, max_frame: int) -> tuple[str, str | bytes]:
        """(kind, frame) for one malformed frame. None of them carries an integer ``seq``, so
        the gateway's error answers cannot be mistaken for a rejection of real readings."""
        kind = self.rng.choice(self.plan.malformed_kinds)
        self.malformed_sent += 1
        frame: str | bytes
        if kind == "not_json":
            frame = '{"t": "data", "seq": 1, "r": [{"m": {"temperature": 21.'
        elif kind == "wrong_types":
            frame = '{"t": "data", "seq": "12", "r": "temperature=21.5"}'
        elif kind == "nan":
            frame = '{"t": "data", "seq": "n", "r": [{"m": {"temperature": NaN}}]}'
        elif kind == "oversized":
            frame = '{"t": "status", "pad": "' + "x" * max_frame + '"}'
        elif kind == "binary":
            frame = bytes(self.rng.getrandbits(8) for _ in range(32))
        else:
            frame = '{"t": "self_destruct", "in": 10}'
        return kind, frame


def mint_jwt(secret: str, device_id: str, ttl_s: float, now: float | None = None) -> str:
    """An HS256 JWT for ``device_id`` expiring ``ttl_s`` from now: gateway.auth.mint_jwt (needs pyjwt)."""
    try:
        from gateway.auth import mint_jwt as gateway_mint_jwt
    except ImportError:
        raise SimConfigError("JWT faults need pyjwt: pip install 'pyjwt[crypto]'") from None
    return gateway_mint_jwt(secret, device_id, ttl_s, now)
