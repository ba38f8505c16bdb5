"""Templates Meta would not deliver, decided before Meta: 131062 (OTP to a BSUID) and paused marketing."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.models import Decision, TemplateRecord
from streams.policy.decide import decide
from streams.policy.deliverability import (
    DEFAULT_MARKETING_PAUSES,
    needs_phone_number,
    parse_marketing_pauses,
    paused_marketing,
)
from streams.policy.rules import WindowRules
from streams.policy.templates import Registry
from streams.policy.window import EMPTY_STATE, apply_inbound

from .factories import HOUR, T0, inbound, request

RULES = WindowRules()
WABA = "waba1"
BSUID = "US.13491208655302741918"
US_PHONE = "14155550100"
CANADA_PHONE = "14165550100"
BRAZIL_PHONE = "5511987654321"
PAUSE_START = 1_743_465_600.0  # 2025-04-01 00:00 UTC


def otp_template(otp_type: str = "COPY_CODE", category: str = "AUTHENTICATION") -> TemplateRecord:
    return TemplateRecord.model_validate(
        {
            "waba_id": WABA,
            "name": "login_code",
            "language": "en_US",
            "status": "APPROVED",
            "category": category,
            "components": [
                {"type": "BODY", "text": "{{1}} is your code."},
                {"type": "BUTTONS", "buttons": [{"type": "OTP", "otp_type": otp_type, "text": "Copy"}]},
            ],
            "updated_at": T0 - HOUR,
            "source": "sync",
        }
    )


def registry(*records: TemplateRecord) -> Registry:
    reg = Registry(configured_numbers={"pn1": WABA})
    for record in records:
        reg.apply(record)
    return reg


def template_message(name: str = "login_code") -> dict[str, Any]:
    body = {"type": "body", "parameters": [{"type": "text", "text": "123456"}]}
    return {
        "type": "template",
        "template": {"name": name, "language": {"code": "en_US"}, "components": [body]},
    }


def run(reg: Registry, phone: str | None = None, state: Any = EMPTY_STATE, **overrides: Any) -> Decision:
    req, received = request(**overrides)
    decision, _ = decide(req, received, state, T0, RULES, reg, phone)
    Decision.model_validate(orjson.loads(decision.__pydantic_serializer__.to_json(decision)))
    return decision


@pytest.mark.parametrize("otp_type", ["COPY_CODE", "ONE_TAP", "ZERO_TAP", "copy_code", "one_tap"])
def test_every_otp_button_needs_a_phone_number(otp_type: str) -> None:
    assert needs_phone_number(otp_template(otp_type))


def test_templates_without_an_otp_button_go_to_bsuids() -> None:
    assert not needs_phone_number(otp_template(category="UTILITY"))
    assert not needs_phone_number(None)
    plain = otp_template().model_copy(update={"components": [{"type": "BODY", "text": "hi"}]})
    assert not needs_phone_number(plain)


def test_an_otp_template_to_a_contact_known_only_by_its_bsuid_is_rejected_before_meta() -> None:
    decision = run(registry(otp_template()), to=BSUID, message=template_message())
    assert (decision.route, decision.reason) == ("rejected", "recipient_requires_phone")
    assert "131062" in decision.detail and decision.message is None


def test_an_otp_template_to_a_bsuid_goes_to_the_contacts_phone_number_when_known() -> None:
    decision = run(registry(otp_template()), phone=US_PHONE, to=BSUID, message=template_message())
    assert (decision.route, decision.reason) == ("send", "template")
    assert decision.message is not None and decision.message["to"] == US_PHONE
    assert "recipient" not in decision.message and decision.to == BSUID
    # any other template still goes to the BSUID the request named
    utility = run(
        registry(otp_template(category="UTILITY")), phone=US_PHONE, to=BSUID, message=template_message()
    )
    assert utility.message is not None and utility.message["recipient"] == BSUID


def test_an_otp_fallback_template_to_a_bsuid_only_contact_is_rejected_too() -> None:
    fallback = template_message()["template"]
    decision = run(registry(otp_template()), to=BSUID, fallback_template=fallback)
    assert (decision.route, decision.reason) == ("rejected", "recipient_requires_phone")


@pytest.mark.parametrize(
    ("destination", "now", "paused"),
    [
        (US_PHONE, T0, True),
        ("+12125550100", T0, True),
        (CANADA_PHONE, T0, False),  # +1 with a Canadian area code
        ("18765550100", T0, False),  # Jamaica
        ("17875550100", T0, True),  # Puerto Rico: treated as US
        (BRAZIL_PHONE, T0, False),
        (US_PHONE, PAUSE_START - 1, False),  # before the pause
        (US_PHONE, PAUSE_START, True),
        (BSUID, T0, True),  # a BSUID names its user's country
        ("BR.13491208655302741918", T0, False),
        ("group-1", T0, False),
    ],
)
def test_the_default_pause_table_is_us_numbers_since_april_2025(
    destination: str, now: float, paused: bool
) -> None:
    assert (paused_marketing(destination, now, DEFAULT_MARKETING_PAUSES) is not None) is paused


def test_marketing_templates_to_paused_destinations_are_rejected_before_meta() -> None:
    marketing = otp_template(category="MARKETING").model_copy(update={"name": "promo", "components": None})
    reg = registry(marketing)
    promo = template_message("promo")
    us = run(reg, to=US_PHONE, message=promo)
    assert (us.route, us.reason) == ("rejected", "marketing_unavailable_in_region")
    assert "US" in us.detail and "2025-04-01" in us.detail
    assert run(reg, to=BRAZIL_PHONE, message=promo).route == "send"
    # the contact's phone number decides for a request addressed by its BSUID
    assert run(reg, phone=BRAZIL_PHONE, to="US.1", message=promo).route == "send"
    # utility templates are not paused
    utility = marketing.model_copy(update={"category": "UTILITY"})
    assert run(registry(utility), to=US_PHONE, message=promo).route == "send"
    # free-form marketing intent to a paused destination: its marketing fallback cannot go either
    opened, _ = apply_inbound(EMPTY_STATE, inbound(T0 - HOUR, user=US_PHONE), T0, RULES)
    fallback = promo["template"]
    converted = run(reg, state=opened, to=US_PHONE, intent="marketing", fallback_template=fallback)
    assert (converted.route, converted.reason) == ("rejected", "marketing_unavailable_in_region")


def test_the_pause_table_is_configuration() -> None:
    assert parse_marketing_pauses("") == DEFAULT_MARKETING_PAUSES
    assert parse_marketing_pauses("[]") == ()
    pauses = parse_marketing_pauses(
        '[{"region": "XX", "calling_codes": ["99"], "from": "2026-01-01", "until": "2026-02-01"}]'
    )
    assert paused_marketing("991234", 1_767_225_600.0, pauses) is not None  # 2026-01-01
    assert paused_marketing("991234", 1_769_904_000.0, pauses) is None  # 2026-02-01: over
    for bad, named in [
        ("{}", "JSON list"),
        ("[{}]", "'region'"),
        ('[{"region": "X"}]', "calling_codes"),
        ('[{"region": "X", "calling_codes": ["+1"], "from": "2025-04-01"}]', "'calling_codes'"),
        ('[{"region": "X", "calling_codes": ["1"]}]', "'from'"),
        ('[{"region": "X", "calling_codes": ["1"], "from": "April"}]', "'from'"),
        ('[{"region": "X", "calling_codes": ["1"], "from": "2025-04-01", "colour": 1}]', "colour"),
    ]:
        with pytest.raises(ValueError, match=named):
            parse_marketing_pauses(bad)


def test_a_group_is_never_refused_for_want_of_a_phone_number() -> None:
    group = run(registry(otp_template()), to="US.1234", recipient_type="group", message=template_message())
    assert group.reason != "recipient_requires_phone"


def test_the_pause_follows_the_registrys_category_not_the_declared_intent() -> None:
    utility = otp_template(category="UTILITY").model_copy(update={"name": "promo", "components": None})
    promo = template_message("promo")
    declared = run(registry(utility), to=US_PHONE, message=promo, intent="marketing")
    assert declared.route == "send", declared.detail  # Meta bills and delivers it as utility
