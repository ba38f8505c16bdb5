"""Every worker's copy of the template registry: ``wa.templates``, ``wa.numbers`` and ``wa.contacts``
read whole.

Templates are few and every worker needs all of them (any request may name any template), so each
worker reads the compacted topics from the start with a plain consumer outside the group, then
follows them. ``wa.contacts`` lets the normalizer address an event that names a user only by a BSUID
to the contact it belongs to at once (its partition's state says so too, a hop later). Agents wait
for the first full read before deciding anything: a decision made on a half-loaded registry would
call a known template unknown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from streams.admin import partition_counts
from streams.core.records import InputRecord
from streams.kafka_security import client_kwargs
from streams.metrics import GateMetrics
from streams.models import ContactRecord, NumberRecord, TemplateRecord
from streams.policy.templates import Registry
from streams.settings import Settings
from streams.topology import Topology

log = logging.getLogger(__name__)


# A record of a compacted topic the registry cannot use: (the record, what is wrong with it).
DeadLetterSink = Callable[[InputRecord, str], Awaitable[None]]


class RegistryFollower:
    def __init__(
        self,
        settings: Settings,
        topo: Topology,
        registry: Registry,
        metrics: GateMetrics,
        dead_letter: DeadLetterSink | None = None,
    ) -> None:
        self.settings = settings
        self.topo = topo
        self.registry = registry
        self.metrics = metrics
        self.dead_letter = dead_letter
        self.loaded = asyncio.Event()

    def _apply(self, topic: str, value: bytes | None) -> str | None:
        """Apply one record; what is wrong with it when it cannot be used (it is then skipped)."""
        if value is None:
            return None
        try:
            if topic == self.topo.templates.name:
                self.registry.apply(TemplateRecord.model_validate_json(value))
            elif topic == self.topo.contacts.name:
                record = ContactRecord.model_validate_json(value)
                self.registry.learn_contact(record.phone_number_id, record.identifier, record.contact)
            else:
                number = NumberRecord.model_validate_json(value)
                self.registry.learn_number(number.phone_number_id, number.waba_id)
        except ValidationError as exc:
            return _validation_summary(topic.removeprefix(self.topo.prefix), exc)
        except Exception as exc:  # a compacted topic is read again at every start: never crash on one
            name = topic.removeprefix(self.topo.prefix)
            return f"{name} record not applied: internal error {type(exc).__name__}"
        return None

    async def _skip(self, record: InputRecord, error: str) -> None:
        """Someone else's bad record on a shared compacted topic: it must not stop the gate (it would at
        every restart, on every worker). Skipped, counted, and dead-lettered with its position."""
        self.metrics.registry_skipped.labels(record.topic.removeprefix(self.topo.prefix)).inc()
        log.warning(
            "skipped an unusable record on %s[%d]@%d: %s",
            record.topic,
            record.partition,
            record.offset,
            error,
        )
        if self.dead_letter is not None:
            try:
                await self.dead_letter(record, error)
            except Exception as exc:  # the broker may be away: the count and the log line remain
                log.warning("could not dead-letter the skipped record (%s)", type(exc).__name__)

    async def run(self) -> None:
        names = [self.topo.templates.name, self.topo.numbers.name, self.topo.contacts.name]
        consumer = AIOKafkaConsumer(
            **client_kwargs(self.settings),
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",  # template records come from the gate's transactions
        )
        await consumer.start()
        try:
            counts = await partition_counts(self.settings, names)  # not WAGATE_PARTITIONS: their own
            partitions = [TopicPartition(n, p) for n in names for p in range(counts[n])]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            pending = {tp for tp, end in ends.items() if end > 0}
            started = time.monotonic()
            while True:
                if not pending and not self.loaded.is_set():
                    self.loaded.set()
                    log.info(
                        "template registry loaded: %d templates, %d numbers, %d aliases in %.1f s",
                        len(self.registry.templates),
                        len(self.registry.numbers),
                        len(self.registry.aliases),
                        time.monotonic() - started,
                    )
                batches = await consumer.getmany(timeout_ms=500)
                for tp, records in batches.items():
                    for record in records:
                        error = self._apply(tp.topic, record.value)
                        if error is not None:
                            await self._skip(record, error)
                    if tp in pending and records[-1].offset + 1 >= ends[tp]:
                        pending.discard(tp)
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:  # compaction can leave the end unread
                        pending.discard(tp)
        finally:
            await consumer.stop()


def _validation_summary(topic: str, exc: ValidationError) -> str:
    """Which fields are wrong and why, without their values (they may hold phone numbers)."""
    problems = "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'record'}: {error['msg']}"
        for error in exc.errors()
    )
    return f"{topic} record not applied: {problems}"
