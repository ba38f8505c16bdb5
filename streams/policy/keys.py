"""Contact keys and Kafka's default (murmur2) partitioner, in pure Python.

The gate checks every record's partition against these, so that it never decides on a partition
that does not hold the contact's state (contract section 1).
"""

from __future__ import annotations

import functools
import re
import struct

# Meta: "a two-letter ISO country code, a period, and up to 128 alphanumeric characters"; a parent
# BSUID has ENT between them (US.ENT.11815799212886844830), though Meta's own example payloads also
# show parent ids without it: kinds come from the field that gave an identifier, not from its form.
_BSUID = re.compile(r"^[A-Z]{2}\.(ENT\.)?[A-Za-z0-9]{1,128}$")


def is_business_scoped(identifier: str) -> bool:
    """A BSUID or parent BSUID by its form: the Cloud API takes it as ``recipient``, not ``to``."""
    return _BSUID.match(identifier) is not None


def contact_key(phone_number_id: str, user: str, group_id: str | None = None) -> str:
    if group_id:
        return f"{phone_number_id}:group:{group_id}"
    return f"{phone_number_id}:{user}"


def request_contact_key(phone_number_id: str, to: str, recipient_type: str) -> str:
    return contact_key(phone_number_id, to, to if recipient_type == "group" else None)


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (org.apache.kafka.common.utils.Utils.murmur2), as a signed 32-bit int."""
    length = len(data)
    m = 0x5BD1E995
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    length4 = length // 4
    # All 4-byte little-endian words at once: this runs for every record, twice as fast as byte maths.
    for k in struct.unpack_from(f"<{length4}I", data):
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        h = ((h * m) & 0xFFFFFFFF) ^ ((k * m) & 0xFFFFFFFF)
    extra = length % 4
    tail = length4 * 4
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - 0x100000000 if h & 0x80000000 else h


def partition_for(key: str | bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java client, aiokafka) gives a keyed record."""
    return _partition_for(key.encode() if isinstance(key, str) else key, partitions)


# A contact's key is hashed for each of its records (the request, its decision, its state write): the
# recently active contacts' partitions are kept (a hit costs a tenth of hashing in Python).
@functools.lru_cache(maxsize=1 << 16)
def _partition_for(raw: bytes, partitions: int) -> int:
    return (murmur2(raw) & 0x7FFFFFFF) % partitions
