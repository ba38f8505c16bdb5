"""A 3-broker KRaft cluster on 127.0.0.1 (replication 3, min.insync.replicas 2): one broker is killed
mid-run and restarted while the gate decides and the webhook receiver takes bodies."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import start_and_wait
from .harness import KAFKA_SH, Gate, free_port
from .test_receiver import Receiver
from .test_restart import _check, _load, _Trickle, _wait_for_some
from .test_webhooks import envelope, user_message


def _three_free_ports() -> int:
    for _ in range(50):
        base = free_port()
        try:
            for offset in (1, 2):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
    raise RuntimeError("no three consecutive free ports on 127.0.0.1")


@dataclass
class Cluster:
    data: Path
    env: dict[str, str]
    bootstrap: str

    def run(self, *args: str) -> None:
        subprocess.run([str(KAFKA_SH), *args], env=self.env, check=True, timeout=180)


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    data = tmp_path_factory.mktemp("cluster")
    port, controller = _three_free_ports(), _three_free_ports()
    env = dict(os.environ, KAFKA_PORT=str(port), KAFKA_CONTROLLER_PORT=str(controller), KAFKA_HEAP="384m")
    started = Cluster(data, env, ",".join(f"127.0.0.1:{port + n}" for n in range(3)))
    started.run("cluster-start", str(data))
    try:
        yield started
    finally:
        subprocess.run([str(KAFKA_SH), "cluster-stop", str(data)], env=env, check=False, timeout=180)


class _Poster(threading.Thread):
    """Posts a signed webhook body (one user message, a user of its own) every 20 ms, as Meta would,
    and remembers what the receiver answered for each."""

    def __init__(self, receiver: Receiver, pnid: str) -> None:
        super().__init__(daemon=True)
        self.receiver, self.pnid = receiver, pnid
        self.answers: dict[str, int] = {}  # user -> HTTP status
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            user = f"hook{n}"
            body = envelope(self.pnid, messages=[user_message(user, time.time())])
            try:
                self.answers[user] = self.receiver.post(body)[0]
            except OSError:
                self.answers[user] = 0  # no answer: Meta retries it
            n += 1
            time.sleep(0.02)


def test_a_broker_killed_mid_run_and_restarted_loses_nothing(
    cluster: Cluster, workdir: Path, record_property: Callable[[str, object], None]
) -> None:
    gate = Gate(cluster.bootstrap, workdir, replication=3, min_insync=2)
    pnid = "cluster"
    start_and_wait(gate, timeout=180)
    receiver = Receiver(cluster.bootstrap, gate.prefix, workdir / f"{gate.prefix}receiver.log")
    ids = _load(gate, pnid)
    trickle = _Trickle(gate, pnid)
    poster = _Poster(receiver, pnid)
    trickle.start()
    poster.start()
    try:
        _wait_for_some(gate, ids, 300)
        cluster.run("node-kill", str(cluster.data), "2")
        time.sleep(8)  # two brokers left: min.insync.replicas 2 still takes writes
        cluster.run("node-start", str(cluster.data), "2")
        time.sleep(5)
    finally:
        trickle.halt.set()
        poster.halt.set()
        trickle.join()
        poster.join()
        receiver.stop()
    try:
        outcome = _check(gate, pnid, ids + trickle.ids)
        accepted = {user for user, status in poster.answers.items() if status == 200}
        # Every body answered 200 is on wa.webhooks and was normalized into wa.inbound by the gate.
        gate.wait_consumed(gate.topo.webhooks.name, timeout=120)
        gate.wait_consumed(gate.topo.inbound.name, timeout=120)
        normalized = {
            record.value.get("user") for record in gate.read_all(gate.topo.inbound.name) if record.value
        }
    finally:
        gate.worker.stop()
    lost = accepted - normalized
    refused = len(poster.answers) - len(accepted)
    record_property("broker_loss_duplicate_decisions", outcome["duplicates"])
    record_property("broker_loss_webhook_bodies_lost", len(lost))
    print(
        f"\nBroker killed and restarted: {len(ids) + len(trickle.ids)} requests, each decided with one send; "
        f"{outcome['duplicates']} decided twice ({outcome['input_copies']} requests the test's producer "
        f"wrote twice, each decided once per copy); webhook bodies: {len(accepted)} answered 200, "
        f"{refused} refused (503, Meta retries), {len(lost)} of the 200s lost"
    )
    assert len(accepted) > 100
    assert lost == set()
    assert outcome["duplicates"] == 0  # exactly_once: a read_committed reader sees one decision each
