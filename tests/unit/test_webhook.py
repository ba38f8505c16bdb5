"""The webhook normalizer over every shared fixture and over bodies built to break it."""

from __future__ import annotations

import orjson
import pytest

from streams.policy.rules import WindowRules
from streams.policy.webhook import InvalidWebhook, normalize_webhook
from streams.policy.window import EMPTY_STATE, apply_inbound, view

from ..whatsapp_fixtures import EXPECTED, fixture_bodies, malformed_body

NOW = 1_800_000_000.0
RULES = WindowRules()
BODIES = fixture_bodies()


def test_every_fixture_has_an_expectation() -> None:
    assert set(BODIES) == set(EXPECTED)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_fixture_yields_its_events_and_window_effect(case: str) -> None:
    expect = EXPECTED[case]
    result = normalize_webhook(BODIES[case], NOW)
    assert [(e.kind, e.type) for e in result.events] == list(expect.events)
    assert len(result.templates) == expect.templates
    assert result.problems == []
    opened = False
    for event in result.events:
        # judged right after the event happened, as if it had just arrived
        state, _ = apply_inbound(EMPTY_STATE, event, event.timestamp, RULES)
        opened |= view(state, event.timestamp + 60, RULES).state == "open"
    assert opened == expect.opens


def test_the_upstream_malformed_fixture_is_invalid_json() -> None:
    with pytest.raises(InvalidWebhook) as info:
        normalize_webhook(malformed_body(), NOW)
    assert info.value.cause == "invalid_json"


def envelope(*changes: dict[str, object], entry_id: str = "waba1") -> bytes:
    return orjson.dumps(
        {"object": "whatsapp_business_account", "entry": [{"id": entry_id, "changes": list(changes)}]}
    )


def messages(pnid: str, *items: dict[str, object]) -> dict[str, object]:
    return {"field": "messages", "value": {"metadata": {"phone_number_id": pnid}, "messages": list(items)}}


def test_one_body_with_many_numbers_and_users_becomes_one_event_each() -> None:
    body = envelope(
        messages("p1", {"from": "u1", "id": "w1", "timestamp": "100", "type": "text"}),
        messages(
            "p2",
            {"from": "u2", "id": "w2", "timestamp": "101", "type": "image"},
            {"from_user_id": "US.9", "id": "w3", "timestamp": "102", "type": "text"},
        ),
    )
    result = normalize_webhook(body, NOW)
    assert [(e.phone_number_id, e.user, e.waba_id) for e in result.events] == [
        ("p1", "u1", "waba1"),
        ("p2", "u2", "waba1"),
        ("p2", "US.9", "waba1"),
    ]
    assert result.numbers == [("p1", "waba1"), ("p2", "waba1")]


def test_a_group_message_is_keyed_by_its_group() -> None:
    body = envelope(
        messages("p1", {"from": "u1", "group_id": "g1", "id": "w", "timestamp": "1", "type": "text"})
    )
    (event,) = normalize_webhook(body, NOW).events
    assert (event.user, event.group_id) == ("u1", "g1")


def test_unknown_fields_and_types_are_kept_or_ignored_never_fatal() -> None:
    body = envelope(
        {"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}},
        messages("p1", {"from": "u1", "id": "w", "timestamp": "1", "type": "hologram", "hologram": {}}),
    )
    result = normalize_webhook(body, NOW)
    assert [(e.kind, e.type) for e in result.events] == [("message", "hologram")]
    assert result.ignored_fields == ["account_update"] and result.problems == []


def test_an_unreadable_item_is_reported_by_path_and_the_rest_still_counts() -> None:
    body = envelope(
        messages(
            "p1",
            {"from": "u1", "id": "w1", "type": "text"},
            {"from": "u2", "id": "w2", "timestamp": "5", "type": "text"},
        )
    )
    result = normalize_webhook(body, NOW)
    assert [e.event_id for e in result.events] == ["w2"]
    assert result.problems == ["entry[0].changes[0].value.messages[0]: no numeric 'timestamp'"]


@pytest.mark.parametrize(
    ("body", "cause"),
    [
        (b"", "invalid_json"),
        (b'{"object": "whatsapp_business_account", "entry": [', "invalid_json"),
        (b"[1, 2]", "not_whatsapp"),
        (b'{"object": "page", "entry": []}', "not_whatsapp"),
        (b'{"object": "whatsapp_business_account"}', "not_whatsapp"),
    ],
)
def test_bodies_that_are_not_whatsapp_webhooks_are_invalid(body: bytes, cause: str) -> None:
    with pytest.raises(InvalidWebhook) as info:
        normalize_webhook(body, NOW)
    assert info.value.cause == cause


def test_a_131047_failure_and_a_referral_conversation_are_carried_over() -> None:
    status = {
        "id": "w",
        "status": "failed",
        "timestamp": "10",
        "recipient_id": "u1",
        "errors": [{"code": 131047, "title": "Re-engagement message"}],
        "conversation": {"id": "c", "expiration_timestamp": "99", "origin": {"type": "referral_conversion"}},
    }
    body = envelope(
        {"field": "messages", "value": {"metadata": {"phone_number_id": "p"}, "statuses": [status]}}
    )
    (event,) = normalize_webhook(body, NOW).events
    assert event.errors is not None and event.errors[0].code == 131047
    assert event.conversation is not None and event.conversation.expiration_timestamp == 99.0
    assert event.conversation.origin == {"type": "referral_conversion"}
