"""deploy/k8s agrees with the gateway: its config loads, the HPA metric is the one the adapter
exposes and the gateway exports, selectors match, the grace period covers the drain, no secrets.
(Schema validation is `make lint`: kubernetes-validate --strict.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import load_config

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
ROOT = K8S.parents[1]


def _documents() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in sorted(set(K8S.glob("*.yaml")) - {K8S / "kustomization.yaml"}):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


DOCS = _documents()
LABELS = {"app.kubernetes.io/name": "edgewire-gateway"}


def _gateway_toml(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(DOCS[("ConfigMap", "edgewire-gateway")]["data"]["gateway.toml"])
    return path


def test_the_configmap_is_a_valid_gateway_config(tmp_path: Path) -> None:
    config = load_config(_gateway_toml(tmp_path), env={"EDGEWIRE_INSTANCE_ID": "edgewire-gateway-abc12"})
    assert config.host == "0.0.0.0" and config.storage_kind == "postgresql"
    assert config.bus_display == "redis://redis.edgewire.svc:6379/0"
    assert config.dashboard_token_required
    services = {name for kind, name in DOCS if kind == "Service"}
    assert {"postgres", "redis"} <= services  # the hosts named in the config exist as services


def test_kustomization_lists_every_manifest_of_the_namespace() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "prometheus-adapter-rules.yaml"}
    assert listed == files


def test_hpa_scales_on_the_gauge_the_adapter_exposes_and_the_gateway_exports() -> None:
    hpa = DOCS[("HorizontalPodAutoscaler", "edgewire-gateway")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    rules = yaml.safe_load(DOCS[("ConfigMap", "prometheus-adapter")]["data"]["config.yaml"])["rules"]
    (rule,) = [r for r in rules if r["name"]["as"] == name]
    assert rule["seriesQuery"].startswith(name + "{")
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    short = '"' + name.removeprefix("edgewire_") + '"'  # metrics tables add the edgewire_ prefix
    exporters = [p for p in (ROOT / "gateway").rglob("*.py") if name in p.read_text() or short in p.read_text()]
    assert exporters, f"no gateway module exports {name}"


def test_selectors_match_the_pod_labels() -> None:
    deployment = DOCS[("Deployment", "edgewire-gateway")]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == LABELS
    for selector in (DOCS[("Service", "edgewire-gateway")]["spec"]["selector"],
                     DOCS[("PodDisruptionBudget", "edgewire-gateway")]["spec"]["selector"]["matchLabels"],
                     DOCS[("NetworkPolicy", "edgewire-gateway")]["spec"]["podSelector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()


def test_probes_and_the_grace_period_cover_the_drain(tmp_path: Path) -> None:
    pod = DOCS[("Deployment", "edgewire-gateway")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    target = int(DOCS[("HorizontalPodAutoscaler", "edgewire-gateway")]["spec"]["metrics"][0]["pods"]["target"]
                 ["averageValue"])
    # devices closed per second on SIGTERM (docs/scaling.md section 4), as the pods are configured
    drain_rate = load_config(_gateway_toml(tmp_path), env={}).drain_rate
    assert pod["terminationGracePeriodSeconds"] > pre_stop + target / drain_rate + 30
    env = {item["name"]: item for item in container["env"]}
    assert env["EDGEWIRE_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["EDGEWIRE_TOKEN_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "edgewire-gateway"


@pytest.mark.parametrize("key", ["token-key", "pgpassword", "admin.token", "dashboard.token"])
def test_the_secret_holds_placeholders_only(key: str) -> None:
    value = DOCS[("Secret", "edgewire-gateway")]["stringData"][key]
    assert value.startswith("REPLACE-ME")


def test_the_deployment_runs_the_image_make_image_builds_as_its_user() -> None:
    """The image name and tag are `make image`'s (IMAGE in the Makefile, the version in pyproject.toml), and
    the pod runs as the image's user (deploy/container/Containerfile: USER 10001:10001, the data volume)."""
    import re

    makefile = (ROOT / "Makefile").read_text()
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    name = re.search(r"^IMAGE \?= (\S+):\$\(IMAGE_VERSION\)$", makefile, re.M)
    assert version and name
    pod = DOCS[("Deployment", "edgewire-gateway")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"{name.group(1)}:{version.group(1)}"
    containerfile = (ROOT / "deploy/container/Containerfile").read_text()
    assert "USER 10001:10001" in containerfile and 'VOLUME ["/var/lib/edgewire"]' in containerfile
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (10001, 10001)
    assert {"mountPath": "/var/lib/edgewire", "name": "data"} in container["volumeMounts"]
    assert container["command"] == ["edgewire-gateway"] and 'ENTRYPOINT ["edgewire-gateway"]' in containerfile
