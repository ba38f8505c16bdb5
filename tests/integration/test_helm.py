"""The Helm chart (deploy/helm/wagate): `helm lint` passes, and what `helm template` renders passes the
same checks as deploy/kubernetes/ (every object valid for its kind, every pod within the restricted
Pod Security Standard, the window API and the metrics on ports a NetworkPolicy tells apart); the
Prometheus Operator objects appear only when the cluster has their definitions. Helm is built from its
Go module by `make helm-tool` (WAGATE_HELM names the binary)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from ..unit.test_manifests import _restricted_violations
from .harness import ROOT

CHART = ROOT / "deploy" / "helm" / "wagate"
MONITORING_APIS = ["monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule"]


def _helm() -> str:
    helm = os.environ.get("WAGATE_HELM") or str(next(iter(sorted((ROOT / ".tools").glob("helm-*/helm"))), ""))
    assert helm and Path(helm).is_file(), "no Helm binary: run `make helm-tool` (or set WAGATE_HELM)"
    return helm


def _render(*args: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [_helm(), "template", "gate", str(CHART), *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def test_helm_lint_passes() -> None:
    done = subprocess.run(
        [_helm(), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rendered_objects_pass_the_checks_of_the_plain_manifests() -> None:
    objects = _render()
    kinds = sorted(o["kind"] for o in objects)
    workers = ["ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget", "NetworkPolicy"]
    receiver = ["Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"]
    # No ServiceMonitor or PrometheusRule: this cluster has no Prometheus Operator.
    assert kinds == sorted([*workers, *receiver])
    version = str(kubernetes_validate.latest_version())
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
    pods = [
        (o["metadata"]["name"], o["spec"]["template"]["spec"])
        for o in objects
        if "template" in o.get("spec", {})
    ]
    assert len(pods) == 2
    assert [v for name, pod in pods for v in _restricted_violations(name, pod)] == []
    worker = next(o for o in objects if o["kind"] == "StatefulSet")["spec"]["template"]["spec"]["containers"][
        0
    ]
    env = {item["name"]: item for item in worker["env"]}
    assert env["WAGATE_ADMIN_PORT"]["value"] == "6067" and env["WAGATE_INSTANCE_ID"]["value"] == "$(POD_NAME)"
    assert {p["name"] for p in worker["ports"]} == {"api", "http"}
    assert worker["image"] == "wagate:0.3.0"


def test_the_operators_objects_render_when_the_cluster_has_them_and_the_rules_are_the_alert_rules() -> None:
    args = [arg for api in MONITORING_APIS for arg in ("--api-versions", api)]
    objects = {o["kind"]: o for o in _render(*args)}
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert objects["PrometheusRule"]["spec"]["groups"] == alerts["groups"]
    monitor = objects["ServiceMonitor"]["spec"]
    assert monitor["endpoints"][0]["port"] == "http"
    # The alert rules name job="wagate": the job comes from a Service label, not the release's name.
    jobs = {o["metadata"]["labels"][monitor["jobLabel"]] for o in _render(*args) if o["kind"] == "Service"}
    assert jobs == {"wagate", "wagate-webhook"}
    assert 'job="wagate"' in (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()
    assert (CHART / "files" / "alerts.yml").read_text() == (
        ROOT / "deploy" / "prometheus" / "alerts.yml"
    ).read_text()


def test_values_pin_the_image_by_digest_and_take_sasl_from_a_secret() -> None:
    digest = "sha256:" + "ab" * 32
    objects = _render(
        "--set",
        f"image.digest={digest}",
        "--set",
        "kafka.securityProtocol=SASL_SSL",
        "--set",
        "kafka.saslUsername=gate",
        "--set",
        "kafka.saslPasswordSecret.name=kafka-login",
        "--set",
        "receiver.enabled=false",
    )
    assert not any(o["kind"] == "Deployment" for o in objects)
    worker = next(o for o in objects if o["kind"] == "StatefulSet")["spec"]["template"]["spec"]["containers"][
        0
    ]
    assert worker["image"] == f"wagate@{digest}"
    env = {item["name"]: item for item in worker["env"]}
    assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "kafka-login",
        "key": "sasl-password",
    }
    config = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    assert config["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and config["KAFKA_SASL_USERNAME"] == "gate"
