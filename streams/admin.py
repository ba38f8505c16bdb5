"""Create the gate's topics up front, and refuse to run on co-partitioned topics that disagree."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.kafka_security import client_kwargs
from streams.settings import Settings
from streams.topology import TopicSpec, Topology


class TopologyError(RuntimeError):
    pass


async def _describe_partitions(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    described = await admin.describe_topics(names)
    return {item["topic"]: len(item["partitions"]) for item in described if item.get("error_code", 0) == 0}


async def partition_counts(settings: Settings, names: list[str]) -> dict[str, int]:
    """Each topic's real partition count (topics other tools create may not follow WAGATE_PARTITIONS)."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings), request_timeout_ms=30_000)
    await admin.start()
    try:
        return await _wait_for_metadata(admin, names)
    finally:
        await admin.close()


async def ensure_topics(settings: Settings, topo: Topology) -> list[str]:
    """Create missing topics (with the settings' replication and min ISR); return the names created.
    Raises TopologyError on a partition mismatch."""
    replication_factor, min_insync_replicas = settings.replication_factor, settings.min_insync_replicas
    admin = AIOKafkaAdminClient(**client_kwargs(settings), request_timeout_ms=30_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        specs = topo.all()
        missing = [spec for spec in specs if spec.name not in existing]
        created: list[str] = []
        if missing:
            # A concurrent creator may win the race; the partition check below still applies.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [_new_topic(spec, replication_factor, min_insync_replicas) for spec in missing]
                )
            created = [spec.name for spec in missing]
        # One answer for both: a second describe may reach a broker of the cluster that has not seen
        # the new topics yet (a 3-broker cluster answered "unknown" right after the first said all).
        actual = await _wait_for_metadata(admin, [spec.name for spec in specs])
        wrong = {
            spec.name: actual.get(spec.name)
            for spec in specs
            if spec.copartitioned and actual.get(spec.name) != spec.partitions
        }
        if wrong:
            found = ", ".join(f"{name} has {count}" for name, count in sorted(wrong.items()))
            raise TopologyError(
                "topics processed or written by partition number must all have WAGATE_PARTITIONS="
                f"{topo.inbound.partitions} partitions ({', '.join(copartitioned_names(topo))}); "
                f"{found}: set WAGATE_PARTITIONS to match, or use a new WAGATE_TOPIC_PREFIX"
            )
        return created
    finally:
        await admin.close()


def copartitioned_names(topo: Topology) -> list[str]:
    return [spec.name for spec in topo.all() if spec.copartitioned]


def _new_topic(spec: TopicSpec, replication_factor: int, min_insync_replicas: int | None) -> NewTopic:
    configs = {"cleanup.policy": "compact"} if spec.compacted else {}
    if min_insync_replicas is not None:
        # With acks=all a write needs this many replicas: one broker lost still takes writes (3, 2).
        configs["min.insync.replicas"] = str(min_insync_replicas)
    return NewTopic(
        name=spec.name,
        num_partitions=spec.partitions,
        replication_factor=replication_factor,
        topic_configs=configs,
    )


async def _wait_for_metadata(
    admin: AIOKafkaAdminClient, names: list[str], timeout: float = 30.0
) -> dict[str, int]:
    """Partition counts of ``names`` from the first answer that shows them all."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = await _describe_partitions(admin, names)
        if all(found.get(name) for name in names):
            return found
        if loop.time() > deadline:
            raise TopologyError(
                f"topics not visible after {timeout:.0f} s: {sorted(set(names) - set(found))}"
            )
        await asyncio.sleep(0.2)
