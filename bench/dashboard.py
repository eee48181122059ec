"""The fleet page's render time at 1,000 and 5,000 devices (a benchmark, not a test).

For each fleet size: a gateway data dir with N devices registered through /v1/admin, each with
three latest values (stored through the SQLite storage as if every device had reported once),
a fresh gateway process, and Chromium (Playwright driving /usr/bin/chromium) opening the fleet
page with the operator token. The page marks each render of the device list (filter, sort, one
page of rows) as the performance measure ``fleet-render`` (gateway/dashboard/static/fleet.js).

Figures per size, in ms, the median of ``--runs`` page loads:

- ``load``: from navigation start to the end of the first render that holds all N devices
  (page, modules, /v1/session, /v1/meta, WebSocket, snapshot, first render);
- ``first_render``: the duration of that render;
- ``search``, ``filter``, ``sort``: the render after typing in the search box, choosing the
  "Offline" filter, choosing another sort: each goes over all N devices again, as every live
  update frame does (at most one render per animation frame);
- ``snapshot_kib``: the snapshot frame's size; ``heap_mib``: the page's JS heap afterwards.

    python -m bench.dashboard                   # 1,000 and 5,000 devices, 3 runs each
    python -m bench.dashboard --devices 1000 --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.run import prepare_template
from bench.servers import GatewayServer, scratch_dir

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
MEASURES_JS = "() => performance.getEntriesByName('fleet-render').map(e => [e.startTime, e.duration, e.detail])"


async def _store_latest(db: Path, device_ids: list[str]) -> None:
    """One reading per device, so the page shows values (what a fleet that reported once looks like)."""
    from gateway.storage.base import ReadingRow
    from gateway.storage.sqlite import SQLiteStorage

    storage = SQLiteStorage(db)
    await storage.open()
    try:
        now = int(time.time() * 1000)
        rows = [ReadingRow(device_id, 1, now - i, now - i,
                           {"temperature": 20.0 + i % 10, "humidity": 40.0 + i % 30, "battery": 90.0 - i % 50})
                for i, device_id in enumerate(device_ids)]
        for start in range(0, len(rows), 1000):
            await storage.store(rows[start:start + 1000])
    finally:
        await storage.close()


def _measures_after(page: Any, t0: float) -> list[Any]:
    return [m for m in page.evaluate(MEASURES_JS) if m[0] >= t0]


def _timed_render(page: Any, action: Any, count: int) -> float:
    """Run ``action`` and return the duration of the first list render over ``count`` devices after it."""
    t0 = page.evaluate("performance.now()")
    action()
    page.wait_for_function(
        f"""() => performance.getEntriesByName('fleet-render')
               .some(e => e.startTime >= {t0} && e.detail.devices === {count})""", timeout=60_000)
    return float(_measures_after(page, t0)[0][1])


def one_load(browser: Any, url: str, count: int) -> dict[str, float]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    snapshot_bytes: list[int] = []
    page.on("websocket", lambda ws: ws.on(
        "framereceived", lambda payload: snapshot_bytes.append(len(payload))
        if '"t":"snapshot"' in str(payload)[:64] else None))
    try:
        page.goto(url)
        page.wait_for_function(
            f"() => performance.getEntriesByName('fleet-render').some(e => e.detail.devices === {count})",
            timeout=120_000)
        first = next(m for m in page.evaluate(MEASURES_JS) if m[2]["devices"] == count)
        figures = {"load": first[0] + first[1], "first_render": first[1]}
        figures["search"] = _timed_render(page, lambda: page.fill("#q", "bench-01"), count)
        page.fill("#q", "")
        figures["filter"] = _timed_render(
            page, lambda: page.click('#status-filter button[data-status="offline"]'), count)
        figures["sort"] = _timed_render(page, lambda: page.select_option("#sort", "seen-new"), count)
        figures["snapshot_kib"] = (snapshot_bytes[0] / 1024) if snapshot_bytes else float("nan")
        figures["heap_mib"] = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : NaN") / 2**20
        return figures
    finally:
        context.close()


def prepare(count: int, workdir: Path, log: Any) -> Path:
    """A data dir with ``count`` registered devices that reported once (before the browser starts:
    Playwright's sync API owns the event loop afterwards)."""
    template, _ = prepare_template(workdir / f"n{count}", count, log)
    ids = [f"bench-{i:05d}" for i in range(1, count + 1)]
    asyncio.run(_store_latest(template / "edgewire.db", ids))
    return template


def run_size(browser: Any, count: int, runs: int, data_dir: Path, log: Any) -> dict[str, Any]:
    server = GatewayServer(data_dir, "sqlite", dashboard_interval_ms=250)
    server.start()
    try:
        token = (data_dir / "dashboard.token").read_text().strip()
        url = f"http://127.0.0.1:{server.port}/#token={token}"
        loads = []
        for run in range(runs):
            figures = one_load(browser, url, count)
            log(f"{count} devices, run {run + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()))
            loads.append(figures)
    finally:
        server.stop()
    return {"devices": count, "runs": runs,
            "median": {key: round(statistics.median(f[key] for f in loads), 1) for key in loads[0]},
            "all": loads}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    opts = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"error: {CHROMIUM} not found; run scripts/system-deps test", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    workdir = scratch_dir("edgewire-dash-bench-")
    results = []
    try:
        data_dirs = {count: prepare(count, workdir, log) for count in opts.devices}
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                for count in opts.devices:
                    results.append(run_size(browser, count, opts.runs, data_dirs[count], log))
            finally:
                browser.close()
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    keys = list(results[0]["median"])
    print("devices  " + "  ".join(f"{k:>13}" for k in keys))
    for result in results:
        print(f"{result['devices']:>7}  " + "  ".join(f"{result['median'][k]:>13.1f}" for k in keys))
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
