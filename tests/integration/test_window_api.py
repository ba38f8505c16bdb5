"""The window API with two workers: each answers for every contact, its own or the other's."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from streams.models import WindowReport
from streams.policy.keys import partition_for

from .conftest import inbound, text_request
from .harness import WINDOW_API_TOKEN, Gate, Worker, wagate
from .test_contacts import BSUID, PARENT, PHONE, v25

HOUR = 3600.0


def ask(port: int, pnid: str, user: str, token: str | None = WINDOW_API_TOKEN) -> dict[str, Any] | None:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/windows/{pnid}/{user}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return dict(json.loads(response.read()))
    except (urllib.error.URLError, OSError):
        return None  # mid-rebalance a worker may answer 503


def refused(port: int, path: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_both_workers_answer_for_every_contact_and_the_cli_prints_it(
    two_workers: tuple[Gate, Worker],
) -> None:
    gate, second = two_workers
    pnid = "pn-api"
    now = time.time()
    # open windows for users on every partition, and one group; "never" never wrote
    partitions = gate.settings.partitions
    users: list[str] = []
    for i in range(40):
        taken = {partition_for(f"{pnid}:{u}", partitions) for u in users}
        if partition_for(f"{pnid}:u{i}", partitions) not in taken:
            users.append(f"u{i}")
    assert len(users) == gate.settings.partitions
    gate.produce_many((gate.topo.inbound.name, f"{pnid}:{u}", inbound(pnid, u, now - HOUR)) for u in users)
    gate.produce(
        gate.topo.inbound.name, f"{pnid}:group:g1", inbound(pnid, "member", now - 2 * HOUR, group_id="g1")
    )
    gate.wait_consumed(gate.topo.inbound.name)

    ports = [gate.settings.web_port, second.settings.web_port]
    expected = {u: "open" for u in users} | {"group:g1": "open", "never": "none"}
    deadline = time.monotonic() + 90
    while True:
        answers = {(port, u): ask(port, pnid, u) for port in ports for u in expected}
        if all(a is not None and a["state"] == expected[u] for (_, u), a in answers.items()):
            break
        assert time.monotonic() < deadline, {k: (v or {}).get("state") for k, v in answers.items()}
        time.sleep(1)
    opened = answers[(ports[1], users[0])]
    assert opened is not None and opened["contact"] == f"{pnid}:{users[0]}"
    WindowReport.model_validate(opened)  # the answer is what schemas/WindowReport.schema.json says
    assert abs(opened["expires_at"] - (now - HOUR + 86_400)) < 1.5 and opened["seconds_left"] > 0
    assert opened["marketing_opted_out"] is False and opened["free_entry_point_until"] is None

    cli = wagate(
        "window", pnid, "never", WAGATE_WEB_PORT=str(ports[1]), WAGATE_WINDOW_API_TOKEN=WINDOW_API_TOKEN
    )
    assert cli.returncode == 0, cli.stderr
    assert "none" in cli.stdout and "only templates can start the conversation" in cli.stdout

    # Any identifier of a contact answers for its one window: a v25 body names phone, BSUID and parent.
    gate.send_webhooks([v25("incoming.json", pnid, now - 60)])
    for port in ports:
        for identifier in (BSUID, PARENT, PHONE):
            report = ask(port, pnid, identifier)
            assert report is not None and report["contact"] == f"{pnid}:{PHONE}", (port, identifier, report)
            assert report["state"] == "open" and report["identifiers"] == [PHONE, PARENT, BSUID]
            assert report["asked_as"] == (None if identifier == PHONE else identifier)
    # Without the token, from either worker (one of them would forward it): 401, saying what to send;
    # Faust's own views of the table and the routing are off.
    for port in ports:
        status, said = refused(port, f"/windows/{pnid}/{users[0]}", {})
        assert status == 401 and "Authorization header missing" in said, (status, said)
        status, said = refused(port, f"/windows/{pnid}/{users[0]}", {"Authorization": "Bearer guess"})
        assert status == 401 and "not WAGATE_WINDOW_API_TOKEN" in said, (status, said)
        assert refused(port, "/table/", {})[0] == 404
        assert refused(port, "/router/", {})[0] == 404
    cli = wagate(
        "window", pnid, BSUID, WAGATE_WEB_PORT=str(ports[0]), WAGATE_WINDOW_API_TOKEN=WINDOW_API_TOKEN
    )
    assert cli.returncode == 0, cli.stderr
    assert f"{pnid}:{PHONE}: open" in cli.stdout and f"(asked as {BSUID})" in cli.stdout


def test_a_131047_after_a_window_open_send_counts_as_a_gate_miss(gate: Gate, pnid: str) -> None:
    now = time.time()
    gate.produce(gate.topo.inbound.name, f"{pnid}:u1", inbound(pnid, "u1", now - HOUR))
    gate.wait_consumed(gate.topo.inbound.name)
    before = gate.worker.metric_sum("wagate_gate_misses_total")
    gate.produce(gate.topo.requests.name, f"{pnid}:u1", text_request(pnid, "u1", f"{pnid}-1"))
    assert gate.decision(f"{pnid}-1").value["reason"] == "window_open"
    failed = inbound(
        pnid,
        "u1",
        time.time() + 1,
        kind="status",
        type="failed",
        errors=[{"code": 131047, "title": "Re-engagement"}],
    )
    gate.produce(gate.topo.inbound.name, f"{pnid}:u1", failed)
    gate.wait_consumed(gate.topo.inbound.name)
    assert gate.worker.metric_sum("wagate_gate_misses_total") == before + 1
    assert "wagate_decision_processing_seconds_count" in gate.worker.metrics_text()
