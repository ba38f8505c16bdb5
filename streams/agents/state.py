"""Contact state access by explicit partition.

Faust's RocksDB store picks the partition database from the ambient ``current_event()``. Inside a
batch (``take_events``) that is the last event buffered, not the one being decided, so a batched
agent going through ``table[key]`` would read and write the wrong partition's database. Here the
partition is always the record's own, passed in explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

# Faust keeps its own bookkeeping (the changelog offset) in each partition database under this prefix.
_FAUST_KEY_PREFIX = b"__faust"


class PartitionedState:
    def __init__(self, table: Any, partition_of: Callable[[bytes], int]) -> None:
        self.table = table
        self.partition_of = partition_of  # key bytes -> partition, for the memory store's scan

    def get(self, partition: int, key: bytes) -> bytes | None:
        store = self.table.data
        if hasattr(store, "_db_for_partition"):  # RocksDB: one database per partition
            value: bytes | None = store._db_for_partition(partition).get(key)
            return value
        return store.get(key)  # type: ignore[no-any-return]  # memory store (unit tests only)

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        store = self.table.data
        if hasattr(store, "_db_for_partition"):
            store._db_for_partition(partition).put(key, value)
            store._key_index[key] = partition  # what Store._set records, for reads outside a stream
        else:
            store[key] = value

    def scan(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of one partition, as of when the scan starts (a RocksDB iterator)."""
        store = self.table.data
        if hasattr(store, "_db_for_partition"):
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
