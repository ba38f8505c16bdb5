"""What the pipeline core takes and gives: records, outputs, state access, the work of one step."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol


class Source(Enum):
    """The input topics the pipeline owns (co-partitioned, assigned together by the consumer group)."""

    INBOUND = "inbound"
    REQUESTS = "requests"
    WEBHOOKS = "webhooks"


class InputRecord(Protocol):
    """What the core reads of a Kafka record: aiokafka's ConsumerRecord has these attributes."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...  # milliseconds
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True, slots=True)
class Record:
    """A plain InputRecord, for tests and for records the core builds itself."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


class StateStore(Protocol):
    """Contact state by explicit partition (RocksDB in a worker, a dict in unit tests). Putting an
    empty value deletes the key: a read then finds nothing (None, or the empty value)."""

    def get(self, partition: int, key: bytes) -> bytes | None: ...
    def put(self, partition: int, key: bytes, value: bytes) -> None: ...


@dataclass(slots=True)  # (not frozen: built for every record produced, and frozen init costs ~2 µs)
class Output:
    """One record to produce. ``partition`` None lets the producer's partitioner choose."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    timestamp_ms: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(slots=True)
class Step:
    """The work of one call into the pipeline: produce the outputs, then the input offsets in ``done``
    are processed (committable). ``webhooks_done`` names the wa.webhooks partitions whose bodies up to
    the offset are normalized: once these outputs are on the broker, requests may count on them.

    Outputs are kept by the input partition whose records made them (``by_partition``): under
    exactly-once each input partition's outputs and offsets go into that partition's transaction."""

    by_partition: dict[int, list[Output]] = field(default_factory=dict)
    done: dict[tuple[Source, int], int] = field(default_factory=dict)  # (source, partition) -> next offset
    webhooks_done: dict[int, int] = field(default_factory=dict)

    def out(self, partition: int) -> list[Output]:
        """Where the outputs made from input partition ``partition``'s records go."""
        outputs = self.by_partition.get(partition)
        if outputs is None:
            outputs = self.by_partition[partition] = []
        return outputs

    @property
    def outputs(self) -> list[Output]:
        return [output for outputs in self.by_partition.values() for output in outputs]

    def partitions(self) -> set[int]:
        """Every input partition with outputs or offsets in this step."""
        return {p for p, outputs in self.by_partition.items() if outputs} | {p for _, p in self.done}

    def __bool__(self) -> bool:
        return bool(any(self.by_partition.values()) or self.done or self.webhooks_done)
