"""Exactly-once: one Kafka transaction stream per input partition.

Partition ``p`` of wa.inbound, wa.outbound.requests and wa.webhooks (co-partitioned, always owned
by one worker together) has a transactional producer of its own, ``<app id>-p<p>``. Everything the
pipeline makes from those partitions' records (decisions, state changelog writes, window events,
normalized inbound events, dead letters, re-partitioned strays) and the input offsets that made it
are committed in one transaction: a read_committed reader sees all of it or none of it.

Why one producer per partition and not one per worker: aiokafka's ``send_offsets_to_transaction``
sends no consumer group metadata (no KIP-447 fencing), so a zombie is fenced only by the
transactional id, which therefore has to follow the partition. A worker that takes partition ``p``
over starts ``<app id>-p<p>`` before it reads the committed offsets (``prepare``): the broker then
aborts the previous owner's open transaction, or waits for it to complete, so the offsets it reads
match the outputs that are visible.

A lane runs its transactions in order; what the pipeline submits meanwhile goes into the next one (so
throughput does not depend on the transaction round trips, only latency does). A lane has two
producers, ``<app id>-p<p>`` and ``<app id>-p<p>-b``, taking turns: on one transactional id the next
transaction cannot start until the coordinator has written the previous one's commit markers (it
answers CONCURRENT_TRANSACTIONS meanwhile; on a replicated cluster that wait is as long as the
transaction itself), on the other id it starts at once. By default (one in flight) transaction k+1
begins when k has committed. With two in flight it begins as soon as every record of k is
acknowledged (its records then follow k's in every partition: a contact's decisions and state writes
keep their order), while k commits, and it commits only after k has: a failed k never lets k+1
commit. Either way its offset commit is appended to ``__consumer_offsets`` after k's, and the group
coordinator keeps the offset appended last whatever order the two commit markers land in (Kafka >=
3.8, KAFKA-14505; the old coordinator compares the same way), so the committed offset never goes
back. A transaction's protocol is four round trips in a row (AddPartitionsToTxn, AddOffsetsToTxn,
TxnOffsetCommit, EndTxn), and each costs the coordinators appends and markers: on a broker short of
CPU, the overlap's smaller and more frequent transactions made every round trip slower and the p99 of
a decision worse (docs/performance.md), so one at a time is the default.

A lane lives exactly as long as the worker owns its partition, and its life is ordered (the consumer
calls these, ``streams.faust_private``): ``prepare`` fences the previous owner before the table's
recovery reads the changelog; work is submitted only while the lane exists; ``close`` at revocation
commits what was submitted and stops the producer, for every revoked partition (kept ones included:
a kept partition's offsets are re-read after the rebalance, so what it submitted must be committed
first, and its next owner, this worker again, fences with a fresh producer). A lane whose producer is
fenced (a zombie: this worker was frozen past the session timeout and its partition moved) or whose
transaction the broker timed out is *lost*: it is dropped with what it held, ``on_lost`` tells the
runner (which rejoins the group), and the worker keeps serving its other partitions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    InvalidTxnState,
    ProducerFenced,
    TransactionCoordinatorFenced,
    UnknownProducerId,
)
from aiokafka.structs import OffsetAndMetadata

from streams.core.records import Output
from streams.faust_private import fenced_cause, tune_transactions

log = logging.getLogger(__name__)

SendOutputs = Callable[[Any, list[Output]], Awaitable[list["Sent"]]]
# (the outputs of a committed transaction, what send_outputs returned for them, its input offsets,
# seconds from its begin to its commit)
OnCommitted = Callable[[list[Output], list["Sent"], dict[TopicPartition, int], float], None]
ProducerFactory = Callable[[str], AIOKafkaProducer]

# What a transactional producer gets once another producer took its transactional id over, or once the
# broker aborted its transaction for taking longer than transaction.timeout.ms: the partition has
# moved on without this lane. Not a reason to stop the worker (Kafka Streams: TaskMigratedException).
FENCED_ERRORS: tuple[type[BaseException], ...] = (
    ProducerFenced,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    InvalidTxnState,
    TransactionCoordinatorFenced,
    UnknownProducerId,
)
_STOP_TIMEOUT_SECONDS = 10.0  # a fenced producer's stop may wait for a sender that died
# Starting a partition's producer (InitProducerId) waits while the coordinator resolves the previous
# owner's transaction: seconds normally. Past this the worker stops with an error saying so, rather
# than hold the partition (and the rebalance) indefinitely.
PREPARE_TIMEOUT_SECONDS = 60.0
# Revocation commits what its lanes hold; past this their open transactions are given up (the next
# owner's fencing aborts them, and it reads their inputs again), so the rebalance is not held up.
CLOSE_TIMEOUT_SECONDS = 20.0

# A lane whose pending outputs pass this makes the pipeline wait (the fetch loop slows down to the
# pace of the transactions instead of piling outputs up in memory).
MAX_PENDING_OUTPUTS = 20_000


@dataclass(frozen=True, slots=True)
class Sent:
    """One record batch handed to a producer: its topic, how many records, its delivery future."""

    topic: str
    count: int
    future: Any


@dataclass
class _Lane:
    partition: int
    producers: tuple[AIOKafkaProducer, ...]  # taking turns, one open transaction each
    outputs: list[Output] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    on_committed: list[Callable[[], None]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    submitted: asyncio.Event = field(default_factory=asyncio.Event)  # work came while a commit runs
    commits: list[asyncio.Task[None] | None] = field(default_factory=list)  # each producer's last commit
    lost: bool = False
    opened: AIOKafkaProducer | None = None  # begun when the lane failed: to abort before stopping
    turn: int = 0  # whose turn is next: kept across runs, so every id is used and stays alive
    last_sent: list[Sent] = field(default_factory=list)  # what the last transaction begun wrote

    def __post_init__(self) -> None:
        self.commits = [None] * len(self.producers)

    @property
    def pending(self) -> bool:
        return bool(self.outputs or self.offsets or self.on_committed)


class PartitionTransactions:
    def __init__(
        self,
        transactional_id_prefix: str,
        group_id: str,
        new_producer: ProducerFactory,
        send_outputs: SendOutputs,
        on_failure: Callable[[BaseException], None],
        on_commit: OnCommitted | None = None,
        on_lost: Callable[[int, BaseException], None] | None = None,
        offsets_metadata: Callable[[list[Sent]], Awaitable[str]] | None = None,
        in_flight: int = 1,
    ) -> None:
        if in_flight not in (1, 2):
            raise ValueError(f"in_flight must be 1 or 2, not {in_flight}")
        self.overlap = in_flight == 2  # the next transaction begins before the previous one commits
        self.prefix = transactional_id_prefix
        self.group_id = group_id
        self.new_producer = new_producer
        self.send_outputs = send_outputs
        self.on_failure = on_failure
        self.on_commit = on_commit  # the committed outputs: their state writes are now durable
        self.on_lost = on_lost  # (partition, error): a fenced lane was dropped
        # What a transaction's offset commit says of its outputs (from what send_outputs returned).
        self.offsets_metadata = offsets_metadata
        self.lanes: dict[int, _Lane] = {}
        self.discarded = 0  # submissions for partitions without a lane (revoked or lost): redone by the owner
        self.failed: BaseException | None = None
        self._preparing = asyncio.Lock()
        tune_transactions()

    def transactional_id(self, partition: int, turn: int = 0) -> str:
        """The first is the id every version of the gate used; the second takes turns with it."""
        return f"{self.prefix}-p{partition}" + ("" if turn == 0 else "-b")

    def transactional_ids(self, partition: int) -> list[str]:
        """Both ids, whatever ``in_flight``: a worker with one in flight (or a rollback to it) must still
        fence a previous owner that had two."""
        return [self.transactional_id(partition, turn) for turn in range(2)]

    async def prepare(self, partitions: Iterable[int]) -> None:
        """The assignment is ``partitions``: close the lanes of partitions no longer ours, start a
        producer for each new one. Starting it (InitProducerId) fences the previous owner's producer
        and resolves its open transaction: call this before reading the committed offsets."""
        wanted = set(partitions)
        try:  # (the deadline covers waiting for the previous assignment's prepare too)
            await asyncio.wait_for(self._prepare_locked(wanted), PREPARE_TIMEOUT_SECONDS)
        except TimeoutError:
            raise TimeoutError(
                f"transactional producers for partitions {sorted(wanted)} did not start within "
                f"{PREPARE_TIMEOUT_SECONDS:.0f} s: the transaction coordinator has not resolved the "
                "previous owner's transactions (is the broker healthy?)"
            ) from None

    async def _prepare_locked(self, wanted: set[int]) -> None:
        async with self._preparing:
            await self._prepare(wanted)

    async def _prepare(self, wanted: set[int]) -> None:
        started = time.monotonic()
        await self.close(set(self.lanes) - wanted)
        new = sorted(wanted - set(self.lanes))
        # Every id of the partition is fenced (all started) before its committed offsets are read.
        producers = {p: tuple(self.new_producer(tid) for tid in self.transactional_ids(p)) for p in new}
        results = await asyncio.gather(
            *(producer.start() for group in producers.values() for producer in group), return_exceptions=True
        )
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        for partition, group in producers.items():
            if failure is None:
                self.lanes[partition] = _Lane(partition, group)
            else:  # all or none: the assignment is not usable with a partition missing
                await asyncio.gather(*(_stop_quietly(producer) for producer in group))
        if failure is not None:
            raise failure
        if new:
            log.info(
                "transactional producers for partitions %s started in %.2f s", new, time.monotonic() - started
            )

    def submit(
        self,
        partition: int,
        outputs: list[Output],
        offsets: dict[TopicPartition, int],
        on_committed: Callable[[], None] | None = None,
    ) -> None:
        """Queue work for ``partition``'s next transaction (synchronous: submissions keep their order)."""
        if self.failed is not None:
            raise RuntimeError("a transaction failed; the worker is stopping") from self.failed
        lane = self.lanes.get(partition)
        if lane is None:
            # Revoked or lost since the work was made (a round or a timer that began before): nothing
            # of it is committed, so whoever owns the partition now reads its inputs again.
            self.discarded += 1
            log.debug("work for partition %d discarded: not owned (revoked or fenced)", partition)
            return
        lane.outputs.extend(outputs)
        for tp, offset in offsets.items():
            lane.offsets[tp] = max(offset, lane.offsets.get(tp, -1))
        if on_committed is not None:
            lane.on_committed.append(on_committed)
        if lane.task is None or lane.task.done():
            lane.task = asyncio.create_task(self._run(lane), name=f"wagate-txn-p{partition}")
        else:
            lane.submitted.set()

    async def wait_capacity(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            lane = self.lanes.get(partition)
            while (
                lane is not None
                and self.lanes.get(partition) is lane  # (a closed or lost lane is nobody's to wait for)
                and len(lane.outputs) > MAX_PENDING_OUTPUTS
                and self.failed is None
            ):
                lane.progress.clear()
                await lane.progress.wait()

    async def flush(self, partitions: Iterable[int] | None = None) -> None:
        """Wait until everything submitted for ``partitions`` (all: None) is committed, or its lane is
        lost (fenced: then nothing of it is committed, and the partition's next owner redoes it)."""
        for partition in list(self.lanes) if partitions is None else partitions:
            while self.failed is None:
                lane = self.lanes.get(partition)
                task = lane.task if lane is not None else None
                if task is None or task.done():  # a submit after the task ended starts a new one
                    break
                await asyncio.shield(task)
        if self.failed is not None:
            raise RuntimeError("a transaction failed") from self.failed

    async def close(self, partitions: Iterable[int] | None = None) -> None:
        """Take the lanes of ``partitions`` (all: None) out of service, commit what they hold, then
        stop their producers. A lane is gone from ``lanes`` before the first await: nothing submitted
        after ``close`` began reaches it (it is discarded, see ``submit``)."""
        closing = []
        for partition in list(self.lanes) if partitions is None else list(partitions):
            lane = self.lanes.pop(partition, None)
            if lane is not None:
                closing.append(lane)
        deadline = time.monotonic() + CLOSE_TIMEOUT_SECONDS
        try:
            for lane in closing:
                while lane.task is not None and not lane.task.done() and self.failed is None:
                    try:
                        await asyncio.wait_for(asyncio.shield(lane.task), deadline - time.monotonic())
                    except TimeoutError:
                        log.warning(
                            "partition %d: its transaction did not commit within %.0f s of its revocation; "
                            "given up (its inputs are read again by the next owner)",
                            lane.partition,
                            CLOSE_TIMEOUT_SECONDS,
                        )
                        lane.task.cancel()
                        _abandon(lane, cancel=True)
                        self._drop(lane)  # nothing of it will commit: whoever waits on it goes on
                        break
            if self.failed is not None:
                raise RuntimeError("a transaction failed") from self.failed
        finally:
            await asyncio.gather(*(_retire(lane) for lane in closing))

    async def _run(self, lane: _Lane) -> None:
        """Transactions of the lane while it has work, the producers taking turns (see the module's
        docstring); ends once nothing is pending and the last one has committed."""
        previous: asyncio.Task[None] | None = None  # the last transaction's commit
        opened: AIOKafkaProducer | None = None  # begun, not yet handed to a commit
        try:
            while True:
                if not lane.pending:
                    if previous is None or previous.done():
                        if previous is not None:
                            previous.result()  # (raises why it failed)
                        return  # no await since the check: the next submit starts a new run
                    # Committing: begin the next transaction as soon as work comes, not after the commit.
                    lane.submitted.clear()
                    woken = asyncio.ensure_future(lane.submitted.wait())
                    try:
                        await asyncio.wait((previous, woken), return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        woken.cancel()
                    continue  # (a failed commit raises below, or above when nothing is pending)
                if previous is not None and (previous.done() or not self.overlap):
                    await previous  # one at a time: the previous one has committed (or this raises why not)
                turn = lane.turn
                producer = lane.producers[turn]
                last = lane.commits[turn]
                if last is not None:
                    await last  # this producer's previous transaction has ended (or this raises why not)
                outputs, offsets, callbacks = lane.outputs, lane.offsets, lane.on_committed
                lane.outputs, lane.offsets, lane.on_committed = [], {}, []
                began = time.monotonic()
                opened = producer
                await producer.begin_transaction()
                sent = await self.send_outputs(producer, outputs)
                if offsets:
                    # What the previous transaction wrote too: it ran on the other id, so its markers may
                    # still be being written when this one's offsets become visible (the one before it
                    # ran on this id: the coordinator has written its markers before taking this one).
                    metadata = (
                        await self.offsets_metadata(lane.last_sent + sent) if self.offsets_metadata else ""
                    )
                    committed = {tp: OffsetAndMetadata(offset, metadata) for tp, offset in offsets.items()}
                    await producer.send_offsets_to_transaction(committed, self.group_id)
                # aiokafka commits a transaction whose batches failed without them: every batch must be
                # acknowledged first (a failure, ProducerFenced included, is raised here instead). Once
                # they are, the next transaction may begin: its records come after these everywhere.
                await asyncio.gather(*(item.future for item in sent))
                previous = lane.commits[turn] = asyncio.create_task(
                    self._commit(lane, producer, previous, outputs, sent, offsets, callbacks, began),
                    name=f"wagate-txn-p{lane.partition}-commit",
                )
                opened = None
                lane.last_sent = sent
                lane.turn = (turn + 1) % len(lane.producers)
        except asyncio.CancelledError:  # given up by a revocation: the open one is aborted at retirement
            lane.opened = opened
            raise
        except Exception as exc:
            _abandon(lane)  # a commit still running ends on its own; the failure reported is this one
            # Best effort: a transaction that will never commit is aborted rather than pin the last
            # stable offset of what it wrote until the next owner fences it (a fenced producer cannot
            # abort: then the fencing has aborted it already).
            lane.opened = opened
            fenced = next(
                (cause for p in lane.producers if (cause := fenced_cause(p, exc, FENCED_ERRORS))), None
            )
            if fenced is not None:
                self._lose(lane, fenced)  # (its producers are retired: the open one aborted first)
                return
            if opened is not None:
                asyncio.get_running_loop().create_task(_abort_quietly(opened))
            # Broker gone past retries, a failed batch:
            # Nothing of the open transaction becomes visible; the worker stops, and whoever takes
            # the partition over (this worker restarted, or another) starts from the last commit.
            self.failed = exc
            lane.progress.set()
            log.critical(
                "transaction of partition %d failed (%s: %s); stopping so that it is redone from the "
                "last committed offsets",
                lane.partition,
                type(exc).__name__,
                exc,
            )
            self.on_failure(exc)

    async def _commit(
        self,
        lane: _Lane,
        producer: AIOKafkaProducer,
        previous: asyncio.Task[None] | None,
        outputs: list[Output],
        sent: list[Sent],
        offsets: dict[TopicPartition, int],
        callbacks: list[Callable[[], None]],
        began: float,
    ) -> None:
        """Commit after the previous transaction has: if it failed, so does this (never committed; the
        partition's next owner aborts it when it fences this id)."""
        if previous is not None:
            try:
                await previous
            except Exception:
                await _abort_quietly(producer)  # never to commit: not left open to pin what it wrote
                raise
        await producer.commit_transaction()
        if self.on_commit is not None:  # committed: its state writes are durable, lane lost or not
            self.on_commit(outputs, sent, offsets, time.monotonic() - began)
        if not lane.lost:  # (progress of a partition this worker has given up is not its to report)
            for callback in callbacks:
                callback()
        lane.progress.set()

    @staticmethod
    def _drop(lane: _Lane) -> None:
        """What the lane holds will never commit: let it go, and wake whoever waits for its capacity."""
        lane.outputs, lane.offsets, lane.on_committed = [], {}, []
        lane.progress.set()

    def _lose(self, lane: _Lane, exc: BaseException) -> None:
        """The partition has moved (or its transaction timed out): nothing of the open transaction
        becomes visible, the new owner starts from the last commit. Only this lane is dropped, and the
        runner told only when it was still the partition's lane (a closed one is gone already)."""
        lane.lost = True
        self._drop(lane)
        current = self.lanes.get(lane.partition) is lane
        if current:
            del self.lanes[lane.partition]
        log.warning(
            "partition %d lost: its transactional producer was fenced (%s)%s",
            lane.partition,
            type(exc).__name__,
            "; dropping it and rejoining the group" if current else " after its revocation",
        )
        asyncio.get_running_loop().create_task(_retire(lane))
        if current and self.on_lost is not None:
            self.on_lost(lane.partition, exc)


def _retrieved(task: asyncio.Task[None]) -> None:
    """Mark a commit task's failure as seen (the lane's own failure is what is reported)."""
    if not task.cancelled():
        task.exception()


def _abandon(lane: _Lane, cancel: bool = False) -> None:
    """The lane's run has ended on a failure (or was given up): its commit tasks' failures are not
    reported again; ``cancel`` stops them (a revocation that gave up waiting)."""
    for task in lane.commits:
        if task is None:
            continue
        if cancel:
            task.cancel()
        if task.done():
            _retrieved(task)
        else:
            task.add_done_callback(_retrieved)


async def _retire(lane: _Lane) -> None:
    """Stop a lane's producers once its commits still running have ended (bounded: a commit that hangs
    is cancelled; stopping a producer under a running commit would leave that commit pending for ever)."""
    running = [task for task in lane.commits if task is not None and not task.done()]
    if running:
        await asyncio.wait(running, timeout=CLOSE_TIMEOUT_SECONDS)
        _abandon(lane, cancel=True)
    if lane.opened is not None:
        await _abort_quietly(lane.opened)
    await asyncio.gather(*(_stop_quietly(producer) for producer in lane.producers))


async def _abort_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.abort_transaction(), _STOP_TIMEOUT_SECONDS)
    except Exception as exc:  # fenced, or the broker gone: the next owner's fencing aborts it instead
        log.debug("aborting an abandoned transaction: %s", type(exc).__name__)


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), _STOP_TIMEOUT_SECONDS)
    except Exception as exc:  # a fenced or broken producer may fail to stop cleanly: it is gone anyway
        log.warning("stopping a transactional producer: %s", type(exc).__name__)
