"""A partition's transaction lane, with producers that fail the ways aiokafka's do (no broker: what is
tested is which failures lose the partition, which stop the worker, and what revocation waits for)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from streams.agents import transactions
from streams.agents.transactions import FENCED_ERRORS, PartitionTransactions, Sent
from streams.core.records import Output
from streams.faust_private import fenced_cause

INPUT = TopicPartition("wa.inbound", 0)


class _TxnManager:
    """aiokafka's transaction manager once its sender died of ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        self.waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiter.set_exception(cause)

    def is_fatal_error(self) -> bool:
        return True

    def wait_for_transaction_end(self) -> asyncio.Future[None]:
        return self.waiter


class _Producer:
    def __init__(self, commit_error: BaseException | None = None, commit_seconds: float = 0.0) -> None:
        self.commit_error = commit_error
        self.commit_seconds = commit_seconds
        self.commits = 0
        self.stopped = False
        self._txn_manager: _TxnManager | None = None

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    async def begin_transaction(self) -> None:
        pass

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        pass

    async def commit_transaction(self) -> None:
        await asyncio.sleep(self.commit_seconds)
        if self.commit_error is not None:
            raise self.commit_error
        self.commits += 1


class _Lanes:
    """PartitionTransactions over one producer, recording what it reports."""

    def __init__(self, producer: _Producer) -> None:
        self.producer = producer
        self.lost: list[int] = []
        self.failures: list[BaseException] = []

        async def send_outputs(_: Any, outputs: list[Output]) -> list[Sent]:
            return []

        self.txns = PartitionTransactions(
            "app",
            "app",
            lambda _: producer,
            send_outputs,
            self.failures.append,
            on_lost=lambda partition, _: self.lost.append(partition),
        )


def test_a_fencing_aiokafka_wraps_in_a_generic_error_loses_the_partition_not_the_worker() -> None:
    async def go() -> None:
        # What aiokafka raises once its sender task died of ProducerFenced: the cause is kept only by
        # the producer.
        producer = _Producer(KafkaError("Unexpected error during batch delivery"))
        producer._txn_manager = _TxnManager(ProducerFenced())
        lanes = _Lanes(producer)
        await lanes.txns.prepare([0])
        lanes.txns.submit(0, [], {INPUT: 5})
        await lanes.txns.flush()
        assert lanes.lost == [0] and lanes.failures == []
        assert 0 not in lanes.txns.lanes

    asyncio.run(go())


def test_any_other_failure_stops_the_worker() -> None:
    async def go() -> None:
        lanes = _Lanes(_Producer(KafkaError("Unexpected error during batch delivery")))
        await lanes.txns.prepare([0])
        lanes.txns.submit(0, [], {INPUT: 5})
        with pytest.raises(RuntimeError, match="a transaction failed"):
            await lanes.txns.flush()
        assert lanes.lost == [] and len(lanes.failures) == 1

    asyncio.run(go())


def test_a_lane_fenced_after_its_revocation_does_not_report_the_partition_lost() -> None:
    async def go() -> None:
        # The partition was revoked (close) while its last transaction was in flight; that transaction
        # is then fenced. The partition is not this lane's any more (it may already have a new one).
        lanes = _Lanes(_Producer(ProducerFenced(), commit_seconds=0.05))
        await lanes.txns.prepare([0])
        lanes.txns.submit(0, [], {INPUT: 5})
        await asyncio.sleep(0)
        await lanes.txns.close([0])
        assert lanes.lost == [] and lanes.failures == []
        assert lanes.producer.stopped

    asyncio.run(go())


def test_revocation_gives_up_a_transaction_that_does_not_commit_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transactions, "CLOSE_TIMEOUT_SECONDS", 0.2)

    async def go() -> None:
        lanes = _Lanes(_Producer(commit_seconds=3600))
        await lanes.txns.prepare([0])
        lanes.txns.submit(0, [], {INPUT: 5})
        await asyncio.wait_for(lanes.txns.close([0]), 5)  # not the hour the commit would take
        assert lanes.producer.stopped and lanes.producer.commits == 0
        assert lanes.failures == [] and lanes.lost == []

    asyncio.run(go())


def test_fenced_cause_follows_chains_and_the_producers_fatal_error() -> None:
    async def go() -> None:
        plain = _Producer()
        assert fenced_cause(plain, ProducerFenced(), FENCED_ERRORS) is not None
        try:
            try:
                raise ProducerFenced()
            except ProducerFenced as inner:
                raise KafkaError("wrapped") from inner
        except KafkaError as outer:
            assert isinstance(fenced_cause(plain, outer, FENCED_ERRORS), ProducerFenced)
        assert fenced_cause(plain, KafkaError("other"), FENCED_ERRORS) is None
        dead = _Producer()
        dead._txn_manager = _TxnManager(ProducerFenced())
        assert isinstance(fenced_cause(dead, AssertionError("bad state"), FENCED_ERRORS), ProducerFenced)

    asyncio.run(go())


def test_work_waiting_for_capacity_goes_on_once_revocation_gives_its_lane_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transactions, "CLOSE_TIMEOUT_SECONDS", 0.2)
    monkeypatch.setattr(transactions, "MAX_PENDING_OUTPUTS", 1)
    outputs = [Output("wa.outbound.send", b"k", b"v"), Output("wa.outbound.send", b"k", b"w")]

    async def go() -> None:
        lanes = _Lanes(_Producer(commit_seconds=3600))
        await lanes.txns.prepare([0])
        lanes.txns.submit(0, [], {INPUT: 5})  # its transaction never commits
        await asyncio.sleep(0)
        lanes.txns.submit(0, outputs, {INPUT: 7})  # over the limit, behind it
        waiting = asyncio.create_task(lanes.txns.wait_capacity([0]))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await lanes.txns.close([0])
        await asyncio.wait_for(waiting, 5)  # the fetch loop would otherwise wait forever

    asyncio.run(go())


class _Turns:
    """Producers keyed by transactional id, logging begins and commits in one shared list; a commit
    waits for its gate (an Event per commit, in order) so a test decides when each one ends."""

    def __init__(self, fail_commit: int | None = None) -> None:
        self.log: list[tuple[str, str]] = []
        self.gates: list[asyncio.Event] = []
        self.fail_commit = fail_commit  # the n-th commit (0-based) is fenced
        self.producers: dict[str, Any] = {}

    def new(self, transactional_id: str) -> Any:
        turns = self

        class Producer(_Producer):
            async def begin_transaction(self) -> None:
                turns.log.append(("begin", transactional_id))

            async def abort_transaction(self) -> None:
                turns.log.append(("abort", transactional_id))

            async def commit_transaction(self) -> None:
                n = sum(1 for event, _ in turns.log if event == "commit-start")
                turns.log.append(("commit-start", transactional_id))
                while len(turns.gates) <= n:
                    turns.gates.append(asyncio.Event())
                await turns.gates[n].wait()
                if n == turns.fail_commit:
                    raise ProducerFenced()
                turns.log.append(("commit", transactional_id))
                self.commits += 1

        self.producers[transactional_id] = Producer()
        return self.producers[transactional_id]

    def release(self, n: int) -> None:
        while len(self.gates) <= n:
            self.gates.append(asyncio.Event())
        self.gates[n].set()


def _lanes_over(
    turns: _Turns, in_flight: int, committed: list[int], lost: list[int]
) -> PartitionTransactions:
    async def send_outputs(_: Any, outputs: list[Output]) -> list[Sent]:
        return []

    def on_commit(
        outputs: list[Output], sent: list[Sent], offsets: dict[TopicPartition, int], _: float
    ) -> None:
        committed.append(offsets[INPUT])

    return PartitionTransactions(
        "app",
        "app",
        turns.new,
        send_outputs,
        lambda exc: None,
        on_commit=on_commit,
        on_lost=lambda partition, _: lost.append(partition),
        in_flight=in_flight,
    )


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def _two_submitted(turns: _Turns, committed: list[int], lost: list[int]) -> PartitionTransactions:
    """Partition 0 with two in flight, offset 5 submitted, then offset 9 while 5 commits."""
    txns = _lanes_over(turns, 2, committed, lost)
    await txns.prepare([0])
    txns.submit(0, [], {INPUT: 5})
    await _settle()
    txns.submit(0, [], {INPUT: 9})
    await _settle()
    return txns


def test_the_next_transaction_begins_while_the_previous_commits_and_commits_after_it() -> None:
    async def go() -> None:
        turns, committed, lost = _Turns(), list[int](), list[int]()
        txns = await _two_submitted(turns, committed, lost)
        assert sorted(turns.producers) == ["app-p0", "app-p0-b"]  # both fenced before offsets are read
        assert turns.log == [
            ("begin", "app-p0"),
            ("commit-start", "app-p0"),
            ("begin", "app-p0-b"),  # not waiting for the first commit
        ]
        txns.submit(0, [], {INPUT: 12})  # a third: producer a is still committing, so it waits
        await _settle()
        assert ("begin", "app-p0") not in turns.log[1:]
        turns.release(0)
        await _settle()
        turns.release(1)
        turns.release(2)
        await asyncio.wait_for(txns.flush(), 5)
        commits = [tid for event, tid in turns.log if event == "commit"]
        assert commits == ["app-p0", "app-p0-b", "app-p0"]
        assert committed == [5, 9, 12]  # in the order submitted
        assert lost == []

    asyncio.run(go())


def test_a_fenced_commit_keeps_the_transaction_after_it_from_committing() -> None:
    async def go() -> None:
        turns, committed, lost = _Turns(fail_commit=0), list[int](), list[int]()
        txns = await _two_submitted(turns, committed, lost)
        assert ("begin", "app-p0-b") in turns.log
        turns.release(0)  # the first commit is fenced
        turns.release(1)
        await asyncio.wait_for(txns.flush(), 5)
        assert [event for event in turns.log if event[0] == "commit"] == []
        assert ("commit-start", "app-p0-b") not in turns.log  # never asked to commit
        assert ("abort", "app-p0-b") in turns.log  # not left open to pin what it wrote
        assert committed == [] and lost == [0] and 0 not in txns.lanes
        await _settle()
        assert all(producer.stopped for producer in turns.producers.values())

    asyncio.run(go())


def test_one_in_flight_begins_after_the_commit_on_the_other_transactional_id() -> None:
    async def go() -> None:
        turns, committed, lost = _Turns(), list[int](), list[int]()
        txns = _lanes_over(turns, 1, committed, lost)
        await txns.prepare([0])
        assert sorted(turns.producers) == ["app-p0", "app-p0-b"]  # both fenced before offsets are read
        txns.submit(0, [], {INPUT: 5})
        await _settle()
        txns.submit(0, [], {INPUT: 9})
        txns.submit(0, [], {INPUT: 12})
        await _settle()
        # One at a time: the work that came meanwhile waits for the commit, in one transaction.
        assert turns.log == [("begin", "app-p0"), ("commit-start", "app-p0")]
        turns.release(0)
        await _settle()
        # The next one is on the other id: the coordinator may still be writing the first one's
        # markers, which holds up only a transaction of the same id (CONCURRENT_TRANSACTIONS).
        assert turns.log[2:] == [("commit", "app-p0"), ("begin", "app-p0-b"), ("commit-start", "app-p0-b")]
        turns.release(1)
        await asyncio.wait_for(txns.flush(), 5)
        assert committed == [5, 12]
        assert lost == []

    asyncio.run(go())


def test_one_in_flight_begins_nothing_after_a_failed_commit() -> None:
    async def go() -> None:
        turns, committed, lost = _Turns(fail_commit=0), list[int](), list[int]()
        txns = _lanes_over(turns, 1, committed, lost)
        await txns.prepare([0])
        txns.submit(0, [], {INPUT: 5})
        await _settle()
        txns.submit(0, [], {INPUT: 9})  # waits for the commit, which is fenced
        await _settle()
        turns.release(0)
        await asyncio.wait_for(txns.flush(), 5)
        assert ("begin", "app-p0-b") not in turns.log
        assert committed == [] and lost == [0] and 0 not in txns.lanes

    asyncio.run(go())


def test_nothing_begins_after_a_commit_failed_even_with_work_pending() -> None:
    async def go() -> None:
        turns, committed, lost = _Turns(fail_commit=0), list[int](), list[int]()
        txns = _lanes_over(turns, 2, committed, lost)
        await txns.prepare([0])
        txns.submit(0, [], {INPUT: 5})
        await _settle()  # committing; the run waits for work or the commit
        turns.release(0)  # the commit is fenced ...
        txns.submit(0, [], {INPUT: 9})  # ... as new work comes in
        await asyncio.wait_for(txns.flush(), 5)
        assert ("begin", "app-p0-b") not in turns.log
        assert committed == [] and lost == [0]

    asyncio.run(go())


def test_the_turns_alternate_across_runs_so_both_ids_stay_in_use() -> None:
    async def go() -> None:
        turns, committed, lost = _Turns(), list[int](), list[int]()
        txns = _lanes_over(turns, 2, committed, lost)
        await txns.prepare([0])
        for n, offset in enumerate((5, 9, 12)):  # one at a time: each run ends before the next submit
            txns.submit(0, [], {INPUT: offset})
            await _settle()
            turns.release(n)
            await asyncio.wait_for(txns.flush(), 5)
        assert [tid for event, tid in turns.log if event == "begin"] == ["app-p0", "app-p0-b", "app-p0"]
        assert committed == [5, 9, 12]

    asyncio.run(go())


def test_revocation_during_an_overlap_commits_both_in_order_then_stops_both_producers() -> None:
    async def go() -> None:
        turns, committed, lost = _Turns(), list[int](), list[int]()
        txns = await _two_submitted(turns, committed, lost)
        closing = asyncio.create_task(txns.close([0]))
        await _settle()
        txns.submit(0, [], {INPUT: 12})  # after close began: not this lane's (redone by the next owner)
        assert not closing.done()
        turns.release(0)
        turns.release(1)
        await asyncio.wait_for(closing, 5)
        assert committed == [5, 9] and txns.discarded == 1
        assert all(producer.stopped for producer in turns.producers.values())

    asyncio.run(go())


def test_the_offsets_metadata_names_what_the_previous_transaction_wrote_too() -> None:
    """Another worker's ordering barrier reads a transaction's offset-commit metadata (where the gate's
    wa.inbound writes end). The previous transaction ran on the other transactional id, so its commit
    markers may still be on their way when this one's offsets are visible: its writes must be named."""

    async def go() -> None:
        turns = _Turns()
        given: list[list[str]] = []

        async def send_outputs(_: Any, outputs: list[Output]) -> list[Sent]:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return [Sent(output.topic, 1, done) for output in outputs]

        async def metadata(sent: list[Sent]) -> str:
            given.append([item.topic for item in sent])
            return ""

        txns = PartitionTransactions(
            "app", "app", turns.new, send_outputs, lambda exc: None, offsets_metadata=metadata
        )
        await txns.prepare([0])
        txns.submit(0, [Output("first", b"k", b"v")], {INPUT: 5})
        await _settle()
        turns.release(0)
        await _settle()
        txns.submit(0, [Output("second", b"k", b"v")], {INPUT: 9})
        await _settle()
        turns.release(1)
        await asyncio.wait_for(txns.flush(), 5)
        assert given == [["first"], ["first", "second"]]

    asyncio.run(go())


def test_a_revocation_that_gives_up_aborts_the_transaction_it_left_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transactions, "CLOSE_TIMEOUT_SECONDS", 0.2)

    async def go() -> None:
        turns = _Turns()
        stuck = asyncio.Event()

        async def send_outputs(_: Any, outputs: list[Output]) -> list[Sent]:
            await stuck.wait()  # its records are never acknowledged
            return []

        txns = PartitionTransactions("app", "app", turns.new, send_outputs, lambda exc: None)
        await txns.prepare([0])
        txns.submit(0, [Output("t", b"k", b"v")], {INPUT: 5})
        await _settle()
        await txns.close([0])  # gives up after the deadline, cancelling the run mid-transaction
        await _settle()
        assert ("abort", "app-p0") in turns.log  # not left open to hold back read_committed readers
        assert all(producer.stopped for producer in turns.producers.values())

    asyncio.run(go())
