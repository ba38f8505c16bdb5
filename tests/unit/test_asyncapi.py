"""schemas/asyncapi.yaml: valid YAML, the AsyncAPI 3.0 structure, every reference resolving, every topic
of the topology with its key, partitioning and payload, and in step with the code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from streams import asyncapi
from streams.models import WIRE_MODELS
from streams.schemas import ASYNCAPI_FILE, render_schemas
from streams.settings import Settings
from streams.topology import topology

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def _document() -> dict[str, Any]:
    loaded = yaml.safe_load((SCHEMAS / ASYNCAPI_FILE).read_text())
    assert isinstance(loaded, dict)
    return loaded


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_the_committed_document_is_what_the_code_generates() -> None:
    assert (SCHEMAS / ASYNCAPI_FILE).read_text() == render_schemas()[ASYNCAPI_FILE].decode()
    assert _document() == asyncapi.build()  # the YAML reads back as the document it was made from


def test_it_has_the_asyncapi_3_structure_and_every_reference_resolves() -> None:
    document = _document()
    assert document["asyncapi"].startswith("3.")
    assert document["info"]["title"] and document["info"]["version"]
    for name, channel in document["channels"].items():
        assert channel["address"], name
        for message in channel["messages"].values():
            _resolve(document, message["$ref"])
    for name, operation in document["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        channel = _resolve(document, operation["channel"]["$ref"])
        for message in operation["messages"]:
            # AsyncAPI 3: an operation's messages are those of its channel
            assert message["$ref"].startswith(operation["channel"]["$ref"] + "/messages/")
            _resolve(document, message["$ref"])
        assert channel
    for name, message in document["components"]["messages"].items():
        payload = message["payload"]
        if "$ref" in payload:
            assert (SCHEMAS / payload["$ref"]).is_file(), f"{name}: {payload['$ref']}"
        assert message["bindings"]["kafka"]["key"]["description"]


def test_every_topic_the_gate_reads_or_writes_is_described() -> None:
    topo = topology(Settings.model_construct())
    document = _document()
    addresses = {channel["address"] for channel in document["channels"].values()}
    internal = {topo.contact_state_changelog.name}  # the state's changelog is the gate's own
    assert {spec.name for spec in topo.all()} - internal == addresses
    described = {
        message["payload"].get("$ref", "") for message in document["components"]["messages"].values()
    }
    assert {f"./{name}.schema.json" for name in WIRE_MODELS} - {"./WindowReport.schema.json"} <= described
    for channel in document["channels"].values():
        assert channel["x-key"] and channel["x-partitioning"] and channel["x-written-by"]
