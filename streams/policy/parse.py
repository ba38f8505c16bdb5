"""Turning raw record values into validated payloads, or into a precise complaint.

A complaint names the field and what it should be, so the producer's owner can fix it without
reading our code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from streams.models import InboundEvent, LimitEvent, SendRequest


@dataclass(frozen=True, slots=True)
class InvalidPayload:
    detail: str
    # What could be read: the JSON object, or the text when it was not JSON.
    received: dict[str, Any] | str | None
    request_id: str | None = None


def describe_validation_error(error: ValidationError, payload: str) -> str:
    first = error.errors(include_url=False)[0]
    location = ".".join(str(part) for part in first["loc"]) or "(the object)"
    message = str(first["msg"])
    if first["type"] == "missing":
        text = f"{payload} field '{location}' is required but missing"
    elif first["type"] == "extra_forbidden":
        text = f"{payload} field '{location}' is not part of the contract; remove it or put it in 'metadata'"
    else:
        text = f"{payload} field '{location}' is invalid: {message}"
    more = error.error_count() - 1
    return text + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def _as_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _load_object(raw: bytes | None, payload: str) -> dict[str, Any] | InvalidPayload:
    if raw is None:
        return InvalidPayload(f"{payload} has no value (tombstone); send a JSON object", None)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return InvalidPayload(
            f"{payload} is not valid JSON ({exc}); send one UTF-8 JSON object", _as_text(raw)
        )
    if not isinstance(data, dict):
        return InvalidPayload(f"{payload} must be a JSON object, got {type(data).__name__}", _as_text(raw))
    return data


def parse_send_request(raw: bytes | None) -> tuple[SendRequest, dict[str, Any]] | InvalidPayload:
    """The request and the object as received, or why it is invalid (with its request_id if readable)."""
    data = _load_object(raw, "request")
    if isinstance(data, InvalidPayload):
        return data
    rid = data.get("request_id")
    readable_id = rid if isinstance(rid, str) and 0 < len(rid) <= 128 else None
    try:
        return SendRequest.model_validate(data), data
    except ValidationError as exc:
        return InvalidPayload(describe_validation_error(exc, "request"), data, readable_id)


def parse_inbound_event(raw: bytes | None) -> InboundEvent | LimitEvent | InvalidPayload:
    """A user-side event, or (``kind: limit``) the gate's own messaging-limit bookkeeping."""
    data = _load_object(raw, "inbound event")
    if isinstance(data, InvalidPayload):
        return data
    try:
        if data.get("kind") == "limit":
            return LimitEvent.model_validate(data)
        return InboundEvent.model_validate(data)
    except ValidationError as exc:
        payload = "limit event" if data.get("kind") == "limit" else "inbound event"
        return InvalidPayload(describe_validation_error(exc, payload), data)
