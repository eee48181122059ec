"""A throwaway Prometheus server on a free loopback port, scraping given targets with given rule files.

    with PrometheusServer(targets=["127.0.0.1:8080"], rule_files=[Path("deploy/prometheus/rules.yml")]) as prom:
        prom.query("up")                  # the instant query's result list (/api/v1/query)
        prom.alerts()                     # the alerts pending or firing (/api/v1/alerts)

The scrape job is named ``edgewire`` (what deploy/prometheus/rules.yml selects), scraped and
evaluated every ``interval_s`` (1 s by default: tests want answers soon). Its TSDB lives in the
server's temporary directory. Debian 12's ``prometheus`` package (2.42) provides the binary.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from services.daemon import Daemon
from services.errors import ServiceError

INSTALL_HINT = "install Prometheus: apt-get install -y prometheus"
JOB = "edgewire"


class PrometheusServer(Daemon):
    name = "prometheus"
    binary = "prometheus"
    install_hint = INSTALL_HINT

    def __init__(self, targets: list[str], rule_files: list[Path] | None = None, interval_s: float = 1.0,
                 port: int | None = None, parent_dir: str | Path | None = None, binary: str | None = None,
                 start_timeout_s: float = 60.0) -> None:
        super().__init__(port, parent_dir, binary, start_timeout_s)
        self.targets = list(targets)
        self.rule_files = [Path(p).resolve() for p in rule_files or []]
        self.interval_s = interval_s

    def prepare(self, base_dir: Path) -> None:
        interval = f"{int(self.interval_s * 1000)}ms"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": self.targets}]}],
        }
        (base_dir / "prometheus.yml").write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML

    def argv(self, binary: str, base_dir: Path) -> list[str]:
        return [binary, f"--config.file={base_dir / 'prometheus.yml'}", f"--storage.tsdb.path={base_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ the HTTP API
    def api(self, path: str, **params: str) -> Any:
        """``data`` of a /api/v1 answer; ServiceError when Prometheus answers an error."""
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as err:
            body = json.load(err)
        if body.get("status") != "success":
            raise ServiceError(f"prometheus {path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now: [{"metric": {...}, "value": [time, "text"]}, ...]."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise ServiceError(f"prometheus query {expr!r}: a {data['resultType']}, not a vector")
        return list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts pending or firing now."""
        return list(self.api("alerts")["alerts"])

    def targets_up(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health."""
        return list(self.api("targets")["activeTargets"])
