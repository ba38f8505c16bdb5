"""Small builders for policy tests: realistic payloads with one field changed at a time."""

from __future__ import annotations

from typing import Any

import orjson

from streams.models import InboundEvent, SendRequest
from streams.policy.parse import InvalidPayload, parse_send_request

T0 = 1_800_000_000.0  # a fixed "now" for deterministic tests
HOUR = 3600.0
DAY = 24 * HOUR
FALLBACK = {"name": "follow_up", "language": {"code": "en_US"}, "components": []}


def inbound(
    ts: float,
    *,
    kind: str = "message",
    type: str = "text",
    user: str = "u1",
    event_id: str | None = None,
    **extra: Any,
) -> InboundEvent:
    return InboundEvent.model_validate(
        {
            "event_id": event_id or f"wamid.{kind}.{type}.{ts}",
            "phone_number_id": "pn1",
            "user": user,
            "timestamp": ts,
            "kind": kind,
            "type": type,
            **extra,
        }
    )


def request_obj(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "request_id": "r1",
        "phone_number_id": "pn1",
        "to": "u1",
        "origin": "agent",
        "message": {"type": "text", "text": {"body": "hello"}},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def request(**overrides: Any) -> tuple[SendRequest, dict[str, Any]]:
    parsed = parse_send_request(orjson.dumps(request_obj(**overrides)))
    assert not isinstance(parsed, InvalidPayload), parsed
    return parsed
