"""Template registry merging, template validation, per-origin policy and pricing by category and date."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from streams.models import Decision, Pricing, TemplateRecord
from streams.policy.decide import decide
from streams.policy.rules import OriginPolicy, WindowRules
from streams.policy.templates import Registry, merge_template
from streams.policy.window import EMPTY_STATE, ContactState, apply_inbound

from .factories import HOUR, T0, inbound, request

RULES = WindowRules()
WABA = "waba-1"
BODY_2 = [{"type": "BODY", "text": "Hi {{1}}, your order {{2}} shipped."}]


def record(
    name: str = "shipped", status: str | None = "APPROVED", at: float = T0 - 10 * HOUR, **extra: Any
) -> TemplateRecord:
    values: dict[str, Any] = {
        "waba_id": WABA,
        "name": name,
        "language": "en_US",
        "status": status,
        "category": "UTILITY",
        "parameter_format": "POSITIONAL",
        "components": BODY_2,
        "updated_at": at,
        "source": "sync",
    }
    values.update(extra)
    return TemplateRecord.model_validate(values)


def priced(decision: Decision) -> Pricing:
    assert decision.pricing is not None, decision.reason
    return decision.pricing


def registry(*records: TemplateRecord, numbers: dict[str, str] | None = None) -> Registry:
    reg = Registry(configured_numbers=numbers if numbers is not None else {"pn1": WABA})
    for rec in records:
        reg.apply(rec)
    return reg


def template(name: str = "shipped", params: int = 2, **extra: Any) -> dict[str, Any]:
    body = {"type": "body", "parameters": [{"type": "text", "text": f"p{i}"} for i in range(params)]}
    return {"name": name, "language": {"code": "en_US"}, "components": [body], **extra}


def decide_template(
    reg: Registry, tmpl: dict[str, Any], state: ContactState = EMPTY_STATE, now: float = T0, **req: Any
) -> Any:
    req_obj, received = request(message={"type": "template", "template": tmpl}, **req)
    return decide(req_obj, received, state, now, RULES, reg)[0]


def test_newest_record_wins_and_a_partial_update_keeps_the_rest() -> None:
    base = record()
    paused = TemplateRecord(
        waba_id=WABA, name="shipped", language="en_US", status="PAUSED", updated_at=T0, source="webhook"
    )
    merged = merge_template(base, paused)
    assert (merged.status, merged.category, merged.components) == ("PAUSED", "UTILITY", BODY_2)
    assert (
        merge_template(merged, record(status="APPROVED", at=T0 - HOUR)) == merged
    )  # an older record changes nothing


def test_known_approved_template_is_sent_with_reason_template() -> None:
    decision = decide_template(registry(record()), template())
    assert (decision.route, decision.reason) == ("send", "template")
    assert priced(decision).category == "utility"


def test_unknown_template_for_an_account_with_templates() -> None:
    decision = decide_template(registry(record()), template("nope"))
    assert (decision.route, decision.reason) == ("rejected", "template_unknown")


@pytest.mark.parametrize("numbers", [{}, {"pn1": "waba-without-templates"}])
def test_no_registry_for_the_account_means_unverified(numbers: dict[str, str]) -> None:
    decision = decide_template(registry(record(), numbers=numbers), template("anything"))
    assert (decision.route, decision.reason) == ("send", "template_unverified")


@pytest.mark.parametrize(
    "status", ["PAUSED", "PENDING", "REJECTED", "DISABLED", "FLAGGED", "IN_APPEAL", "DELETED"]
)
def test_a_template_that_is_not_approved_is_not_sendable_and_says_since_when(status: str) -> None:
    decision = decide_template(registry(record(status=status)), template())
    assert (decision.route, decision.reason) == ("rejected", "template_not_sendable")
    assert status in decision.detail and "since 2027" in decision.detail


def test_reinstated_is_sendable() -> None:
    assert decide_template(registry(record(status="REINSTATED")), template()).reason == "template"


def test_positional_parameter_count_must_match() -> None:
    decision = decide_template(registry(record()), template(params=1))
    assert decision.reason == "template_parameter_mismatch"
    assert "body expects 2 parameter(s), got 1" in decision.detail


def test_named_parameters_must_match_by_name() -> None:
    named = record(
        parameter_format="NAMED",
        components=[{"type": "BODY", "text": "Hi {{first_name}}, order {{order_id}}"}],
    )
    good: dict[str, Any] = {
        "name": "shipped",
        "language": {"code": "en_US"},
        "components": [
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "parameter_name": "first_name", "text": "Ann"},
                    {"type": "text", "parameter_name": "order_id", "text": "7"},
                ],
            }
        ],
    }
    assert decide_template(registry(named), good).reason == "template"
    good["components"][0]["parameters"][1]["parameter_name"] = "order"
    decision = decide_template(registry(named), good)
    assert decision.reason == "template_parameter_mismatch" and "first_name" in decision.detail


def test_a_media_header_needs_a_media_parameter() -> None:
    with_image = record(components=[{"type": "HEADER", "format": "IMAGE"}, *BODY_2])
    decision = decide_template(registry(with_image), template())
    assert decision.reason == "template_parameter_mismatch" and "image" in decision.detail
    tmpl = template()
    tmpl["components"].append(
        {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://x"}}]}
    )
    assert decide_template(registry(with_image), tmpl).reason == "template"


def test_a_template_reclassified_to_marketing_is_blocked_for_an_opted_out_user() -> None:
    stop = inbound(
        T0 - HOUR,
        kind="preference",
        type="marketing_messages",
        preference={"category": "marketing_messages", "value": "stop"},
    )
    state, _ = apply_inbound(EMPTY_STATE, stop, T0, RULES)
    reg = registry(record())
    assert decide_template(reg, template(), state, intent="utility").reason == "template"
    reg.apply(
        TemplateRecord(
            waba_id=WABA,
            name="shipped",
            language="en_US",
            category="MARKETING",
            updated_at=T0 - 60,
            source="webhook",
        )
    )
    decision = decide_template(reg, template(), state, intent="utility", request_id="r2")
    assert (decision.route, decision.reason) == ("rejected", "marketing_opted_out")


def free_form(**extra: Any) -> tuple[Any, Any]:
    return request(fallback_template=template(), **extra)


def test_a_pending_fallback_rejects_instead_of_converting() -> None:
    req, received = free_form()
    decision, _ = decide(req, received, EMPTY_STATE, T0, RULES, registry(record(status="PENDING")))
    assert (decision.route, decision.reason) == ("rejected", "template_not_sendable")
    assert "fallback_template cannot go" in decision.detail


def test_a_valid_fallback_converts_with_the_registry_category() -> None:
    req, received = free_form()
    decision, _ = decide(req, received, EMPTY_STATE, T0, RULES, registry(record(category="AUTHENTICATION")))
    assert (decision.route, decision.reason) == ("template", "no_window")
    assert decision.message is not None and decision.message["template"]["name"] == "shipped"
    assert priced(decision).category == "authentication" and priced(decision).billable


def rules_with(origin: str, **policy: bool) -> WindowRules:
    return WindowRules(origins={origin: OriginPolicy(**policy)})


def test_origin_without_free_form_is_rejected_even_in_an_open_window() -> None:
    state, _ = apply_inbound(EMPTY_STATE, inbound(T0 - HOUR), T0, RULES)
    req, received = request(origin="broadcast")
    decision, _ = decide(req, received, state, T0, rules_with("broadcast", free_form=False))
    assert (decision.route, decision.reason) == ("rejected", "origin_not_allowed")
    other, received = request(origin="agent")
    assert (
        decide(other, received, state, T0, rules_with("broadcast", free_form=False))[0].reason
        == "window_open"
    )


def test_origin_without_conversion_is_rejected_outside_the_window() -> None:
    req, received = free_form(origin="broadcast")
    decision, _ = decide(req, received, EMPTY_STATE, T0, rules_with("broadcast", convert=False))
    assert (decision.route, decision.reason) == ("rejected", "no_window")
    assert "disabled for origin 'broadcast'" in decision.detail


def test_origin_requiring_a_fallback() -> None:
    req, received = request(origin="automation")
    decision, _ = decide(req, received, EMPTY_STATE, T0, rules_with("automation", require_fallback=True))
    assert (decision.route, decision.reason) == ("rejected", "invalid_request")
    assert "fallback_template" in decision.detail


def epoch(year: int, month: int, day: int) -> float:
    return datetime(year, month, day, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("when", "free_form_billable", "utility_in_window_billable"),
    [(epoch(2025, 8, 1), False, False), (epoch(2026, 10, 2), True, True)],
)
def test_pricing_follows_the_rule_in_force_at_decision_time(
    when: float, free_form_billable: bool, utility_in_window_billable: bool
) -> None:
    state, _ = apply_inbound(EMPTY_STATE, inbound(when - HOUR), when, RULES)
    req, received = request()
    service = priced(decide(req, received, state, when, RULES)[0])
    assert (service.category, service.billable) == ("service", free_form_billable)
    utility = priced(decide_template(registry(record(at=when - HOUR)), template(), state, now=when))
    assert (utility.category, utility.billable) == ("utility", utility_in_window_billable)
    marketing = priced(
        decide_template(registry(record(at=when - HOUR, category="MARKETING")), template(), state, now=when)
    )
    assert (marketing.category, marketing.billable) == ("marketing", True)
