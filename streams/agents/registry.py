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

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from streams.kafka_security import client_kwargs
from streams.metrics import GateMetrics
from streams.models import ContactRecord, NumberRecord, TemplateRecord
from streams.policy.templates import Registry
from streams.settings import Settings
from streams.topology import Topology

log = logging.getLogger(__name__)


class RegistryFollower:
    def __init__(self, settings: Settings, topo: Topology, registry: Registry, metrics: GateMetrics) -> None:
        self.settings = settings
        self.topo = topo
        self.registry = registry
        self.metrics = metrics
        self.loaded = asyncio.Event()

    def _apply(self, topic: str, value: bytes | None) -> None:
        if value is None:
            return
        try:
            if topic == self.topo.templates.name:
                self.registry.apply(TemplateRecord.model_validate_json(value))
            elif topic == self.topo.contacts.name:
                record = ContactRecord.model_validate_json(value)
                self.registry.learn_contact(record.phone_number_id, record.identifier, record.contact)
            else:
                number = NumberRecord.model_validate_json(value)
                self.registry.learn_number(number.phone_number_id, number.waba_id)
        except ValidationError:
            # Someone else's bad record on a shared topic must not stop the gate; it is skipped, counted.
            self.metrics.registry_skipped.labels(topic.removeprefix(self.topo.prefix)).inc()
            log.warning("skipped an unreadable record on %s", topic)

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
            partitions = [TopicPartition(n, p) for n in names for p in range(self.settings.partitions)]
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
                        self._apply(tp.topic, record.value)
                    if tp in pending and records[-1].offset + 1 >= ends[tp]:
                        pending.discard(tp)
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:  # compaction can leave the end unread
                        pending.discard(tp)
        finally:
            await consumer.stop()
