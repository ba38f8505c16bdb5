"""The adapter around the pipeline core: fetched records in, produced records and processed offsets out.

``PipelineRunner`` is the consumer's ``FetchSink`` (``streams.faust_private``): the consumer's drain
loop hands it every fetch of the gate's input topics, and it

- runs the synchronous core on the whole fetch (``Pipeline.feed``), then produces the step's outputs
  straight into Faust's aiokafka producer and marks the step's input offsets processed, steps in the
  order they were made (one lock), so a commit never passes an output that was not handed over;
- runs the ordering rounds (``Aligner``): reads end offsets (and, for wa.webhooks partitions other
  workers own, the group's committed offsets) when held requests need them, and decides what they
  release; releases requests at the hold limit;
- tells the consumer which partitions to hold back (request partitions with a full hold queue; all
  of them until the template registry is loaded);
- serves the window timetable's state (``WindowScheduler``) and the window API.

Under ``exactly_once`` (the default) a step's outputs and input offsets go, per input partition, into
that partition's transaction (``streams.agents.transactions``) instead of Faust's producer, and Faust
commits no offsets of the pipeline's topics: the transactions do.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faust.types import TP

from streams.agents.transactions import PartitionTransactions, Sent
from streams.agents.windows import Ownership, WindowScheduler
from streams.core.aligner import Aligner, FetchView, RoundPlan, format_inbound_ends, parse_inbound_ends
from streams.core.pipeline import Pipeline
from streams.core.processor import OWN_KEY_PREFIX, Clock, Processor
from streams.core.records import InputRecord, Output, Step
from streams.faust_private import (
    TOMBSTONE,
    TRANSACTION_RETRY_BACKOFF_MS,
    PartitionedState,
    forget_positions,
    kafka_producer,
    recovery_done,
    request_rejoin,
    wait_until_drained,
)
from streams.kafka_security import client_kwargs
from streams.metrics import GateMetrics
from streams.models import WindowEvent, WindowReport
from streams.policy.keys import partition_for
from streams.policy.rules import WindowRules
from streams.policy.templates import Registry
from streams.policy.window import ContactState, window_report
from streams.settings import Settings
from streams.topology import Topology

log = logging.getLogger(__name__)

# aiokafka's record builder takes headers as a list (only read): one shared empty list for most records.
_NO_HEADERS: list[tuple[str, bytes]] = []


def _append(batch: Any, output: Output) -> Any:
    """``output`` into an aiokafka batch; None when the batch is full."""
    headers = list(output.headers) if output.headers else _NO_HEADERS
    return batch.append(key=output.key, value=output.value, timestamp=output.timestamp_ms, headers=headers)


# While a cohort waits for other workers' webhook progress, ask again this often.
_ROUND_RETRY_SECONDS = 0.05
_IDLE_SECONDS = 0.5
_MAX_ROUNDS = 4  # rounds in flight at once
# How long a request waits for the fast path before it gets a round of its own.
_ROUND_GRACE_SECONDS = 0.003


class PipelineRunner:
    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        topo: Topology,
        table: Any,
        rules: WindowRules,
        metrics: GateMetrics,
        registry: Registry,
        clock: Clock = time.time,
    ) -> None:
        self.app = app
        self.settings = settings
        self.topo = topo
        self.metrics = metrics
        self.clock = clock
        self.partitions = topo.requests.partitions
        self.exactly_once = settings.processing_guarantee == "exactly_once"
        # exactly_once: state writes reach RocksDB when their transaction commits, so the local state
        # is always a prefix of the committed changelog and survives a crash (only the tail replays).
        self.state = PartitionedState(
            table, lambda key: partition_for(key, self.partitions), deferred=self.exactly_once
        )
        self.rules = rules
        window_events = settings.window_events_enabled
        self.windows = WindowScheduler(
            rules=rules,
            clock=clock,
            ownership=self._ownership,
            load=lambda partition, key: self.processor.load(key, partition),
            scan=self._scan,
            publish=self._publish_window_events,
            enabled=window_events,
        )
        key = settings.internal_key
        self.processor = Processor(
            topo,
            self.state,
            rules,
            metrics,
            registry,
            clock,
            window_events,
            self.windows.watch,
            None if key is None else key.get_secret_value().encode(),
        )
        self.aligner = Aligner(self.partitions, settings.max_hold_seconds, settings.max_held_requests)
        self.pipeline = Pipeline(self.processor, self.aligner, metrics, ready=False)
        self.topics = frozenset(self.pipeline.sources)
        self._all_ours = {(topic, p) for topic in self.topics for p in range(self.partitions)}
        self._processed: dict[TP, int] = {}
        self._send_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        # Per own wa.webhooks partition: (next offset, its outputs not yet acknowledged), in order.
        self._webhook_acks: dict[int, deque[tuple[int, list[int]]]] = {}
        self._admin: AIOKafkaAdminClient | None = None
        self._group_coordinator: int | None = None  # its node id, as last found
        self._offsets_client: AIOKafkaConsumer | None = None
        self._partition_counts: dict[str, int] = {}
        self._changelog = topo.contact_state_changelog.name
        self._source_topics = {source: topic for topic, source in self.pipeline.sources.items()}
        self.transactions: PartitionTransactions | None = None
        if self.exactly_once:
            self.transactions = PartitionTransactions(
                settings.faust_app_id,
                settings.faust_app_id,  # the consumer group
                self._transactional_producer,
                self._send_outputs,
                self._crash,
                self._transaction_committed,
                self._partition_lost,
                self._inbound_written,
                in_flight=settings.transactions_in_flight,
            )
        metrics.open_windows.set_function(lambda: self.windows.open_windows)
        metrics.requests_held.set_function(lambda: self.aligner.held)

    # -- FetchSink --------------------------------------------------------------------------------

    def held_back(self) -> set[tuple[str, int]]:
        if not self.pipeline.ready:
            return self._all_ours
        # (A partition whose lane was fenced is not fetched either: the consumer forgot its positions.)
        paused = self.aligner.paused()
        if not paused:
            return set()
        requests = self.topo.requests.name
        return {(requests, p) for p in paused}

    async def on_fetched(
        self,
        batches: dict[TP, list[Any]],
        positions: dict[TP, int],
        views: dict[TP, FetchView],
        current: Callable[[], bool],
    ) -> None:
        if not current():
            return
        step = self.pipeline.feed(batches, time.monotonic(), positions, views)  # type: ignore[arg-type]
        if self.pipeline.backlogged or (
            self.aligner.enabled and any(tp.topic == self.topo.requests.name for tp in batches)
        ):
            self._wake.set()
        await self._emit(step)

    def processed(self, tp: TP) -> int | None:
        return self._processed.get(tp)  # (always empty under exactly_once: the transactions commit)

    def processed_tps(self) -> Iterable[TP]:
        return list(self._processed)

    @property
    def read_committed(self) -> bool:
        return self.exactly_once

    async def on_assigned(self, partitions: set[int]) -> None:
        """The group assigned ``partitions``: fence their previous owners (before recovery reads the
        changelog and before their committed offsets are read)."""
        if self.transactions is not None:
            await self.transactions.prepare(partitions)

    async def on_revoking(self, partitions: set[int]) -> None:
        """``partitions`` are being revoked (the consumer has already dropped what the pipeline held of
        them): what was submitted for them is committed, then their producers stop. Kept partitions
        too: their committed offsets are read again after the rebalance, and their lanes start anew."""
        if self.transactions is not None:
            await self.transactions.close(partitions)
            for partition in partitions:
                self.state.forget(partition)  # nothing is pending once all is committed

    def _partition_lost(self, partition: int, exc: BaseException) -> None:
        """A lane was fenced: the partition moved while this worker was not looking (frozen past the
        session timeout, or a transaction past its timeout). Its uncommitted work is gone with the
        lane; what the pipeline holds of it is dropped, and the worker rejoins the group, which
        revokes and reassigns (the next owner, maybe this worker, recovers and re-reads it)."""
        self.metrics.partitions_lost.inc()
        self.state.forget(partition)
        gone = [TP(topic, partition) for topic in self.topics]
        forget_positions(self.app, gone)  # not fetched again until the group reassigns it
        self.on_positions(dict.fromkeys(gone))
        if not request_rejoin(self.app):
            log.warning("could not ask the group for a rebalance: partition %d waits for one", partition)

    def on_positions(self, positions: Mapping[TP, int | None]) -> None:
        for tp, position in positions.items():
            self.pipeline.reset(tp.topic, tp.partition, position)
            self._processed.pop(tp, None)
            if tp.topic == self.topo.webhooks.name:
                self._webhook_acks.pop(tp.partition, None)

    async def dead_letter_compacted(self, record: InputRecord, error: str) -> None:
        """A record of a compacted topic the registry cannot use (wa.templates, wa.numbers, wa.contacts),
        to wa.deadletter through Faust's producer (no partition's transaction owns these topics).
        Every worker reads them whole at every start, so each start dead-letters it again."""
        outputs: list[Output] = []
        self.processor.dead_letter(record, error, "unusable_compacted_record", outputs)
        for sent in await self._send_outputs(kafka_producer(self.app), outputs):
            await sent.future

    def registry_loaded(self) -> None:
        self.pipeline.ready = True
        self._wake.set()

    # -- producing a step ---------------------------------------------------------------------------

    async def _emit(self, step: Step) -> None:
        if not step:
            return
        if self.transactions is not None:
            self._submit(step)
            await self.transactions.wait_capacity(step.partitions())
            return
        epoch = self.aligner.epoch
        async with self._send_lock:  # steps leave in the order they were made
            futures = await self._send_all(step.outputs)
            if self.aligner.epoch != epoch:
                return  # a seek or revocation came in between: these offsets will be read again
            for (source, partition), next_offset in step.done.items():
                tp = TP(self._source_topics[source], partition)
                if next_offset > self._processed.get(tp, -1):
                    self._processed[tp] = next_offset
            for partition, next_offset in step.webhooks_done.items():
                self._track_webhook_acks(partition, next_offset, futures)

    def _submit(self, step: Step) -> None:
        """exactly_once: each input partition's outputs and offsets into its next transaction.
        Synchronous, straight after the step was made: a revocation cannot come in between."""
        assert self.transactions is not None
        for partition in sorted(step.partitions()):
            offsets = {
                TopicPartition(self._source_topics[source], p): next_offset
                for (source, p), next_offset in step.done.items()
                if p == partition
            }
            on_committed = None
            webhooks_next = step.webhooks_done.get(partition)
            if webhooks_next is not None:
                on_committed = functools.partial(self._webhooks_committed, partition, webhooks_next)
            self.transactions.submit(partition, step.by_partition.get(partition, []), offsets, on_committed)

    def _transaction_committed(
        self, outputs: list[Output], sent: list[Sent], offsets: dict[TopicPartition, int], seconds: float
    ) -> None:
        """A transaction committed: its state writes go to RocksDB, then recovery's start moves past
        its changelog records (a crash in between replays them: the same values again)."""
        self.metrics.transactions.inc()
        self.metrics.transaction_seconds.observe(seconds)
        if offsets:  # the consumer-lag figures count from these (Faust commits none of them)
            self.app.monitor.on_tp_commit(
                {TP(tp.topic, tp.partition): offset for tp, offset in offsets.items()}
            )
        for partition, next_offset in _inbound_ends(sent, self.topo.inbound.name).items():
            self.aligner.own_committed(partition, next_offset)  # before the webhook progress below
        writes: dict[int, list[tuple[bytes, bytes]]] = {}
        for output in outputs:
            if output.topic == self._changelog and output.key is not None:
                # A changelog record without a value deletes the key (Faust's recovery does the same).
                value = TOMBSTONE if output.value is None else output.value
                writes.setdefault(output.partition or 0, []).append((output.key, value))
        for partition, items in writes.items():
            self.state.committed(partition, items)
        for item in sent:
            if item.topic == self._changelog and item.count:
                self._on_changelog_delivered(item.future, item.count)

    async def _inbound_written(self, sent: list[Sent]) -> str:
        """The offset commit's metadata for a transaction about to commit: where its wa.inbound records
        end, per partition. Another worker's ordering round reads it beside this worker's wa.webhooks
        progress: the markers of a committed transaction may lag its commit, and requests written after
        the bodies it normalized must wait for those events all the same."""
        inbound = self.topo.inbound.name
        pending = [item.future for item in sent if item.topic == inbound]
        if not pending:
            return ""
        await asyncio.gather(*pending)  # acknowledged already or soon: the commit would wait for them too
        return format_inbound_ends(_inbound_ends(sent, inbound))

    def _webhooks_committed(self, partition: int, next_offset: int) -> None:
        self.aligner.webhooks_on_broker(partition, next_offset, int(1000 * time.time()))
        self._wake.set()

    def _transactional_producer(self, transactional_id: str) -> AIOKafkaProducer:
        settings = self.settings
        return AIOKafkaProducer(
            **client_kwargs(settings),
            client_id=f"{settings.faust_app_id}-txn",
            transactional_id=transactional_id,
            transaction_timeout_ms=int(1000 * settings.transaction_timeout_seconds),
            acks="all",
            enable_idempotence=True,
            linger_ms=settings.producer_linger_ms,
            max_batch_size=settings.producer_max_batch_size,
            max_request_size=max(settings.producer_max_batch_size, 1_048_576),
            # The coordinator answers CONCURRENT_TRANSACTIONS while it writes the previous transaction's
            # markers (a few ms); aiokafka's 100 ms default backoff made every transaction ~50 ms.
            retry_backoff_ms=TRANSACTION_RETRY_BACKOFF_MS,
        )

    def _crash(self, exc: BaseException) -> None:
        self.app.loop.create_task(self.app.crash(exc))

    async def _send_all(self, outputs: list[Output]) -> list[Any]:
        """at_least_once: ``outputs`` into Faust's aiokafka producer (which Faust flushes before every
        commit)."""
        sent = await self._send_outputs(kafka_producer(self.app), outputs, drain_first=True)
        return [item.future for item in sent]

    async def _send_outputs(
        self, producer: Any, outputs: list[Output], drain_first: bool = False
    ) -> list[Sent]:
        """``outputs`` into ``producer``, one record batch per topic and partition: a per-record
        ``send`` cost more than the gate's policy."""
        grouped: dict[tuple[str, int], list[Output]] = {}
        for output in outputs:
            partition = output.partition
            if partition is None:
                partition = await self._partition_of(producer, output)
            grouped.setdefault((output.topic, partition), []).append(output)
        # All of a step's batches go into the accumulator together (see wait_until_drained), state
        # writes last: where they still split (several brokers), a decision without its state write
        # is decided again on replay (a duplicate) rather than a state write without its decision
        # (a decision lost). Under exactly_once the transaction makes a step all or nothing anyway.
        if drain_first:
            await wait_until_drained(producer, grouped)
        grouped = dict(sorted(grouped.items(), key=lambda item: item[0][0] == self._changelog))
        sent: list[Sent] = []
        for (topic, partition), records in grouped.items():
            batch = producer.create_batch()
            count = 0
            for output in records:
                if _append(batch, output) is None:
                    if count:  # full: send it, start the next
                        sent.append(await self._send_batch(producer, batch, topic, partition, count))
                        batch, count = producer.create_batch(), 0
                    if _append(batch, output) is None:
                        # Larger than a batch: alone, with the producer's own size check and error.
                        sent.append(await self._send_one(producer, output, topic, partition))
                        continue
                count += 1
            if count:
                sent.append(await self._send_batch(producer, batch, topic, partition, count))
        return sent

    async def _send_batch(self, producer: Any, batch: Any, topic: str, partition: int, count: int) -> Sent:
        fut = await producer.send_batch(batch, topic, partition=partition)
        return self._watch_delivery(fut, topic, count)

    async def _send_one(self, producer: Any, output: Output, topic: str, partition: int) -> Sent:
        fut = await producer.send(
            topic,
            output.value,
            key=output.key,
            partition=partition,
            timestamp_ms=output.timestamp_ms,
            headers=list(output.headers) or None,
        )
        return self._watch_delivery(fut, topic, 1)

    def _watch_delivery(self, fut: Any, topic: str, count: int) -> Sent:
        """at_least_once: a failed delivery crashes the worker, and a delivered changelog batch moves
        recovery's start. exactly_once: the lane awaits every delivery before it commits (a fenced
        one loses the partition, not the worker) and the commit moves recovery's start."""
        if self.exactly_once:
            return Sent(topic, count, fut)
        if topic == self._changelog:
            fut.add_done_callback(lambda done: self._on_changelog_delivered(done, count))
        return Sent(topic, count, fut)

    async def _partition_of(self, producer: Any, output: Output) -> int:
        """Topics written without an explicit partition (dead letters, templates, numbers): by key, as
        Kafka's default partitioner does (murmur2), on the topic's real partition count."""
        count = self._partition_counts.get(output.topic)
        if count is None:
            count = self._partition_counts[output.topic] = len(await producer.partitions_for(output.topic))
        return partition_for(output.key, count) if output.key is not None else 0

    def _track_webhook_acks(self, partition: int, next_offset: int, futures: list[Any]) -> None:
        """wa.webhooks progress counts once every output of the step is acknowledged, in order."""
        pending = [sum(1 for fut in futures if not fut.done())]
        queue = self._webhook_acks.setdefault(partition, deque())
        queue.append((next_offset, pending))

        def acked(_: Any) -> None:
            pending[0] -= 1
            self._advance_webhooks(partition)

        for fut in futures:
            if not fut.done():
                fut.add_done_callback(acked)
        self._advance_webhooks(partition)

    def _advance_webhooks(self, partition: int) -> None:
        queue = self._webhook_acks.get(partition)
        advanced = False
        while queue and queue[0][1][0] <= 0:
            self.aligner.webhooks_on_broker(partition, queue.popleft()[0], int(1000 * time.time()))
            advanced = True
        if advanced:
            self._wake.set()

    def _on_delivered(self, fut: Any) -> None:
        if fut.cancelled() or fut.exception() is None:
            return
        exc = fut.exception()
        log.critical("delivery failed after retries (%s); crashing so the offset is not committed", exc)
        self._crash(exc)

    def _on_changelog_delivered(self, fut: Any, count: int) -> None:
        if not fut.cancelled() and fut.exception() is None and count:
            # Recovery resumes reading the changelog after the batch's last offset.
            self.state.persisted(fut.result().topic_partition, fut.result().offset + count - 1)

    # -- ordering rounds --------------------------------------------------------------------------

    async def run_rounds(self) -> None:
        """Held requests: ask Kafka what they wait for, release them when it is applied or at the limit.

        A request the fast path (the consumer's next fetch response) has not resolved within
        ``_ROUND_GRACE_SECONDS`` gets a round: under traffic the next response comes first and no
        round is spent, when the gate is idle the round answers in one ListOffsets round trip. Rounds
        may overlap (up to ``_MAX_ROUNDS``). Cohorts still waiting for other workers' webhook progress
        are asked about again every ``_ROUND_RETRY_SECONDS``."""
        rounds: set[asyncio.Task[None]] = set()
        last_retry = 0.0
        try:
            while True:
                self._wake.clear()
                now = time.monotonic()
                oldest = self.aligner.oldest_arrival()
                if not self.pipeline.ready or self.app.rebalancing:
                    await asyncio.sleep(_ROUND_RETRY_SECONDS)  # nothing is decided meanwhile
                    continue
                await self._emit(self.pipeline.release(now))  # the hold limit, or what a budget left
                if self.pipeline.backlogged:
                    await asyncio.sleep(0)  # fetches, transactions and heartbeats get their turn
                    continue
                retry = self.aligner.has_waiting and now - last_retry >= _ROUND_RETRY_SECONDS
                due = oldest is not None and now - oldest >= _ROUND_GRACE_SECONDS
                if (due or retry) and len(rounds) < _MAX_ROUNDS:
                    plan = self.pipeline.plan_round(retry)
                    if plan is not None:
                        last_retry = now if retry else last_retry
                        task = asyncio.create_task(self._round(plan))
                        rounds.add(task)
                        task.add_done_callback(rounds.discard)
                        task.add_done_callback(lambda _: self._wake.set())  # a free slot
                        continue
                timeout = _IDLE_SECONDS
                expiry = self.aligner.next_expiry()
                if expiry is not None:
                    timeout = min(timeout, expiry - now)
                if self.aligner.has_waiting:
                    timeout = min(timeout, _ROUND_RETRY_SECONDS)
                if oldest is not None and len(rounds) < _MAX_ROUNDS:
                    timeout = min(timeout, oldest + _ROUND_GRACE_SECONDS - now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, timeout))
        finally:
            for task in rounds:
                task.cancel()

    async def _round(self, plan: RoundPlan) -> None:
        try:
            remote, webhook_ends, inbound_ends, remote_own = await self._read_round(plan)
        except Exception as exc:  # the broker may be away for a while: held requests wait, bounded
            log.warning("ordering round failed (%s); held requests wait and retry", type(exc).__name__)
            self.aligner.abandon_round(plan)
            await asyncio.sleep(_ROUND_RETRY_SECONDS)
            return
        await self._emit(
            self.pipeline.complete_round(
                plan, remote, webhook_ends, inbound_ends, time.monotonic(), remote_own
            )
        )
        if self.pipeline.backlogged:
            self._wake.set()

    async def _read_round(
        self, plan: RoundPlan
    ) -> tuple[dict[int, int], dict[int, int], dict[int, int], dict[int, int]]:
        remote: dict[int, int] = {}
        remote_own: dict[int, int] = {}
        if plan.remote_webhooks:  # read before the end offsets: what it shows is on the broker by then
            remote, remote_own = await self._group_committed(self.topo.webhooks.name, plan.remote_webhooks)
        webhooks, inbound = self.topo.webhooks.name, self.topo.inbound.name
        tps = [TopicPartition(webhooks, w) for w in plan.webhooks]
        tps += [TopicPartition(inbound, p) for p in plan.inbound]
        ends = await (await self._offsets()).end_offsets(tps)
        webhook_ends = {tp.partition: offset for tp, offset in ends.items() if tp.topic == webhooks}
        inbound_ends = {tp.partition: offset for tp, offset in ends.items() if tp.topic == inbound}
        return remote, webhook_ends, inbound_ends, remote_own

    async def _offsets(self) -> AIOKafkaConsumer:
        """A client of the rounds' own, on this event loop: Faust's consumer lives on another thread,
        and a hop there and back cost more than the ListOffsets request itself."""
        if self._offsets_client is None:
            client = AIOKafkaConsumer(
                **client_kwargs(self.settings),
                group_id=None,
                # Under exactly_once the last stable offsets: a transaction still open has not been
                # written yet (nothing waits for one that may never commit). The gate's own committed
                # transactions, whose markers may lag their commit, come in through own_committed and
                # the offset commits' metadata (_inbound_written).
                isolation_level="read_committed" if self.exactly_once else "read_uncommitted",
            )
            await client.start()
            self._offsets_client = client
        return self._offsets_client

    async def _group_committed(
        self, topic: str, partitions: list[int]
    ) -> tuple[dict[int, int], dict[int, int]]:
        """The group's committed offsets of ``partitions``, and where the wa.inbound records of the
        transactions that committed them end (their metadata)."""
        if self._admin is None:
            admin = AIOKafkaAdminClient(**client_kwargs(self.settings))
            await admin.start()
            self._admin = admin
        group = self.settings.faust_app_id
        wanted = [TopicPartition(topic, p) for p in partitions]
        # The group's coordinator is looked up once, not per round (a FindCoordinator per round was a
        # request per decision at low rates: wagate_kafka_requests_total showed it); asked again after
        # any failure, and when its answer lacks a partition asked for (a coordinator that moved).
        if self._group_coordinator is None:
            self._group_coordinator = await self._admin.find_coordinator(group)
        try:
            offsets = await self._admin.list_consumer_group_offsets(group, self._group_coordinator, wanted)
            if not set(wanted) <= offsets.keys():
                raise RuntimeError("the group coordinator's answer lacks partitions asked for")
        except Exception:
            self._group_coordinator = None
            raise
        own: dict[int, int] = {}
        for meta in offsets.values():
            for partition, next_offset in parse_inbound_ends(meta.metadata or "").items():
                own[partition] = max(next_offset, own.get(partition, 0))
        return {tp.partition: max(0, meta.offset) for tp, meta in offsets.items()}, own

    async def stop(self) -> None:
        if self.transactions is not None:
            try:
                await self.transactions.close()  # what was submitted is committed before the stop
            except Exception as exc:
                log.warning("transactions not all committed at stop (%s): redone after restart", exc)
        if self._admin is not None:
            await self._admin.close()
            self._admin = None
        if self._offsets_client is not None:
            await self._offsets_client.stop()
            self._offsets_client = None

    # -- window timetable and API ------------------------------------------------------------------

    async def _publish_window_events(
        self, partition: int, key: str, events: list[WindowEvent], marked: ContactState
    ) -> None:
        """The scheduler's events, and the state that marks them sent (the mark is written first,
        before anything is awaited: the state was read in this same step, so no write is lost)."""
        outputs: list[Output] = []
        self.processor.store(key, marked, partition, outputs)
        for event in events:
            self.processor.window_event(event, partition, outputs)
        if self.transactions is not None:
            self.transactions.submit(partition, outputs, {})
            return
        async with self._send_lock:
            await self._send_all(outputs)

    def readiness(self) -> dict[str, bool]:
        """What /ready reports: every check must hold for the worker to take traffic."""
        assigned = {
            tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == self.topo.requests.name
        }
        if self.transactions is not None:
            producers = assigned <= set(self.transactions.lanes) and self.transactions.failed is None
        else:
            producers = self.app.producer.started
        return {
            "recovered": not self.app.rebalancing and recovery_done(self.app),
            "registry_loaded": self.pipeline.ready,
            "producers_connected": bool(producers),
        }

    def _ownership(self) -> Ownership | None:
        """The state partitions this worker holds, or None while a rebalance or recovery runs (Faust
        resumes the flow while it still reads the changelog: only `rebalancing` covers recovery)."""
        if self.app.rebalancing or not self.app.flow_control.is_active():
            return None
        requests = self.topo.requests.name
        return Ownership(
            self.app.consumer_generation_id,
            frozenset(tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == requests),
        )

    def _scan(self, partition: int) -> Iterator[tuple[str, ContactState] | None]:
        for key, value in self.state.scan(partition):
            if key.startswith(OWN_KEY_PREFIX):  # the gate's own bookkeeping, not a contact
                self.processor.remember_portfolio(partition, key, value)
                yield None  # counted by the rebuild, which gives the event loop a turn now and then
                continue
            try:
                state = ContactState.from_bytes(value)
            except (ValueError, TypeError, AttributeError) as exc:
                # The gate wrote it, so a bug: logged without the contact (PII), the rebuild goes on.
                log.error(
                    "unreadable contact state on partition %d skipped: %s", partition, type(exc).__name__
                )
                continue
            yield key.decode(), state

    def window(self, key: str, asked_as: str | None = None) -> WindowReport | str:
        """The contact's window now; call it on the worker that holds the contact's partition. For an
        identifier known to be another name of a contact: that contact's canonical identifier, to be
        asked instead."""
        state = self.processor.load(key, partition_for(key, self.partitions))
        if state.alias_of is not None:
            return state.alias_of
        return window_report(key, state, self.clock(), self.rules, asked_as)


def _inbound_ends(sent: list[Sent], inbound: str) -> dict[int, int]:
    """Per wa.inbound partition, the offset past the acknowledged record batches of ``sent``."""
    ends: dict[int, int] = {}
    for item in sent:
        if item.topic != inbound or not item.future.done() or item.future.exception() is not None:
            continue
        meta = item.future.result()
        end = meta.offset + item.count
        if end > ends.get(meta.partition, 0):
            ends[meta.partition] = end
    return ends
