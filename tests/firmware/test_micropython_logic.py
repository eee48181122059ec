"""Pure firmware logic and protocol (wire, gateway, device) under real MicroPython (WebAssembly port in Node).

Each check_*.py script in tests/firmware/mpy/ runs twice: under MicroPython 1.27 with a
110 KiB starting heap (firmware sources deployed to / and protocol to /protocol) and under
CPython with the stand-ins, so both interpreters agree. The app loop also runs as `make flash`
deploys it: compiled to .mpy, under MicroPython 1.24.1 (the release flashed onto boards).
Needs `npm ci --prefix tests/firmware/node` (the CI does it); no skips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / "node"
RUNNER = NODE_DIR / "run_mpy.mjs"
SCRIPTS = sorted((HERE / "mpy").glob("check_*.py"))


def node_ready() -> str:
    node = shutil.which("node")
    assert node, "node (>= 18) is not installed"
    assert (NODE_DIR / "node_modules" / "@micropython" / "micropython-webassembly-pyscript").exists(), \
        "MicroPython for Node is missing: run `npm ci --prefix tests/firmware/node`"
    return node


def run_micropython(script: Path, *extra: str, heap: int = 110 * 1024, timeout: float = 60,
                    deploy: tuple[str, ...] = ("--deploy",)) -> subprocess.CompletedProcess[str]:
    node = node_ready()
    cmd = [node, str(RUNNER), "--heap", str(heap), *deploy, "--put", f"{HERE / 'mpy'}:/lib",
           "--put", f"{ROOT / 'firmware' / 'config.example.json'}:/lib/config.example.json", *extra, str(script)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_under_micropython(script: Path) -> None:
    proc = run_micropython(script)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "implementation: micropython" in out and "ALL PASS" in out, out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_under_cpython(script: Path) -> None:
    boot = ("import sys; from simulator.micropython_standins import install; install(); "
            f"sys.path[:0] = [{str(ROOT / 'firmware')!r}, {str(HERE / 'mpy')!r}]; "
            f"exec(compile(open({str(script)!r}).read(), {str(script)!r}, 'exec'))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", boot], capture_output=True, text=True, timeout=50,
                          cwd=ROOT, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "implementation: cpython" in out and "ALL PASS" in out, out


def test_runner_fails_on_exception(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nprint(sys.implementation.name)\nraise ValueError('expected failure')\n")
    proc = run_micropython(bad)
    assert proc.returncode == 1
    assert "micropython" in proc.stdout and "expected failure" in proc.stderr


# Heap budget for one main-loop step (device allocations, garbage included) with max_batch 20.
# Measured about 18,000 bytes (docs/firmware.md); the guard leaves room but catches a regression
# such as building every pending reading in RAM.
STEP_BUDGET = 24 * 1024


# As the sources (1.27), and as `make flash` deploys them (.mpy) under the release it flashes (1.24.1);
# the in-memory gateway at the far end is not on a board and runs from source.
DEPLOYS = {
    "source-1.27": ("--deploy",),
    "mpy-1.24.1": ("--micropython", "1.24.1", "--deploy-mpy", "--put",
                   f"{ROOT / 'protocol' / 'gateway.py'}:/protocol/gateway.py"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("deploy", sorted(DEPLOYS))
def test_app_loop_under_micropython(deploy: str) -> None:
    """firmware/app.py's loop on real MicroPython: outage, backlog drained in order, a command."""
    proc = run_micropython(HERE / "mpy" / "loop_memory.py", "--put", f"{HERE / 'mpy' / 'board'}:/lib",
                           timeout=110, deploy=DEPLOYS[deploy])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("MEMORY ")), None)
    assert line is not None, out
    stats = json.loads(line[len("MEMORY "):])
    assert stats["stored"] >= stats["backlog"] >= 45
    assert "command set_output -> True relay on" in out
    assert 0 < stats["step_alloc_max"] <= STEP_BUDGET, stats
