"""Meta's webhook bodies through the real path: wa.webhooks -> normalizer -> wa.inbound -> window state.

Every shared fixture goes in as a raw body (its phone_number_id swapped for one unique to this run, so
that each case has contacts of its own); the window it leaves behind is read back through a probe
request's decision.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import orjson

from streams.policy.keys import contact_key
from streams.policy.webhook import normalize_webhook

from ..whatsapp_fixtures import EXPECTED, fixture_bodies, malformed_body
from .conftest import text_request
from .harness import Gate

PNID_FIELD = re.compile(rb'("phone_number_id"\s*:\s*")([^"]*)(")')
HOUR = 3600.0
DAY = 86_400.0


def with_pnid(body: bytes, pnid: str) -> bytes:
    return PNID_FIELD.sub(lambda m: m.group(1) + pnid.encode() + m.group(3), body)


def probe(gate: Gate, pnid: str, user: str, group_id: str | None, request_id: str, **extra: Any) -> Any:
    to = group_id or user
    key = contact_key(pnid, user, group_id)
    request = text_request(pnid, to, request_id, **extra)
    if group_id:
        request["recipient_type"] = "group"
    gate.produce(gate.topo.requests.name, key, request)
    return gate.decision(request_id).value


def test_every_fixture_through_kafka_and_the_malformed_one_dead_lettered(gate: Gate) -> None:
    run = uuid.uuid4().hex[:8]
    bodies = fixture_bodies()
    cases = sorted(bodies)
    sent = {case: with_pnid(bodies[case], f"fx{run}{i}") for i, case in enumerate(cases)}
    # The malformed upstream file goes in the middle: the bodies after it must still be processed.
    ordered = (
        [sent[c] for c in cases[: len(cases) // 2]]
        + [malformed_body()]
        + [sent[c] for c in cases[len(cases) // 2 :]]
    )
    gate.send_webhooks(ordered)

    inbound = [
        r.value
        for r in gate.read_all(gate.topo.inbound.name)
        if str(r.value.get("phone_number_id", "")).startswith(f"fx{run}")  # (not the limit records)
    ]
    templates = [r.value for r in gate.read_all(gate.topo.templates.name)]
    for case in cases:
        expect = EXPECTED[case]
        normalized = normalize_webhook(sent[case], time.time())
        events = normalized.events
        pnids = {ev.phone_number_id for ev in events}
        on_topic = [e for e in inbound if e["phone_number_id"] in pnids and e["kind"] != "alias"]
        assert [(e["kind"], e["type"]) for e in on_topic] == list(expect.events), case
        # Items that name the user by phone number and BSUID(s) teach the gate an alias: a `learn` event
        # for the contact and a `point` event per other identifier.
        aliases = [
            (e["type"], e["user"]) for e in inbound if e["phone_number_id"] in pnids and e["kind"] == "alias"
        ]
        expected_aliases = [("learn", a.canonical) for a in normalized.aliases] + [
            ("point", other) for a in normalized.aliases for _, other in a.others if other != a.canonical
        ]
        assert sorted(aliases) == sorted(expected_aliases), case
        for i, event in enumerate(events):
            decision = probe(gate, event.phone_number_id, event.user, event.group_id, f"{run}-{case}-{i}")
            # An opener leaves its WhatsApp timestamp as the window's start (long closed by now);
            # anything else leaves no window behind.
            if expect.opens:
                assert decision["window"]["last_inbound_at"] == event.timestamp, case
                assert decision["reason"] == "window_closed", case
            else:
                assert decision["window"]["last_inbound_at"] is None, (case, decision["window"])
    template_names = {(t["waba_id"], t["name"], t["language"]) for t in templates}
    assert ("102290129340398", "order_confirmation", "en_US") in template_names
    assert ("880480871844883", "schedule_confirmation4", "pt_BR") in template_names
    assert ("57438975935", "my_message_template", "he") in template_names

    letters = gate.dead_letters(
        lambda records: any(
            r.value["value_b64"] and "not one JSON document" in r.value["error"] for r in records
        )
    )
    malformed = [r.value for r in letters if "not one JSON document" in r.value["error"]]
    assert malformed and malformed[0]["topic"] == gate.topo.webhooks.name


def envelope(pnid: str, **value: Any) -> bytes:
    return orjson.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "waba-it",
                    "changes": [
                        {
                            "field": value.pop("field", "messages"),
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {"phone_number_id": pnid},
                                **value,
                            },
                        }
                    ],
                }
            ],
        }
    )


def user_message(user: str, ts: float, mtype: str = "text", **extra: Any) -> dict[str, Any]:
    return {
        "from": user,
        "id": f"wamid.{uuid.uuid4().hex}",
        "timestamp": str(int(ts)),
        "type": mtype,
        **extra,
    }


def status(user: str, ts: float, state: str, wamid: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": wamid or f"wamid.{uuid.uuid4().hex}",
        "status": state,
        "timestamp": str(int(ts)),
        "recipient_id": user,
        **extra,
    }


def test_statuses_never_open_and_the_users_reply_to_a_template_does(gate: Gate, pnid: str) -> None:
    now = time.time()
    template_wamid = "wamid.template-out"
    gate.send_webhooks(
        [
            envelope(pnid, statuses=[status("u1", now - 60, "delivered"), status("u1", now - 50, "read")]),
            # a business template went out and was delivered: still no window
            envelope(
                pnid,
                statuses=[
                    status("u2", now - 120, "sent", template_wamid),
                    status("u2", now - 110, "delivered", template_wamid),
                ],
            ),
        ]
    )
    assert probe(gate, pnid, "u1", None, f"{pnid}-1")["reason"] == "no_window"
    assert probe(gate, pnid, "u2", None, f"{pnid}-2")["reason"] == "no_window"
    reply = user_message(
        "u2", now - 30, "button", button={"payload": "YES", "text": "Yes"}, context={"id": template_wamid}
    )
    gate.send_webhooks([envelope(pnid, messages=[reply])])
    assert probe(gate, pnid, "u2", None, f"{pnid}-3")["reason"] == "window_open"


def test_131047_closes_a_newer_message_reopens_and_an_old_retry_does_not(gate: Gate, pnid: str) -> None:
    now = time.time()
    first = user_message("u1", now - 2 * HOUR)
    failure = status("u1", now - HOUR, "failed", errors=[{"code": 131047, "title": "Re-engagement message"}])
    gate.send_webhooks([envelope(pnid, messages=[first]), envelope(pnid, statuses=[failure])])
    assert probe(gate, pnid, "u1", None, f"{pnid}-1")["reason"] == "window_closed"
    # Meta retries the first message's webhook: the same body again changes nothing
    gate.send_webhooks([envelope(pnid, messages=[first])])
    assert probe(gate, pnid, "u1", None, f"{pnid}-2")["reason"] == "window_closed"
    gate.send_webhooks([envelope(pnid, messages=[user_message("u1", now - 60)])])
    assert probe(gate, pnid, "u1", None, f"{pnid}-3")["reason"] == "window_open"
    # a message from three days ago, delivered late by a retry, opens nothing for another user
    gate.send_webhooks([envelope(pnid, messages=[user_message("u2", now - 3 * DAY)])])
    assert probe(gate, pnid, "u2", None, f"{pnid}-4")["reason"] == "window_closed"


def test_a_group_participants_message_opens_the_groups_window(gate: Gate, pnid: str) -> None:
    gate.send_webhooks(
        [envelope(pnid, messages=[user_message("participant-1", time.time() - 60, group_id="g1")])]
    )
    assert probe(gate, pnid, "anyone", "g1", f"{pnid}-g")["reason"] == "window_open"
    assert probe(gate, pnid, "participant-1", None, f"{pnid}-p")["reason"] == "no_window"


def test_marketing_stop_and_resume(gate: Gate, pnid: str) -> None:
    now = time.time()
    template = {"type": "template", "template": {"name": "promo", "language": {"code": "en"}}}

    def preference(value: str, ts: float) -> bytes:
        item = {"wa_id": "u1", "category": "marketing_messages", "value": value, "timestamp": int(ts)}
        return envelope(pnid, field="user_preferences", user_preferences=[item])

    gate.send_webhooks([preference("stop", now - 120)])
    stopped = probe(gate, pnid, "u1", None, f"{pnid}-1", message=template, intent="marketing")
    assert (stopped["route"], stopped["reason"]) == ("rejected", "marketing_opted_out")
    utility = probe(gate, pnid, "u1", None, f"{pnid}-2", message=template, intent="utility")
    assert utility["route"] == "send"
    gate.send_webhooks([preference("resume", now - 60)])
    resumed = probe(gate, pnid, "u1", None, f"{pnid}-3", message=template, intent="marketing")
    assert resumed["route"] == "send"


def test_an_ad_referral_answered_is_priced_as_a_free_entry_point(gate: Gate, pnid: str) -> None:
    referral = {"source_type": "ad", "source_id": "42", "ctwa_clid": "x"}
    gate.send_webhooks([envelope(pnid, messages=[user_message("u1", time.time() - 60, referral=referral)])])
    decision = probe(gate, pnid, "u1", None, f"{pnid}-1")
    assert decision["reason"] == "window_open"
    assert decision["pricing"] == {"category": "service", "billable": False, "basis": "free_entry_point"}
