"""The AsyncAPI 3 document of the gate (``schemas/asyncapi.yaml``), generated from the topology and
the wire models by ``wagate schemas``, checked for drift like the JSON Schemas.

Every topic appears with its default name, key, partitioning rule, payload schema (a reference to
the JSON Schema file beside it) and which side writes and reads it. Operations are the gate's own:
``receive`` for what it reads, ``send`` for what it writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import streams
from streams.settings import Settings
from streams.topology import Topology, topology

CONTACT_KEY = (
    "contact key: `<phone_number_id>:<user>` (user = wa_id, else the business-scoped user id; a record "
    "keyed by another identifier of a known contact is moved to the contact's canonical key), or "
    "`<phone_number_id>:group:<group_id>`"
)
MURMUR2 = (
    "murmur2 of the key over the topic's partitions (Kafka's default partitioner; librdkafka clients "
    "must set partitioner=murmur2_random); co-partitioned with wa.inbound, wa.outbound.requests and the "
    "state changelog"
)


@dataclass(frozen=True)
class TopicDoc:
    attribute: str  # the Topology field
    message: str  # a WIRE_MODELS name, or WebhookBody
    key: str
    partitioning: str
    written_by: str
    read_by: str
    gate: str  # "receive" or "send": what the gate does with it
    summary: str
    # Other payloads the topic carries: (WIRE_MODELS name, its key).
    also: tuple[tuple[str, str], ...] = ()


TOPICS: tuple[TopicDoc, ...] = (
    TopicDoc(
        "webhooks",
        "WebhookBody",
        "ignored (none)",
        "any",
        "the webhook receiver (`wagate webhook`)",
        "the gate",
        "receive",
        "Raw Cloud API webhook bodies, byte for byte as Meta POSTs them.",
    ),
    TopicDoc(
        "inbound",
        "InboundEvent",
        CONTACT_KEY,
        MURMUR2,
        "the gate (normalized from wa.webhooks) or producers",
        "the gate",
        "receive",
        "User messages, calls, statuses, preferences and system events: the window's inputs.",
        also=(
            (
                "LimitEvent",
                "`limits:<portfolio>` (kind `limit`: the gate's own bookkeeping of messaging limits)",
            ),
        ),
    ),
    TopicDoc(
        "requests",
        "SendRequest",
        CONTACT_KEY,
        MURMUR2,
        "upstream producers (agents, inbox, automations)",
        "the gate",
        "receive",
        "Send intents, each decided exactly once.",
    ),
    TopicDoc(
        "templates",
        "TemplateRecord",
        "`<waba_id>:<name>:<language>`",
        "murmur2 of the key (compacted)",
        "the gate (from template webhooks) or `wagate templates load`",
        "every gate worker, whole",
        "send",
        "The template registry.",
    ),
    TopicDoc(
        "numbers",
        "NumberRecord",
        "`<phone_number_id>`",
        "murmur2 of the key (compacted)",
        "the gate (from webhooks)",
        "every gate worker, whole",
        "send",
        "Which WhatsApp Business Account each phone number belongs to.",
    ),
    TopicDoc(
        "contacts",
        "ContactRecord",
        "`<phone_number_id>:<identifier>` (a wa_id, BSUID or parent BSUID)",
        MURMUR2 + " (compacted)",
        "the gate (when a webhook names one user by two identifiers)",
        "WhatsApp sender services, CRMs, operators",
        "send",
        "Every identifier of a user and the contact whose window they share.",
    ),
    TopicDoc(
        "send",
        "Decision",
        CONTACT_KEY,
        MURMUR2,
        "the gate",
        "WhatsApp sender services",
        "send",
        "Decisions with route `send`: free-form may go out now.",
    ),
    TopicDoc(
        "template",
        "Decision",
        CONTACT_KEY,
        MURMUR2,
        "the gate",
        "WhatsApp sender services (template path)",
        "send",
        "Decisions with route `template`: send the fallback template instead.",
    ),
    TopicDoc(
        "rejected",
        "Decision",
        CONTACT_KEY,
        MURMUR2,
        "the gate",
        "the inbox, producers, analytics",
        "send",
        "Decisions with route `rejected`, with a reason.",
    ),
    TopicDoc(
        "windows",
        "WindowEvent",
        CONTACT_KEY,
        MURMUR2,
        "the gate",
        "automations, the inbox",
        "send",
        "Window opened / expiring / closed.",
    ),
    TopicDoc(
        "deadletter",
        "DeadLetter",
        "the original record's key",
        "murmur2 of the key",
        "the gate",
        "operators",
        "send",
        "Records that could not be read at all, with the cause and where they came from.",
    ),
)

WEBHOOK_BODY_SCHEMA = {
    "type": "object",
    "description": "A WhatsApp Cloud API webhook body (`object`, `entry[].changes[].value`), as sent",
}


def package_version() -> str:
    return streams.__version__


def build(topo: Topology | None = None) -> dict[str, Any]:
    topo = topo or topology(Settings.model_construct())  # the defaults, whatever the environment says
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for doc in TOPICS:
        spec = getattr(topo, doc.attribute)
        carried = ((doc.message, doc.key), *doc.also)
        channels[doc.attribute] = {
            "address": spec.name,
            "title": spec.name,
            "description": f"{doc.summary} Written by {doc.written_by}; read by {doc.read_by}.",
            "messages": {name: {"$ref": f"#/components/messages/{name}"} for name, _ in carried},
            "bindings": {
                "kafka": {
                    "topic": spec.name,
                    "partitions": spec.partitions,
                    **({"topicConfiguration": {"cleanup.policy": ["compact"]}} if spec.compacted else {}),
                    "bindingVersion": "0.5.0",
                }
            },
            "x-key": doc.key,
            "x-partitioning": doc.partitioning,
            "x-written-by": doc.written_by,
            "x-read-by": doc.read_by,
        }
        verb = "receive" if doc.gate == "receive" else "send"
        operations[f"{verb}_{doc.attribute}"] = {
            "action": verb,
            "channel": {"$ref": f"#/channels/{doc.attribute}"},
            "summary": f"The gate {'reads' if verb == 'receive' else 'writes'} {spec.name}.",
            "messages": [{"$ref": f"#/channels/{doc.attribute}/messages/{name}"} for name, _ in carried],
        }
        for name, key in carried:
            if name in messages:
                continue
            payload: Any = WEBHOOK_BODY_SCHEMA if name == "WebhookBody" else {"$ref": f"./{name}.schema.json"}
            messages[name] = {
                "name": name,
                "contentType": "application/json",
                "payload": payload,
                "bindings": {
                    "kafka": {"key": {"type": "string", "description": key}, "bindingVersion": "0.5.0"}
                },
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "wagate",
            "version": package_version(),
            "description": (
                "The WhatsApp 24-hour customer service window gate. Topic names are the defaults; "
                "WAGATE_TOPIC_PREFIX prefixes them all. Outputs are written in Kafka transactions "
                "(exactly_once): read them with isolation.level=read_committed. The human-readable "
                "contract is docs/contract.md."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def render(document: dict[str, Any] | None = None) -> str:
    """YAML, block style, strings JSON-quoted (valid YAML 1.2, no YAML library needed)."""
    lines: list[str] = [
        "# Generated by `wagate schemas` from streams/topology.py and streams/models.py: do not edit."
    ]
    _emit(document if document is not None else build(), 0, lines)
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(str(value), ensure_ascii=False)


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def _emit(value: Any, indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{_scalar(key)}:")
                _emit(item, indent + 1, lines)
            else:
                lines.append(f"{pad}{_scalar(key)}: {_inline(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}-")
                _emit(item, indent + 1, lines)
            else:
                lines.append(f"{pad}- {_inline(item)}")
    else:  # pragma: no cover - the document's root is a mapping
        lines.append(pad + _scalar(value))
