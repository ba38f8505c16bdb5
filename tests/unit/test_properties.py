"""Properties of the policy that must hold for any input, not just the examples."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.models import InboundEvent
from streams.policy.decide import decide
from streams.policy.rules import SENDABLE_MESSAGE_TYPES, WindowRules
from streams.policy.window import EMPTY_STATE, ContactState, apply_inbound, view

from .factories import DAY, FALLBACK, T0, inbound, request

RULES = WindowRules()
REASONS_BY_ROUTE = {
    "send": {"window_open", "template", "template_unverified"},
    "template": {"window_closed", "no_window", "window_closing", "marketing_requires_template"},
    "rejected": {
        "window_closed",
        "no_window",
        "window_closing",
        "marketing_requires_template",
        "stale_request",
        "duplicate_request",
        "unsupported_message",
        "marketing_opted_out",
        "marketing_cooldown",
    },
}

timestamps = st.floats(min_value=T0 - 4 * DAY, max_value=T0 + 2 * DAY, allow_nan=False)
kinds_types = st.sampled_from(
    [
        ("message", "text"),
        ("message", "image"),
        ("message", "button"),
        ("message", "reaction"),
        ("message", "unsupported"),
        ("call", "connect"),
        ("call", "terminate"),
        ("call", "accepted"),
        ("status", "sent"),
        ("status", "delivered"),
        ("status", "read"),
        ("status", "failed"),
        ("system", "user_changed_number"),
        ("preference", "marketing_messages"),
    ]
)


@st.composite
def events(draw: Any) -> InboundEvent:
    kind, type_ = draw(kinds_types)
    extra: dict[str, Any] = {}
    if type_ == "failed":
        extra["errors"] = [
            {
                "code": draw(st.sampled_from([131047, 470, 63016, 130472, 131026, 131049, 131050])),
                "title": "e",
            }
        ]
    if kind == "preference":
        value = draw(st.sampled_from(["stop", "resume", "signup"]))
        extra["preference"] = {"category": type_, "value": value}
    if kind == "message" and draw(st.booleans()):
        extra["referral"] = {"source_type": "ad", "source_id": "1"}
    if kind == "status" and draw(st.booleans()):
        extra["conversation"] = {
            "id": "c",
            "expiration_timestamp": draw(timestamps),
            "origin": {"type": "referral_conversion"},
        }
    return inbound(
        draw(timestamps), kind=kind, type=type_, event_id=draw(st.sampled_from(["a", "b", "c"])), **extra
    )


def fold(evts: list[InboundEvent], now: float = T0) -> ContactState:
    state = EMPTY_STATE
    for event in evts:
        state, _ = apply_inbound(state, event, now, RULES)
    return state


@given(st.lists(events(), max_size=12), st.randoms(use_true_random=False))
def test_any_order_of_the_same_events_gives_the_same_state(evts: list[InboundEvent], rnd: Any) -> None:
    shuffled = list(evts)
    rnd.shuffle(shuffled)
    assert fold(evts) == fold(shuffled)


@given(st.lists(events(), max_size=12))
def test_applying_events_twice_changes_nothing(evts: list[InboundEvent]) -> None:
    assert fold(evts + evts) == fold(evts)


@given(st.lists(events(), max_size=8), events(), timestamps)
def test_an_opener_never_shortens_the_window(
    evts: list[InboundEvent], extra: InboundEvent, now: float
) -> None:
    before = fold(evts, now)
    after, _ = apply_inbound(before, extra, now, RULES)
    if extra.kind in ("message", "call"):
        b, a = view(before, now, RULES), view(after, now, RULES)
        assert (a.expires_at or 0) >= (b.expires_at or 0)
        assert a.seconds_left >= b.seconds_left


@given(
    st.lists(events(), max_size=8),
    st.sampled_from(["sent", "delivered", "read", "played", "failed"]),
    timestamps,
)
def test_statuses_never_open_or_extend_a_window(evts: list[InboundEvent], status: str, ts: float) -> None:
    before = fold(evts)
    after, _ = apply_inbound(before, inbound(ts, kind="status", type=status), T0, RULES)
    assert after.last_opener_at == before.last_opener_at


@settings(max_examples=300)
@given(
    st.lists(events(), max_size=6),
    st.sampled_from(sorted(SENDABLE_MESSAGE_TYPES | {"hologram"})),
    st.booleans(),
    st.sampled_from(["service", "marketing", "utility"]),
    st.sampled_from(["individual", "group"]),
    st.one_of(st.none(), timestamps),
    st.floats(min_value=T0 - DAY, max_value=T0 + 2 * DAY),
)
def test_every_request_gets_exactly_one_route_with_a_reason_that_fits_it(
    evts: list[InboundEvent],
    mtype: str,
    with_fallback: bool,
    intent: str,
    recipient_type: str,
    not_after: float | None,
    now: float,
) -> None:
    req, received = request(
        message={"type": mtype, mtype: FALLBACK if mtype == "template" else {"x": 1}},
        fallback_template=FALLBACK if with_fallback else None,
        intent=intent,
        recipient_type=recipient_type,
        not_after=not_after,
    )
    state = fold(evts, now)
    decision, new_state = decide(req, received, state, now, RULES)
    assert decision.route in REASONS_BY_ROUTE
    assert decision.reason in REASONS_BY_ROUTE[decision.route]
    assert (decision.message is not None) == (decision.route != "rejected")
    if decision.route == "send" and mtype != "template":
        assert view(state, now, RULES).state == "open" and intent != "marketing"
    if decision.route == "template":
        assert with_fallback
    if intent == "marketing" and decision.route != "rejected":
        assert not state.marketing_opted_out, "marketing to a user who stopped it"
    if decision.reason in ("marketing_opted_out", "marketing_cooldown"):
        assert intent == "marketing"
    # the same request again is a duplicate, never a second send
    again, _ = decide(req, received, new_state, now, RULES)
    assert (again.route, again.reason) == ("rejected", "duplicate_request")


def _snapshot(state: ContactState) -> dict[str, Any]:
    return {name: copy.deepcopy(getattr(state, name)) for name in ContactState.__slots__}


@given(st.lists(events(), max_size=8), events(), st.floats(min_value=T0 - DAY, max_value=T0 + 2 * DAY))
def test_no_policy_function_changes_the_state_it_was_given(
    evts: list[InboundEvent], event: InboundEvent, now: float
) -> None:
    """ContactState is not frozen (for speed): the policy must make new states, never edit one (the
    pipeline keeps the old one for pending writes and compares them by identity)."""
    state = fold(evts, now)
    before = _snapshot(state)
    apply_inbound(state, event, now, RULES)
    assert _snapshot(state) == before
    req, received = request(fallback_template=FALLBACK)
    decide(req, received, state, now, RULES)
    assert _snapshot(state) == before
    _, decided = decide(req, received, state, now, RULES)
    decide(req, received, decided, now + 1, RULES)  # a duplicate, against a state that has decided it
    assert _snapshot(state) == before
