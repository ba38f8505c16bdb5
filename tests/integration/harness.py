"""Real broker, real worker processes: the pieces the integration tests are built from."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer

from streams.admin import ensure_topics
from streams.client import GateClient, Record
from streams.settings import Settings
from streams.topology import topology

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"
WINDOW_API_TOKEN = "window-api-token-for-tests"  # every test worker's WAGATE_WINDOW_API_TOKEN
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PacedLoad(threading.Thread):
    """A load generator on a thread of its own: ``tick`` is called ``ticks_per_second`` times a second
    with one idempotent producer, until ``halt`` is set. ``expected`` maps each request id written to
    the reason the test's model expects; an error ends the run and is kept for the test to raise."""

    def __init__(self, bootstrap: str, ticks_per_second: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.period = 1 / ticks_per_second
        self.expected: dict[str, str] = {}
        self.started_at = self.stopped_at = 0.0  # wall clock: the first tick, the end of the run
        self.halt = threading.Event()
        self.error: BaseException | None = None

    async def tick(self, producer: AIOKafkaProducer, n: int) -> None:
        raise NotImplementedError

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    async def _run(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True, linger_ms=2
        )
        await producer.start()
        self.started_at = time.time()
        try:
            n = 0
            while not self.halt.is_set():
                started = time.monotonic()
                await self.tick(producer, n)
                n += 1
                await asyncio.sleep(max(0.0, self.period - (time.monotonic() - started)))
        finally:
            self.stopped_at = time.time()
            await producer.stop()


class Broker:
    """The embedded Apache Kafka broker, started from the Maven-fetched jars, stopped by its PID."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = dict(os.environ, KAFKA_PORT=str(self.port), KAFKA_CONTROLLER_PORT=str(free_port()))

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        subprocess.run([str(KAFKA_SH), "start", str(self.data_dir)], env=self.env, check=True)

    def stop(self) -> None:
        subprocess.run([str(KAFKA_SH), "stop", str(self.data_dir)], env=self.env, check=False)


class Worker:
    """One ``wagate worker`` process."""

    def __init__(self, settings: Settings, log_path: Path, **env: str) -> None:
        self.settings = settings
        self.log_path = log_path
        self.env = dict(
            os.environ,
            KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
            WAGATE_TOPIC_PREFIX=settings.topic_prefix,
            WAGATE_DATA_DIR=str(settings.data_dir),
            WAGATE_PARTITIONS=str(settings.partitions),
            WAGATE_WEB_PORT=str(settings.web_port),
            WAGATE_LOG_LEVEL="info",
            WAGATE_WINDOW_API_TOKEN=WINDOW_API_TOKEN,
            **({"WAGATE_ADMIN_PORT": str(settings.admin_port)} if settings.admin_port else {}),
            **env,
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int, wait: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(wait)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.signal(signal.SIGTERM, wait=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log_path.read_text(errors="replace"):
            if not self.alive() or time.monotonic() > deadline:
                raise AssertionError(f"worker never logged {text!r}:\n{self.log_tail()}")
            time.sleep(0.2)

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.settings.admin_port or self.settings.web_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    def metric_sum(self, name: str) -> float:
        """Sum of every sample of one metric on this worker's /metrics page."""
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in self.metrics_text().splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")
        )

    def dump_stacks(self) -> None:
        """Ask the worker to log every thread's and asyncio task's stack (mode's SIGUSR1 handler)."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(2)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def wagate(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the `wagate` CLI as a person would, with extra environment variables."""
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=dict(os.environ, **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Topics:
    """The gate's topics under one prefix, created up front as a deployment does; a synchronous client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.prefix = settings.topic_prefix
        self.topo = topology(settings)
        run(ensure_topics(settings, self.topo))

    def _with_client(self, use: Callable[[GateClient], Awaitable[T]]) -> T:
        """Run one client call to completion: the tests themselves stay synchronous."""

        async def go() -> T:
            async with GateClient(self.settings) as client:
                return await use(client)

        return run(go())

    def produce(self, topic: str, key: str | bytes | None, value: Any, partition: int | None = None) -> int:
        return self._with_client(lambda client: client.produce(topic, key, value, partition))

    def produce_many(self, records: Iterable[tuple[str, str | None, Any]]) -> None:
        async def produce_all(client: GateClient) -> None:
            for topic, key, value in records:
                await client.produce(topic, key, value)

        self._with_client(produce_all)

    def produce_all(self, records: Iterable[tuple[str, str | bytes | None, Any]]) -> list[tuple[int, int]]:
        """Produce records one by one, each acknowledged; their (partition, offset)s."""

        async def produce(client: GateClient) -> list[tuple[int, int]]:
            return [await client.produce_at(topic, key, value) for topic, key, value in records]

        return self._with_client(produce)

    def produce_bulk(self, records: Iterable[tuple[str, str | bytes | None, Any]]) -> None:
        self._with_client(lambda client: client.produce_bulk(records))

    def wait_consumed(self, topic: str, timeout: float = 60.0) -> None:
        self._with_client(lambda client: client.wait_consumed(topic, timeout))

    def decisions(self, request_ids: Iterable[str], timeout: float = 60.0) -> dict[str, list[Record]]:
        return self._with_client(lambda client: client.decisions(request_ids, timeout))

    def all_decisions(self) -> list[Record]:
        t = self.topo
        outputs = [t.send.name, t.template.name, t.rejected.name]
        return self._with_client(lambda client: client.read_to_end(outputs, timeout=120))

    def decision(self, request_id: str, timeout: float = 60.0) -> Record:
        records = self.decisions([request_id], timeout)[request_id]
        assert len(records) == 1, f"{request_id}: expected one decision, got {[r.value for r in records]}"
        return records[0]

    def read_all(self, topic: str) -> list[Record]:
        return self._with_client(lambda client: client.read_to_end([topic], timeout=120))


class Gate(Topics):
    """A prefix of topics with a worker on it."""

    def __init__(
        self,
        bootstrap: str,
        workdir: Path,
        partitions: int = 4,
        replication: int = 1,
        min_insync: int | None = None,
        security: Mapping[str, str] | None = None,
        **env: str,
    ) -> None:
        """``security``: KAFKA_SECURITY_PROTOCOL and kin, for the worker and the test's own client."""
        prefix = f"it{uuid.uuid4().hex[:8]}."
        security = dict(security or {})
        super().__init__(
            Settings(
                kafka_bootstrap_servers=bootstrap,
                topic_prefix=prefix,
                partitions=partitions,
                replication_factor=replication,
                min_insync_replicas=min_insync,
                data_dir=workdir / prefix / "state",
                web_port=free_port(),
                **security,  # type: ignore[arg-type]  # by their variable names (validation aliases)
            )
        )
        env = {**security, **env}
        if replication > 1:
            env = {"WAGATE_REPLICATION_FACTOR": str(replication), **env}
        if min_insync is not None:
            env = {"WAGATE_MIN_INSYNC_REPLICAS": str(min_insync), **env}
        self.workdir = workdir
        self.env = env
        self.worker = self.new_worker()

    def new_worker(self) -> Worker:
        return Worker(self.settings, self.workdir / f"{self.prefix}worker.log", **self.env)

    def send_webhooks(self, bodies: Iterable[bytes]) -> None:
        """Produce raw webhook bodies, then wait until the gate has normalized and applied them all."""
        self.produce_many((self.topo.webhooks.name, None, body) for body in bodies)
        self.wait_consumed(self.topo.webhooks.name)
        self.wait_consumed(self.topo.inbound.name)

    def read_until(
        self, topic: str, until: Callable[[list[Record]], bool], timeout: float = 60.0
    ) -> list[Record]:
        """``topic`` from its start until ``until(records)`` holds; TimeoutError otherwise."""
        return self._with_client(lambda client: client.read([topic], until, timeout))

    def dead_letters(self, until: Any, timeout: float = 60.0) -> list[Record]:
        return self.read_until(self.topo.deadletter.name, until, timeout)
