from __future__ import annotations

from pathlib import Path

import orjson

from streams.schemas import check_schemas, render_schemas

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_committed_schemas_equal_what_the_models_generate() -> None:
    assert check_schemas(SCHEMAS) == [], "run `make schemas` and commit the result"


def test_every_wire_payload_has_a_schema_naming_its_required_fields() -> None:
    rendered = {name: orjson.loads(body) for name, body in render_schemas().items() if name.endswith(".json")}
    assert set(rendered) == {
        f"{n}.schema.json"
        for n in (
            "InboundEvent",
            "LimitEvent",
            "SendRequest",
            "Decision",
            "WindowEvent",
            "DeadLetter",
            "TemplateRecord",
            "WindowReport",
            "NumberRecord",
            "ContactRecord",
        )
    }
    assert set(rendered["ContactRecord.schema.json"]["required"]) == {
        "phone_number_id",
        "identifier",
        "contact",
        "identifiers",
        "updated_at",
    }
    assert set(rendered["SendRequest.schema.json"]["required"]) == {
        "request_id",
        "phone_number_id",
        "to",
        "origin",
        "message",
    }
