"""The per-partition pipeline core without a broker: ordering across inputs, batches, holds, resets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.aligner import Aligner, FetchView, format_inbound_ends, parse_inbound_ends
from streams.core.pipeline import Pipeline
from streams.core.processor import Processor
from streams.core.records import Output, Record, Source, Step
from streams.metrics import GateMetrics
from streams.policy.keys import partition_for
from streams.policy.templates import Registry
from streams.settings import Settings
from streams.topology import topology

from .factories import T0

PARTITIONS = 2
PNID = "pn1"


class DictState:
    def __init__(self) -> None:
        self.data: dict[tuple[int, bytes], bytes] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.data.get((partition, key))

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self.data[(partition, key)] = value


@dataclass
class Log:
    """A tiny Kafka: per (topic, partition) a list of records; offsets are list positions."""

    records: dict[tuple[str, int], list[Record]] = field(default_factory=dict)

    def write(self, topic: str, partition: int, key: str, value: Any, ts: int = 0) -> Record:
        log = self.records.setdefault((topic, partition), [])
        record = Record(topic, partition, len(log), ts, key.encode(), orjson.dumps(value))
        log.append(record)
        return record

    def end(self, topic: str, partition: int) -> int:
        return len(self.records.get((topic, partition), []))


class Harness:
    def __init__(self, max_hold: float = 10.0, max_held: int = 1_000) -> None:
        self.settings = Settings(partitions=PARTITIONS, store="memory", window_events_enabled=False)
        self.topo = topology(self.settings)
        self.metrics = GateMetrics()
        self.processor = Processor(
            self.topo, DictState(), self.settings.rules, self.metrics, Registry(), clock=lambda: T0
        )
        self.aligner = Aligner(PARTITIONS, max_hold, max_held)
        self.pipeline = Pipeline(self.processor, self.aligner, self.metrics)
        self.log = Log()
        self.outputs: list[Output] = []
        self.done: dict[tuple[Source, int], int] = {}
        for p in range(PARTITIONS):  # assigned at the start of every log, nothing committed yet
            for spec in (self.topo.inbound, self.topo.webhooks):
                self.pipeline.reset(spec.name, p, 0)

    def key(self, user: str) -> tuple[str, int]:
        key = f"{PNID}:{user}"
        return key, partition_for(key, PARTITIONS)

    def opener(self, user: str, ts: float = T0 - 60) -> Record:
        key, p = self.key(user)
        event = {"event_id": f"w.{user}.{ts}", "phone_number_id": PNID, "user": user}
        return self.log.write(
            self.topo.inbound.name, p, key, {**event, "timestamp": ts, "kind": "message", "type": "text"}
        )

    def request(self, user: str, rid: str) -> Record:
        key, p = self.key(user)
        body = {"type": "text", "text": {"body": "hi"}}
        value = {"request_id": rid, "phone_number_id": PNID, "to": user, "origin": "agent", "message": body}
        return self.log.write(self.topo.requests.name, p, key, value)

    def take(self, step: Step) -> None:
        self.outputs += step.outputs
        for source_partition, offset in step.done.items():
            self.done[source_partition] = max(self.done.get(source_partition, 0), offset)
        for partition, offset in step.webhooks_done.items():  # as if acknowledged at once
            self.aligner.webhooks_on_broker(partition, offset)

    def feed(
        self,
        records: Sequence[Record],
        now: float = 0.0,
        positions: dict[tuple[str, int], int] | None = None,
        views: dict[tuple[str, int], FetchView] | None = None,
    ) -> None:
        batches: dict[tuple[str, int], list[Record]] = {}
        for record in records:
            batches.setdefault((record.topic, record.partition), []).append(record)
        self.take(self.pipeline.feed(batches, now, positions, views))

    def views(self, stamp: int, leader: int = 1) -> dict[tuple[str, int], FetchView]:
        """Every partition as a fetch response at ``stamp`` from broker ``leader`` would show it."""
        return {
            (spec.name, p): FetchView(stamp, self.log.end(spec.name, p), leader)
            for spec in (self.topo.inbound, self.topo.webhooks, self.topo.requests)
            for p in range(PARTITIONS)
        }

    def round(self, now: float = 0.0, remote: Mapping[int, int] | None = None) -> bool:
        plan = self.pipeline.plan_round()
        if plan is None:
            return False
        webhook_ends = {w: self.log.end(self.topo.webhooks.name, w) for w in plan.webhooks}
        inbound_ends = {p: self.log.end(self.topo.inbound.name, p) for p in plan.inbound}
        self.take(self.pipeline.complete_round(plan, remote or {}, webhook_ends, inbound_ends, now))
        return True

    def decisions(self) -> dict[str, dict[str, Any]]:
        decided = {}
        for output in self.outputs:
            if output.topic in (self.topo.send.name, self.topo.template.name, self.topo.rejected.name):
                value = orjson.loads(output.value or b"")
                decided[value["request_id"]] = value
        return decided


def test_a_request_fetched_before_the_opener_written_before_it_waits_for_it() -> None:
    h = Harness()
    opener = h.opener("ann")
    request = h.request("ann", "r1")
    h.feed([request])  # the request partition was fetched first
    assert h.decisions() == {}
    assert h.round()  # the inbound end offset says: one event before it
    assert h.decisions() == {}, "decided before the opener written before it was applied"
    h.feed([opener])
    decision = h.decisions()["r1"]
    assert (decision["route"], decision["reason"], decision["held_past_limit"]) == (
        "send",
        "window_open",
        False,
    )
    assert h.done[(Source.REQUESTS, request.partition)] == 1
    assert h.done[(Source.INBOUND, opener.partition)] == 1


def test_without_alignment_the_same_order_gives_the_wrong_answer() -> None:
    """What the gate did before the ordering contract: the proof that the test above can fail."""
    h = Harness(max_hold=0)
    opener = h.opener("ann")
    h.feed([h.request("ann", "r1")])
    assert h.decisions()["r1"]["reason"] == "no_window"
    h.feed([opener])


def test_nothing_lagging_a_request_is_decided_after_one_round() -> None:
    h = Harness()
    h.feed([h.opener("bob")])
    h.feed([h.request("bob", "r1")])
    assert h.decisions() == {}
    h.round()
    assert h.decisions()["r1"]["reason"] == "window_open"


def test_an_inbound_backlog_holds_requests_in_order_and_releases_them_together() -> None:
    h = Harness()
    users = [f"u{i}" for i in range(40)]
    for i in range(2_000):  # statuses queued before everything
        user = users[i % len(users)]
        key, p = h.key(user)
        status = {"event_id": f"s{i}", "phone_number_id": PNID, "user": user, "timestamp": T0 - 30}
        h.log.write(h.topo.inbound.name, p, key, {**status, "kind": "status", "type": "delivered"})
    openers = [h.opener(user) for user in users]
    requests = [h.request(user, f"r-{user}") for user in users]
    h.feed(requests)
    h.round()
    inbound = [r for log in h.log.records.values() for r in log if r.topic == h.topo.inbound.name]
    inbound.sort(key=lambda r: r.offset)
    fed: dict[int, int] = {}
    for chunk in range(0, len(inbound), 500):  # fetched in batches
        for decided in h.decisions().values():  # nothing decided before its partition's backlog
            p = h.key(decided["to"])[1]
            assert fed.get(p, 0) == h.log.end(h.topo.inbound.name, p)
        batch = inbound[chunk : chunk + 500]
        h.feed(batch)
        for record in batch:
            fed[record.partition] = record.offset + 1
    decided = h.decisions()
    assert {decided[f"r-{u}"]["reason"] for u in users} == {"window_open"}
    assert len(openers) == len(users)
    assert h.aligner.held == 0


def test_a_webhook_body_written_before_the_request_is_normalized_and_applied_first() -> None:
    h = Harness()
    key, p = h.key("cat")
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "waba1",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"phone_number_id": PNID, "display_phone_number": "1"},
                            "messages": [
                                {
                                    "from": "cat",
                                    "id": "wamid.1",
                                    "timestamp": str(int(T0 - 60)),
                                    "type": "text",
                                    "text": {"body": "hi"},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
    webhook = h.log.write(h.topo.webhooks.name, 1 - p, PNID, body, ts=1234)
    request = h.request("cat", "r1")
    h.feed([request])
    h.round()  # the target: wa.webhooks partition 1-p up to offset 1
    assert h.decisions() == {}
    h.feed([webhook])  # normalized: an InboundEvent for wa.inbound, keeping the body's timestamp
    [event] = [o for o in h.outputs if o.topic == h.topo.inbound.name]
    assert (event.partition, event.timestamp_ms) == (p, 1234)
    h.log.write(h.topo.inbound.name, p, key, orjson.loads(event.value or b""))
    h.round()  # the target is reached: the barrier is the inbound end now, after the event
    assert h.decisions() == {}
    h.feed(h.log.records[(h.topo.inbound.name, p)])
    assert h.decisions()["r1"]["reason"] == "window_open"


def test_a_webhook_partition_of_another_worker_counts_by_its_committed_offset() -> None:
    h = Harness()
    h.pipeline.reset(h.topo.webhooks.name, 0, None)  # partition 0 is not ours
    h.log.write(h.topo.webhooks.name, 0, PNID, {"object": "x"})
    h.feed([h.request("dan", "r1")])
    plan = h.pipeline.plan_round()
    assert plan is not None and plan.remote_webhooks == [0]
    h.take(h.pipeline.complete_round(plan, {0: 0}, {0: 1, 1: 0}, {0: 0, 1: 0}, 0.0))
    assert h.decisions() == {}, "the other worker has not committed the body yet"
    h.round(remote={0: 1})
    assert h.decisions()["r1"]["reason"] == "no_window"


def test_a_transaction_marker_after_the_last_event_does_not_hold_requests() -> None:
    """Offsets of commit markers hold no record: the fetch position, not the last record, counts."""
    h = Harness()
    opener = h.opener("hal")
    request = h.request("hal", "r1")
    h.feed([request])
    plan = h.pipeline.plan_round()
    assert plan is not None
    inbound_ends = {p: h.log.end(h.topo.inbound.name, p) + 1 for p in plan.inbound}  # + the marker
    h.take(h.pipeline.complete_round(plan, {}, {0: 0, 1: 0}, inbound_ends, 0.0))
    h.feed([opener])
    assert h.decisions() == {}, "the marker's offset is not applied yet"
    h.feed([], positions={(h.topo.inbound.name, opener.partition): opener.offset + 2})  # past the marker
    assert h.decisions()["r1"]["reason"] == "window_open"


def test_the_hold_limit_decides_marks_and_counts() -> None:
    h = Harness(max_hold=2.0)
    h.opener("eve")  # written, never fetched: inbound is stuck
    h.feed([h.request("eve", "r1")], now=100.0)
    h.round(now=100.0)
    h.take(h.pipeline.release(101.9))
    assert h.decisions() == {}
    assert h.aligner.next_expiry() == 102.0
    h.take(h.pipeline.release(102.0))
    decision = h.decisions()["r1"]
    assert decision["held_past_limit"] is True
    assert "WAGATE_MAX_HOLD_SECONDS" in decision["detail"]
    assert h.metrics.held_past_limit._value.get() == 1


def test_a_full_partition_is_paused_until_half_is_decided() -> None:
    h = Harness(max_held=4)
    users = [u for u in (f"v{i}" for i in range(60)) if h.key(u)[1] == 0][:6]
    h.feed([h.request(u, f"r{i}") for i, u in enumerate(users)])
    assert h.aligner.paused() == {0}
    h.round()
    assert h.aligner.paused() == set()
    assert len(h.decisions()) == 6


def test_overlapping_rounds_answer_in_any_order() -> None:
    h = Harness()
    opener = h.opener("ida")
    h.feed([h.request("ida", "r1")])
    first = h.pipeline.plan_round(retry=False)
    h.feed([h.request("ida", "r2")])
    second = h.pipeline.plan_round(retry=False)
    assert first is not None and second is not None
    ends = {p: h.log.end(h.topo.inbound.name, p) for p in range(PARTITIONS)}
    h.take(h.pipeline.complete_round(second, {}, {0: 0, 1: 0}, ends, 0.0))
    assert h.decisions() == {}, "r2 waits behind r1, and both behind the opener"
    h.take(h.pipeline.complete_round(first, {}, {0: 0, 1: 0}, ends, 0.0))
    h.feed([opener])
    assert list(h.decisions()) == ["r1", "r2"]
    assert h.done[(Source.REQUESTS, h.key("ida")[1])] == 2


def test_a_cohort_waiting_for_webhooks_is_resolved_by_a_later_round() -> None:
    h = Harness()
    h.pipeline.reset(h.topo.webhooks.name, 0, None)  # another worker's partition
    h.log.write(h.topo.webhooks.name, 0, PNID, {"object": "x"})
    h.feed([h.request("jo", "r1")])
    h.round(remote={0: 0})
    assert h.aligner.has_waiting and h.decisions() == {}
    assert h.pipeline.plan_round(retry=False) is None, "nothing new arrived"
    h.round(remote={0: 1})  # the other worker committed the body
    assert not h.aligner.has_waiting
    assert list(h.decisions()) == ["r1"]


def test_a_later_fetch_response_from_the_same_broker_is_the_barrier_without_a_round() -> None:
    h = Harness()
    opener = h.opener("kim")
    request = h.request("kim", "r1")
    h.feed([request], views=h.views(stamp=100))
    h.feed([], views=h.views(stamp=100))  # the same response: proves nothing yet
    assert h.aligner.has_arrivals
    h.feed([], views=h.views(stamp=101))  # requested after the request was written
    assert not h.aligner.has_arrivals and h.pipeline.plan_round() is None, "no round needed"
    assert h.decisions() == {}
    h.feed([opener])
    assert h.decisions()["r1"]["reason"] == "window_open"
    assert h.done[(Source.REQUESTS, request.partition)] == 1


def test_the_fast_path_stays_out_of_what_it_cannot_prove() -> None:
    h = Harness()
    h.opener("lou")
    h.feed([h.request("lou", "r1")], views=h.views(stamp=100, leader=1))
    h.feed([], views=h.views(stamp=101, leader=2))  # another broker: its reads are not ordered
    assert h.aligner.has_arrivals
    h.log.write(h.topo.webhooks.name, 0, PNID, {"object": "x"})  # a body not normalized yet
    h.feed([], views=h.views(stamp=102, leader=1))
    assert h.aligner.has_arrivals, "a body below the high watermark is not normalized"
    h.aligner.webhooks_on_broker(0, 1, at_ms=150)  # normalized, acknowledged after the request came
    h.feed([], views=h.views(stamp=160, leader=1))
    assert h.aligner.has_arrivals, "its events may have landed after the later response was requested"
    assert h.decisions() == {}


def test_a_seek_drops_held_requests_and_voids_the_round_in_flight() -> None:
    h = Harness()
    request = h.request("fay", "r1")
    h.feed([request])
    plan = h.pipeline.plan_round()
    assert plan is not None
    h.pipeline.reset(h.topo.requests.name, request.partition, 0)  # a rebalance: read again from 0
    h.take(h.pipeline.complete_round(plan, {}, {0: 0, 1: 0}, {0: 0, 1: 0}, 0.0))
    assert h.decisions() == {} and h.aligner.held == 0
    assert (Source.REQUESTS, request.partition) not in h.done
    h.feed([request])  # fetched again after the seek
    h.round()
    assert list(h.decisions()) == ["r1"]


def test_a_restarted_pipeline_decides_the_same_from_the_state_it_finds() -> None:
    h = Harness()
    h.feed([h.opener("gus")])
    state = h.processor.state
    again = Harness()
    again.processor.state = state  # the RocksDB folder survived the restart
    again.log = h.log
    for p in range(PARTITIONS):  # the committed inbound offsets: the opener was processed
        again.pipeline.reset(again.topo.inbound.name, p, h.log.end(again.topo.inbound.name, p))
    again.feed([again.request("gus", "r1")])
    again.round()
    assert again.decisions()["r1"]["reason"] == "window_open"


# -- the property: any fetch interleaving, any round timing -> the decision the write order implies ----

write = st.tuples(st.sampled_from(["opener", "request"]), st.integers(0, 5))
action = st.sampled_from(["write", "fetch_inbound", "fetch_requests", "round"])


@settings(max_examples=150, deadline=None)
@given(st.lists(write, min_size=1, max_size=30), st.lists(action, max_size=80), st.randoms())
def test_every_request_sees_every_opener_written_before_it(
    writes: list[tuple[str, int]], actions: list[str], rnd: Any
) -> None:
    h = Harness()
    expected: dict[str, str] = {}
    opened: set[str] = set()
    written = 0
    positions: dict[tuple[str, int], int] = {}

    def write_next() -> None:
        nonlocal written
        kind, n = writes[written]
        user = f"c{n}"
        if kind == "opener":
            h.opener(user)
            opened.add(user)
        else:
            rid = f"r{written}"
            h.request(user, rid)
            if user in opened:
                expected[rid] = "window_open"  # the contract: an opener written before it is applied
            elif ("opener", n) not in writes:
                expected[rid] = "no_window"
            # an opener written after the request may or may not have been read by its decision
        written += 1

    stamp = 0

    def fetch(topic: str, everything: bool = False) -> None:
        nonlocal stamp
        stamp += 1  # a new fetch response: what it shows of every partition is as written by now
        views = h.views(stamp) if rnd.random() < 0.5 else None
        for (t, p), log in list(h.log.records.items()):
            if t != topic:
                continue
            start = positions.get((t, p), 0)
            end = len(log) if everything else rnd.randint(start, len(log))
            positions[(t, p)] = end
            h.feed(log[start:end], views=views)

    for step in actions:
        if step == "write" and written < len(writes):
            write_next()
        elif step == "fetch_inbound":
            fetch(h.topo.inbound.name)
        elif step == "fetch_requests":
            fetch(h.topo.requests.name)
        elif step == "round":
            h.round()
    while written < len(writes):
        write_next()
    fetch(h.topo.requests.name, everything=True)  # the consumer catches up; rounds keep running
    h.round()
    fetch(h.topo.inbound.name, everything=True)
    assert h.aligner.held == 0
    assert not h.outputs or all(o.topic != h.topo.deadletter.name for o in h.outputs)
    decided = {rid: d["reason"] for rid, d in h.decisions().items()}
    assert len(decided) == sum(1 for kind, _ in writes if kind == "request")
    assert {rid: decided[rid] for rid in expected} == expected


def test_offsets_past_transaction_markers_are_done_once_every_record_below_is_processed() -> None:
    """Transactional writers leave commit markers after their records; the consumer's position is past
    them. Committing only up to the last record leaves the group's lag above 0 for ever."""
    h = Harness()
    h.pipeline.reset(h.topo.requests.name, 0, 0)
    h.pipeline.reset(h.topo.requests.name, 1, 0)
    opener = h.opener("ann")
    inbound_tp = (h.topo.inbound.name, opener.partition)
    h.feed([opener], positions={inbound_tp: opener.offset + 2})  # record, then its commit marker
    assert h.done[(Source.INBOUND, opener.partition)] == opener.offset + 2
    # A request is held (no barrier yet): its partition's position is not done past it.
    request = h.request("bob", "r1")
    requests_tp = (h.topo.requests.name, request.partition)
    h.feed([request], positions={requests_tp: request.offset + 2})
    assert (Source.REQUESTS, request.partition) not in h.done
    assert h.round()
    assert h.done[(Source.REQUESTS, request.partition)] == request.offset + 1
    h.feed([], positions={requests_tp: request.offset + 2})  # nothing held any more
    assert h.done[(Source.REQUESTS, request.partition)] == request.offset + 2


def test_a_position_before_the_partition_was_sought_is_not_done() -> None:
    # During recovery the consumer reports positions of partitions the pipeline has not been given.
    h = Harness()
    step = h.pipeline.feed({}, 0.0, {(h.topo.requests.name, 0): 7})
    assert not step


def test_a_step_keeps_each_input_partitions_outputs_apart() -> None:
    """Under exactly_once each input partition's outputs go into that partition's transaction."""
    h = Harness()
    users: dict[int, str] = {}
    for name in ("ann", "bob", "cid", "dan", "eve"):
        users.setdefault(h.key(name)[1], name)
    assert len(users) == PARTITIONS
    records = [h.opener(user) for user in users.values()]
    batches: dict[tuple[str, int], list[Record]] = {}
    for record in records:
        batches.setdefault((record.topic, record.partition), []).append(record)
    step = h.pipeline.feed(batches, 0.0)
    assert step.partitions() == set(users)
    for partition, outputs in step.by_partition.items():
        changelog = [o for o in outputs if o.topic == h.topo.contact_state_changelog.name]
        assert changelog and all(o.partition == partition for o in changelog)


# -- barriers in read_committed terms (issue 18, finding 3) -------------------------------------------


def test_an_open_transaction_on_inbound_holds_no_request() -> None:
    """A foreign transaction left open on wa.inbound: the last stable offset stops before it, and the
    request is decided once everything below it is applied, not at the hold limit."""
    h = Harness()
    opener = h.opener("ivy")
    h.log.write(h.topo.inbound.name, opener.partition, "x", {"open": "transaction"})  # not committed
    h.feed([opener], positions={(h.topo.inbound.name, opener.partition): opener.offset + 1})
    h.feed([h.request("ivy", "r1")])
    plan = h.pipeline.plan_round()
    assert plan is not None
    stable = {p: h.log.end(h.topo.inbound.name, p) for p in plan.inbound}
    stable[opener.partition] = opener.offset + 1  # what read_committed ListOffsets answers
    h.take(h.pipeline.complete_round(plan, {}, {0: 0, 1: 0}, stable, 0.0))
    assert h.decisions()["r1"]["reason"] == "window_open"


def test_the_gates_own_committed_events_are_waited_for_past_the_last_stable_offset() -> None:
    """A transaction of this worker committed an event, but its markers are not written yet, so the
    last stable offset does not show it: a request written after the commit waits for it anyway."""
    h = Harness()
    opener = h.opener("jon")
    h.aligner.own_committed(opener.partition, opener.offset + 1)  # the commit returned
    h.feed([h.request("jon", "r1")])
    plan = h.pipeline.plan_round()
    assert plan is not None
    stable = dict.fromkeys(plan.inbound, 0)  # the markers are still on their way
    h.take(h.pipeline.complete_round(plan, {}, {0: 0, 1: 0}, stable, 0.0))
    assert h.decisions() == {}, "decided before the gate's own committed event"
    h.feed([opener])
    assert h.decisions()["r1"]["reason"] == "window_open"


def test_another_workers_committed_events_are_waited_for_by_their_offset_metadata() -> None:
    """The body was normalized by another worker, whose transaction's offset commit says where its
    wa.inbound records end: the request waits for them although the last stable offset lags."""
    h = Harness()
    h.pipeline.reset(h.topo.webhooks.name, 0, None)  # partition 0 is not ours
    h.log.write(h.topo.webhooks.name, 0, PNID, {"object": "x"})
    opener = h.opener("kim")
    h.feed([h.request("kim", "r1")])
    plan = h.pipeline.plan_round()
    assert plan is not None
    metadata = format_inbound_ends({opener.partition: opener.offset + 1})
    remote_own = parse_inbound_ends(metadata)
    stable = dict.fromkeys(plan.inbound, 0)
    h.take(h.pipeline.complete_round(plan, {0: 1}, {0: 1, 1: 0}, stable, 0.0, remote_own))
    assert h.decisions() == {}
    h.feed([opener])
    assert h.decisions()["r1"]["reason"] == "window_open"
    assert parse_inbound_ends("someone else's metadata") == {}
    assert parse_inbound_ends(format_inbound_ends({3: 12, 0: 7})) == {0: 7, 3: 12}


def test_the_fast_path_barrier_is_never_below_the_gates_own_committed_events() -> None:
    h = Harness()
    opener = h.opener("lea")
    h.aligner.own_committed(opener.partition, opener.offset + 1)
    for w in range(PARTITIONS):
        h.aligner.webhooks_on_broker(w, 0)
    h.feed([h.request("lea", "r1")], views=h.views(1))
    lagging = {key: FetchView(2, 0, 1) for key in h.views(2)}  # a later response whose LSO lags
    h.feed([], views=lagging)
    assert h.decisions() == {}
    h.feed([opener])
    assert h.decisions()["r1"]["reason"] == "window_open"
