from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import Broker, Gate, Worker, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """KAFKA_BOOTSTRAP_SERVERS if set; otherwise the embedded broker, started once for the session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    broker = Broker(tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gate")


def start_and_wait(gate: Gate, timeout: float = 90.0) -> None:
    """Start the worker and wait until it decides a probe request."""
    gate.worker.start()
    probe = f"probe-{uuid.uuid4().hex[:6]}"
    gate.produce(
        gate.topo.requests.name,
        "probe:x",
        {
            "request_id": probe,
            "phone_number_id": "probe",
            "to": "x",
            "origin": "api",
            "message": {"type": "text", "text": {"body": "probe"}},
        },
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            gate.decision(probe, timeout=5)
            return
        except TimeoutError:
            if not gate.worker.alive() or time.monotonic() > deadline:
                gate.worker.dump_stacks()
                gate.worker.stop()
                pytest.fail(f"the worker did not become ready:\n{gate.worker.log_tail()}")


@pytest.fixture(scope="session")
def gate(bootstrap: str, workdir: Path) -> Iterator[Gate]:
    """One worker shared by the scenario tests; each test isolates itself by phone_number_id."""
    shared = Gate(bootstrap, workdir)
    start_and_wait(shared)
    yield shared
    shared.worker.stop()


@pytest.fixture
def pnid() -> str:
    return f"pn{uuid.uuid4().hex[:10]}"


def inbound(
    pnid: str,
    user: str,
    ts: float,
    *,
    kind: str = "message",
    type: str = "text",
    event_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "event_id": event_id or f"wamid.{uuid.uuid4().hex}",
        "phone_number_id": pnid,
        "user": user,
        "timestamp": ts,
        "kind": kind,
        "type": type,
        **extra,
    }


def text_request(pnid: str, to: str, request_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "phone_number_id": pnid,
        "to": to,
        "origin": "agent",
        "message": {"type": "text", "text": {"body": "hello"}},
        "created_at": time.time(),
        **extra,
    }


@pytest.fixture
def two_workers(bootstrap: str, workdir: Path) -> Iterator[tuple[Gate, Worker]]:
    """A gate with two workers on its partitions (each started, the second ready)."""
    gate = Gate(bootstrap, workdir)
    start_and_wait(gate)
    settings = gate.settings.model_copy(
        update={"data_dir": workdir / gate.prefix / "second", "web_port": free_port()}
    )
    second = Worker(settings, workdir / f"{gate.prefix}second.log")
    second.start()
    try:
        second.wait_for_log("Worker ready", timeout=120)
        yield gate, second
    finally:
        second.stop()
        gate.worker.stop()
