"""Signed OTA releases for tests (the gateway's signing side is gateway/ota; tests only need a key,
a manifest in the contract's shape and its signature, made with the `cryptography` package)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


@dataclass
class ReleaseKey:
    """A P-256 release key: ``pubkey`` is what devices hold (130 hex chars, 04 || X || Y)."""

    private: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    @property
    def pubkey(self) -> str:
        return self.private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint).hex()

    def sign(self, text: str | bytes) -> str:
        """ECDSA P-256 / SHA-256 of the text's UTF-8 bytes, as 128 hex chars (r || s)."""
        data = text.encode() if isinstance(text, str) else text
        r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big").hex() + s.to_bytes(32, "big").hex()


def manifest_text(version: str, files: dict[str, bytes], kind: str = "esp32", min_runtime: str = "1.22.0",
                  created_ms: int = 1765000000000) -> str:
    """The manifest's exact text for ``files`` (name -> content), in the contract's shape."""
    return json.dumps({
        "v": 1, "release": f"{kind}-{version}", "kind": kind, "version": version, "min_runtime": min_runtime,
        "files": [{"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                  for name, data in files.items()],
        "created_ms": created_ms})


def offer_args(key: ReleaseKey, version: str, files: dict[str, bytes], kind: str = "esp32",
               min_runtime: str = "1.22.0") -> dict[str, str]:
    """The ``ota`` command's args for a signed release."""
    text = manifest_text(version, files, kind, min_runtime)
    return {"manifest": text, "sig": key.sign(text)}
