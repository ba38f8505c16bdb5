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
