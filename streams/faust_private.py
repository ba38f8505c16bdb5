"""Every use of faust-streaming's and mode's private members, in one guarded module.

The gate keeps Faust for what it does well: the app's lifecycle, the consumer group and its
co-partitioned assignment, the table's changelog and recovery, the web server. It owns the hot path:
the fetched records of its three input topics go straight from the fetch to the pipeline
(``streams.core``) instead of through Faust's streams, events and acks, one record at a time. That
needs Faust's internals, and they move between releases, so:

- nothing outside this module touches a private member of Faust or mode;
- ``check_faust()`` runs at start-up and fails with the installed faust-streaming version and the
  tested one when a member this module needs is missing;
- pyproject.toml pins faust-streaming to the minor version tested (``TESTED_FAUST``).

What ``PipelineConsumer`` changes in Faust's consumer:

- the drain loop (``_drain_messages``): fetch, then hand the records of the pipeline's topics to the
  sink in one call per fetch; any other topic (the table changelog during recovery) is delivered
  through Faust's own callback as before, one ``wait_first`` per batch so a rebalance can cut in;
- what is fetched: Faust's active partitions minus what the sink holds back (request partitions
  with a full hold queue, everything until the template registry is loaded);
- commits: the pipeline's processed offsets are committable as they stand (a partition is
  processed in offset order), next to Faust's acked offsets for the other topics. Faust's commit
  flushes the producer before it commits, so no offset is committed past unsent outputs;
- seeks: fetches and seeks take one lock, so they never overlap, and every seek or revocation is
  reported to the sink, which drops what it held of those partitions (they are read again).

A batch fetched before a seek or a rebalance is stale: it is delivered only while the consumer
generation and the seek count read (under the lock) before its fetch still hold. Delivering a stale
batch lost records in the past (see the README's Performance section).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, ClassVar, Protocol, cast

import faust
import rocksdict
from faust.stores import rocksdb as faust_rocksdb
from faust.tables import recovery as faust_recovery
from faust.transport import consumer as faust_consumer
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, ConsumerT, Message
from mode import Service, ServiceT

from streams.core.aligner import FetchView

TESTED_FAUST = "0.15"  # the minor version pinned in pyproject.toml

# (owner, member) pairs this module relies on.
_REQUIRED: tuple[tuple[Any, str], ...] = (
    (faust_consumer.Consumer, "_drain_messages"),
    (faust_consumer.Consumer, "_wait_next_records"),
    (faust_consumer.Consumer, "_getmany"),
    (faust_consumer.Consumer, "_read_offset"),
    (faust_consumer.Consumer, "_add_gap"),
    (faust_consumer.Consumer, "_new_offset"),
    (faust_consumer.Consumer, "_filter_tps_with_pending_acks"),
    (faust_consumer.Consumer, "_get_active_partitions"),
    (faust_consumer.Consumer, "_to_message"),
    (faust_consumer.Consumer, "_seek"),
    (faust_consumer.Consumer, "_commit_every"),
    (faust_consumer.Consumer, "_n_acked"),
    (faust_consumer.ThreadDelegateConsumer, "_thread"),
    (faust_aiokafka.AIOKafkaConsumerThread, "_ensure_consumer"),
    (faust_aiokafka.AIOKafkaConsumerThread, "call_thread"),
    (faust_aiokafka.Consumer, "seek_to_committed"),
    (faust_aiokafka.Consumer, "seek_wait"),
    (faust_aiokafka.Producer, "_ensure_producer"),
    (faust_aiokafka.Producer, "_settings_extra"),
    (faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer"),
    (faust_aiokafka.Consumer, "_new_consumer_thread"),
    (faust_recovery.Recovery, "_set_recovery_ended"),
    (faust_recovery.Recovery, "active_highwaters"),
    (faust_recovery.Recovery, "active_offsets"),
    (faust_rocksdb.Store, "_db_for_partition"),
    (Service, "_stopped"),
)


class FaustIncompatible(RuntimeError):
    pass


def check_faust() -> None:
    """Fail at start-up, naming the versions, if a private member this module uses is gone."""
    installed = version("faust-streaming")
    missing = [
        f"{getattr(owner, '__qualname__', owner)}.{member}"
        for owner, member in _REQUIRED
        if not _has_member(owner, member)
    ]
    if missing:
        raise FaustIncompatible(
            f"faust-streaming {installed} lacks what wagate relies on ({', '.join(missing)}); "
            f"wagate is tested with faust-streaming {TESTED_FAUST}.x: "
            f"pip install 'faust-streaming~={TESTED_FAUST}.0'"
        )


def _has_member(owner: Any, member: str) -> bool:
    # Instance attributes are set in __init__ and appear only in annotations or __slots__.
    if hasattr(owner, member):
        return True
    for klass in getattr(owner, "__mro__", ()):
        if member in getattr(klass, "__annotations__", {}) or member in getattr(klass, "__slots__", ()):
            return True
    return False


# -- table state by explicit partition ------------------------------------------------------------

# Faust keeps its own bookkeeping (the changelog offset) in each partition database under this prefix.
_FAUST_KEY_PREFIX = b"__faust"


TOMBSTONE = b""  # PartitionedState.put(partition, key, TOMBSTONE) deletes the key


class PartitionedState:
    """Contact state by explicit partition.

    Faust's RocksDB store picks the partition database from the ambient ``current_event()``; the
    pipeline has no current event (it works on batches), so the partition is always passed in.
    The memory store (unit tests only) has one dict for every partition.

    ``deferred`` (exactly_once): writes wait in memory until ``committed`` says their transaction is
    committed; reads see them at once. RocksDB then never holds a write that a crash could abort.
    An empty value is a deletion (TOMBSTONE; its changelog record has no value): a read finds nothing.
    """

    def __init__(self, table: Any, partition_of: Callable[[bytes], int], deferred: bool = False) -> None:
        self.table = table
        self.partition_of = partition_of  # key bytes -> partition, for the memory store's scan
        self.deferred = deferred
        self._pending: dict[int, dict[bytes, bytes]] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        if self.deferred:
            pending = self._pending.get(partition)
            if pending:
                value = pending.get(key)
                if value is not None:
                    return value or None
        return self._read(partition, key)

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        if self.deferred:
            self._pending.setdefault(partition, {})[key] = value
        else:
            self._write(partition, key, value)

    def committed(self, partition: int, writes: Iterable[tuple[bytes, bytes]]) -> None:
        """The transaction holding ``writes`` committed: into the store (a write made since, by a later
        step, stays pending: it is the newer value)."""
        pending = self._pending.get(partition, {})
        writes = list(writes)
        self._write_many(partition, writes)
        for key, value in writes:
            if pending.get(key) is value:
                del pending[key]

    def forget(self, partition: int) -> None:
        """The partition is gone (revoked): drop what is pending for it."""
        self._pending.pop(partition, None)

    def pending(self, partition: int) -> int:
        return len(self._pending.get(partition, ()))

    def _read(self, partition: int, key: bytes) -> bytes | None:
        store = self.table.data
        if isinstance(store, faust_rocksdb.Store):
            value: bytes | None = store._db_for_partition(partition).get(key)
            return value
        return store.get(key)  # type: ignore[no-any-return]

    def _write(self, partition: int, key: bytes, value: bytes) -> None:
        store = self.table.data
        if isinstance(store, faust_rocksdb.Store):
            # (Faust's Store._set also records the key's partition in an LRU index, for table reads
            # outside a stream; the gate never reads through the table API, so it skips that cost.)
            db = store._db_for_partition(partition)
            if value:
                db.put(key, value)
            else:
                db.delete(key)
        elif value:
            store[key] = value
        else:
            store.pop(key, None)

    def _write_many(self, partition: int, writes: list[tuple[bytes, bytes]]) -> None:
        """A transaction's writes in one RocksDB write batch: one call, one WAL entry (a ``put`` per key
        was a tenth of the worker's time under load). Later writes of a key win, as with ``put``."""
        store = self.table.data
        if isinstance(store, faust_rocksdb.Store) and store.use_rocksdict:
            batch = rocksdict.WriteBatch(raw_mode=True)
            for key, value in writes:
                if value:
                    batch.put(key, value)
                else:
                    batch.delete(key)
            store._db_for_partition(partition).write(batch)
            return
        for key, value in writes:
            self._write(partition, key, value)

    def scan(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of one partition, as of when the scan starts (a RocksDB iterator), with
        pending writes taking precedence."""
        pending = dict(self._pending.get(partition, {}))
        for key, value in self._scan_store(partition):
            value = pending.pop(key, value)
            if value:
                yield key, value
        yield from ((key, value) for key, value in pending.items() if value)

    def _scan_store(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        store = self.table.data
        if isinstance(store, faust_rocksdb.Store):
            for key, value in store._db_for_partition(partition).items():
                if not key.startswith(_FAUST_KEY_PREFIX):
                    yield key, value
        else:
            for key, value in list(store.items()):
                if self.partition_of(key) == partition:
                    yield key, value

    def persisted(self, topic_partition: Any, offset: int) -> None:
        # Recovery resumes reading the changelog after this offset (what Faust does for its own writes).
        self.table.data.set_persisted_offset(topic_partition, offset)


def recovery_done(app: faust.App) -> bool:
    """The table's first recovery has completed (its partitions sought to their committed offsets)
    and no recovery (changelog replay) is running now."""
    tables: Any = app.tables
    recovery = tables.recovery
    return bool(recovery.completed.is_set()) and not recovery.in_recovery


# Transactions: how long aiokafka waits before asking again while the coordinator finishes the previous
# transaction (CONCURRENT_TRANSACTIONS). Its own constant for the first AddPartitionsToTxn of a
# transaction is 20 ms; both set every transaction's pace when requests arrive one at a time.
TRANSACTION_RETRY_BACKOFF_MS = 5
_TXN_FIRST_ADD_BACKOFF_SECONDS = 0.002


def tune_transactions() -> None:
    """Shorten aiokafka's fixed wait before re-adding partitions to a new transaction (measured on the
    embedded broker: a transaction of a few records took ~50 ms with it, ~10 ms without)."""
    from aiokafka.producer import sender

    if hasattr(sender, "BACKOFF_OVERRIDE"):  # aiokafka moved it: transactions keep its 20 ms
        sender.BACKOFF_OVERRIDE = _TXN_FIRST_ADD_BACKOFF_SECONDS


_count_request: Callable[[str], None] | None = None  # one worker per process: the latest app's metrics


def count_kafka_requests(count: Callable[[str], None]) -> None:
    """Call ``count(api)`` for every request any aiokafka client of this process sends (the consumer's
    thread included), ``api`` being the request's name without "Request" ("Produce", "EndTxn"): what a
    decision costs the brokers. aiokafka's connection class is wrapped once per process."""
    from aiokafka import conn

    global _count_request
    _count_request = count
    send = conn.AIOKafkaConnection.send
    if getattr(send, "_wagate_counted", False):
        return

    @functools.wraps(send)
    def counted_send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        sending = send(self, request, *args, **kwargs)  # (raises when there is no connection)
        if _count_request is not None:
            _count_request(type(request).__name__.split("_v", 1)[0].removesuffix("Request"))
        return sending

    counted_send._wagate_counted = True  # type: ignore[attr-defined]
    conn.AIOKafkaConnection.send = counted_send


def request_rejoin(app: faust.App) -> bool:
    """Ask the group coordinator for a rebalance (revoke everything, rejoin), from the app's loop: the
    aiokafka consumer lives on Faust's consumer thread, with its own event loop. False when there is
    no consumer to ask (not started, or aiokafka moved its internals): a member that lost its
    partitions still rejoins on its own at its next heartbeat."""
    try:
        thread: Any = app.consumer._thread  # type: ignore[attr-defined]
        coordinator = thread._consumer._coordinator
        thread.thread_loop.call_soon_threadsafe(coordinator.request_rejoin)
    except (AttributeError, RuntimeError):
        return False
    return True


def forget_positions(app: faust.App, tps: Iterable[TP]) -> None:
    """The pipeline gave these partitions up (a fenced lane): the consumer neither fetches nor
    delivers them until a seek positions them again."""
    consumer = app.consumer
    if isinstance(consumer, PipelineConsumer):
        consumer.forget_positions(tps)


def fenced_cause(
    producer: Any, exc: BaseException, kinds: tuple[type[BaseException], ...]
) -> BaseException | None:
    """The fencing behind a transactional producer's failure, if that is what it was. aiokafka raises
    it as is, chained, or, once its sender task died of it, as a generic error ("Unexpected error
    during batch delivery", IllegalOperation, an assertion on the next transaction step) while the
    producer keeps the cause: in its sender task and its transaction manager's fatal error."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is short; never follow a pathological one far
        if seen is None:
            break
        if isinstance(seen, kinds):
            return seen
        seen = seen.__cause__ or seen.__context__
    causes: list[Any] = []
    with contextlib.suppress(AttributeError):
        causes.append(producer._sender.sender_task)
    with contextlib.suppress(AttributeError):
        txn = producer._txn_manager
        if txn is not None and txn.is_fatal_error():
            causes.append(txn.wait_for_transaction_end())
    for future in causes:
        if future is not None and future.done() and not future.cancelled():
            cause = future.exception()
            if isinstance(cause, kinds):
                return cause
    return None


def kafka_producer(app: faust.App) -> Any:
    """The aiokafka producer Faust owns (and flushes before every commit)."""
    return app.producer._ensure_producer()  # type: ignore[attr-defined]


async def wait_until_drained(producer: Any, partitions: Iterable[tuple[str, int]]) -> None:
    """Wait until aiokafka's accumulator holds no batch waiting to be sent for ``partitions``.

    Then batches added for them right after, with no await in between, are all drained into the
    same produce request per broker: a worker killed meanwhile leaves all or none of them (on one
    broker). aiokafka's ``send_batch`` itself waits for a pending batch of its partition, which let
    the sender go out with part of a step (a state write without its decision: a decision lost)."""
    try:
        pending_by_tp = producer._message_accumulator._batches
    except AttributeError:  # aiokafka moved it: steps may split again (checked by the restart tests)
        return
    for topic, partition in partitions:
        pending = pending_by_tp.get((topic, partition))  # keyed by TopicPartition, a 2-tuple
        if pending:
            await pending[-1].wait_drain()


# -- the consumer ------------------------------------------------------------------------------------


class FetchSink(Protocol):
    """Where the consumer hands the pipeline's records (implemented by ``streams.agents.runner``)."""

    topics: frozenset[str]

    def held_back(self) -> set[tuple[str, int]]: ...

    async def on_fetched(
        self,
        batches: dict[TP, list[Any]],
        positions: dict[TP, int],
        views: dict[TP, FetchView],
        current: Callable[[], bool],
    ) -> None: ...

    def processed(self, tp: TP) -> int | None: ...

    def processed_tps(self) -> Iterable[TP]: ...

    def on_positions(self, positions: Mapping[TP, int | None]) -> None: ...

    @property
    def read_committed(self) -> bool: ...

    async def on_assigned(self, partitions: set[int]) -> None: ...

    async def on_revoking(self, partitions: set[int]) -> None: ...


_YIELD_EVERY = 100  # give the event loop a turn every this many records, as Faust's own loop does


@dataclass(frozen=True, slots=True)
class _Fetched:
    """What a batch's delivery depends on, read before its fetch: a change in either makes it stale."""

    generation: int
    seeks: int
    sought: Mapping[TP, int]  # the partitions sought since assigned, and the seek that last positioned each


class PipelineConsumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sink: FetchSink | None = getattr(self.transport, "sink", None)
        self._fetch_lock = asyncio.Lock()  # held for a fetch and for a seek: they never overlap
        self._seeks = 0  # seeks started
        # The sink's partitions whose position was set by a seek of ours since they were assigned (and
        # the number of that seek): the only ones fetched and delivered. aiokafka positions a new
        # assignment on its own (the committed offset, then moved on by any fetch, kept or dropped),
        # and Faust resumes the partitions before it seeks them: records fetched from such a position
        # may lie past records never processed, and committing them would skip those.
        # (Faust's own partitions are there too once sought: a stale fetch of theirs is rewound the same way.)
        self._sought: dict[TP, int] = {}
        self._assignments = 0  # rebalance callbacks seen: a seek that spans one marks nothing
        self._positions_warned = False
        # Recovery: the offset of the last changelog record fetched per partition since its last seek.
        self._last_changelog_record: dict[TP, int] = {}
        self._fencing: asyncio.Future[None] | None = None  # the sink's on_assigned for the last assignment

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    # -- seeks: under the fetch lock, reported to the sink --------------------------------------------

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Every assigned partition to its committed offset, read in one go before any is moved, then
        moved in one batch on the consumer thread (aiokafka's own seek_to_committed reads and seeks one
        partition at a time, so a cancelled one goes on seeking on that thread, and it leaves
        partitions whose committed offset is 0 or missing where it found them). Every one of the sink's
        partitions is positioned explicitly: where the sink is told it is."""
        async with self._fetch_lock:
            self._seeks += 1
            self._last_changelog_record.clear()
            assignments = self._assignments
            if self.sink is not None:
                # exactly_once: every assigned partition has its producer (started, so the previous
                # owner fenced, by on_partitions_assigned) before the committed offsets are read.
                await self._fenced()  # (no lanes from self.assignment(): it may be a stale one)
            committed = await self._committed(set(self.assignment()))
            positions = await self._sink_positions(committed)
            moves = {tp: offset for tp, offset in committed.items() if offset is not None and offset > 0}
            moves.update(positions)
            await self._moved(moves, positions, assignments)
            return cast(Mapping[TP, int], committed)  # (None where nothing is committed, as aiokafka's)

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        async with self._fetch_lock:
            self._seeks += 1
            assignments = self._assignments
            for tp in partitions:
                self._last_changelog_record.pop(tp, None)
            ours = await self._sink_positions(partitions)
            await self._moved({**partitions, **ours}, ours, assignments)

    async def _seek(self, partition: TP, offset: int) -> None:
        await self.seek_wait({partition: offset})

    async def _committed(self, tps: Iterable[TP]) -> dict[TP, int | None]:
        """The group's committed offsets of ``tps`` (None: none), read on the consumer thread."""
        thread: Any = self._thread
        kafka = thread._ensure_consumer()

        async def read() -> dict[TP, int | None]:
            return {tp: await kafka.committed(tp) for tp in tps}

        return cast(dict[TP, int | None], await thread.call_thread(read))

    async def _sink_positions(self, positions: Mapping[TP, int | None]) -> dict[TP, int]:
        """The sink's partitions among ``positions``, an unknown position (None, or below 0: nothing
        committed) replaced by the log's beginning (auto_offset_reset earliest)."""
        topics = self._sink_topics
        ours = {tp: offset for tp, offset in positions.items() if tp.topic in topics}
        known = {tp: int(offset) for tp, offset in ours.items() if offset is not None and offset >= 0}
        unknown = [tp for tp in ours if tp not in known]
        if unknown:
            known.update({tp: int(offset) for tp, offset in (await self.earliest_offsets(*unknown)).items()})
        return known

    async def _moved(
        self, moves: Mapping[TP, int], sink_positions: Mapping[TP, int], assignments: int
    ) -> None:
        """Seek ``moves`` in one batch, then (unless a rebalance came in between: the new assignment
        is sought on its own) mark them sought by this seek and tell the sink where its partitions
        are now. From then on the sink's partitions are fetched (``_sought``)."""
        if moves:
            await self._thread.seek_wait(moves)
        if self._assignments != assignments:
            return
        for tp in moves:
            self._sought[tp] = self._seeks
        if sink_positions and self.sink is not None:
            self.sink.on_positions(sink_positions)

    @property
    def _sink_topics(self) -> frozenset[str]:
        return self.sink.topics if self.sink is not None else frozenset()

    def _sink_partitions(self, tps: Iterable[TP]) -> set[int]:
        """The input partitions (of the pipeline's co-partitioned topics) among ``tps``."""
        topics = self._sink_topics
        return {tp.partition for tp in tps if tp.topic in topics}

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        self._new_assignment()
        if self.sink is not None:
            # Fence first, then recover: the partitions' transactional producers start (fencing the
            # previous owner's, which resolves its open transaction) before Faust's recovery reads the
            # changelog's end (``highwaters``, below) and before the committed offsets are read. The
            # other way round, a transaction the previous owner committed in between would be in the
            # committed offsets but never in this worker's state (its changelog writes lie past the
            # end recovery read). Started here, not awaited: no heartbeat goes out while this runs.
            self._fencing = asyncio.ensure_future(self.sink.on_assigned(self._sink_partitions(assigned)))
        await super().on_partitions_assigned(assigned, generation_id)

    async def _fenced(self) -> None:
        """Wait for the fencing the last assignment started (its failure stops the worker)."""
        fencing = self._fencing
        if fencing is not None:
            await asyncio.shield(fencing)

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]:
        # Faust's recovery reads the changelog's end here: only once the previous owners are fenced.
        await self._fenced()
        return await super().highwaters(*partitions)

    def _stop_taking(self, revoked: Iterable[TP]) -> None:
        """Revocation begins: a fetch made before this point is stale from now on (its records are read
        again from the committed offsets), nothing revoked is fetched until a seek positions it again,
        and the sink drops what it held of them."""
        self._assignments += 1
        self._seeks += 1
        for tp in revoked:
            self._sought.pop(tp, None)
        if self.sink is not None:
            self.sink.on_positions(dict.fromkeys(tp for tp in revoked if tp.topic in self.sink.topics))

    def _new_assignment(self) -> None:
        """aiokafka made a new position for every assigned partition, kept ones included: none of the
        sink's is fetched again before a seek of ours (seek_to_committed, after recovery)."""
        self._sought.clear()
        self._assignments += 1

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self._stop_taking(revoked)
        if self.sink is not None:
            with contextlib.suppress(Exception):  # a failed fencing already crashed the worker
                await self._fenced()  # its lanes are in place before they are closed
            # exactly_once: what was submitted for them is committed, and their producers stopped,
            # before another worker (or this one, after the rebalance) reads their committed offsets.
            await self.sink.on_revoking(self._sink_partitions(revoked))
        await super().on_partitions_revoked(revoked)

    # -- commits: the pipeline's processed offsets next to Faust's acks -------------------------------

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        yield from super()._filter_tps_with_pending_acks(topics)
        if self.sink is not None:
            for tp in self.sink.processed_tps():
                if topics is None or tp in topics or tp.topic in topics:
                    yield tp

    def _new_offset(self, tp: TP) -> int | None:
        if self.sink is not None and tp.topic in self.sink.topics:
            return self.sink.processed(tp)
        return super()._new_offset(tp)

    # -- the drain loop ------------------------------------------------------------------------------

    def _current(self, fetched: _Fetched) -> bool:
        """No rebalance and no seek since the batch was fetched, and records may flow."""
        return (
            self.flow_active
            and self._seeks == fetched.seeks
            and self.app.consumer_generation_id == fetched.generation
        )

    async def _fetch(self, timeout: float) -> tuple[_Fetched, Mapping[TP, list[Any]] | None]:
        """A fetch of the active partitions less what the sink holds back; None: nothing to fetch."""
        async with self._fetch_lock:
            sink = self.sink
            sought = self._sought
            fetched = _Fetched(self.app.consumer_generation_id, self._seeks, dict(sought))
            if not self.flow_active:
                return fetched, {}
            active = self._get_active_partitions()
            if sink is not None:
                held_back = sink.held_back()
                topics = sink.topics
                active = {
                    tp
                    for tp in active
                    if tp.topic not in topics or (tp in sought and (tp.topic, tp.partition) not in held_back)
                }
            if not active:
                return fetched, None
            self.not_waiting_next_records.set()
            return fetched, await self._getmany(active_partitions=active, timeout=timeout)

    async def _drain_messages(self, fetcher: ServiceT) -> None:
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        monitor = self.app.monitor
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                if not self.flow_active:
                    await self.wait(self.can_resume_flow)  # type: ignore[arg-type]  # as Faust does
                    continue
                self.diag.set_flag(CONSUMER_FETCHING)
                fetched, records = await self._fetch(timeout=1.0)
                if records is None:
                    await self.sleep(0.05)  # nothing to fetch (recovery, or all held back): no spin
                    continue
                await self._handle(fetched, records, monitor)
                self.diag.unset_flag(CONSUMER_FETCHING)
                await self.sleep(0)  # let the loop breathe between fetches
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _handle(self, fetched: _Fetched, records: Mapping[TP, list[Any]], monitor: Any) -> None:
        """One fetch's records: the sink's to the sink in one call, Faust's own through its callback;
        a stale fetch dropped (and rewound where no seek moved its partitions)."""
        if not self._current(fetched):
            self._drop_stale(sum(len(batch) for batch in records.values()))
            await self._rewind({tp: batch[0].offset for tp, batch in records.items() if batch}, fetched)
            return
        sink = self.sink
        ours: dict[TP, list[Any]] = {}
        theirs: list[tuple[TP, Message]] = []
        for tp, batch in records.items():
            monitor.track_tp_end_offset(tp, self.highwater(tp))
            if sink is not None and tp.topic in sink.topics:
                if tp in self._sought:  # (else no longer ours: sought again before it is fetched)
                    ours[tp] = batch
            else:
                theirs.extend((tp, self._to_message(tp, record)) for record in batch)
        if sink is not None:
            # Read now, before anything is awaited: where the next fetch starts, past the records just
            # returned and past transaction markers (no record stands for those).
            positions, views = self._fetch_state(sink.topics)
            if ours or positions:
                current = functools.partial(self._current, fetched)
                await sink.on_fetched(ours, positions, views, current)
        if theirs:
            for tp, batch in records.items():
                if batch and (sink is None or tp.topic not in sink.topics):
                    self._last_changelog_record[tp] = batch[-1].offset
            await self._deliver_to_faust(theirs, fetched)
        if self.read_committed and self._current(fetched):
            self._end_recovery_at_markers()

    def _fetch_state(self, topics: frozenset[str]) -> tuple[dict[TP, int], dict[TP, FetchView]]:
        """What aiokafka's consumer (on Faust's consumer thread) knows of ``topics``' assigned
        partitions right after our fetch: fetch positions (between two of our fetches only our own
        calls move them), and per partition the stamp, high watermark and broker of the newest fetch
        response (the stamp is read before the high watermark, which aiokafka sets first: a torn
        read pairs an older stamp with a newer high watermark, which only delays the fast path)."""
        try:
            kafka: Any = self._thread._consumer
            if kafka is None:
                return {}, {}
            assignment = kafka._subscription.subscription.assignment
            leader_for = kafka._client.cluster.leader_for_partition
            positions: dict[TP, int] = {}
            views: dict[TP, FetchView] = {}
            sought = self._sought
            for tp in self.assignment():
                if tp.topic in topics:
                    state = assignment.state_value(tp)
                    if state is None:
                        continue
                    if state.has_valid_position and tp in sought:
                        positions[tp] = state.position
                    stamp = state.timestamp
                    if stamp is not None:
                        # Read_committed: the last stable offset. A transaction still open has not been
                        # written yet (no reader can see past it), so no request waits for one that may
                        # never commit; the gate's own committed transactions, whose markers may lag
                        # their commit, are waited for by the aligner (``own_committed``).
                        end = state.lso if self.read_committed else state.highwater
                        if end is not None and end >= 0:
                            views[tp] = FetchView(stamp, end, leader_for(tp))
            return positions, views
        except AttributeError as exc:  # rebalancing (no subscription), or aiokafka moved its internals
            if self.app.rebalancing:
                return {}, {}
            if not self._positions_warned:
                self._positions_warned = True
                self.log.warning(
                    "cannot read fetch positions (%s; aiokafka %s): requests behind a transaction "
                    "marker on wa.inbound wait for the hold limit",
                    exc,
                    version("aiokafka"),
                )
            return {}, {}

    @property
    def read_committed(self) -> bool:
        return self.sink is not None and self.sink.read_committed

    def _end_recovery_at_markers(self) -> None:
        """read_committed: a changelog written in transactions ends with a commit marker, an offset
        that holds no record. Faust's recovery waits for a record at (end offset - 1), and without
        ``processing_guarantee=exactly_once`` never gives up (with it, after two idle 5-second polls).
        Once the consumer's position reaches the end offset nothing is left to read: the partition's
        highwater becomes its last record, and recovery ends when the records fetched are applied."""
        tables: Any = self.app.tables
        recovery = tables.recovery
        if not recovery.in_recovery:
            return
        try:
            assignment = self._thread._consumer._subscription.subscription.assignment  # type: ignore[union-attr]
        except AttributeError:
            return  # rebalancing: recovery restarts with fresh highwaters
        highwaters = recovery.active_highwaters
        offsets = recovery.active_offsets
        for tp, highwater in list(highwaters.items()):
            state = assignment.state_value(tp)
            if highwater is None or state is None or not state.has_valid_position:
                continue
            if state.position > highwater:  # fetched up to the end offset
                last = max(self._last_changelog_record.get(tp, -1), offsets.get(tp) or -1)
                if last < highwater:
                    highwaters[tp] = last
        if not recovery.need_recovery() and tables.changelog_queue.empty():
            # What Faust's own loop does once the last record is applied; it may be idle in a 5 s wait.
            recovery.flush_buffers()
            recovery._set_recovery_ended()
            recovery.signal_recovery_end.set()

    async def _rewind(self, undelivered: Mapping[TP, int], fetched: _Fetched) -> None:
        """A stale batch was dropped from ``undelivered`` (partition -> its first record not delivered)
        on, but fetching it moved aiokafka's positions past those records: partitions that no seek has
        positioned since the fetch (a seek of other partitions made it stale) go back. The others are
        where a seek put them, or are sought again before their next fetch (revoked, reassigned, lost:
        the sink's are not fetched until then; Faust's recovery seeks its changelogs itself)."""
        async with self._fetch_lock:
            back = {
                tp: offset
                for tp, offset in undelivered.items()
                if tp in self._sought and self._sought[tp] == fetched.sought.get(tp)
            }
            if back:
                await self._thread.seek_wait(back)

    def forget_positions(self, tps: Iterable[TP]) -> None:
        """These partitions are not the sink's any more (a fenced lane): nothing of them is fetched or
        delivered until a seek positions them again (the group reassigns them)."""
        for tp in tps:
            self._sought.pop(tp, None)

    def _drop_stale(self, undelivered: int) -> None:
        # Not marked read: the seek that made the batch stale (done, or due with the rebalance)
        # positions the consumer at or before these records.
        self.log.info(
            "Rebalance or seek: %d fetched records dropped unread, to be fetched again", undelivered
        )

    async def _deliver_to_faust(self, batch: list[tuple[TP, Message]], fetched: _Fetched) -> None:
        """Faust's own topics (the changelog in recovery): through its callback, cancellable by a
        rebalance at any record, with commits when Faust's ``broker_commit_every`` asks for one."""
        delivered = 0
        while delivered < len(batch) and not self.should_stop:
            if not self._current(fetched):
                self._drop_stale(len(batch) - delivered)
                await self._rewind(_first_offsets(batch[delivered:]), fetched)
                return
            deliver = self._deliver(batch, delivered, fetched)
            outcome = await self.wait_first(deliver, self.suspend_flow.wait())
            if outcome.stopped:
                return
            if deliver not in outcome.done:
                # A rebalance began mid-delivery; how far it got is unknown, so nothing is rewound:
                # the rebalance seeks every partition that is kept.
                self._drop_stale(len(batch) - delivered)
                return
            delivered = int(outcome.results[outcome.done.index(deliver)])
            if delivered < len(batch) and self._current(fetched):
                self._n_acked = 0
                await self.commit()

    async def _deliver(self, batch: list[tuple[TP, Message]], start: int, fetched: _Fetched) -> int:
        """Deliver from `start` on; return where it stopped: the end, earlier when a commit is due or
        when the batch went stale."""
        callback = self.callback
        read_offset = self._read_offset
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        current = self._current
        for index in range(start, len(batch)):
            if (index - start) % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)
            if not current(fetched):
                return index
            tp, message = batch[index]
            offset = message.offset
            last_read = read_offset.get(tp)
            if last_read is not None and offset < last_read:
                continue  # already delivered before a seek: Faust drops these too
            if last_read and offset - last_read > 1 and acks_enabled_for(message.topic):
                await self._add_gap(tp, last_read + 1, offset)
            await callback(message)
            read_offset[tp] = offset
            if commit_every is not None and self._n_acked >= commit_every:
                return index + 1
        return len(batch)


def _first_offsets(batch: Iterable[tuple[TP, Message]]) -> dict[TP, int]:
    first: dict[TP, int] = {}
    for tp, message in batch:
        first.setdefault(tp, message.offset)
    return first


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        sink = getattr(transport, "sink", None)
        if sink is not None and sink.read_committed:
            # exactly_once without Faust's transaction manager: only the reads change (inputs and the
            # changelog skip aborted transactions); aiokafka passes this on to its fetcher at start.
            consumer._isolation_level = "read_committed"
        return consumer


class IdempotentProducer(faust_aiokafka.Producer):
    """Faust's producer, idempotent also outside transactions: a batch retried after a broker's loss
    is written once (a second `send` for one request was seen in the broker-loss test without it)."""

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


class PipelineTransport(faust_aiokafka.Transport):
    Consumer: ClassVar[type[ConsumerT]] = PipelineConsumer
    Producer: ClassVar[type[Any]] = IdempotentProducer


def install(app: faust.App, sink: FetchSink) -> None:
    """Consume through ``PipelineTransport`` (before anything touches ``app.transport``), with the
    pipeline's records handed to ``sink``."""
    check_faust()
    transport = PipelineTransport(app.conf.broker_consumer, app)
    transport.sink = sink  # type: ignore[attr-defined]
    app.transport = transport
