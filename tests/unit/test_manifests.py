"""The deployment files are valid and say what the tests run: the Compose file against the Compose
Specification's schema, every Kubernetes object against the schema of its kind (kubernetes-validate),
the Prometheus Operator rule equal to deploy/prometheus/alerts.yml, and every container command one
of the `wagate` commands the integration tests start."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
TESTED_COMMANDS = {"worker", "webhook"}  # tests/integration/harness.py's Worker, test_receiver's Receiver


def _k8s_objects() -> list[dict[str, Any]]:
    objects = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return objects


def _newest_kubernetes_version() -> str:
    return str(kubernetes_validate.latest_version())


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    jsonschema.Draft201909Validator(schema).validate(compose)
    services = compose["services"]
    assert {"kafka", "wagate-1", "wagate-2", "receiver", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    for name in ("wagate-1", "wagate-2", "receiver"):
        assert services[name]["command"][0] in TESTED_COMMANDS, name
    for name in ("wagate-1", "wagate-2"):  # static membership and routing by service name
        env = services[name]["environment"]
        assert env["WAGATE_INSTANCE_ID"] == name and env["WAGATE_WEB_ADVERTISED_HOST"] == name
    for volume in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        assert (ROOT / "deploy" / volume.split(":")[0]).exists(), volume


def test_every_kubernetes_object_is_valid_for_its_kind() -> None:
    version = _newest_kubernetes_version()
    objects = _k8s_objects()
    kinds = {obj["kind"] for obj in objects}
    assert {"StatefulSet", "Service", "Deployment", "PodDisruptionBudget", "ConfigMap"} <= kinds
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # custom resources: checked below
        kubernetes_validate.validate(obj, version, strict=True)


def test_workers_keep_state_identity_and_probes() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in _k8s_objects()}
    worker = objects[("StatefulSet", "wagate")]["spec"]
    container = worker["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    assert env["WAGATE_INSTANCE_ID"]["value"] == "$(POD_NAME)"  # static membership = the pod's name
    assert env["WAGATE_WEB_BIND"]["value"] == "0.0.0.0"
    assert "$(POD_NAME)" in env["WAGATE_WEB_ADVERTISED_HOST"]["value"]
    assert worker["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert {"name": "data", "mountPath": env["WAGATE_DATA_DIR"]["value"]} in container["volumeMounts"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert objects[("Service", "wagate")]["spec"]["clusterIP"] == "None"  # a DNS name per worker
    for kind, name in (("StatefulSet", "wagate"), ("Deployment", "wagate-webhook")):
        args = objects[(kind, name)]["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[0] in TESTED_COMMANDS


def test_the_operators_rules_are_the_alert_rules_and_the_monitor_finds_the_pods() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in _k8s_objects()}
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert objects[("PrometheusRule", "wagate")]["spec"]["groups"] == alerts["groups"]
    monitor = objects[("ServiceMonitor", "wagate")]["spec"]
    selector = monitor["selector"]["matchLabels"]
    ports = {endpoint["port"] for endpoint in monitor["endpoints"]}
    services = [o for o in objects.values() if o["kind"] == "Service"]
    assert services and all(
        selector.items() <= o["metadata"]["labels"].items()
        and ports <= {p["name"] for p in o["spec"]["ports"]}
        for o in services
    )


def test_the_image_runs_the_cli_as_an_unprivileged_user_with_state_on_a_volume() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["wagate"]' in dockerfile and 'CMD ["worker"]' in dockerfile
    assert re.search(r"^USER 10001$", dockerfile, re.M)
    assert 'VOLUME ["/data"]' in dockerfile and "WAGATE_DATA_DIR=/data" in dockerfile
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        for source in copied.split():
            assert (ROOT / source).exists(), source
