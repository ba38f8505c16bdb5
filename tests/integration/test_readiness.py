"""/health and /ready as a Kubernetes probe sees them: /ready says 503 while the state is recovered from
its changelog (and names what is missing), 200 once the worker can decide; /health answers all along.
As in the manifests, they are on WAGATE_ADMIN_PORT, and the window API's port serves none of them."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from .conftest import inbound, text_request
from .harness import WINDOW_API_TOKEN, Gate, free_port

STATE_RECORDS = 150_000  # enough changelog to replay for the probe to see recovery in progress


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_ready_is_503_during_recovery_and_200_once_the_worker_decides(bootstrap: str, workdir: Path) -> None:
    gate = Gate(bootstrap, workdir)
    gate.settings = gate.settings.model_copy(update={"admin_port": free_port()})
    gate.worker = gate.new_worker()
    changelog = gate.topo.contact_state_changelog.name
    gate.produce_bulk((changelog, f"seed:u{i}", b"{}") for i in range(STATE_RECORDS))
    port = gate.settings.admin_port
    assert port is not None
    seen: list[tuple[float, int, dict[str, bool]]] = []
    health: set[int] = set()
    gate.worker.start()
    started = time.monotonic()
    try:
        while time.monotonic() - started < 120:
            try:
                status, body = _get(port, "/ready")
                health.add(_get(port, "/health")[0])
            except OSError:  # not listening yet
                time.sleep(0.05)
                continue
            seen.append((time.monotonic() - started, status, orjson.loads(body)["checks"]))
            if status == 200:
                break
            time.sleep(0.05)
        assert seen and seen[-1][1] == 200, seen[-3:]
        not_ready = [checks for _, status, checks in seen if status == 503]
        assert any(checks["recovered"] is False for checks in not_ready), "recovery was never seen"
        assert all(not all(checks.values()) for checks in not_ready)  # a 503 always names what is missing
        assert health == {200}
        # Ready means deciding.
        pnid = "ready"
        gate.produce(gate.topo.inbound.name, f"{pnid}:u", inbound(pnid, "u", time.time() - 60))
        gate.produce(gate.topo.requests.name, f"{pnid}:u", text_request(pnid, "u", "ready-1"))
        assert gate.decision("ready-1").value["reason"] == "window_open"
        # The window API's port answers the window API, and nothing of the admin port's.
        web = gate.settings.web_port
        assert {path: _get(web, path)[0] for path in ("/health", "/ready", "/metrics")} == dict.fromkeys(
            ("/health", "/ready", "/metrics"), 404
        )
        window = urllib.request.Request(
            f"http://127.0.0.1:{web}/windows/{pnid}/u",
            headers={"Authorization": f"Bearer {WINDOW_API_TOKEN}"},
        )
        with urllib.request.urlopen(window, timeout=10) as response:
            assert orjson.loads(response.read())["state"] == "open"
        assert b"wagate_decisions_total" in _get(port, "/metrics")[1]
    finally:
        gate.worker.stop()
    recovering = [at for at, _, checks in seen if not checks["recovered"]]
    print(
        f"\n/ready: 503 for {seen[-1][0]:.1f} s after start ({len(recovering)} probes saw recovery of "
        f"{STATE_RECORDS:,} state records), then 200"
    )
