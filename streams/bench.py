"""``wagate bench``: the gate against a bare aiokafka loop, same data, same broker, one run.

Phase A (throughput): a backlog of inbound events and requests is produced first, then the system
under test starts and drains it; decisions/s = decisions / (last arrival - first arrival), and the
process's CPU seconds from its first to its last decision, per 100,000 decisions.
Phase B (latency): with the system running, 5 s after phase A, requests are produced at a fixed
pace and each one's produce time -> decision arrival is measured (p50/p99). Every other one is
addressed by the contact's BSUID (learnt from an inbound event that named both), which the gate moves
to the contact's partition: ``alias_latency_*`` is what that extra hop costs (the reference knows no
aliases and decides those as unknown contacts).
Phase C (ordering under an inbound backlog): 40,000 status events are queued on wa.inbound, then 100
contacts each write (acknowledged) and get a free-form request at once: how many come out
``window_open`` (right) and how long they took. The reference has no ordering: it shows the cost of
being wrong; the gate with ``WAGATE_MAX_HOLD_SECONDS=0`` shows what holding costs when nothing lags.

Systems: ``gate`` (the defaults: exactly_once, ordering on), ``gate_at_least_once`` (no transactions),
``gate_unordered`` (``WAGATE_MAX_HOLD_SECONDS=0``), ``gate_limited`` (the defaults with a portfolio
messaging limit no run reaches: what the guard's hop through the portfolio's partition costs),
``gate_garbage`` (the defaults, with one garbage
record after every ten of the workload: random bytes, deep nesting, NaN, tombstones, keys that are not
UTF-8, wrong types, far-past timestamps, 100 KB strings, and a few 1 MB values), and the reference.

The reference is ``python -m streams.bench reference``: consume -> orjson -> the same policy
functions -> produce, with a plain dict for state. It bounds what Python and Kafka do here.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.kafka_security import client_kwargs
from streams.settings import Settings
from streams.topology import Topology, topology

PNID = "bench"
ALIASED_CONTACTS = 1000  # the paced requests' contacts, each also known by a BSUID
TEXT = {"type": "text", "text": {"body": "Your order shipped."}}
TEMPLATE = {"name": "order_update", "language": {"code": "en"}, "components": []}


@dataclass
class Workload:
    openers: list[tuple[bytes, bytes]]  # (key, value) for wa.inbound, produced before anything else
    mixed: list[tuple[str, bytes | None, bytes | None]]  # ("inbound"|"requests", key, value), interleaved
    requests: int


GARBAGE_EVERY = 10  # gate_garbage: one garbage record after every this many records


def with_garbage(workload: Workload, seed: int = 11) -> Workload:
    """The same workload with a garbage record after every ``GARBAGE_EVERY`` records (in turn on
    wa.outbound.requests and wa.inbound). None of them is one of the requests whose decision is
    waited for: what is measured is how much the garbage slows the valid records down."""
    rng = random.Random(seed)
    huge = b"x" * 100_000
    megabyte = b'{"request_id": "' + b"m" * 1_000_000 + b'"}'
    kinds: list[Any] = [
        lambda n: (None, rng.randbytes(rng.randint(1, 300))),  # random bytes
        lambda n: (b"k", b"[" * 3_000 + b"]" * 3_000),  # deep nesting
        lambda n: (b"k", b'{"request_id": "g%d", "timestamp": NaN}' % n),  # NaN: not JSON
        lambda n: (b"k", None),  # a tombstone
        lambda n: (rng.randbytes(12) + b"\xff", b'{"to": 5}'),  # key not UTF-8, wrong type
        lambda n: (b"k", b'{"request_id": "g%d", "origin": 7, "timestamp": -1e18}' % n),  # wrong types
        lambda n: (b"k", b'{"request_id": "g%d", "message": "' % n + huge + b'"}'),  # a 100 KB string
    ]
    mixed: list[tuple[str, bytes | None, bytes | None]] = []
    garbage = 0
    for i, record in enumerate(workload.mixed):
        mixed.append(record)
        if i % GARBAGE_EVERY == GARBAGE_EVERY - 1:
            key, value = (b"k", megabyte) if garbage % 5_000 == 0 else rng.choice(kinds)(garbage)
            mixed.append(("requests" if garbage % 2 == 0 else "inbound", key, value))
            garbage += 1
    return Workload(workload.openers, mixed, workload.requests)


def build_workload(requests: int, contacts: int, now: float, seed: int = 7) -> Workload:
    rng = random.Random(seed)

    def inbound(user: str, ts: float, n: int) -> tuple[bytes, bytes]:
        event = {
            "event_id": f"wamid.{user}.{n}",
            "phone_number_id": PNID,
            "user": user,
            "timestamp": ts,
            "kind": "message",
            "type": "text",
        }
        return f"{PNID}:{user}".encode(), orjson.dumps(event)

    openers = []
    for c in range(contacts):
        roll = rng.random()
        if roll < 0.5:  # open: the user wrote within the last 20 h
            openers.append(inbound(f"u{c}", now - rng.uniform(60, 20 * 3600), 0))
        elif roll < 0.75:  # lapsed: wrote 30 h ago
            openers.append(inbound(f"u{c}", now - 30 * 3600, 0))
    for c in range(ALIASED_CONTACTS):  # a read status naming phone and BSUID: the alias, no window change
        key, value = inbound(f"u{c}", now - 60, -1)
        status = {**orjson.loads(value), "kind": "status", "type": "read", "user_id": f"US.{c}"}
        openers.append((key, orjson.dumps(status)))
    mixed: list[tuple[str, bytes | None, bytes | None]] = []
    for i in range(requests):
        user = f"u{rng.randrange(contacts)}"
        roll = rng.random()
        req: dict[str, Any] = {
            "request_id": f"b{i}",
            "phone_number_id": PNID,
            "to": user,
            "origin": rng.choice(["agent", "human", "automation", "broadcast", "api"]),
            "message": TEXT,
            "created_at": now,
        }
        if roll < 0.1:
            req["message"] = {"type": "template", "template": TEMPLATE}
        elif roll < 0.55:
            req["fallback_template"] = TEMPLATE
        elif roll < 0.6:
            req["intent"] = "marketing"
        mixed.append(("requests", f"{PNID}:{user}".encode(), orjson.dumps(req)))
        if i % 4 == 3:  # a stream of new user messages keeps windows moving
            key, value = inbound(f"u{rng.randrange(contacts)}", now - rng.uniform(0, 600), i)
            mixed.append(("inbound", key, value))
    return Workload(openers, mixed, requests)


# -- the reference: bare aiokafka + the same policy ------------------------------------------------


async def reference_loop(settings: Settings) -> None:
    from streams.models import InboundEvent
    from streams.policy.decide import decide, decide_invalid
    from streams.policy.parse import InvalidPayload, parse_inbound_event, parse_send_request
    from streams.policy.window import EMPTY_STATE, ContactState, apply_inbound

    topo = topology(settings)
    rules = settings.rules
    state: dict[str, ContactState] = {}
    consumer = AIOKafkaConsumer(
        topo.inbound.name,
        topo.requests.name,
        **client_kwargs(settings),
        group_id=f"{settings.faust_app_id}-reference",
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        max_poll_records=1000,
    )
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                for record in records:
                    now = time.time()
                    if tp.topic == topo.inbound.name:
                        event = parse_inbound_event(record.value)
                        if isinstance(event, InboundEvent):
                            key = record.key.decode()
                            new, _ = apply_inbound(state.get(key, EMPTY_STATE), event, now, rules)
                            state[key] = new
                        continue
                    parsed = parse_send_request(record.value)
                    if isinstance(parsed, InvalidPayload):
                        rejection = decide_invalid(parsed, None, now)
                        if rejection is not None:
                            await producer.send(
                                topo.rejected.name,
                                rejection.__pydantic_serializer__.to_json(rejection),
                                key=record.key,
                            )
                        continue
                    request, received = parsed
                    key = record.key.decode()
                    decision, new = decide(request, received, state.get(key, EMPTY_STATE), now, rules)
                    state[key] = new
                    await producer.send(
                        topo.route_topic(decision.route),
                        decision.__pydantic_serializer__.to_json(decision),
                        key=record.key,
                    )
    finally:
        await producer.stop()
        await consumer.stop()


# -- the harness ------------------------------------------------------------------------------------


def _child_env(settings: Settings, prefix: str, data_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "WAGATE_TOPIC_PREFIX": prefix,
            "WAGATE_DATA_DIR": data_dir,
            "WAGATE_WEB_ENABLED": "false",
            "WAGATE_LOG_LEVEL": "warning",
            "WAGATE_PARTITIONS": str(settings.partitions),
        }
    )
    return env


SETTLE_SECONDS = 5.0
PACED_REQUESTS = 3000  # phase B: requests at PACED_RATE per second
PACED_RATE = 500.0

_WORKER = ["-m", "streams.cli", "worker"]

# The Quix Streams peers run in a virtualenv of their own (``make bench`` makes it): Quix pins its own
# pydantic and confluent-kafka ranges.
QUIX_PYTHON_ENV = "WAGATE_BENCH_QUIX_PYTHON"
QUIX_VENV = Path(".venv-quix/bin/python")

# The systems measured: how each starts, and extra settings.
SYSTEMS: dict[str, tuple[list[str], dict[str, str]]] = {
    "reference": (["-m", "streams.bench", "reference"], {}),
    "quix": (["-m", "streams.bench_quix", "exactly-once"], {}),
    "quix_at_least_once": (["-m", "streams.bench_quix", "at-least-once"], {}),
    "gate": (_WORKER, {}),
    "gate_at_least_once": (_WORKER, {"WAGATE_PROCESSING_GUARANTEE": "at_least_once"}),
    "gate_unordered": (_WORKER, {"WAGATE_MAX_HOLD_SECONDS": "0"}),
    "gate_garbage": (_WORKER, {}),  # fed with_garbage(workload)
    # The messaging-limit guard on, with a limit no run reaches: every business-initiated decision (a
    # template to a closed window, a fallback conversion) takes its slot on the portfolio's partition.
    "gate_limited": (
        _WORKER,
        {
            "WAGATE_PHONE_NUMBER_WABAS": f"{PNID}={PNID}-waba",
            "WAGATE_MESSAGING_LIMITS": f"{PNID}-waba=10000000",
        },
    ),
}


def _start(
    system: str, settings: Settings, prefix: str, data_dir: str, log_path: Path
) -> subprocess.Popen[bytes]:
    args, extra = SYSTEMS[system]
    python, env = sys.executable, {**_child_env(settings, prefix, data_dir), **extra}
    if system.startswith("quix"):
        python = quix_python()
        # The peer imports the gate's policy from this checkout (pure: pydantic and orjson only).
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_SOURCE_ROOT), env.get("PYTHONPATH")]))
    log = log_path.open("wb")
    return subprocess.Popen(
        [python, *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def quix_python() -> str:
    """The interpreter of the Quix Streams peers: ``$WAGATE_BENCH_QUIX_PYTHON``, else ``.venv-quix``."""
    configured = os.environ.get(QUIX_PYTHON_ENV)
    python = Path(configured) if configured else _SOURCE_ROOT / QUIX_VENV
    if not python.exists():
        raise SystemExit(
            f"the Quix Streams peers need {python}: run `make bench` (it makes .venv-quix from "
            f"deploy/bench/quix-requirements.txt), or set {QUIX_PYTHON_ENV} to a Python with quixstreams"
        )
    return str(python)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _collect(
    consumer: AIOKafkaConsumer,
    wanted: set[str],
    arrivals: dict[str, float],
    timeout: float,
    proc: subprocess.Popen[bytes],
    on_first: Any = None,
    values: dict[str, bytes] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while wanted - arrivals.keys() and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the system under test exited with code {proc.returncode}; see its log")
        batches = await consumer.getmany(timeout_ms=200, max_records=5000)
        now = time.time()
        for records in batches.values():
            for record in records:
                rid = _request_id(record.value)
                if rid in wanted and rid not in arrivals:
                    if not arrivals and on_first is not None:
                        on_first()
                    arrivals[rid] = now
                    if values is not None:
                        values[rid] = record.value


_RID_PREFIX = b'{"request_id":"'


def _request_id(value: bytes) -> str | None:
    # Decisions start with their request_id: slicing keeps the harness off the CPU the gate needs.
    if value.startswith(_RID_PREFIX):
        end = value.find(b'"', len(_RID_PREFIX))
        if end > 0 and value.find(b"\\", len(_RID_PREFIX), end) < 0:
            return value[len(_RID_PREFIX) : end].decode()
    rid = orjson.loads(value).get("request_id")
    return rid if isinstance(rid, str) else None


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def paced_request(rid: str, to: str) -> tuple[bytes, bytes]:
    """(value, key) of a paced request: free-form with a fallback template, keyed by its ``to``."""
    request = {
        "request_id": rid,
        "phone_number_id": PNID,
        "to": to,
        "origin": "agent",
        "message": TEXT,
        "fallback_template": TEMPLATE,
    }
    return orjson.dumps(request), f"{PNID}:{to}".encode()


def decisions_reader(settings: Settings, topo: Topology) -> AIOKafkaConsumer:
    """A consumer of the three decision topics from the start, as downstream senders must read them."""
    return AIOKafkaConsumer(
        topo.send.name,
        topo.template.name,
        topo.rejected.name,
        **client_kwargs(settings),
        auto_offset_reset="earliest",
        group_id=None,
        fetch_max_bytes=16 * 1024 * 1024,
        isolation_level="read_committed",  # as downstream senders must read (exactly_once)
    )


async def produce_workload(producer: AIOKafkaProducer, topo: Topology, workload: Workload) -> None:
    """The openers first, then the mixed requests and events, in order; flushed."""
    for key, value in workload.openers:
        await producer.send(topo.inbound.name, value, key=key)
    topic_of = {"inbound": topo.inbound.name, "requests": topo.requests.name}
    for kind, mixed_key, mixed_value in workload.mixed:
        await producer.send(topic_of[kind], mixed_value, key=mixed_key)
    await producer.flush()


async def measure(
    system: str, settings: Settings, workload: Workload, paced: int, rate: float, workdir: Path
) -> dict[str, Any]:
    from streams.admin import ensure_topics

    prefix = f"bench-{system}-{uuid.uuid4().hex[:6]}."
    run_settings = settings.model_copy(update={"topic_prefix": prefix})
    topo: Topology = topology(run_settings)
    await ensure_topics(run_settings, topo)
    producer = AIOKafkaProducer(
        **client_kwargs(settings),
        acks="all",
        linger_ms=10,
        max_batch_size=256 * 1024,
        max_request_size=2 * 1024 * 1024,  # the 1 MB garbage values
    )
    await producer.start()
    # Requests whose latency is measured go out at once: the harness's own linger is not the gate's.
    paced_producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", linger_ms=0)
    await paced_producer.start()
    consumer = decisions_reader(settings, topo)
    await consumer.start()
    proc = None
    try:
        await produce_workload(producer, topo, workload)
        wanted = {f"b{i}" for i in range(workload.requests)}
        arrivals: dict[str, float] = {}
        started = time.time()
        proc = _start(system, run_settings, prefix, str(workdir / prefix), workdir / f"{prefix}log")
        cpu_at_first: list[float] = []
        running = proc

        def first_decision() -> None:
            cpu_at_first.append(cpu_seconds(running.pid))

        await _collect(consumer, wanted, arrivals, timeout=900, proc=proc, on_first=first_decision)
        if len(arrivals) < len(wanted):
            raise RuntimeError(f"{system}: only {len(arrivals)}/{len(wanted)} decisions arrived")
        drain_cpu = cpu_seconds(proc.pid) - cpu_at_first[0]
        first, last = min(arrivals.values()), max(arrivals.values())
        throughput = len(arrivals) / (last - first)

        # Phase B: paced requests, produce time -> decision arrival, once the drain's aftermath (RocksDB
        # compactions, the broker's segment work) has settled: steady-state latency, for every system.
        await asyncio.sleep(SETTLE_SECONDS)
        produced: dict[str, float] = {}
        paced_arrivals: dict[str, float] = {}
        collector = asyncio.create_task(
            _collect(
                consumer,
                {f"p{i}" for i in range(paced)},
                paced_arrivals,
                timeout=paced / rate + 120,
                proc=proc,
            )
        )
        for i in range(paced):
            rid = f"p{i}"
            to = f"US.{i % ALIASED_CONTACTS}" if i % 2 else f"u{i % ALIASED_CONTACTS}"
            target = time.time() + 1 / rate
            produced[rid] = time.time()
            value, key = paced_request(rid, to)
            await paced_producer.send_and_wait(topo.requests.name, value, key=key)
            await asyncio.sleep(max(0.0, target - time.time()))
        await collector
        by_phone = [paced_arrivals[r] - produced[r] for r in paced_arrivals if int(r[1:]) % 2 == 0]
        by_alias = [paced_arrivals[r] - produced[r] for r in paced_arrivals if int(r[1:]) % 2 == 1]
        backlog = await _backlog_phase(producer, paced_producer, consumer, topo, proc)
        return {
            "decisions": len(arrivals),
            "decisions_per_s": round(throughput, 1),
            "drain_seconds": round(last - first, 2),
            "drain_cpu_seconds": round(drain_cpu, 2),
            "cpu_seconds_per_100k_decisions": round(drain_cpu / len(arrivals) * 100_000, 2),
            "startup_seconds": round(first - started, 2),
            "paced_rate_per_s": rate,
            "latency_p50_ms": round(statistics.median(by_phone) * 1000, 2),
            "latency_p99_ms": round(_pct(by_phone, 0.99) * 1000, 2),
            "alias_latency_p50_ms": round(statistics.median(by_alias) * 1000, 2),
            "alias_latency_p99_ms": round(_pct(by_alias, 0.99) * 1000, 2),
            "paced_decided": len(paced_arrivals),
            **backlog,
        }
    finally:
        if proc is not None:
            _stop(proc)
        await consumer.stop()
        await producer.stop()
        await paced_producer.stop()


# A freshly started broker runs its code interpreted until the JVM has compiled it. Measured here: small
# transactions back to back cost the broker 8.5, 3.9, 1.9, then 1.3-1.4 ms of CPU each over their
# first minute; the gate's phase B on a fresh broker took it 122% CPU (of the 2 cores), 45% of a core
# of it in the C2 compiler's threads, against 52% on a warm broker, and 120 s of plain transactions
# beforehand did not compile what the gate's traffic needs (96%). So the run starts with a pass of the
# gate on a workload of its own, reported apart and compared with nothing. Production brokers run for
# weeks.
WARMUP_REQUESTS = 20_000
WARMUP_PACED_REQUESTS = 20_000  # 40 s of phase B's traffic: what the compiler needed most of


async def warm_broker(settings: Settings, requests: int, workdir: Path) -> dict[str, Any]:
    """Before any system is measured: the default gate on ``requests`` requests of a workload of its
    own (its topics, its contacts), then phase B and C as measured, on the broker every system shares.
    Its figures are the cold broker's, returned for the record and used for nothing else."""
    workload = build_workload(requests, max(1, requests // 4), time.time(), seed=99)
    return await measure("gate", settings, workload, WARMUP_PACED_REQUESTS, PACED_RATE, workdir)


async def _backlog_phase(
    producer: AIOKafkaProducer,
    paced_producer: AIOKafkaProducer,
    consumer: AIOKafkaConsumer,
    topo: Topology,
    proc: subprocess.Popen[bytes],
    statuses: int = 40_000,
    replies: int = 100,
) -> dict[str, Any]:
    now = time.time()
    for i in range(statuses):
        user = f"u{i % 50_000}"
        event = {"event_id": f"st.{i}", "phone_number_id": PNID, "user": user, "timestamp": now - 60}
        value = orjson.dumps({**event, "kind": "status", "type": "delivered"})
        await producer.send(topo.inbound.name, value, key=f"{PNID}:{user}".encode())
    await producer.flush()
    produced: dict[str, float] = {}
    for i in range(replies):
        user = f"bk{i}"
        key = f"{PNID}:{user}".encode()
        opener = {"event_id": f"bk.{i}", "phone_number_id": PNID, "user": user, "timestamp": time.time()}
        await paced_producer.send_and_wait(
            topo.inbound.name, orjson.dumps({**opener, "kind": "message", "type": "text"}), key=key
        )
        rid = f"bk{i}"
        req = {"request_id": rid, "phone_number_id": PNID, "to": user, "origin": "agent", "message": TEXT}
        produced[rid] = time.time()
        await paced_producer.send_and_wait(topo.requests.name, orjson.dumps(req), key=key)
    arrivals: dict[str, float] = {}
    values: dict[str, bytes] = {}
    await _collect(consumer, set(produced), arrivals, timeout=300, proc=proc, values=values)
    latencies = [arrivals[rid] - produced[rid] for rid in arrivals]
    right = sum(1 for value in values.values() if orjson.loads(value)["reason"] == "window_open")
    return {
        "backlog_statuses": statuses,
        "backlog_replies_right": right,
        "backlog_replies": replies,
        "backlog_latency_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "backlog_latency_max_ms": round(max(latencies) * 1000, 1),
    }


async def run_bench(
    settings: Settings,
    requests: int,
    contacts: int,
    out: str | None,
    paced: int = PACED_REQUESTS,
    rate: float = PACED_RATE,
    systems: tuple[str, ...] = tuple(SYSTEMS),
    warmup: int = WARMUP_REQUESTS,
) -> int:
    if any(system.startswith("quix") for system in systems):
        quix_python()  # before anything is produced: says how to get it when it is missing
    workload = build_workload(requests, contacts, time.time())
    results: dict[str, dict[str, Any]] = {}
    warmed: dict[str, Any] = {"requests": warmup}
    with tempfile.TemporaryDirectory(prefix="wagate-bench-") as tmp:
        if warmup > 0:
            warmed.update(await warm_broker(settings, warmup, Path(tmp)))
        for system in systems:
            load = with_garbage(workload) if system == "gate_garbage" else workload
            results[system] = await measure(system, settings, load, paced, rate, Path(tmp))
    if set(systems) != set(SYSTEMS):  # a partial run (profiling): the figures, no ratios
        print(orjson.dumps({"broker_warmup": warmed, **results}, option=orjson.OPT_INDENT_2).decode())
        return 0
    reference, gate = results["reference"], results["gate"]
    result = {
        "requests": requests,
        "contacts": contacts,
        "inbound_events": len(workload.openers)
        + sum(1 for kind, _, _ in workload.mixed if kind == "inbound"),
        "partitions": settings.partitions,
        "broker_warmup": warmed,
        **{system: results[system] for system in SYSTEMS},
        "ratio_at_least_once_over_exactly_once": round(
            results["gate_at_least_once"]["decisions_per_s"] / gate["decisions_per_s"], 3
        ),
        "ratio_garbage_over_clean": round(
            results["gate_garbage"]["decisions_per_s"] / gate["decisions_per_s"], 3
        ),
        "ratio_gate_over_reference": round(gate["decisions_per_s"] / reference["decisions_per_s"], 3),
        # What the messaging-limit guard costs: the same run with a limit every request is checked against.
        "ratio_limited_over_gate": round(
            results["gate_limited"]["decisions_per_s"] / gate["decisions_per_s"], 3
        ),
        # What users compare: wagate against the Quix Streams gate, at each guarantee.
        "ratio_gate_over_quix": round(gate["decisions_per_s"] / results["quix"]["decisions_per_s"], 3),
        "ratio_gate_at_least_once_over_quix_at_least_once": round(
            results["gate_at_least_once"]["decisions_per_s"]
            / results["quix_at_least_once"]["decisions_per_s"],
            3,
        ),
        "cpu_ratio_gate_at_least_once_over_reference": round(
            results["gate_at_least_once"]["cpu_seconds_per_100k_decisions"]
            / reference["cpu_seconds_per_100k_decisions"],
            3,
        ),
        "cpu_ratio_gate_over_reference": round(
            gate["cpu_seconds_per_100k_decisions"] / reference["cpu_seconds_per_100k_decisions"], 3
        ),
    }
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["reference"]:
        asyncio.run(reference_loop(Settings()))
    else:
        sys.exit("usage: python -m streams.bench reference   (run the bench with `wagate bench`)")
