"""A 3-broker KRaft cluster on 127.0.0.1 (replication 3, min.insync.replicas 2): one broker is killed
mid-run and restarted while the gate decides."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import start_and_wait
from .harness import KAFKA_SH, Gate, free_port
from .test_restart import _check, _load, _Trickle, _wait_for_some


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


def test_a_broker_killed_mid_run_and_restarted_loses_nothing(
    cluster: Cluster, workdir: Path, record_property: Callable[[str, object], None]
) -> None:
    gate = Gate(cluster.bootstrap, workdir, replication=3, min_insync=2)
    pnid = "cluster"
    start_and_wait(gate, timeout=180)
    ids = _load(gate, pnid)
    trickle = _Trickle(gate, pnid)
    trickle.start()
    try:
        _wait_for_some(gate, ids, 300)
        cluster.run("node-kill", str(cluster.data), "2")
        time.sleep(8)  # two brokers left: min.insync.replicas 2 still takes writes
        cluster.run("node-start", str(cluster.data), "2")
        time.sleep(5)
    finally:
        trickle.halt.set()
        trickle.join()
    try:
        outcome = _check(gate, pnid, ids + trickle.ids)
    finally:
        gate.worker.stop()
    record_property("broker_loss_duplicate_decisions", outcome["duplicates"])
    print(
        f"\nBroker killed and restarted: {len(ids) + len(trickle.ids)} requests, each decided with one send; "
        f"{outcome['duplicates']} duplicate_request rejections"
    )
