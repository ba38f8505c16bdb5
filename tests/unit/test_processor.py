"""One record against the state, no broker: what each handler writes, and bad input never raising."""

from __future__ import annotations

import base64

import orjson

from streams.core.processor import ALIAS_HOPS_HEADER
from streams.core.records import Output, Record

from .test_pipeline import PNID, Harness


def by_topic(outputs: list[Output], topic: str) -> list[Output]:
    return [o for o in outputs if o.topic == topic]


def test_an_opener_writes_state_changelog_and_an_opened_event() -> None:
    h = Harness()
    h.processor.window_events = True
    out: list[Output] = []
    h.processor.inbound(h.opener("ann"), out)
    [changelog] = by_topic(out, h.topo.contact_state_changelog.name)
    [opened] = by_topic(out, h.topo.windows.name)
    key, partition = h.key("ann")
    assert (changelog.key, changelog.partition) == (key.encode(), partition)
    assert h.processor.state.get(partition, key.encode()) == changelog.value
    assert orjson.loads(opened.value or b"")["event"] == "opened"


def test_a_stray_is_moved_to_its_contacts_partition_with_its_timestamp() -> None:
    h = Harness()
    key, partition = h.key("bob")
    value = {"event_id": "e1", "phone_number_id": PNID, "user": "bob", "timestamp": 1.0, "kind": "message"}
    stray = Record(
        h.topo.inbound.name, 1 - partition, 0, 4242, b"wrong-key", orjson.dumps({**value, "type": "text"})
    )
    out: list[Output] = []
    h.processor.inbound(stray, out)
    # The move counts as a hop: a record sent back and forth between partitions stops (see below).
    moved = Output(
        h.topo.inbound.name, key.encode(), stray.value, partition, 4242, ((ALIAS_HOPS_HEADER, b"1"),)
    )
    assert out == [moved]
    assert h.metrics.repartitioned.labels("inbound")._value.get() == 1


def test_an_unreadable_request_with_an_id_is_rejected_and_without_one_dead_lettered() -> None:
    h = Harness()
    out: list[Output] = []
    bad = {"request_id": "r9", "phone_number_id": PNID, "to": "x", "origin": "nobody", "message": {}}
    h.processor.request(Record(h.topo.requests.name, 0, 3, 0, b"k", orjson.dumps(bad)), out)
    h.processor.request(Record(h.topo.requests.name, 0, 4, 0, b"k", b"\xff not json"), out)
    [rejection] = by_topic(out, h.topo.rejected.name)
    decision = orjson.loads(rejection.value or b"")
    assert (decision["reason"], decision["held_past_limit"]) == ("invalid_request", False)
    assert "origin" in decision["detail"]
    [letter] = by_topic(out, h.topo.deadletter.name)
    dead = orjson.loads(letter.value or b"")
    assert (dead["offset"], base64.b64decode(dead["value_b64"])) == (4, b"\xff not json")


def test_an_internal_error_dead_letters_the_record_and_the_worker_goes_on() -> None:
    h = Harness()

    class Broken:
        def get(self, partition: int, key: bytes) -> bytes | None:
            raise OSError("disk gone")

        def put(self, partition: int, key: bytes, value: bytes) -> None:
            raise OSError("disk gone")

    h.processor.state = Broken()
    out: list[Output] = []
    h.processor.request(h.request("cal", "r1"), out)
    [letter] = out
    assert letter.topic == h.topo.deadletter.name
    assert orjson.loads(letter.value or b"")["error"] == "internal error: OSError"


def test_a_huge_record_never_makes_an_output_larger_than_kafka_takes() -> None:
    h = Harness()
    t = h.topo
    padding = "x" * 900_000
    bad = {"request_id": "big", "phone_number_id": PNID, "to": "x", "origin": "nobody", "pad": padding}
    out: list[Output] = []
    h.processor.request(Record(t.requests.name, 0, 1, 0, b"k" * 2_000_000, orjson.dumps(bad)), out)
    h.processor.inbound(Record(t.inbound.name, 0, 2, 0, None, b"\x00" * 1_048_576), out)
    assert max(len(o.value or b"") + len(o.key or b"") for o in out) < 400_000
    [rejection] = by_topic(out, t.rejected.name)
    decision = orjson.loads(rejection.value or b"")
    assert decision["request"] is None and "is not echoed" in decision["detail"]
    [letter] = by_topic(out, t.deadletter.name)
    dead = orjson.loads(letter.value or b"")
    assert (dead["value_size"], dead["truncated"]) == (1_048_576, True)
    assert len(base64.b64decode(dead["value_b64"])) == 64 * 1024
