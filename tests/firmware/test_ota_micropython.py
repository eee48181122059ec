"""protocol/ota.py under real MicroPython (1.27 and the boards' 1.24.1, WebAssembly, the ESP32's 110 KiB heap): the
verifier agrees with `cryptography` on good and bad signatures, the download core runs, and one
verification's time and heap are printed (make test -s shows them; docs/ota.md quotes them)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.firmware.test_micropython_logic import HERE, ROOT, RUNNER, node_ready
from tests.helpers.ota_release import ReleaseKey, manifest_text, offer_args

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def vectors() -> tuple[dict[str, object], list[bool]]:
    key, other = ReleaseKey(), ReleaseKey()
    cases: list[dict[str, str]] = []
    expected: list[bool] = []
    for i in range(6):
        message = manifest_text(f"1.{i}.0", {"app.mpy": bytes([i]) * (100 + i)})
        sig = key.sign(message)
        r, s = int(sig[:64], 16), int(sig[64:], 16)
        for candidate, good in ((sig, True), (f"{r:064x}{N - s:064x}", True), (other.sign(message), False),
                                (sig[:40] + ("1" if sig[40] == "0" else "0") + sig[41:], False),
                                (f"{r:064x}" + "0" * 64, False)):
            cases.append({"pub": key.pubkey, "message": message, "sig": candidate})
            expected.append(good)
        cases.append({"pub": other.pubkey, "message": message, "sig": sig})
        expected.append(False)
        cases.append({"pub": key.pubkey, "message": message + "\n", "sig": sig})
        expected.append(False)
    files = {"app.mpy": bytes(range(256)) * 11, "lib.mpy": b"abc"}
    text = manifest_text("2.0.0", files)
    offer = {"pub": key.pubkey, "manifest": text, "sig": key.sign(text),
             "files": {k: base64.b64encode(v).decode() for k, v in files.items()}}
    timed = {"pub": key.pubkey, "message": text, "sig": key.sign(text)}
    return {"cases": cases, "timed": timed, "offer": offer}, expected


@pytest.mark.timeout(120)
@pytest.mark.parametrize("release", ["1.27", "1.24.1"])
def test_the_verifier_agrees_with_cryptography_under_micropython(release: str, tmp_path: Path) -> None:
    data, expected = vectors()
    path = tmp_path / "ota_vectors.json"
    path.write_text(json.dumps(data))
    cmd = [node_ready(), str(RUNNER), "--micropython", release, "--heap", str(110 * 1024),
           "--put", f"{ROOT / 'protocol'}:/protocol", "--put", f"{path}:/lib/ota_vectors.json",
           str(HERE / "mpy" / "ota_verify.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    result = re.search(r"^RESULT (.*)$", out, re.M)
    assert result, out
    assert json.loads(result.group(1)) == expected
    measure = re.search(r"^MEASURE (.*)$", out, re.M)
    assert measure, out
    figures = json.loads(measure.group(1))
    assert figures["impl"] == "micropython"
    print(f"ECDSA P-256 verify under MicroPython {release} (WebAssembly):", figures)
    assert re.search(r"^CORE verifying \d+$", out, re.M), out


@pytest.mark.timeout(120)
def test_the_updater_at_boot_under_micropython(tmp_path: Path) -> None:
    """firmware/ota_agent.py and slots.py on what a boot finds after power cuts and a fallback
    (mpy/ota_agent_boot.py): a trial drops a stale download record, a download resumes from the
    bytes on flash, bytes that do not match are wiped, a tampered record is dropped, a fallback is
    reported once, a good mark cut short is finished by boot."""
    key = ReleaseKey()
    files = {"app.mpy": bytes(range(256)) * 5, "protocol.wire.mpy": b"wire" * 3}
    args = offer_args(key, "0.2.0", files)
    vectors = {"pub": key.pubkey, "snap": {"v": 1, "manifest": args["manifest"], "sig": args["sig"]},
               "files": {k: base64.b64encode(v).decode() for k, v in files.items()}}
    path = tmp_path / "ota_agent_vectors.json"
    path.write_text(json.dumps(vectors))
    cmd = [node_ready(), str(RUNNER), "--heap", str(110 * 1024), "--deploy", "--put", f"{HERE / 'mpy'}:/lib",
           "--put", f"{path}:/lib/ota_agent_vectors.json", str(HERE / "mpy" / "ota_agent_boot.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "ALL PASS" in out, out
