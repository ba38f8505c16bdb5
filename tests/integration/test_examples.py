"""examples/ run against the embedded broker as a user would run them: send intents from
confluent-kafka (librdkafka) land on their contact's partition and get decisions, which the
read_committed example consumer prints. And why the partitioner setting matters."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka import Producer

from streams.policy.keys import partition_for

from .conftest import inbound, start_and_wait
from .harness import ROOT, Gate

EXAMPLES = ROOT / "examples"


def _example(*args: str, timeout: float = 60) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_examples_publish_on_the_right_partition_and_read_the_decisions(
    bootstrap: str, workdir: Path
) -> None:
    gate = Gate(bootstrap, workdir)
    start_and_wait(gate)
    try:
        pnid = f"pn{uuid.uuid4().hex[:6]}"
        users = [f"4915{n:07d}" for n in range(12)]
        gate.produce(gate.topo.inbound.name, f"{pnid}:{users[0]}", inbound(pnid, users[0], time.time() - 60))
        gate.wait_consumed(gate.topo.inbound.name)
        to = [arg for user in users for arg in ("--to", user)]
        request_ids = _example(
            "send_intents.py",
            "--bootstrap",
            bootstrap,
            "--prefix",
            gate.prefix,
            "--phone-number-id",
            pnid,
            *to,
        )
        assert len(request_ids) == len(users)
        decided = gate.decisions(request_ids)
        # Every intent was on its contact's partition: decided where it was written, none re-produced.
        requests = [
            r for r in gate.read_all(gate.topo.requests.name) if r.value.get("phone_number_id") == pnid
        ]
        assert {r.partition for r in requests if r.key} and all(
            r.partition == partition_for(r.key, gate.settings.partitions) for r in requests if r.key
        )
        assert gate.worker.metric_sum("wagate_repartitioned_total") == 0
        routes = [decided[rid][0].value["route"] for rid in request_ids]
        assert routes[0] == "send"  # the user who wrote
        assert set(routes[1:]) == {"template"}  # the others get the fallback template
        printed = _example(
            "read_decisions.py",
            "--bootstrap",
            bootstrap,
            "--prefix",
            gate.prefix,
            "--group",
            f"example-{uuid.uuid4().hex[:6]}",
            "--timeout",
            "5",
        )
        lines = [orjson.loads(line) for line in printed if line.startswith("{")]
        assert {line["request_id"] for line in lines} >= set(request_ids)
    finally:
        gate.worker.stop()


def test_librdkafkas_default_partitioner_puts_contacts_on_other_partitions(
    bootstrap: str, workdir: Path
) -> None:
    """The control: what the README warns about. Without partitioner=murmur2_random, librdkafka places
    many contact keys elsewhere than the gate's state for them."""
    gate = Gate(bootstrap, workdir)
    producer = Producer({"bootstrap.servers": bootstrap})  # librdkafka defaults: consistent_random (CRC32)
    placed: dict[str, int] = {}

    def delivered(err: object, message: object) -> None:
        placed[message.key().decode()] = message.partition()  # type: ignore[attr-defined]

    for n in range(40):
        producer.produce(gate.topo.requests.name, key=f"pn:4915{n:07d}", value=b"{}", on_delivery=delivered)
    assert producer.flush(30) == 0
    elsewhere = [key for key, partition in placed.items() if partition != partition_for(key.encode(), 4)]
    assert len(placed) == 40 and len(elsewhere) >= 10, elsewhere
