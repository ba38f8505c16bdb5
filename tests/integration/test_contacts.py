"""One person, several identifiers, on the real broker: the whatsapp-api-js v25 payloads (phone number,
BSUID and parent BSUID together) as raw webhook bodies, each request written right after the body it
depends on (no waiting in between: the ordering contract must hold across the alias, too)."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import orjson

from streams.policy.keys import partition_for

from ..whatsapp_fixtures import FIXTURES
from .conftest import text_request
from .harness import Gate

PHONE = "16315551181"
BSUID = "US.13491208655302741918"
PARENT = "US.11815799212886844830"
TIMESTAMP = re.compile(rb'("timestamp"\s*:\s*")(\d+)(")')
PNID = re.compile(rb'("phone_number_id"\s*:\s*")([^"]*)(")')


def v25(name: str, pnid: str, ts: float) -> bytes:
    """A v25 fixture with this test's phone_number_id and its timestamps moved to ``ts``."""
    body = (FIXTURES / "whatsapp-api-js" / name).read_bytes()
    body = PNID.sub(lambda m: m.group(1) + pnid.encode() + m.group(3), body)
    return TIMESTAMP.sub(lambda m: m.group(1) + str(int(ts)).encode() + m.group(3), body)


def envelope(pnid: str, value: dict[str, Any], field: str = "messages") -> bytes:
    metadata = {"display_phone_number": "16505551111", "phone_number_id": pnid}
    change = {"field": field, "value": {"messaging_product": "whatsapp", "metadata": metadata, **value}}
    return orjson.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]})


def ask(gate: Gate, pnid: str, to: str, request_id: str, **extra: Any) -> dict[str, Any]:
    gate.produce(gate.topo.requests.name, f"{pnid}:{to}", text_request(pnid, to, request_id, **extra))
    return dict(gate.decision(request_id).value)


def webhook(gate: Gate, body: bytes) -> None:
    gate.produce(gate.topo.webhooks.name, None, body)


def test_a_user_writes_with_phone_and_bsuid_then_a_request_by_the_bsuid_is_sent(gate: Gate) -> None:
    pnid = f"pn{uuid.uuid4().hex[:10]}"
    webhook(gate, v25("incoming.json", pnid, time.time() - 60))
    decision = ask(gate, pnid, BSUID, f"{pnid}-1")
    assert (decision["route"], decision["reason"]) == ("send", "window_open"), decision["detail"]
    assert (decision["contact"], decision["to"]) == (f"{pnid}:{PHONE}", BSUID)
    assert decision["message"]["recipient"] == BSUID and "to" not in decision["message"]
    assert ask(gate, pnid, PARENT, f"{pnid}-2")["reason"] == "window_open"
    contacts = [r for r in gate.read_all(gate.topo.contacts.name) if r.value["phone_number_id"] == pnid]
    assert {r.value["identifier"] for r in contacts} == {PHONE, BSUID, PARENT}
    assert {r.value["contact"] for r in contacts} == {f"{pnid}:{PHONE}"}
    for record in contacts:  # each on its own identifier's partition, like the requests that use it
        key = f"{pnid}:{record.value['identifier']}"
        assert record.key == key.encode()
        assert record.partition == partition_for(key, gate.settings.partitions)
    assert gate.worker.metric_sum("wagate_rekeyed_by_alias_total") >= 2
    assert gate.worker.metric_sum("wagate_aliases_learnt_total") >= 2

    # The user adopts a username: Meta now withholds the phone number. Their next message names only
    # the BSUID, and a request by phone written right after it sees the window it refreshed.
    later = int(time.time() - 5)
    message = {"from_user_id": BSUID, "id": "wamid.later", "timestamp": str(later), "type": "text"}
    webhook(gate, envelope(pnid, {"contacts": [{"user_id": BSUID}], "messages": [message]}))
    refreshed = ask(gate, pnid, PHONE, f"{pnid}-3")
    assert (refreshed["reason"], refreshed["window"]["last_inbound_at"]) == ("window_open", later)


def test_a_window_opened_under_the_bsuid_reaches_requests_by_phone_once_both_are_seen(gate: Gate) -> None:
    """The reverse: a user with a username writes (BSUID only) and is answered by BSUID; a delivery
    status then names phone and BSUID together; a request by phone finds that window and that the
    first request was already decided."""
    pnid = f"pn{uuid.uuid4().hex[:10]}"
    now = time.time()
    message = {"from_user_id": BSUID, "id": "wamid.u1", "timestamp": str(int(now - 120)), "type": "text"}
    webhook(gate, envelope(pnid, {"contacts": [{"user_id": BSUID}], "messages": [message]}))
    first = ask(gate, pnid, BSUID, f"{pnid}-1")
    assert (first["reason"], first["contact"]) == ("window_open", f"{pnid}:{BSUID}")
    before = ask(gate, pnid, PHONE, f"{pnid}-2")
    assert before["reason"] == "no_window"  # not known to be the same person yet: never guessed

    # The window kept under the BSUID moves to the phone contact in a second hop (the BSUID's partition
    # hands it over): a request by phone sees it once the webhook's events are all applied.
    gate.send_webhooks([v25("delivered.json", pnid, now - 30)])
    after = ask(gate, pnid, PHONE, f"{pnid}-3")
    assert (after["route"], after["reason"], after["contact"]) == ("send", "window_open", f"{pnid}:{PHONE}")
    assert after["window"]["last_inbound_at"] == int(now - 120)
    gate.produce(gate.topo.requests.name, f"{pnid}:{PHONE}", text_request(pnid, PHONE, f"{pnid}-1"))
    deadline = time.monotonic() + 60
    while len(decided := gate.decisions([f"{pnid}-1"])[f"{pnid}-1"]) < 2:
        assert time.monotonic() < deadline, "the repeated request was not decided"
        time.sleep(0.2)
    by_time = sorted(decided, key=lambda d: d.value["decided_at"])
    assert [d.value["reason"] for d in by_time] == ["window_open", "duplicate_request"]
    assert gate.worker.metric_sum("wagate_contacts_merged_total") >= 1


def test_a_131047_for_the_bsuid_closes_the_window_kept_under_the_phone_number(gate: Gate) -> None:
    pnid = f"pn{uuid.uuid4().hex[:10]}"
    now = time.time()
    webhook(gate, v25("incoming.json", pnid, now - 600))
    assert ask(gate, pnid, PHONE, f"{pnid}-1")["reason"] == "window_open"
    # A failed status for a message sent to the BSUID: no contacts block, no phone number (Meta).
    failed = {
        "id": "wamid.f1",
        "status": "failed",
        "timestamp": str(int(now - 1)),
        "recipient_user_id": BSUID,
        "errors": [{"code": 131047, "title": "Re-engagement message"}],
    }
    webhook(gate, envelope(pnid, {"statuses": [failed]}))
    closed = ask(gate, pnid, PHONE, f"{pnid}-2")
    assert (closed["reason"], closed["contact"]) == ("window_closed", f"{pnid}:{PHONE}")


def test_a_number_change_closes_the_window_and_the_opt_out_follows_the_user(gate: Gate) -> None:
    pnid = f"pn{uuid.uuid4().hex[:10]}"
    now = time.time()
    new_phone, new_bsuid = "16315550000", "US.77001"
    stop = {"wa_id": PHONE, "category": "marketing_messages", "value": "stop", "timestamp": int(now - 300)}
    # Meta's order matters here (the opt-out before the change): bodies on different wa.webhooks
    # partitions may be normalized in any order, so these two are applied before the change is sent.
    gate.send_webhooks(
        [
            v25("incoming.json", pnid, now - 600),
            envelope(pnid, {"user_preferences": [stop]}, "user_preferences"),
        ]
    )
    system = {
        "body": "User A changed",
        "wa_id": new_phone,
        "user_id": new_bsuid,
        "type": "user_changed_number",
    }
    change = {"from": PHONE, "from_user_id": BSUID, "id": "wamid.s1", "timestamp": str(int(now - 5))}
    webhook(gate, envelope(pnid, {"messages": [{**change, "type": "system", "system": system}]}))

    assert ask(gate, pnid, PHONE, f"{pnid}-1")["reason"] == "window_closed"
    assert ask(gate, pnid, BSUID, f"{pnid}-2")["reason"] == "window_closed"  # the old BSUID: same contact
    # The new number is a new contact: no window. The opt-out followed it (a 2-step hop: written after).
    gate.wait_consumed(gate.topo.inbound.name)
    fresh = ask(gate, pnid, new_bsuid, f"{pnid}-3")
    assert (fresh["reason"], fresh["contact"]) == ("no_window", f"{pnid}:{new_phone}")
    template = {"type": "template", "template": {"name": "promo", "language": {"code": "en_US"}}}
    marketing = ask(gate, pnid, new_phone, f"{pnid}-4", message=template, intent="marketing")
    assert marketing["reason"] == "marketing_opted_out", marketing["detail"]
