"""The template registry end to end: webhooks and `wagate templates load` feed it, decisions follow it."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from ..whatsapp_fixtures import fixture_bodies
from .conftest import start_and_wait, text_request
from .harness import Gate, wagate

HOUR = 3600.0


def listing(*templates: dict[str, Any]) -> dict[str, Any]:
    return {"data": list(templates), "paging": {"cursors": {"before": "x", "after": "y"}}}


def meta_template(
    name: str, status: str = "APPROVED", category: str = "UTILITY", **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "language": "en_US",
        "status": status,
        "category": category,
        "id": f"id-{name}",
        "components": [{"type": "BODY", "text": "Hello {{1}}, order {{2}} is ready."}],
        **extra,
    }


def load_templates(gate: Gate, workdir: Path, waba: str, document: dict[str, Any]) -> str:
    path = workdir / f"templates-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(document))
    result = wagate(
        "templates",
        "load",
        str(path),
        "--waba-id",
        waba,
        KAFKA_BOOTSTRAP_SERVERS=gate.settings.kafka_bootstrap_servers,
        WAGATE_TOPIC_PREFIX=gate.prefix,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def webhook(waba: str, field: str, value: dict[str, Any], at: float) -> bytes:
    return orjson.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [{"id": waba, "time": int(at), "changes": [{"field": field, "value": value}]}],
        }
    )


def status_update(waba: str, name: str, event: str, at: float) -> bytes:
    value = {
        "event": event,
        "message_template_id": 1,
        "message_template_name": name,
        "message_template_language": "en_US",
        "reason": "NONE",
    }
    return webhook(waba, "message_template_status_update", value, at)


def user_message(waba: str, pnid: str, user: str, at: float) -> bytes:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"phone_number_id": pnid},
        "messages": [
            {"from": user, "id": f"wamid.{uuid.uuid4().hex}", "timestamp": str(int(at)), "type": "text"}
        ],
    }
    return webhook(waba, "messages", value, at)


def template_message(name: str, params: int = 2) -> dict[str, Any]:
    body = {"type": "body", "parameters": [{"type": "text", "text": f"p{i}"} for i in range(params)]}
    return {
        "type": "template",
        "template": {"name": name, "language": {"code": "en_US"}, "components": [body]},
    }


class Asker:
    """Sends one request at a time to a contact and returns its decision."""

    def __init__(self, gate: Gate, pnid: str, user: str = "u1") -> None:
        self.gate, self.pnid, self.user, self.n = gate, pnid, user, 0

    def __call__(self, **fields: Any) -> dict[str, Any]:
        self.n += 1
        rid = f"{self.pnid}-{self.user}-{self.n}"
        self.gate.produce(
            self.gate.topo.requests.name,
            f"{self.pnid}:{self.user}",
            text_request(self.pnid, self.user, rid, **fields),
        )
        return dict(self.gate.decision(rid).value)

    def until(self, reason: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        """Ask until the decision has ``reason``: a registry load reaches every worker asynchronously."""
        deadline = time.monotonic() + timeout
        while True:
            decision = self(**fields)
            if decision["reason"] == reason or time.monotonic() > deadline:
                return decision
            time.sleep(0.5)


def test_approved_paused_reinstated_and_parameters(gate: Gate, pnid: str, workdir: Path) -> None:
    waba = f"waba-{pnid}"
    now = time.time()
    gate.send_webhooks([user_message(waba, pnid, "u1", now - 60)])  # the gate learns pnid -> waba
    named = meta_template(
        "greet_named",
        parameter_format="NAMED",
        components=[{"type": "BODY", "text": "Hi {{first_name}}"}],
    )
    out = load_templates(
        gate,
        workdir,
        waba,
        listing(meta_template("order_ready"), named, meta_template("later", status="PENDING")),
    )
    assert "3 template(s)" in out
    ask = Asker(gate, pnid)
    sent = ask.until("template", message=template_message("order_ready"))
    assert (sent["route"], sent["reason"]) == ("send", "template"), sent
    assert sent["pricing"]["category"] == "utility"

    gate.send_webhooks([status_update(waba, "order_ready", "PAUSED", now + 5)])
    paused = ask(message=template_message("order_ready"))
    assert (paused["route"], paused["reason"]) == ("rejected", "template_not_sendable")
    assert "PAUSED since" in paused["detail"]
    gate.send_webhooks([status_update(waba, "order_ready", "REINSTATED", now + 10)])
    assert ask(message=template_message("order_ready"))["reason"] == "template"

    mismatch = ask(message=template_message("order_ready", params=1))
    assert mismatch["reason"] == "template_parameter_mismatch" and "expects 2" in mismatch["detail"]
    wrong_name = {
        "type": "template",
        "template": {
            "name": "greet_named",
            "language": {"code": "en_US"},
            "components": [
                {"type": "body", "parameters": [{"type": "text", "parameter_name": "name", "text": "Ann"}]}
            ],
        },
    }
    assert ask(message=wrong_name)["reason"] == "template_parameter_mismatch"
    assert ask(message=template_message("no_such_template"))["reason"] == "template_unknown"
    # a free-form follow-up (window open, but the pending fallback is only needed outside it) goes out;
    # to a user who never wrote, the pending fallback cannot replace it
    fallback = {"name": "later", "language": {"code": "en_US"}}
    assert ask(fallback_template=fallback)["reason"] == "window_open"
    stranger = Asker(gate, pnid, "stranger")(fallback_template=fallback)
    assert (stranger["route"], stranger["reason"]) == ("rejected", "template_not_sendable")


def test_reclassified_to_marketing_then_sent_to_an_opted_out_user(
    gate: Gate, pnid: str, workdir: Path
) -> None:
    waba = f"waba-{pnid}"
    now = time.time()
    stop = {
        "messaging_product": "whatsapp",
        "metadata": {"phone_number_id": pnid},
        "user_preferences": [
            {"wa_id": "u1", "category": "marketing_messages", "value": "stop", "timestamp": int(now - 30)}
        ],
    }
    gate.send_webhooks(
        [user_message(waba, pnid, "u1", now - 60), webhook(waba, "user_preferences", stop, now - 30)]
    )
    load_templates(gate, workdir, waba, listing(meta_template("tips")))
    ask = Asker(gate, pnid)
    assert ask.until("template", message=template_message("tips"), intent="utility")["reason"] == "template"
    reclassified = {
        "message_template_id": 1,
        "message_template_name": "tips",
        "message_template_language": "en_US",
        "new_category": "MARKETING",
    }
    gate.send_webhooks([webhook(waba, "template_category_update", reclassified, now + 5)])
    decision = ask(message=template_message("tips"), intent="utility")
    assert (decision["route"], decision["reason"]) == ("rejected", "marketing_opted_out")


def test_template_webhook_fixtures_feed_the_registry(gate: Gate, pnid: str) -> None:
    bodies = fixture_bodies()
    waba = "102290129340398"  # the account of pywa's template_status_update fixtures
    gate.send_webhooks(
        [
            bodies["pywa/template_status_update.json#approved"],
            bodies["pywa/template_status_update.json#rejected"],
            user_message(waba, pnid, "u1", time.time() - 60),
        ]
    )
    ask = Asker(gate, pnid)
    approved = {"type": "template", "template": {"name": "order_confirmation", "language": {"code": "en_US"}}}
    assert ask(message=approved)["reason"] == "template"
    rejected = {"type": "template", "template": {"name": "abandoned_cart", "language": {"code": "en"}}}
    decision = ask(message=rejected)
    assert (decision["reason"], "REJECTED" in decision["detail"]) == ("template_not_sendable", True)


def epoch(year: int, month: int, day: int) -> float:
    return datetime(year, month, day, tzinfo=UTC).timestamp()


@pytest.fixture
def configured_gate(bootstrap: str, workdir: Path) -> Iterator[Gate]:
    """A gate whose decision clock stands on 2026-09-15 (before the 2026-10-01 pricing change), a number
    mapped to its account only by settings, and broadcasts forbidden from free-form."""
    offset = epoch(2026, 9, 15) - time.time()
    configured = Gate(
        bootstrap,
        workdir,
        WAGATE_CLOCK_OFFSET_SECONDS=str(offset),
        WAGATE_PHONE_NUMBER_WABAS="pn-settings=waba-settings",
        WAGATE_ORIGIN_POLICY='{"broadcast": {"free_form": false}, "automation": {"convert": false}}',
    )
    start_and_wait(configured)
    yield configured
    configured.worker.stop()


def test_settings_numbers_origins_pricing_dates_and_a_restart(
    configured_gate: Gate, gate: Gate, workdir: Path
) -> None:
    load_templates(configured_gate, workdir, "waba-settings", listing(meta_template("notice")))
    ask = Asker(configured_gate, "pn-settings")
    sent = ask.until("template", message=template_message("notice"))
    assert sent["reason"] == "template", sent  # the account came from WAGATE_PHONE_NUMBER_WABAS only

    now = epoch(2026, 9, 15)
    configured_gate.produce(
        configured_gate.topo.inbound.name,
        "pn-settings:u1",
        {
            "event_id": "w1",
            "phone_number_id": "pn-settings",
            "user": "u1",
            "timestamp": now - HOUR,
            "kind": "message",
            "type": "text",
        },
    )
    configured_gate.wait_consumed(configured_gate.topo.inbound.name)
    # before 2026-10-01: service in the window and utility templates in it are free
    service = ask()
    assert (service["reason"], service["pricing"]["billable"]) == ("window_open", False)
    assert ask(message=template_message("notice"))["pricing"] == {
        "category": "utility",
        "billable": False,
        "basis": "service_window",
    }
    # per-origin settings
    assert ask(origin="broadcast")["reason"] == "origin_not_allowed"
    stranger = Asker(configured_gate, "pn-settings", "stranger")
    converted = stranger(
        origin="automation",
        fallback_template={
            "name": "notice",
            "language": {"code": "en_US"},
            "components": [
                {"type": "body", "parameters": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ],
        },
    )
    assert (converted["route"], converted["reason"]) == ("rejected", "no_window")

    # the same window on the wall clock (after 2026-10-01): service is billed
    gate.produce(
        gate.topo.inbound.name,
        "pn-now:u1",
        {
            "event_id": "w2",
            "phone_number_id": "pn-now",
            "user": "u1",
            "timestamp": time.time() - HOUR,
            "kind": "message",
            "type": "text",
        },
    )
    gate.wait_consumed(gate.topo.inbound.name)
    billed = Asker(gate, "pn-now")()
    assert (billed["reason"], billed["pricing"]["billable"], billed["pricing"]["basis"]) == (
        "window_open",
        True,
        "per_message",
    )

    # the registry survives a restart: the loaded template is still known
    assert configured_gate.worker.signal(signal.SIGTERM) == 0
    configured_gate.worker = configured_gate.new_worker()
    start_and_wait(configured_gate)
    assert ask(message=template_message("notice"))["reason"] == "template"


def test_an_unreadable_registry_record_is_skipped_and_counted(gate: Gate, pnid: str) -> None:
    metric = "wagate_registry_skipped_records_total"
    before = gate.worker.metric_sum(metric)
    # No updated_at and no source: not a TemplateRecord (other tests read this topic's keys too).
    unreadable = {"waba_id": f"waba-{pnid}", "name": "x", "language": "en"}
    gate.produce(gate.topo.templates.name, f"waba-{pnid}:x:en", unreadable)
    deadline = time.monotonic() + 30
    while gate.worker.metric_sum(metric) < before + 1:
        assert time.monotonic() < deadline, "the skipped record was not counted"
        time.sleep(0.5)
    assert f'{metric}{{topic="wa.templates"}}' in gate.worker.metrics_text()
    # the follower goes on: requests are still decided
    assert Asker(gate, pnid)()["reason"] == "no_window"
