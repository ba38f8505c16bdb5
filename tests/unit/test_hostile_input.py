"""Hostile input against every decoder, in the pipeline's own handlers: never an exception, and every
record accounted for (a decision, a dead letter, or a record moved to its contact's partition)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.agents.registry import RegistryFollower
from streams.core.records import Output, Record
from streams.metrics import GateMetrics
from streams.policy.templates import Registry

from .factories import T0
from .test_pipeline import PNID, Harness

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what JSON encoders write
    | st.floats(allow_nan=False)  # orjson writes no NaN; NaN and Infinity come as raw text below
    | st.text(max_size=40)
    | st.characters(codec="utf-8").map(lambda c: c * 100_000)  # huge strings
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
)
ODDITIES = {
    "empty": b"",
    "null": b"null",
    "nan": b'{"timestamp": NaN}',
    "infinity": b'{"timestamp": Infinity, "request_id": "x"}',
    "huge number": b'{"timestamp": 1e400, "request_id": "x"}',
    "deep nesting": b"[" * 5_000 + b"]" * 5_000,  # deeper than any parser should follow
    "binary": b"\xff\xfe\x00garbage",
    "bad utf-8 in a string": b'{"request_id": "\xff"}',
    "1 MB": b"x" * 1_048_576,
}
raw_oddities = st.sampled_from(sorted(ODDITIES)).map(ODDITIES.__getitem__)
REQUEST = {
    "request_id": "r1",
    "phone_number_id": PNID,
    "to": "u1",
    "origin": "agent",
    "message": {"type": "text", "text": {"body": "hi"}},
}
INBOUND = {
    "event_id": "e1",
    "phone_number_id": PNID,
    "user": "u1",
    "timestamp": T0,
    "kind": "message",
    "type": "text",
}
WEBHOOK = {
    "object": "whatsapp_business_account",
    "entry": [
        {"id": "w1", "changes": [{"field": "messages", "value": {"metadata": {"phone_number_id": PNID}}}]}
    ],
}


def near(valid: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """A valid payload with one field replaced, removed or added: wrong types, odd timestamps."""
    field = st.sampled_from([*valid, "extra"])
    odd = json_values | st.sampled_from([-1e18, 1e300, -1, 0, 2**63, "2026-12-01", [], {}])
    replaced = st.builds(lambda k, v: {**valid, k: v}, field, odd)
    removed = field.map(lambda k: {f: v for f, v in valid.items() if f != k})
    return (replaced | removed).map(orjson.dumps)


def payloads(valid: dict[str, Any]) -> st.SearchStrategy[bytes | None]:
    return st.none() | raw_oddities | st.binary(max_size=200) | json_values.map(orjson.dumps) | near(valid)


keys = st.none() | st.binary(max_size=40) | st.just(f"{PNID}:u1".encode())
quick = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def record(topic: str, key: bytes | None, value: bytes | None, partition: int = 0) -> Record:
    return Record(topic, partition, 7, 0, key, value)


@quick
@given(keys, payloads(REQUEST), st.integers(0, 1))
def test_any_request_record_gets_exactly_one_decision_or_dead_letter(
    key: bytes | None, value: bytes | None, partition: int
) -> None:
    h = Harness()
    t = h.topo
    out: list[Output] = []
    h.processor.request(record(t.requests.name, key, value, partition), out)
    routed = [o for o in out if o.topic in (t.send.name, t.template.name, t.rejected.name, t.deadletter.name)]
    moved = [o for o in out if o.topic == t.requests.name]
    assert len(routed) + len(moved) == 1, [o.topic for o in out]


@quick
@given(keys, payloads(INBOUND), st.integers(0, 1))
def test_any_inbound_record_is_applied_moved_or_dead_lettered(
    key: bytes | None, value: bytes | None, partition: int
) -> None:
    h = Harness()
    t = h.topo
    out: list[Output] = []
    h.processor.inbound(record(t.inbound.name, key, value, partition), out)
    letters = [o for o in out if o.topic == t.deadletter.name]
    moved = [o for o in out if o.topic == t.inbound.name]
    assert len(letters) + len(moved) <= 1
    if letters or moved:
        assert len(out) == 1  # nothing else written for a record that was not applied here
    applied = next(iter(h.metrics.inbound_events.collect())).samples
    assert bool(letters or moved) != any(s.value for s in applied if s.name.endswith("_total"))


@quick
@given(keys, payloads(WEBHOOK))
def test_any_webhook_body_is_normalized_or_dead_lettered(key: bytes | None, value: bytes | None) -> None:
    h = Harness()
    out: list[Output] = []
    h.processor.webhook(record(h.topo.webhooks.name, key, value), out)
    samples = next(iter(h.metrics.webhook_bodies.collect())).samples
    bodies = {s.labels["outcome"]: s.value for s in samples if s.name.endswith("_total")}
    assert sum(bodies.values()) == 1  # normalized, partial or dead_lettered: counted once
    if bodies.get("dead_lettered") or bodies.get("partial"):
        assert any(o.topic == h.topo.deadletter.name for o in out)


@quick
@given(
    st.sampled_from(["templates", "numbers"]),
    payloads({"phone_number_id": PNID, "waba_id": "w", "updated_at": 1}),
)
def test_any_template_or_number_record_is_applied_or_skipped_and_counted(
    topic: str, value: bytes | None
) -> None:
    h = Harness()
    follower = RegistryFollower(h.settings, h.topo, Registry(), GateMetrics())
    name = h.topo.templates.name if topic == "templates" else h.topo.numbers.name
    follower._apply(name, value)  # never raises: a shared topic's bad record must not stop the gate
