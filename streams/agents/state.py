"""Contact state access by explicit partition.

Faust's RocksDB store picks the partition database from the ambient ``current_event()``. Inside a
batch (``take_events``) that is the last event buffered, not the one being decided, so a batched
agent going through ``table[key]`` would read and write the wrong partition's database. Here the
partition is always the record's own, passed in explicitly.
"""

from __future__ import annotations

from typing import Any


class PartitionedState:
    def __init__(self, table: Any) -> None:
        self.table = table

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

    def persisted(self, topic_partition: Any, offset: int) -> None:
        # Recovery resumes reading the changelog after this offset (what Faust does for its own writes).
        self.table.data.set_persisted_offset(topic_partition, offset)
