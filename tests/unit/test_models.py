from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from streams.models import DeadLetter, Decision, Pricing, WindowView, trusted

WINDOW = {"state": "open", "last_inbound_at": 1.0, "expires_at": 86401.0}
PRICING = {"category": "service", "billable": False, "basis": "service_window"}
DECISION: dict[str, Any] = {
    "request_id": "r1",
    "contact": "p:u",
    "phone_number_id": "p",
    "to": "u",
    "recipient_type": "individual",
    "origin": "agent",
    "route": "send",
    "reason": "window_open",
    "detail": "open",
    "decided_at": 5.0,
    "window": None,
    "metadata": {"k": 1},
    "message": {"type": "text", "text": {"body": "x"}},
    "pricing": None,
    "request": None,
    "held_past_limit": False,
}
LETTER = {
    "topic": "t",
    "partition": 0,
    "offset": 7,
    "key": "k",
    "value_b64": "eA==",
    "value_size": 1,
    "truncated": False,
    "error": "e",
    "at": 1.0,
}


@pytest.mark.parametrize(("cls", "values"), [(WindowView, WINDOW), (Pricing, PRICING), (DeadLetter, LETTER)])
def test_trusted_equals_model_construct(cls: type[BaseModel], values: dict[str, Any]) -> None:
    assert set(values) == set(cls.model_fields)
    fast, slow = trusted(cls, **values), cls.model_construct(**values)
    assert fast == slow
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.__pydantic_serializer__.to_json(fast) == slow.__pydantic_serializer__.to_json(slow)


def test_trusted_decision_serializes_like_a_validated_one() -> None:
    values = {**DECISION, "window": trusted(WindowView, **WINDOW), "pricing": trusted(Pricing, **PRICING)}
    assert set(values) == set(Decision.model_fields)
    fast = trusted(Decision, **values)
    validated = Decision.model_validate({**DECISION, "window": WINDOW, "pricing": PRICING})
    assert fast.__pydantic_serializer__.to_json(fast) == validated.model_dump_json().encode()
