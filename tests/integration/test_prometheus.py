"""Monitoring files against the real tools: promtool on the alert rules, and a real Prometheus scraping a
real worker driven through Kafka, with every dashboard query evaluated through its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streams.dashboard import all_queries

from .conftest import inbound, text_request
from .harness import ROOT, Gate, free_port
from .test_contacts import BSUID, envelope, v25
from .test_templates import webhook

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: install Debian's prometheus package (.ci/run does)"
    return path


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    for command in (
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
        ["check", "config", "prometheus.yml"],
    ):
        result = subprocess.run(
            [tool("promtool"), *command], cwd=PROMETHEUS_DIR, capture_output=True, text=True
        )
        assert result.returncode == 0, f"promtool {' '.join(command)}:\n{result.stdout}{result.stderr}"


@pytest.fixture
def prometheus(gate: Gate, workdir: Path) -> Iterator[int]:
    port = free_port()
    folder = workdir / f"prometheus-{port}"
    folder.mkdir()
    (folder / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: wagate\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{gate.settings.web_port}']}}]\n"
    )
    log = (folder / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (
                folder / "prometheus.log"
            ).read_text()
            time.sleep(0.3)
        yield port
    finally:
        proc.terminate()  # by its own PID
        proc.wait(20)


def query(port: int, expr: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def test_every_dashboard_query_returns_series_from_a_real_worker(
    gate: Gate, pnid: str, prometheus: int
) -> None:
    now = time.time()
    t = gate.topo
    gate.produce(t.inbound.name, f"{pnid}:open", inbound(pnid, "open", now - 3600))
    gate.wait_consumed(t.inbound.name)
    fallback = {"name": "hello", "language": {"code": "en"}}
    requests = [
        (f"{pnid}:open", text_request(pnid, "open", f"{pnid}-send")),
        (f"{pnid}:new", text_request(pnid, "new", f"{pnid}-template", fallback_template=fallback)),
        (f"{pnid}:new", text_request(pnid, "new", f"{pnid}-rejected", origin="broadcast")),
    ]
    gate.produce_many((t.requests.name, key, value) for key, value in requests)
    gate.produce(t.requests.name, f"{pnid}:new", b"not json and no request id")
    # A v25 body names phone and BSUID together; a request by the BSUID is moved to the contact.
    gate.produce(t.webhooks.name, None, v25("incoming.json", pnid, now - 60))
    requests.append((f"{pnid}:{BSUID}", text_request(pnid, BSUID, f"{pnid}-by-bsuid")))
    gate.produce(t.requests.name, *requests[-1])
    # Sending limits: a portfolio with a limit (its numbers' account and Meta's webhook), a template to
    # a user who never wrote (a slot taken), marketing to a US number, Meta's 131049 for another one.
    waba = f"waba-{pnid}"
    user_message = orjson.loads(
        envelope(
            pnid, {"messages": [{"from": "u7", "id": "wamid.x", "timestamp": str(int(now)), "type": "text"}]}
        )
    )
    user_message["entry"][0]["id"] = waba
    capability = {"max_daily_conversations_per_business": "TIER_2K"}
    gate.send_webhooks(
        [orjson.dumps(user_message), webhook(waba, "business_capability_update", capability, now)]
    )
    us = "14155550100"
    held_back = "14155550101"  # Meta held back marketing to another US number (131049)
    failed = inbound(
        pnid, held_back, now, kind="status", type="failed", errors=[{"code": 131049, "title": "x"}]
    )
    gate.produce(t.inbound.name, f"{pnid}:{held_back}", failed)
    template = {"type": "template", "template": {"name": "hello", "language": {"code": "en"}}}
    requests.append((f"{pnid}:fresh", text_request(pnid, "fresh", f"{pnid}-slot", message=template)))
    requests.append(
        (f"{pnid}:{us}", text_request(pnid, us, f"{pnid}-us", message=template, intent="marketing"))
    )
    gate.produce_many((t.requests.name, key, value) for key, value in requests[-2:])
    decided = gate.decisions([r["request_id"] for _, r in requests])
    assert decided[f"{pnid}-us"][0].value["reason"] == "marketing_unavailable_in_region"
    gate.wait_consumed(t.requests.name)

    missing: list[str] = []
    deadline = time.monotonic() + 60
    while True:
        missing = [f"{title}: {expr}" for title, expr in all_queries() if not query(prometheus, expr)]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing, "dashboard queries with no series:\n" + "\n".join(missing)
