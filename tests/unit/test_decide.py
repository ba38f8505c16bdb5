from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.models import Decision
from streams.policy.decide import decide, decide_invalid
from streams.policy.parse import InvalidPayload, parse_send_request
from streams.policy.rules import WindowRules
from streams.policy.window import EMPTY_STATE, ContactState, apply_inbound

from .factories import DAY, FALLBACK, HOUR, T0, inbound, request, request_obj

RULES = WindowRules()


def opened_at(ts: float) -> ContactState:
    state, _ = apply_inbound(EMPTY_STATE, inbound(ts), T0, RULES)
    return state


def run(state: ContactState = EMPTY_STATE, now: float = T0, **overrides: Any) -> Decision:
    req, received = request(**overrides)
    decision, _ = decide(req, received, state, now, RULES)
    # every decision is a valid Decision per the published schema
    Decision.model_validate(orjson.loads(decision.__pydantic_serializer__.to_json(decision)))
    return decision


def test_free_form_inside_the_window_is_sent_with_the_complete_cloud_api_body() -> None:
    d = run(opened_at(T0 - HOUR))
    assert (d.route, d.reason) == ("send", "window_open")
    assert d.message == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "u1",
        "type": "text",
        "text": {"body": "hello"},
    }
    assert d.window.state == "open" and d.window.expires_at == T0 - HOUR + DAY
    assert d.contact == "pn1:u1" and d.request is None and d.pricing is not None


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (EMPTY_STATE, "no_window"),
        (opened_at(T0 - 2 * DAY), "window_closed"),
        (opened_at(T0 - DAY + 60), "window_closing"),
    ],
)
def test_free_form_outside_the_window(state: ContactState, reason: str) -> None:
    rejected = run(state)
    assert (rejected.route, rejected.reason) == ("rejected", reason)
    assert rejected.request == request_obj() and rejected.message is None
    converted = run(state, fallback_template=FALLBACK)
    assert (converted.route, converted.reason) == ("template", reason)
    assert converted.message == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "u1",
        "type": "template",
        "template": FALLBACK,
    }


def test_day_three_follow_up_from_the_demo_timeline() -> None:
    state = opened_at(T0 - 2 * DAY + 9 * HOUR)  # thanks at 11:30 on day 1, follow-up on day 3
    assert run(state).reason == "window_closed"
    assert run(state, fallback_template=FALLBACK).route == "template"


def test_marketing_intent_needs_a_template_even_in_an_open_window() -> None:
    state = opened_at(T0 - HOUR)
    assert (run(state, intent="marketing").route, run(state, intent="marketing").reason) == (
        "rejected",
        "marketing_requires_template",
    )
    d = run(state, intent="marketing", fallback_template=FALLBACK)
    assert (d.route, d.reason) == ("template", "marketing_requires_template")
    assert d.pricing is not None and d.pricing.category == "marketing" and d.pricing.billable


def test_template_messages_go_out_unverified_until_the_registry_exists() -> None:
    d = run(message={"type": "template", "template": FALLBACK})
    assert (d.route, d.reason) == ("send", "template_unverified")
    assert d.message is not None and d.message["template"] == FALLBACK


def test_stale_request_is_rejected() -> None:
    d = run(opened_at(T0 - HOUR), not_after=T0 - 1)
    assert (d.route, d.reason) == ("rejected", "stale_request")
    assert run(opened_at(T0 - HOUR), not_after=T0).route == "send"


def test_interactive_to_a_group_is_unsupported() -> None:
    d = run(
        recipient_type="group", to="g1", message={"type": "interactive", "interactive": {"type": "button"}}
    )
    assert (d.route, d.reason, d.contact) == ("rejected", "unsupported_message", "pn1:group:g1")


def test_unknown_message_type_is_unsupported() -> None:
    assert run(message={"type": "hologram", "hologram": {}}).reason == "unsupported_message"


def test_a_repeated_request_id_is_never_sent_twice() -> None:
    req, received = request()
    first, state = decide(req, received, opened_at(T0 - HOUR), T0, RULES)
    second, state2 = decide(req, received, state, T0 + 1, RULES)
    assert first.route == "send"
    assert (second.route, second.reason) == ("rejected", "duplicate_request")
    assert state2 == state


def test_decided_request_ids_are_pruned_by_age_and_count() -> None:
    rules = WindowRules(dedupe_horizon_seconds=HOUR, dedupe_max_per_contact=3)
    state = EMPTY_STATE
    for i in range(5):
        req, received = request(request_id=f"r{i}")
        _, state = decide(req, received, state, T0 + i, rules)
    assert set(state.decided) == {"r2", "r3", "r4"}
    req, received = request(request_id="late")
    _, state = decide(req, received, state, T0 + 2 * HOUR, rules)
    assert set(state.decided) == {"late"}


def test_invalid_request_with_readable_id_is_rejected_naming_the_field() -> None:
    parsed = parse_send_request(orjson.dumps(request_obj(origin="robot")))
    assert isinstance(parsed, InvalidPayload)
    d = decide_invalid(parsed, "pn1:u1", T0)
    assert d is not None and (d.route, d.reason) == ("rejected", "invalid_request")
    assert "'origin'" in d.detail and d.request_id == "r1" and d.request == request_obj(origin="robot")


def test_an_invalid_request_that_omitted_recipient_type_carries_the_schemas_default() -> None:
    omitted = parse_send_request(orjson.dumps(request_obj(origin="robot")))
    wrong = parse_send_request(orjson.dumps(request_obj(origin="robot", recipient_type="crowd")))
    group = parse_send_request(orjson.dumps(request_obj(origin="robot", recipient_type="group")))
    assert isinstance(omitted, InvalidPayload) and isinstance(wrong, InvalidPayload)
    assert isinstance(group, InvalidPayload)
    decided = [decide_invalid(parsed, None, T0) for parsed in (omitted, wrong, group)]
    assert [d.recipient_type if d else "?" for d in decided] == ["individual", None, "group"]


def test_unreadable_request_goes_to_the_dead_letter_topic() -> None:
    parsed = parse_send_request(b"{not json")
    assert isinstance(parsed, InvalidPayload) and parsed.received == "{not json"
    assert decide_invalid(parsed, None, T0) is None
