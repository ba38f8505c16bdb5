from __future__ import annotations

import orjson
import pytest

from streams.policy.parse import InvalidPayload, parse_inbound_event, parse_send_request

from .factories import request_obj


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (request_obj(phone_number_id=None), "'phone_number_id' is required"),
        (request_obj(request_id="x" * 129), "'request_id' is invalid"),
        (request_obj(message={"type": "text"}), "message.text is missing"),
        (request_obj(message={"type": "template", "template": {"name": "t"}}), "'message.template.language'"),
        (request_obj(fallback_template={"name": "t", "language": {}}), "'fallback_template.language.code'"),
        (request_obj(surprise=1), "'surprise' is not part of the contract"),
        (request_obj(not_after="soon"), "'not_after' is invalid"),
    ],
)
def test_schema_errors_name_the_field(payload: dict[str, object], field: str) -> None:
    parsed = parse_send_request(orjson.dumps(payload))
    assert isinstance(parsed, InvalidPayload)
    assert field in parsed.detail
    assert parsed.received == payload


@pytest.mark.parametrize("raw", [b"", b"[1,2]", b'"text"', b"\xff\xfe", None])
def test_non_objects_are_invalid_without_a_request_id(raw: bytes | None) -> None:
    parsed = parse_send_request(raw)
    assert isinstance(parsed, InvalidPayload) and parsed.request_id is None


EVENT = {
    "event_id": "w",
    "phone_number_id": "p",
    "user": "u",
    "timestamp": 1,
    "kind": "message",
    "type": "text",
}


def test_unknown_inbound_fields_are_kept_not_fatal() -> None:
    event = parse_inbound_event(orjson.dumps({**EVENT, "brand_new_meta_field": {"x": 1}}))
    assert not isinstance(event, InvalidPayload)
    assert event.model_extra == {"brand_new_meta_field": {"x": 1}}


def test_inbound_with_an_unknown_kind_is_invalid() -> None:
    event = parse_inbound_event(orjson.dumps({**EVENT, "kind": "telepathy"}))
    assert isinstance(event, InvalidPayload) and "'kind'" in event.detail
