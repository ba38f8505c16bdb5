"""JSON Schema of every wire payload, generated from the pydantic models, and the AsyncAPI document
of the topics (``wagate schemas``)."""

from __future__ import annotations

from pathlib import Path

import orjson

from streams import asyncapi
from streams.models import WIRE_MODELS

ASYNCAPI_FILE = "asyncapi.yaml"


def render_schemas() -> dict[str, bytes]:
    rendered: dict[str, bytes] = {}
    for name, model in WIRE_MODELS.items():
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"{name}.schema.json"
        rendered[f"{name}.schema.json"] = (
            orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        )
    rendered[ASYNCAPI_FILE] = asyncapi.render().encode()
    return rendered


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, content in render_schemas().items():
        path = folder / filename
        path.write_bytes(content)
        written.append(path)
    return written


def check_schemas(folder: Path) -> list[str]:
    """File names that are missing or differ from what the models generate."""
    return [
        filename
        for filename, content in render_schemas().items()
        if not (folder / filename).is_file() or (folder / filename).read_bytes() != content
    ]
