"""Release manifests and their signatures, the gateway's side (docs/ota.md, OTA-CONTRACT).

A manifest is JSON text, signed as that exact text: ECDSA over P-256 with SHA-256 of its UTF-8
bytes, sent as 128 lowercase hex (``r || s``, 32 bytes each, big-endian). Devices hold the public
key as 130 hex (``04 || X || Y``). The signing key is ``<data_dir>/ota-signing.pem`` (PKCS#8 PEM,
created mode 0600 on first use) or an operator's key file.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from gateway.errors import ConfigError, OtaError
from gateway.secret_files import private_dir, read_secret_bytes, write_secret_file

KEY_FILE = "ota-signing.pem"
KINDS = ("esp32", "pi")
VERSION_RE = re.compile(r"[0-9A-Za-z.+-]{1,32}")
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
RELEASE_RE = re.compile(r"(esp32|pi)-[0-9A-Za-z.+-]{1,32}")
MAX_FILES = 64
MAX_FILE_BYTES = {"esp32": 256 * 1024, "pi": 64 * 1024 * 1024}
MAX_MANIFEST_CHARS = 12000  # the ``ota`` command's manifest argument
SIG_HEX = 128


@dataclass(slots=True, frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str


@dataclass(slots=True, frozen=True)
class Manifest:
    release: str
    kind: str
    version: str
    min_runtime: str
    files: tuple[FileEntry, ...]
    created_ms: int


def release_id(kind: str, version: str) -> str:
    return f"{kind}-{version}"


def check_release_id(value: object) -> str:
    if not isinstance(value, str) or not RELEASE_RE.fullmatch(value):
        raise OtaError("bad_release", "release: <kind>-<version>, kind esp32 or pi, version of 1-32 characters "
                       "from 0-9 A-Z a-z . + - (for example esp32-1.2.0)")
    return value


def check_version(version: str) -> str:
    if not VERSION_RE.fullmatch(version):
        raise OtaError("bad_release", f"version {version[:40]!r}: 1-32 characters from 0-9 A-Z a-z . + -")
    return version


def build_manifest(kind: str, version: str, min_runtime: str, files: dict[str, bytes], created_ms: int) -> str:
    """The manifest text of a release of ``files`` (name -> content), checked against the contract's limits."""
    if kind not in KINDS:
        raise OtaError("bad_release", f"kind {kind!r}: esp32 or pi")
    check_version(version)
    if not VERSION_RE.fullmatch(min_runtime):
        raise OtaError("bad_release", f"min_runtime {min_runtime!r}: a version such as 1.22.0")
    if not files:
        raise OtaError("bad_release", "a release needs at least one file")
    if len(files) > MAX_FILES:
        raise OtaError("bad_release", f"{len(files)} files: at most {MAX_FILES}")
    entries = []
    for name in sorted(files):
        data = files[name]
        if not NAME_RE.fullmatch(name) or name in (".", ".."):
            raise OtaError("bad_release", f"file name {name[:70]!r}: 1-64 characters from A-Z a-z 0-9 _ . - "
                           "(flat: no directories)")
        if len(data) > MAX_FILE_BYTES[kind]:
            raise OtaError("bad_release", f"{name}: {len(data)} bytes, more than the {MAX_FILE_BYTES[kind]} a "
                           f"{kind} release file may have")
        entries.append({"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    text = json.dumps({"v": 1, "release": release_id(kind, version), "kind": kind, "version": version,
                       "min_runtime": min_runtime, "files": entries, "created_ms": created_ms},
                      separators=(",", ":"))
    if len(text) > MAX_MANIFEST_CHARS:
        raise OtaError("bad_release", f"the manifest is {len(text)} characters, more than {MAX_MANIFEST_CHARS}: "
                       "use fewer files")
    return text


def parse_manifest(text: str) -> Manifest:
    """The manifest's fields; OtaError ``bad_release`` saying what is wrong."""
    try:
        raw: Any = json.loads(text)
    except ValueError:
        raise OtaError("bad_release", "manifest: not JSON") from None
    if not isinstance(raw, dict) or raw.get("v") != 1:
        raise OtaError("bad_release", "manifest: an object with v = 1")
    kind, version, runtime = raw.get("kind"), raw.get("version"), raw.get("min_runtime")
    if kind not in KINDS or not isinstance(version, str) or not isinstance(runtime, str):
        raise OtaError("bad_release", "manifest: kind (esp32 or pi), version and min_runtime")
    check_version(version)
    if raw.get("release") != release_id(kind, version):
        raise OtaError("bad_release", "manifest: release must be <kind>-<version>")
    files = raw.get("files")
    if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
        raise OtaError("bad_release", f"manifest: files, a list of 1-{MAX_FILES}")
    entries = []
    for item in files:
        if not isinstance(item, dict):
            raise OtaError("bad_release", "manifest: each file is an object")
        name, size, digest = item.get("name"), item.get("size"), item.get("sha256")
        if (not isinstance(name, str) or not NAME_RE.fullmatch(name) or type(size) is not int
                or not 0 <= size <= MAX_FILE_BYTES[kind] or not isinstance(digest, str)
                or not re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise OtaError("bad_release", "manifest: each file has name, size and sha256 (64 lowercase hex)")
        entries.append(FileEntry(name, size, digest))
    created = raw.get("created_ms")
    if type(created) is not int:
        raise OtaError("bad_release", "manifest: created_ms, an integer")
    return Manifest(raw["release"], kind, version, runtime, tuple(entries), created)


# ---------------------------------------------------------------- keys and signatures


def load_or_create_signing_key(data_dir: str | Path, key_file: str | Path | None = None) -> ec.EllipticCurvePrivateKey:
    """The release signing key: ``key_file`` if given, else ``<data_dir>/ota-signing.pem`` (created,
    mode 0600, if missing). OtaError ``signing_key`` if it is unreadable or not a P-256 private key."""
    if key_file is None:
        path = private_dir(data_dir) / KEY_FILE
        if not path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            write_secret_file(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    else:
        path = Path(key_file)
    try:
        loaded = serialization.load_pem_private_key(read_secret_bytes(path, "OTA signing key"), password=None)
    except ConfigError as err:
        raise OtaError("signing_key", str(err)) from None
    except (ValueError, TypeError):
        raise OtaError("signing_key", f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or loaded.curve.name != "secp256r1":
        raise OtaError("signing_key", f"{path}: not a P-256 (secp256r1) ECDSA key")
    return loaded


def public_key_hex(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> str:
    """130 hex characters, ``04 || X || Y``: what devices hold as ``ota_pubkey``."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint).hex()


def sign(key: ec.EllipticCurvePrivateKey, manifest: str) -> str:
    """128 lowercase hex: ``r || s`` of the ECDSA P-256 / SHA-256 signature of the manifest text."""
    r, s = decode_dss_signature(key.sign(manifest.encode(), ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big").hex() + s.to_bytes(32, "big").hex()


def verify(public_hex: str, manifest: str, sig: str) -> bool:
    """Whether ``sig`` (128 hex) signs ``manifest`` for the public key ``public_hex`` (130 hex)."""
    try:
        point = bytes.fromhex(public_hex)
        raw = bytes.fromhex(sig)
        if len(raw) != SIG_HEX // 2:
            return False
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        public.verify(der, manifest.encode(), ec.ECDSA(hashes.SHA256()))
    except (ValueError, InvalidSignature):
        return False
    return True


def signed(sig: object) -> bool:
    """Whether ``sig`` has a signature's shape (128 lowercase hex): the gateway never offers a release without one."""
    return isinstance(sig, str) and len(sig) == SIG_HEX and all(c in "0123456789abcdef" for c in sig)
