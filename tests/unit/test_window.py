from __future__ import annotations

import pytest

from streams.policy.rules import WindowRules
from streams.policy.window import EMPTY_STATE, ContactState, InboundEffect, apply_inbound, view

from .factories import DAY, HOUR, T0, inbound

RULES = WindowRules()


def state_after(*events: object, now: float = T0) -> ContactState:
    state = EMPTY_STATE
    for event in events:
        state, _ = apply_inbound(state, event, now, RULES)  # type: ignore[arg-type]
    return state


@pytest.mark.parametrize("mtype", sorted(RULES.opener_message_types))
def test_every_user_authored_message_type_opens_the_window(mtype: str) -> None:
    state, effect = apply_inbound(EMPTY_STATE, inbound(T0 - HOUR, type=mtype), T0, RULES)
    assert effect is InboundEffect.OPENED
    assert view(state, T0, RULES).state == "open"
    assert view(state, T0, RULES).expires_at == T0 - HOUR + DAY


@pytest.mark.parametrize("mtype", ["reaction", "system", "unsupported", "request_welcome"])
def test_undocumented_types_do_not_open_by_default_but_a_setting_can_add_them(mtype: str) -> None:
    assert view(state_after(inbound(T0 - HOUR, type=mtype)), T0, RULES).state == "none"
    widened = WindowRules(opener_message_types=RULES.opener_message_types | {mtype})
    state, effect = apply_inbound(EMPTY_STATE, inbound(T0 - HOUR, type=mtype), T0, widened)
    assert effect is InboundEffect.OPENED and view(state, T0, widened).state == "open"


def test_a_message_carrying_an_ad_referral_opens_even_for_an_unlisted_type() -> None:
    event = inbound(T0 - HOUR, type="unsupported", referral={"source_type": "ad", "source_id": "1"})
    assert view(state_after(event), T0, RULES).state == "open"


@pytest.mark.parametrize("status", ["sent", "delivered", "read", "played", "failed"])
def test_statuses_never_open_a_window(status: str) -> None:
    state, effect = apply_inbound(EMPTY_STATE, inbound(T0 - HOUR, kind="status", type=status), T0, RULES)
    assert effect is InboundEffect.NONE and state == EMPTY_STATE


@pytest.mark.parametrize("direction", ["USER_INITIATED", None])
def test_a_user_initiated_call_opens_the_window_answered_or_not(direction: str | None) -> None:
    event = inbound(T0 - HOUR, kind="call", type="connect", direction=direction)
    assert view(state_after(event), T0, RULES).state == "open"


def test_a_business_call_opens_the_window_only_once_the_user_accepts() -> None:
    calling = inbound(T0 - HOUR, kind="call", type="connect", direction="BUSINESS_INITIATED")
    ringing = inbound(T0 - HOUR, kind="call", type="ringing", direction="BUSINESS_INITIATED")
    assert view(state_after(calling, ringing), T0, RULES).state == "none"
    accepted = inbound(T0 - HOUR, kind="call", type="accepted", direction="BUSINESS_INITIATED")
    assert view(state_after(calling, ringing, accepted), T0, RULES).state == "open"


def test_call_terminate_alone_does_not_open() -> None:
    assert view(state_after(inbound(T0 - HOUR, kind="call", type="terminate")), T0, RULES).state == "none"


def test_window_boundary_at_exactly_24_hours() -> None:
    state = state_after(inbound(T0 - DAY))
    assert view(state, T0, RULES).state == "closed"
    assert view(state, T0 - 0.001, RULES).state == "closing"
    assert view(state_after(inbound(T0 - DAY + 1)), T0, RULES).state == "closing"


def test_safety_margin_boundary() -> None:
    margin = RULES.safety_margin_seconds
    assert view(state_after(inbound(T0 - DAY + margin)), T0, RULES).state == "open"
    assert view(state_after(inbound(T0 - DAY + margin - 0.001)), T0, RULES).state == "closing"


def test_refresh_moves_expiry_forward_and_an_old_retry_does_not_move_it_back() -> None:
    state = state_after(inbound(T0 - 2 * HOUR), inbound(T0 - HOUR))
    assert view(state, T0, RULES).expires_at == T0 - HOUR + DAY
    again, effect = apply_inbound(state, inbound(T0 - 3 * DAY), T0, RULES)
    assert effect is InboundEffect.NONE and again == state


def test_a_retry_of_a_message_three_days_old_does_not_reopen() -> None:
    state, effect = apply_inbound(EMPTY_STATE, inbound(T0 - 3 * DAY), T0, RULES)
    assert effect is InboundEffect.NONE
    assert view(state, T0, RULES).state == "closed"


def test_future_timestamps_beyond_the_skew_are_clamped_to_receive_time() -> None:
    far = state_after(inbound(T0 + 10 * DAY))
    assert far.last_opener_at == T0
    near = state_after(inbound(T0 + 30))  # within the 60 s tolerance: kept as WhatsApp said
    assert near.last_opener_at == T0 + 30


@pytest.mark.parametrize("code", [131047, 470, 63016])
def test_re_engagement_failure_closes_an_open_window_until_a_newer_opener(code: int) -> None:
    failed = inbound(T0 - 10 * 60, kind="status", type="failed", errors=[{"code": code, "title": "x"}])
    state = state_after(inbound(T0 - HOUR), failed)
    assert view(state, T0, RULES).state == "closed"
    assert view(state, T0, RULES).expires_at == T0 - 10 * 60
    reopened = state_after(inbound(T0 - HOUR), failed, inbound(T0 - 60))
    assert view(reopened, T0, RULES).state == "open"
    # an opener older than the failure does not undo it
    assert view(state_after(failed, inbound(T0 - 20 * 60)), T0, RULES).state == "closed"


def test_other_failures_do_not_close() -> None:
    failed = inbound(T0 - 60, kind="status", type="failed", errors=[{"code": 130472, "title": "experiment"}])
    assert view(state_after(inbound(T0 - HOUR), failed), T0, RULES).state == "open"


def test_user_changed_number_closes_the_old_contacts_window() -> None:
    change = inbound(T0 - 60, kind="system", type="user_changed_number", new_user="972000")
    assert view(state_after(inbound(T0 - HOUR), change), T0, RULES).state == "closed"


def test_state_round_trips_through_bytes() -> None:
    state = ContactState(last_opener_at=T0, closed_at=T0 - 5, decided={"r1": T0})
    assert ContactState.from_bytes(state.to_bytes()) == state
    assert ContactState.from_bytes(None) == EMPTY_STATE


def test_a_close_signal_without_any_opener_is_closed_with_no_expiry() -> None:
    change = inbound(T0 - 60, kind="system", type="user_changed_number")
    snapshot = view(state_after(change), T0, RULES)
    assert (snapshot.state, snapshot.expires_at, snapshot.last_inbound_at) == ("closed", None, None)
