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
    for path in sorted(KUBERNETES.rglob("*.yaml")):
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
    assert {
        "StatefulSet",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "ConfigMap",
        "NetworkPolicy",
    } <= kinds
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


# The "restricted" Pod Security Standard (https://kubernetes.io/docs/concepts/security/pod-security-standards/),
# its rules field by field, plus what the issue asked beyond it (no service account token).
_RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _restricted_violations(name: str, pod: dict[str, Any]) -> list[str]:
    found: list[str] = []
    pod_security = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            found.append(f"{name}: {flag}")
    if pod.get("automountServiceAccountToken") is not False:
        found.append(f"{name}: automountServiceAccountToken is not false")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            found.append(f"{name}: volume {volume['name']} of type {sorted(kinds)}")
    for container in pod.get("initContainers", []) + pod["containers"]:
        where = f"{name}/{container['name']}"
        security = container.get("securityContext", {})

        def setting(key: str, security: dict[str, Any] = security) -> Any:
            return security.get(key, pod_security.get(key))

        if security.get("privileged"):
            found.append(f"{where}: privileged")
        if security.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: allowPrivilegeEscalation is not false")
        if setting("runAsNonRoot") is not True:
            found.append(f"{where}: runAsNonRoot is not true")
        if setting("runAsUser") == 0:
            found.append(f"{where}: runAsUser 0")
        if (setting("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{where}: seccompProfile is not RuntimeDefault or Localhost")
        capabilities = security.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{where}: capabilities.drop lacks ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{where}: capabilities.add {capabilities['add']}")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            found.append(f"{where}: hostPort")
    return found


def test_every_pod_meets_the_restricted_pod_security_standard() -> None:
    pods = [
        (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
        for o in _k8s_objects()
        if o["kind"] in ("StatefulSet", "Deployment", "DaemonSet", "Job")
    ]
    assert len(pods) == 2
    assert [v for name, pod in pods for v in _restricted_violations(name, pod)] == []


def test_the_restricted_check_finds_what_the_standard_forbids() -> None:
    pod = {"containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]}
    found = _restricted_violations("p", {**pod, "volumes": [{"name": "h", "hostPath": {"path": "/"}}]})
    assert any("capabilities.add" in v for v in found) and any("hostPath" in v for v in found)
    assert any("allowPrivilegeEscalation" in v for v in found) and any("seccompProfile" in v for v in found)
    assert any("automountServiceAccountToken" in v for v in found)


def test_the_window_api_and_the_metrics_are_on_ports_a_network_policy_tells_apart() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in _k8s_objects()}
    worker = objects[("StatefulSet", "wagate")]["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in worker["env"]}
    ports = {port["name"]: port["containerPort"] for port in worker["ports"]}
    assert ports["api"] == 6066 and ports["http"] == int(env["WAGATE_ADMIN_PORT"])
    assert worker["readinessProbe"]["httpGet"]["port"] == "http"
    policy = objects[("NetworkPolicy", "wagate-worker")]["spec"]["ingress"]
    assert {rule["ports"][0]["port"] for rule in policy} == {"api", "http"}


def test_the_lock_pins_every_dependency_within_its_range_with_hashes() -> None:
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = (ROOT / "requirements.lock").read_text()
    pinned = {
        name.lower().replace("_", "-"): version
        for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock, re.M)
    }
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = requirement.name.lower().replace("_", "-")
        assert name in pinned, f"{name} is not in requirements.lock: regenerate it (see its header)"
        assert requirement.specifier.contains(pinned[name]), (
            f"{name}=={pinned[name]} is outside {requirement}"
        )
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", lock.split("\n", 6)[-1])
    assert all("--hash=sha256:" in block for block in blocks if "==" in block)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG VERSION={project['version']}" in dockerfile  # the OCI version label
    assert re.search(r"^HEALTHCHECK .*\[\"wagate\", \"health\"\]", dockerfile, re.M)
