"""The consumer fetches the pipeline's partitions only from positions it sought itself.

aiokafka gives every newly assigned partition (kept ones included: its rebalances revoke everything)
a position of its own, the committed offset, and any fetch moves it on, whether or not the records
reach anyone: a fetch that was in flight across the rebalance and dropped as stale leaves it past
records nobody processed. Faust then resumes the partitions *before* it seeks them to their committed
offsets. A fetch in that gap used to deliver records from the moved position: the inbound events
skipped never reached the state, their requests were decided ``no_window`` and the skipped offsets
were committed (the zombie fault test saw hundreds a run). aiokafka's ``seek_to_committed`` also
leaves a partition whose committed offset is 0 or missing where it was, and reads and seeks one
partition at a time (a cancelled call goes on seeking on the consumer thread).

Here aiokafka is a small model of those positions (no broker: what is tested is the consumer's own
bookkeeping of positions, seeks and stale fetches).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from types import SimpleNamespace
from typing import Any

from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.faust_private import PipelineConsumer

IN0, IN1 = TP("in", 0), TP("in", 1)
CHANGELOG = TP("changelog", 0)  # a topic of Faust's own: not the pipeline's
PER_FETCH = 3


class _Positions:
    """aiokafka's consumer as Faust's consumer thread shows it."""

    def __init__(self, ends: Mapping[TP, int], committed: Mapping[TP, int | None]) -> None:
        self.ends = dict(ends)
        self.committed_offsets = dict(committed)
        self.positions: dict[TP, int] = {}
        self.during_fetch: Callable[[], None] | None = None  # a rebalance while a fetch is out
        # What _fetch_state reads of aiokafka's internals.
        self._consumer = self
        self._subscription = SimpleNamespace(subscription=SimpleNamespace(assignment=self))
        self._client = SimpleNamespace(cluster=SimpleNamespace(leader_for_partition=lambda tp: 1))

    def state_value(self, tp: TP) -> Any:
        position = self.positions.get(tp)
        return SimpleNamespace(
            has_valid_position=position is not None,
            position=position,
            timestamp=None,
            lso=None,
            highwater=None,
        )

    def highwater(self, tp: TP) -> int:
        return self.ends[tp]

    def assign(self, moved_by: int) -> None:
        """A new assignment: positioned at the committed offsets by aiokafka itself, then moved on by
        ``moved_by`` records by a fetch whose records were dropped."""
        self.positions = {tp: (self.committed_offsets.get(tp) or 0) + moved_by for tp in self.ends}

    def assignment(self) -> set[TP]:
        return set(self.positions)

    async def getmany(self, active_partitions: Iterable[TP], timeout: float) -> dict[TP, list[Any]]:
        if self.during_fetch is not None:
            # The group reassigned while the fetch was out: aiokafka returns the new assignment's
            # records, from positions of its own.
            self.during_fetch()
            self.during_fetch = None
        records: dict[TP, list[Any]] = {}
        for tp in sorted(active_partitions):
            start = self.positions[tp]
            stop = min(start + PER_FETCH, self.ends[tp])
            if stop > start:
                records[tp] = [SimpleNamespace(offset=offset) for offset in range(start, stop)]
                self.positions[tp] = stop
        return records

    def _ensure_consumer(self) -> _Positions:
        return self

    async def call_thread(self, fun: Any, *args: Any) -> Any:
        return await fun(*args)

    async def committed(self, tp: TP) -> int | None:
        return self.committed_offsets.get(tp)

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        self.positions.update(partitions)

    async def earliest_offsets(self, *partitions: TP) -> dict[TP, int]:
        return dict.fromkeys(partitions, 0)


class _Sink:
    topics = frozenset({"in"})
    read_committed = False

    def __init__(self) -> None:
        self.told: dict[TP, int | None] = {}

    def held_back(self) -> set[tuple[str, int]]:
        return set()

    def on_positions(self, positions: Mapping[TP, int | None]) -> None:
        self.told.update(positions)


def _consumer(kafka: _Positions, sink: _Sink) -> PipelineConsumer:
    """The consumer's own state, without Faust's app around it."""
    consumer: Any = object.__new__(PipelineConsumer)
    consumer.sink = sink
    consumer._fetch_lock = asyncio.Lock()
    consumer._seeks = 0
    consumer._sought = {}
    consumer._assignments = 0
    consumer._last_changelog_record = {}
    consumer._fencing = None
    consumer._positions_warned = False
    consumer._thread = kafka
    consumer.app = SimpleNamespace(consumer_generation_id=1)
    consumer.flow_active = True
    consumer.not_waiting_next_records = asyncio.Event()
    consumer._get_active_partitions = kafka.assignment
    consumer.log = logging.getLogger("test.consumer")
    return consumer  # type: ignore[no-any-return]


def _first_offsets(records: Mapping[TP, list[Any]] | None) -> dict[TP, int]:
    return {tp: batch[0].offset for tp, batch in (records or {}).items()}


def test_nothing_is_fetched_from_a_position_aiokafka_chose_until_the_consumer_seeks() -> None:
    async def go() -> None:
        kafka = _Positions({IN0: 20, IN1: 20}, {IN0: 5, IN1: 0})
        kafka.assign(moved_by=7)  # a dropped fetch left them at 12 and 7
        sink = _Sink()
        consumer = _consumer(kafka, sink)
        _, records = await consumer._fetch(timeout=0)
        assert records is None, f"fetched before any seek, from {_first_offsets(records)}"
        assert kafka.positions == {IN0: 12, IN1: 7}  # nothing moved them further
        await consumer.seek_to_committed()
        # in/1 has committed offset 0, which aiokafka's seek_to_committed does not seek to.
        assert kafka.positions == {IN0: 5, IN1: 0}
        assert sink.told == {IN0: 5, IN1: 0}
        _, records = await consumer._fetch(timeout=0)
        assert _first_offsets(records) == {IN0: 5, IN1: 0}

    asyncio.run(go())


def test_a_partition_without_a_committed_offset_is_read_from_the_beginning() -> None:
    async def go() -> None:
        kafka = _Positions({IN0: 20}, {IN0: None})
        kafka.assign(moved_by=9)
        sink = _Sink()
        consumer = _consumer(kafka, sink)
        await consumer.seek_to_committed()
        assert kafka.positions == {IN0: 0} and sink.told == {IN0: 0}

    asyncio.run(go())


def test_a_dropped_stale_fetch_is_read_again_unless_a_seek_moved_the_partition_since() -> None:
    async def go() -> None:
        kafka = _Positions({IN0: 20, IN1: 20, CHANGELOG: 20}, {IN0: 5, IN1: 5, CHANGELOG: 0})
        kafka.assign(moved_by=0)
        sink = _Sink()
        consumer = _consumer(kafka, sink)
        await consumer.seek_to_committed()
        await consumer.seek_wait({CHANGELOG: 0})  # Faust's recovery positions its changelog
        fetched, records = await consumer._fetch(timeout=0)
        assert records is not None and _first_offsets(records) == {IN0: 5, IN1: 5, CHANGELOG: 0}
        assert kafka.positions == {IN0: 8, IN1: 8, CHANGELOG: 3}
        await consumer.seek_wait({IN1: 11})  # a seek of one partition makes the whole batch stale
        assert not consumer._current(fetched)
        await consumer._rewind({tp: batch[0].offset for tp, batch in records.items()}, fetched)
        # Dropped unread: read again (Faust's changelog too: it has no committed offset to go back to).
        assert kafka.positions[IN0] == 5 and kafka.positions[CHANGELOG] == 0
        assert kafka.positions[IN1] == 11  # where its own seek put it

    asyncio.run(go())


def test_a_forgotten_partition_is_not_fetched_until_it_is_sought_again() -> None:
    async def go() -> None:
        kafka = _Positions({IN0: 20, IN1: 20}, {IN0: 5, IN1: 5})
        kafka.assign(moved_by=0)
        consumer = _consumer(kafka, _Sink())
        await consumer.seek_to_committed()
        consumer.forget_positions([IN1])  # its lane was fenced
        _, records = await consumer._fetch(timeout=0)
        assert set(_first_offsets(records)) == {IN0}
        await consumer.seek_to_committed()  # the group gave it back
        _, records = await consumer._fetch(timeout=0)
        assert set(_first_offsets(records)) == {IN0, IN1}

    asyncio.run(go())


def test_a_seek_that_a_rebalance_overtakes_marks_nothing_sought() -> None:
    async def go() -> None:
        kafka = _Positions({IN0: 20}, {IN0: 5})
        kafka.assign(moved_by=4)
        sink = _Sink()
        consumer = _consumer(kafka, sink)
        read = kafka.committed

        async def committed_during_a_rebalance(tp: TP) -> int | None:
            consumer._assignments += 1  # the group reassigned meanwhile (on_partitions_assigned)
            return await read(tp)

        kafka.committed = committed_during_a_rebalance  # type: ignore[method-assign]
        await consumer.seek_to_committed()
        assert sink.told == {} and consumer._sought == {}
        _, records = await consumer._fetch(timeout=0)
        assert records is None  # the new assignment's own seek comes next

    asyncio.run(go())


# -- every interleaving: the sink never gets a record it was not told to expect ------------------------

SINK_PARTITIONS = [IN0, IN1]
END = 40


class _CheckingSink(_Sink):
    """Asserts what the pipeline relies on: each partition's records arrive in order from the position
    it was last told, with no gap, and the positions it is given are where its next records start."""

    def __init__(self) -> None:
        super().__init__()
        self.expected: dict[TP, int] = {}  # where each partition's next record must start

    def on_positions(self, positions: Mapping[TP, int | None]) -> None:
        super().on_positions(positions)
        for tp, offset in positions.items():
            if offset is None:
                self.expected.pop(tp, None)
            else:
                self.expected[tp] = offset

    async def on_fetched(
        self, batches: Mapping[TP, list[Any]], positions: Mapping[TP, int], views: Any, current: Any
    ) -> None:
        for tp, batch in batches.items():
            assert tp in self.expected, f"{tp}: records from offset {batch[0].offset}, no position told"
            offsets = [record.offset for record in batch]
            want = list(range(self.expected[tp], self.expected[tp] + len(batch)))
            assert offsets == want, f"{tp}: got {offsets}, expected from {self.expected[tp]}"
            self.expected[tp] = offsets[-1] + 1
        for tp, position in positions.items():
            assert position == self.expected.get(tp), f"{tp}: position {position}, expected {self.expected}"


def _rebalance(consumer: PipelineConsumer, kafka: _Positions, drift: int) -> None:
    """Everything revoked, everything assigned again (aiokafka's eager protocol), aiokafka positioning
    the new assignment itself at the committed offsets moved on by ``drift``."""
    consumer._stop_taking(set(kafka.positions))
    consumer._new_assignment()
    kafka.assign(moved_by=drift)
    for tp in kafka.positions:
        kafka.positions[tp] = min(kafka.positions[tp], END)


_OPS = st.one_of(
    st.tuples(st.just("fetch"), st.none() | st.integers(0, 6)),  # (a rebalance while it is out, drift)
    st.tuples(st.just("fetch_while_flow_stops"), st.none()),  # stale without a seek: must be read again
    st.tuples(st.just("rebalance"), st.integers(0, 6)),
    st.tuples(st.just("seek_to_committed"), st.none()),
    st.tuples(st.just("seek"), st.tuples(st.sampled_from(SINK_PARTITIONS), st.integers(0, END))),
    st.tuples(st.just("commit"), st.none()),
    st.tuples(st.just("forget"), st.sampled_from(SINK_PARTITIONS)),
)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(_OPS, min_size=1, max_size=40))
def test_in_any_interleaving_the_sink_reads_each_partition_from_where_it_was_told(
    ops: list[tuple[str, Any]],
) -> None:
    """Rebalances (between fetches, or while one is out, with aiokafka's own positions moved on by a
    dropped fetch), seeks, commits of what was processed, fenced partitions: every record the sink gets
    continues exactly where it was told its partition is, and once the group settles (a last
    seek_to_committed, as Faust's recovery does after every assignment) every partition is read to
    its end."""

    async def go() -> None:
        kafka = _Positions(dict.fromkeys(SINK_PARTITIONS, END), dict.fromkeys(SINK_PARTITIONS, 0))
        kafka.assign(moved_by=0)
        sink = _CheckingSink()
        consumer = _consumer(kafka, sink)
        monitor = SimpleNamespace(track_tp_end_offset=lambda tp, offset: None)

        async def fetch() -> None:
            fetched, records = await consumer._fetch(timeout=0)
            if records:
                await consumer._handle(fetched, records, monitor)

        for op, arg in ops:
            if op == "fetch":
                if arg is not None:
                    kafka.during_fetch = lambda drift=arg: _rebalance(consumer, kafka, drift)
                await fetch()
                kafka.during_fetch = None  # (nothing was fetched: the rebalance did not happen)
            elif op == "fetch_while_flow_stops":

                def stop() -> None:
                    consumer.flow_active = False

                kafka.during_fetch = stop
                await fetch()
                kafka.during_fetch = None
                consumer.flow_active = True
            elif op == "rebalance":
                _rebalance(consumer, kafka, arg)
            elif op == "seek_to_committed":
                await consumer.seek_to_committed()
            elif op == "seek":
                await consumer.seek_wait({arg[0]: arg[1]})
            elif op == "commit":  # the lanes commit what was processed
                kafka.committed_offsets.update(sink.expected)
            elif op == "forget":
                consumer.forget_positions([arg])
                sink.on_positions({arg: None})
        await consumer.seek_to_committed()
        for _ in range(2 * END // PER_FETCH + 2):
            await fetch()
        assert sink.expected == dict.fromkeys(SINK_PARTITIONS, END)

    asyncio.run(go())
