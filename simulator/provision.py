"""Credentials for simulated devices: register them with a gateway's registry, or load a token map.

``provision(data_dir, ids)`` registers each id in the gateway's SQLite registry in-process
(gateway.registry.Registry) when the gateway package is importable, otherwise through
``python -m gateway devices add ID --data-dir DIR`` (the token is the last stdout line).
The token map is JSON ``{device_id: token}``; write it with ``save_credentials`` (mode 0600:
it holds secrets).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from simulator.errors import ProvisionError


def load_credentials(path: str | Path) -> dict[str, str]:
    """Read ``{device_id: token}`` from a JSON file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ProvisionError(f"cannot read credentials {path}: {err}; "
                             "expected JSON {device_id: token}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in data.items()):
        raise ProvisionError(f"credentials {path}: expected a JSON object mapping device id to token")
    return data


def save_credentials(path: str | Path, credentials: dict[str, str]) -> None:
    """Write the token map readable by the owner only."""
    target = Path(path)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(credentials, fh, indent=1)
        fh.write("\n")
    os.chmod(target, 0o600)


def label_of(device_id: str) -> str:
    """A simulated device's registry label: its own, so that Home Assistant (which names a device by its
    label) and the dashboard tell the devices apart."""
    return f"Simulated {device_id}"


def device_ids(count: int, prefix: str = "sim-", start: int = 1) -> list[str]:
    width = max(4, len(str(start + count - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(start, start + count)]


async def _provision_in_process(data_dir: Path, ids: list[str], db: Path | None,
                                rotate: bool) -> dict[str, str]:
    from gateway.errors import RegistryError
    from gateway.registry import Registry, load_or_create_key
    from gateway.storage.sqlite import SQLiteStorage

    database = db if db is not None else data_dir / "edgewire.db"
    data_dir.mkdir(parents=True, exist_ok=True)
    storage = SQLiteStorage(database, commit_interval_ms=0)
    await storage.open()
    try:
        registry = Registry(storage, load_or_create_key(data_dir))
        out: dict[str, str] = {}
        for device_id in ids:
            try:
                out[device_id] = await registry.add(device_id, label=label_of(device_id))
            except RegistryError as err:
                if not rotate:
                    raise ProvisionError(f"{device_id}: {err} (use --rotate to issue new tokens)") from None
                out[device_id] = await registry.rotate(device_id)
        return out
    finally:
        await storage.close()


def _provision_subprocess(data_dir: Path, ids: list[str], db: Path | None, rotate: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    extra = ["--db", str(db)] if db is not None else []
    for device_id in ids:
        cmd = [sys.executable, "-m", "gateway", "devices", "add", device_id,
               "--data-dir", str(data_dir), "--label", label_of(device_id), *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0 and rotate:
            cmd = [*cmd[:4], "rotate", device_id, "--data-dir", str(data_dir), *extra]  # rotate keeps the label
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines or not lines[-1].startswith("ewt_"):
            raise ProvisionError(f"{device_id}: `{' '.join(cmd[1:5])}` failed "
                                 f"(exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
        out[device_id] = lines[-1].strip()
    return out


def provision(data_dir: str | Path, ids: Iterable[str], db: str | Path | None = None,
              rotate: bool = False, in_process: bool | None = None) -> dict[str, str]:
    """Register ``ids`` in the gateway registry under ``data_dir``; return ``{device_id: token}``.

    ``rotate``: issue a new token for ids already registered instead of failing.
    ``in_process``: force (True) or avoid (False) importing gateway.registry; None tries it first.
    """
    directory = Path(data_dir)
    id_list = list(ids)
    db_path = Path(db) if db is not None else None
    if in_process is not False:
        try:
            import gateway.registry
            import gateway.storage.sqlite  # noqa: F401
        except ImportError:
            if in_process:
                raise ProvisionError("gateway.registry is not importable; "
                                     "install the gateway extra") from None
        else:
            return asyncio.run(_provision_in_process(directory, id_list, db_path, rotate))
    return _provision_subprocess(directory, id_list, db_path, rotate)
