from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from streams.policy.keys import contact_key, murmur2, partition_for, request_contact_key


@given(st.binary(max_size=64))
def test_murmur2_matches_aiokafka(data: bytes) -> None:
    assert murmur2(data) & 0xFFFFFFFF == aiokafka_murmur2(data) & 0xFFFFFFFF


@given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=64))
def test_partition_matches_the_default_partitioner(key: str, partitions: int) -> None:
    expected = DefaultPartitioner()(key.encode(), list(range(partitions)), list(range(partitions)))
    assert partition_for(key, partitions) == expected


def test_kafka_reference_vectors() -> None:
    # From Kafka's UtilsTest.testMurmur2.
    assert murmur2(b"21") == -973932308
    assert murmur2(b"foobar") == -790332482
    assert murmur2(b"a-little-bit-long-string") == -985981536


def test_contact_keys() -> None:
    assert contact_key("pn", "972") == "pn:972"
    assert contact_key("pn", "972", "g1") == "pn:group:g1"
    assert request_contact_key("pn", "g1", "group") == "pn:group:g1"
    assert request_contact_key("pn", "US.1", "individual") == "pn:US.1"
