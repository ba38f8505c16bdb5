"""Marketing opt-out and cooldown, and the free entry point window (contract section 5)."""

from __future__ import annotations

from streams.policy.decide import decide
from streams.policy.rules import WindowRules
from streams.policy.window import EMPTY_STATE, ContactState, apply_inbound, free_entry_point_until

from .factories import DAY, HOUR, T0, inbound, request

RULES = WindowRules()
FALLBACK = {"name": "promo", "language": {"code": "en"}}


def fold(*events: object, now: float = T0) -> ContactState:
    state = EMPTY_STATE
    for event in events:
        state, _ = apply_inbound(state, event, now, RULES)  # type: ignore[arg-type]
    return state


def pref(ts: float, value: str) -> object:
    return inbound(
        ts,
        kind="preference",
        type="marketing_messages",
        preference={"category": "marketing_messages", "value": value},
    )


def failed(ts: float, code: int) -> object:
    return inbound(ts, kind="status", type="failed", errors=[{"code": code, "title": "x"}])


def marketing_template(state: ContactState, now: float = T0, rid: str = "m1") -> str:
    req, received = request(
        request_id=rid, message={"type": "template", "template": FALLBACK}, intent="marketing"
    )
    return decide(req, received, state, now, RULES)[0].reason


def test_stop_then_resume_by_timestamp_in_any_order() -> None:
    stop, resume = pref(T0 - 2 * HOUR, "stop"), pref(T0 - HOUR, "resume")
    assert marketing_template(fold(stop)) == "marketing_opted_out"
    assert not fold(stop, resume).marketing_opted_out
    assert not fold(resume, stop).marketing_opted_out  # the older stop, arriving late, changes nothing
    assert fold(resume, pref(T0, "stop")).marketing_opted_out


def test_131050_opts_out_and_a_signup_opts_back_in() -> None:
    state = fold(failed(T0 - HOUR, 131050))
    assert marketing_template(state) == "marketing_opted_out"
    assert (
        marketing_template(fold(failed(T0 - HOUR, 131050), pref(T0 - 60, "signup"))) == "template_unverified"
    )


def test_131049_starts_a_24_hour_cooldown_for_marketing_only() -> None:
    state = fold(inbound(T0 - HOUR), failed(T0 - HOUR, 131049))
    assert marketing_template(state) == "marketing_cooldown"
    assert marketing_template(state, now=T0 - HOUR + DAY + 1) == "template_unverified"
    # service content in the open window is not marketing: it still goes out
    req, received = request(request_id="s1")
    assert decide(req, received, state, T0, RULES)[0].reason == "window_open"


def test_free_form_marketing_to_an_opted_out_user_is_rejected_even_with_a_fallback() -> None:
    req, received = request(intent="marketing", fallback_template=FALLBACK)
    decision, _ = decide(req, received, fold(inbound(T0 - HOUR), pref(T0 - HOUR, "stop")), T0, RULES)
    assert (decision.route, decision.reason) == ("rejected", "marketing_opted_out")


def referral_message(ts: float) -> object:
    return inbound(ts, referral={"source_type": "ad", "source_id": "42"})


def test_an_answered_referral_starts_72_hours_of_free_messages() -> None:
    state = fold(referral_message(T0 - HOUR))
    req, received = request(request_id="a1")
    first, state = decide(req, received, state, T0, RULES)
    assert first.route == "send"
    assert (
        first.pricing is not None and first.pricing.basis == "free_entry_point" and not first.pricing.billable
    )
    assert free_entry_point_until(state, T0) == T0 + 3 * DAY
    # a template two days later (window closed) is still inside the free entry point
    later, received = request(request_id="a2", message={"type": "template", "template": FALLBACK})
    decision, _ = decide(later, received, state, T0 + 2 * DAY, RULES)
    assert decision.pricing is not None and decision.pricing.basis == "free_entry_point"
    # and after 72 h it is billed again
    decision, _ = decide(later, received, state, T0 + 3 * DAY + 1, RULES)
    assert decision.pricing is not None and decision.pricing.basis != "free_entry_point"


def test_a_referral_answered_after_24_hours_or_a_rejection_starts_nothing() -> None:
    state = fold(referral_message(T0 - DAY - 60))
    req, received = request(message={"type": "template", "template": FALLBACK})
    decision, new_state = decide(req, received, state, T0, RULES)
    assert decision.pricing is not None and decision.pricing.basis != "free_entry_point"
    assert free_entry_point_until(new_state, T0) is None
    rejected_req, received = request(request_id="r2")  # free-form, window closed, no fallback
    decision, new_state = decide(rejected_req, received, fold(referral_message(T0 - 25 * HOUR)), T0, RULES)
    assert decision.route == "rejected" and free_entry_point_until(new_state, T0) is None


def test_metas_expiration_timestamp_ends_the_free_entry_point_earlier_or_later() -> None:
    state = fold(referral_message(T0 - HOUR))
    req, received = request(request_id="a1")
    _, state = decide(req, received, state, T0, RULES)
    report = inbound(
        T0 + 10,
        kind="status",
        type="sent",
        conversation={
            "id": "c1",
            "expiration_timestamp": T0 + DAY,
            "origin": {"type": "referral_conversion"},
        },
    )
    state, _ = apply_inbound(state, report, T0 + 10, RULES)
    assert free_entry_point_until(state, T0 + HOUR) == T0 + DAY
    assert free_entry_point_until(state, T0 + 2 * DAY) is None
    # a status of an ordinary service conversation says nothing about it
    service = inbound(
        T0 + 20,
        kind="status",
        type="sent",
        conversation={"id": "c2", "expiration_timestamp": T0 + 5 * DAY, "origin": {"type": "service"}},
    )
    state, _ = apply_inbound(state, service, T0 + 20, RULES)
    assert free_entry_point_until(state, T0 + HOUR) == T0 + DAY


def test_state_with_every_part_set_survives_its_byte_form() -> None:
    state = fold(referral_message(T0 - HOUR), pref(T0 - HOUR, "stop"), failed(T0 - 60, 131049))
    req, received = request()
    _, state = decide(req, received, state, T0, RULES)
    assert ContactState.from_bytes(state.to_bytes()) == state


def test_a_131047_after_a_window_open_send_is_a_gate_miss_and_before_it_is_not() -> None:
    from streams.policy.window import is_gate_miss

    state = fold(inbound(T0 - HOUR))
    req, received = request()
    decision, sent = decide(req, received, state, T0, RULES)
    assert decision.reason == "window_open"
    assert is_gate_miss(sent, failed(T0 + 5, 131047), T0 + 10, RULES)  # type: ignore[arg-type]
    assert not is_gate_miss(sent, failed(T0 - HOUR, 131047), T0 + 10, RULES)  # type: ignore[arg-type]
    assert not is_gate_miss(state, failed(T0 + 5, 131047), T0 + 10, RULES)  # type: ignore[arg-type]
    assert not is_gate_miss(sent, failed(T0 + 5, 131049), T0 + 10, RULES)  # type: ignore[arg-type]


def test_the_window_report_says_what_a_person_needs() -> None:
    from streams.policy.window import window_report

    open_report = window_report("pn1:u1", fold(inbound(T0 - HOUR)), T0, RULES)
    assert (open_report.state, open_report.expires_at) == ("open", T0 - HOUR + DAY)
    assert open_report.summary.startswith("Open until ")
    never = window_report("pn1:u2", EMPTY_STATE, T0, RULES)
    assert never.state == "none" and "never written" in never.summary
    stopped = window_report("pn1:u1", fold(inbound(T0 - 2 * DAY), pref(T0 - HOUR, "stop")), T0, RULES)
    assert (
        stopped.state == "closed" and stopped.marketing_opted_out and "stopped marketing" in stopped.summary
    )
