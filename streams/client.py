"""A small Kafka client for talking to a running gate: produce, wait until consumed, read decisions.

Used by ``wagate demo`` and the integration tests; upstream producers can copy it as an example.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.kafka_security import client_kwargs
from streams.settings import Settings
from streams.topology import Topology, topology


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: Any  # parsed JSON (None when the bytes are not JSON)
    raw: bytes | None = None


def _json(raw: bytes | None) -> Any:
    try:
        return None if raw is None else orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


class GateClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topo: Topology = topology(settings)
        self._producer: AIOKafkaProducer | None = None

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("use GateClient as `async with GateClient(settings) as client:`")
        return self._producer

    async def __aenter__(self) -> GateClient:
        # aiokafka binds to the running loop, so the producer is made here, not in __init__.
        # Idempotent: a batch retried after a broker's loss is written once (no duplicated requests).
        self._producer = AIOKafkaProducer(**client_kwargs(self.settings), acks="all", enable_idempotence=True)
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def produce(
        self, topic: str, key: str | bytes | None, value: Any, partition: int | None = None
    ) -> int:
        """Produce one record (dicts are JSON-encoded, bytes go as they are); returns its offset."""
        return (await self.produce_at(topic, key, value, partition))[1]

    async def produce_at(
        self, topic: str, key: str | bytes | None, value: Any, partition: int | None = None
    ) -> tuple[int, int]:
        """Produce one record; returns its (partition, offset)."""
        raw_key = key.encode() if isinstance(key, str) else key
        raw_value = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
        meta = await self.producer.send_and_wait(topic, raw_value, key=raw_key, partition=partition)
        return int(meta.partition), int(meta.offset)

    async def produce_bulk(self, records: Iterable[tuple[str, str | bytes | None, Any]]) -> None:
        """Produce many records as fast as the producer batches them; returns when all are acknowledged."""
        for topic, key, value in records:
            raw_key = key.encode() if isinstance(key, str) else key
            raw_value = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
            await self.producer.send(topic, raw_value, key=raw_key)
        await self.producer.flush()

    async def wait_consumed(self, topic: str, timeout: float = 60.0) -> None:
        """Wait until the gate's consumer group has committed everything now in ``topic``."""
        admin = AIOKafkaAdminClient(**client_kwargs(self.settings))
        probe = AIOKafkaConsumer(**client_kwargs(self.settings), isolation_level="read_committed")
        await admin.start()
        await probe.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(self.settings.partitions)]
            ends = await probe.end_offsets(partitions)
            deadline = time.monotonic() + timeout
            while True:
                committed = await admin.list_consumer_group_offsets(self.settings.faust_app_id)
                if all(
                    ends[tp] == 0 or (tp in committed and committed[tp].offset >= ends[tp])
                    for tp in partitions
                ):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the gate did not consume {topic} within {timeout:.0f} s: is it running?"
                    )
                await asyncio.sleep(0.2)
        finally:
            await probe.stop()
            await admin.close()

    def _reader(self, topics: Iterable[str]) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            *topics,
            **client_kwargs(self.settings),
            auto_offset_reset="earliest",
            group_id=None,
            isolation_level="read_committed",  # the gate's outputs are transactional (exactly_once)
        )

    async def read(self, topics: Iterable[str], until: Any, timeout: float = 60.0) -> list[Record]:
        """Read ``topics`` from the start until ``until(records)`` is true; TimeoutError otherwise."""
        consumer = self._reader(topics)
        await consumer.start()
        records: list[Record] = []
        try:
            deadline = time.monotonic() + timeout
            while not until(records):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"condition not met within {timeout:.0f} s ({len(records)} records read)"
                    )
                batches = await consumer.getmany(timeout_ms=200)
                for tp, msgs in batches.items():
                    for m in msgs:
                        records.append(
                            Record(tp.topic, tp.partition, m.offset, m.key, _json(m.value), m.value)
                        )
            return records
        finally:
            await consumer.stop()

    async def read_to_end(self, topics: Iterable[str], timeout: float = 60.0) -> list[Record]:
        """Everything in ``topics`` up to their current end offsets (by the reader's position: the
        last offsets of transactional topics are commit markers, which hold no record)."""
        names = list(topics)
        consumer = self._reader(names)
        await consumer.start()
        records: list[Record] = []
        try:
            partitions = [TopicPartition(name, p) for name in names for p in range(self.settings.partitions)]
            ends = await consumer.end_offsets(partitions)
            deadline = time.monotonic() + timeout
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                for tp, msgs in batches.items():
                    records.extend(
                        Record(tp.topic, tp.partition, m.offset, m.key, _json(m.value), m.value) for m in msgs
                    )
                positions = {tp: await consumer.position(tp) for tp, end in ends.items() if end}
                if all(positions[tp] >= ends[tp] for tp in positions):
                    return records
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"not read to the end within {timeout:.0f} s ({len(records)} records read)"
                    )
        finally:
            await consumer.stop()

    async def decisions(self, request_ids: Iterable[str], timeout: float = 60.0) -> dict[str, list[Record]]:
        """All decisions for ``request_ids`` (each id at least once), by request id."""
        wanted = set(request_ids)

        def done(records: list[Record]) -> bool:
            return wanted <= {r.value.get("request_id") for r in records}

        topo = self.topo
        records = await self.read([topo.send.name, topo.template.name, topo.rejected.name], done, timeout)
        by_id: dict[str, list[Record]] = {rid: [] for rid in wanted}
        for record in records:
            rid = record.value.get("request_id")
            if rid in by_id:
                by_id[rid].append(record)
        return by_id
