"""``wagate bench-scale``: what adding workers costs and buys, on a 3-broker cluster.

For each partition count and worker count: a backlog (the bench's workload) is produced, N workers
start together and drain it; then requests go in at a fixed pace while one more worker joins the
group and, later, leaves it. Per configuration, one JSON object:

- ``decisions_per_s`` and ``cpu_seconds_per_100k_decisions`` (every worker's CPU from the first to
  the last decision of the drain, summed): on one 2-core machine the throughput cannot grow with N,
  the CPU per decision says what N machines would do;
- ``kafka_requests_per_decision`` by API, from every worker's ``wagate_kafka_requests_total`` over
  its whole run (start-up included) divided by the decisions: the brokers' share of a decision in a
  backlog (large steps); ``paced_*``: the same, and the CPU, over 10 s at 300 requests/s with no
  membership change (small steps: about a transaction per decision);
- ``startup_to_first_decision_s`` (group formation and assignment with N members), and the longest
  time without any decision while a worker joins (``join_pause_s``) and while one leaves
  (``leave_pause_s``), with the paced requests lost or decided twice across both.

Workers run the defaults (exactly_once, ordering on) with replication factor 3 and min ISR 2.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.bench import (
    _child_env,
    _collect,
    _request_id,
    _stop,
    build_workload,
    cpu_seconds,
    decisions_reader,
    paced_request,
    produce_workload,
)
from streams.kafka_security import client_kwargs
from streams.settings import Settings
from streams.topology import Topology, topology

PACED_RATE = 300.0  # requests/s: a steady stretch, then one worker more joins and leaves
PACED_CONTACTS = 1000
STEADY_FROM_S, STEADY_TO_S = 2.0, 12.0  # into the paced phase: requests and CPU per decision at this pace
JOIN_AFTER_S = 12.0  # one more worker starts
LEAVE_AFTER_S = 32.0  # and is stopped (SIGTERM: it leaves the group)
PACED_SECONDS = 50.0

# The APIs reported one by one; the rest (Metadata, Heartbeat, ListOffsets, JoinGroup, ...) as "other".
TRANSACTION_APIS = ("InitProducerId", "AddPartitionsToTxn", "AddOffsetsToTxn", "TxnOffsetCommit", "EndTxn")
REPORTED_APIS = ("Fetch", "Produce", *TRANSACTION_APIS, "OffsetCommit", "ListOffsets", "Heartbeat")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Worker:
    def __init__(self, settings: Settings, prefix: str, workdir: Path, name: str) -> None:
        self.admin_port = _free_port()
        env = _child_env(settings, prefix, str(workdir / name))
        env.update(
            {
                "WAGATE_ADMIN_PORT": str(self.admin_port),
                "WAGATE_REPLICATION_FACTOR": str(settings.replication_factor),
                "WAGATE_MIN_INSYNC_REPLICAS": str(settings.min_insync_replicas),
            }
        )
        self.log = (workdir / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def cpu(self) -> float:
        try:
            return cpu_seconds(self.proc.pid)
        except OSError:  # exited
            return 0.0

    def requests(self) -> Counter[str]:
        """This worker's Kafka requests so far, by API (its /metrics page)."""
        url = f"http://127.0.0.1:{self.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        counts: Counter[str] = Counter()
        for line in text.splitlines():
            if line.startswith('wagate_kafka_requests_total{api="'):
                api = line.split('"', 2)[1]
                counts[api] += int(float(line.rsplit(" ", 1)[1]))
        return counts

    def stop(self) -> None:
        _stop(self.proc)
        self.log.close()


def _longest_gap(arrivals: list[float], start: float, end: float) -> float:
    """The longest time without a decision between ``start`` and ``end`` (the edges count)."""
    times = sorted(t for t in arrivals if start <= t <= end)
    edges = [start, *times, end]
    return max(b - a for a, b in itertools.pairwise(edges))


async def measure(
    settings: Settings, partitions: int, workers: int, requests: int, contacts: int, workdir: Path
) -> dict[str, Any]:
    from streams.admin import ensure_topics

    prefix = f"scale-p{partitions}-w{workers}-{uuid.uuid4().hex[:6]}."
    run_settings = settings.model_copy(update={"topic_prefix": prefix, "partitions": partitions})
    topo: Topology = topology(run_settings)
    await ensure_topics(run_settings, topo)
    workload = build_workload(requests, contacts, time.time())
    producer = AIOKafkaProducer(
        **client_kwargs(settings), acks="all", linger_ms=10, max_batch_size=256 * 1024
    )
    consumer = decisions_reader(settings, topo)
    await producer.start()
    await consumer.start()
    running: list[_Worker] = []
    try:
        await produce_workload(producer, topo, workload)

        started = time.time()
        running = [_Worker(run_settings, prefix, workdir, f"{prefix}w{i}") for i in range(workers)]
        cpu_at_first: list[float] = []

        def first_decision() -> None:
            cpu_at_first.append(sum(worker.cpu() for worker in running))

        arrivals: dict[str, float] = {}
        wanted = {f"b{i}" for i in range(workload.requests)}
        await _collect(consumer, wanted, arrivals, 900, running[0].proc, on_first=first_decision)
        if len(arrivals) < len(wanted):
            raise RuntimeError(f"only {len(arrivals)}/{len(wanted)} decisions arrived")
        drain_cpu = sum(worker.cpu() for worker in running) - cpu_at_first[0]
        first, last = min(arrivals.values()), max(arrivals.values())
        counts: Counter[str] = Counter()
        for worker in running:
            counts.update(worker.requests())
        drain = {
            "decisions": len(arrivals),
            "decisions_per_s": round(len(arrivals) / (last - first), 1),
            "cpu_seconds_per_100k_decisions": round(drain_cpu / len(arrivals) * 100_000, 2),
            "startup_to_first_decision_s": round(first - started, 2),
            "kafka_requests_per_decision": _per_decision(counts, len(arrivals)),
        }
        churn = await _churn(run_settings, prefix, workdir, topo, consumer, running)
        return {"partitions": partitions, "workers": workers, **drain, **churn}
    finally:
        for worker in running:
            worker.stop()
        await consumer.stop()
        await producer.stop()


def _per_decision(counts: Counter[str], decisions: int) -> dict[str, float]:
    figures = {api: round(counts.get(api, 0) / decisions, 4) for api in REPORTED_APIS}
    other = sum(n for api, n in counts.items() if api not in REPORTED_APIS)
    figures["other"] = round(other / decisions, 4)
    figures["transaction_calls"] = round(sum(counts.get(api, 0) for api in TRANSACTION_APIS) / decisions, 4)
    figures["all"] = round(sum(counts.values()) / decisions, 4)
    return figures


async def _churn(
    settings: Settings,
    prefix: str,
    workdir: Path,
    topo: Topology,
    consumer: AIOKafkaConsumer,
    running: list[_Worker],
) -> dict[str, Any]:
    """Paced requests while one more worker joins, then leaves: the longest pauses, and what was lost or
    decided twice."""
    paced = int(PACED_RATE * PACED_SECONDS)
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", linger_ms=0)
    await producer.start()
    arrivals: dict[str, float] = {}
    seen: Counter[str] = Counter()
    stop = asyncio.Event()

    async def read() -> None:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=5000)
            now = time.time()
            for records in batches.values():
                for record in records:
                    rid = _request_id(record.value)
                    if rid is not None and rid.startswith("c"):
                        seen[rid] += 1
                        arrivals.setdefault(rid, now)

    def snapshot() -> tuple[float, float, Counter[str]]:
        counts: Counter[str] = Counter()
        for worker in running:
            counts.update(worker.requests())
        return time.time(), sum(worker.cpu() for worker in running), counts

    reader = asyncio.create_task(read())
    extra: _Worker | None = None
    joined_at = left_at = 0.0
    steady: list[asyncio.Task[tuple[float, float, Counter[str]]]] = []
    began = time.time()
    try:
        for i in range(paced):
            elapsed = time.time() - began
            if len(steady) < 2 and elapsed >= (STEADY_FROM_S, STEADY_TO_S)[len(steady)]:
                steady.append(asyncio.create_task(asyncio.to_thread(snapshot)))
            if extra is None and elapsed >= JOIN_AFTER_S:
                extra, joined_at = _Worker(settings, prefix, workdir, f"{prefix}extra"), time.time()
            if extra is not None and not left_at and elapsed >= LEAVE_AFTER_S:
                left_at = time.time()
                await asyncio.to_thread(extra.stop)
            await producer.send_and_wait(
                topo.requests.name, *paced_request(f"c{i}", f"u{i % PACED_CONTACTS}")
            )
            await asyncio.sleep(max(0.0, began + (i + 1) / PACED_RATE - time.time()))
        deadline = time.time() + 120
        while len(arrivals) < paced and time.time() < deadline:
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await reader
        await producer.stop()
        if extra is not None and not left_at:
            extra.stop()
    times = list(arrivals.values())
    (start, cpu_start, counts_start), (end, cpu_end, counts_end) = [await task for task in steady]
    decided = max(1, sum(1 for t in times if start <= t <= end))  # (0 only if decisions stopped)
    counts_end.subtract(counts_start)
    return {
        "paced_rate_per_s": PACED_RATE,
        "paced_cpu_seconds_per_100k_decisions": round((cpu_end - cpu_start) / decided * 100_000, 2),
        "paced_kafka_requests_per_decision": _per_decision(counts_end, decided),
        "join_pause_s": round(_longest_gap(times, joined_at, left_at), 2),
        "leave_pause_s": round(_longest_gap(times, left_at, left_at + 15), 2),
        "paced_requests": paced,
        "paced_lost": paced - len(arrivals),
        "paced_decided_twice": sum(1 for n in seen.values() if n > 1),
    }


async def run_scale(
    settings: Settings,
    partitions: list[int],
    workers: list[int],
    requests: int,
    contacts: int,
    out: str | None,
) -> int:
    settings = settings.model_copy(update={"replication_factor": 3, "min_insync_replicas": 2})
    results = []
    with tempfile.TemporaryDirectory(prefix="wagate-scale-") as tmp:
        for p in partitions:
            for n in workers:
                result = await measure(settings, p, n, requests, contacts, Path(tmp))
                print(orjson.dumps(result).decode(), file=sys.stderr)
                results.append(result)
    text = orjson.dumps(
        {"requests": requests, "contacts": contacts, "runs": results}, option=orjson.OPT_INDENT_2
    )
    print(text.decode())
    if out:
        Path(out).write_bytes(text + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit("run with `wagate bench-scale` (make bench-scale)")
