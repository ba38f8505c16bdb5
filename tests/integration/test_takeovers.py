"""Partitions taken over under exactly_once: frozen (zombie) workers, and a foreign open transaction.

**Frozen workers.** Two workers share a gate of 8 partitions (dynamic membership, the shortest
session timeout allowed, 6 s) while a load generator writes, about 200 times a second, the opener
of a new user (acknowledged) and at once a request to that user, plus a request to the user it
opened about 4 s earlier, plus now and then a request to a user who never wrote. A model of the
inputs says every decision: ``window_open`` for the first two, ``no_window`` for the third. Each
worker in turn is frozen with SIGSTOP for the session timeout + 6 s, long enough for the group to
evict it and give its partitions to the other worker (whose transactional producers fence the
frozen one's), then thawed with SIGCONT. A zombie may do anything the broker lets it do, but it must
not decide a request wrongly, twice or not at all, and it must not die of being fenced: it is
expected to drop what it held and rejoin the group. A worker process that exits anyway is restarted
at once (as Kubernetes would) and counted as a failure. Checked with a read_committed reader:
lost, decided twice, decided wrong, the longest gap without any decision, worker exits.

**A foreign open transaction.** Another producer (a tool, a migration, a crashed connector) begins
a transaction on wa.inbound partition 0, writes one event and leaves the transaction open. A
read_committed worker cannot read past that event until the transaction ends, so the high watermark
of partition 0 stays out of its reach: requests on partition 0 must not wait for it until the hold
limit (WAGATE_MAX_HOLD_SECONDS, 30 s here), while the events acknowledged before the transaction
began are applied. Once the transaction commits, its event applies like any other.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import signal
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaProducer

from streams.client import GateClient, Record
from streams.policy.keys import partition_for

from .conftest import inbound, start_and_wait, text_request
from .harness import Gate, PacedLoad, Worker, free_port, run

T = TypeVar("T")

SESSION_TIMEOUT = 6.0  # the least WAGATE_SESSION_TIMEOUT_SECONDS allows
FREEZE_SECONDS = SESSION_TIMEOUT + 6
ZOMBIE_PARTITIONS = 8
OPENERS_PER_TICK = 10
TICKS_PER_SECOND = 20  # about 200 openers/s, 420 requests/s
OLDER_AGE = 4.0  # seconds between a user's opener and the second request to them
REJOIN_DEADLINE = 40.0  # seconds from SIGCONT for the thawed worker to log "Worker ready" again

HOLD_LIMIT = 30.0
FOREIGN_PARTITIONS = 4
USERS_PER_PARTITION = 5
DECIDED_WITHIN = 20.0  # "well before the hold limit"


# -- frozen workers --------------------------------------------------------------------------------


class _OpenerLoad(PacedLoad):
    """Ticks of new users: their openers acknowledged, then the requests the model decides."""

    def __init__(self, gate: Gate, pnid: str) -> None:
        super().__init__(gate.settings.kafka_bootstrap_servers, TICKS_PER_SECOND)
        self.gate, self.pnid = gate, pnid
        self.partition: dict[str, int] = {}  # request_id -> its partition
        self.openers = 0
        self._opened: collections.deque[tuple[float, str]] = collections.deque()

    async def tick(self, producer: AIOKafkaProducer, n: int) -> None:
        t, pnid = self.gate.topo, self.pnid
        fresh = [f"v{n * OPENERS_PER_TICK + i}" for i in range(OPENERS_PER_TICK)]
        acks = [
            await producer.send(
                t.inbound.name,
                orjson.dumps(inbound(pnid, user, time.time() - 5)),
                key=f"{pnid}:{user}".encode(),
            )
            for user in fresh
        ]
        await asyncio.gather(*acks)  # the openers are written before their requests
        now = time.monotonic()
        self.openers += len(fresh)
        batch = [(user, f"{pnid}-{user}", "window_open") for user in fresh]
        while self._opened and self._opened[0][0] <= now - OLDER_AGE:
            user = self._opened.popleft()[1]
            batch.append((user, f"{pnid}-{user}-again", "window_open"))
        self._opened.extend((now, user) for user in fresh)
        batch.append((f"n{n}", f"{pnid}-n{n}", "no_window"))
        for user, rid, reason in batch:
            key = f"{pnid}:{user}".encode()
            await producer.send(t.requests.name, orjson.dumps(text_request(pnid, user, rid)), key=key)
            self.expected[rid] = reason
            self.partition[rid] = partition_for(key, ZOMBIE_PARTITIONS)
        await producer.flush()


class _Supervisor(threading.Thread):
    """Restarts a worker process that exits, at once, like a Deployment's pod; records each exit."""

    def __init__(self, workers: list[Worker], env: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.workers, self.env = workers, env
        self.lock = threading.Lock()
        self.exits: list[tuple[int, int | None, float]] = []  # (slot, exit code, wall clock)
        self.halt = threading.Event()

    def current(self, slot: int) -> Worker:
        with self.lock:
            return self.workers[slot]

    def run(self) -> None:
        while not self.halt.wait(0.2):
            with self.lock:
                for slot, worker in enumerate(self.workers):
                    if worker.proc is None or worker.proc.poll() is None or self.halt.is_set():
                        continue
                    self.exits.append((slot, worker.proc.returncode, time.time()))
                    with worker.log_path.open("a") as log:
                        log.write(f"---- exited with {worker.proc.returncode}: restarted by the test ----\n")
                    again = Worker(worker.settings, worker.log_path, **self.env)
                    again.start()
                    self.workers[slot] = again


def _readies(worker: Worker) -> int:
    return worker.log_path.read_text(errors="replace").count("Worker ready")


def _freeze_and_thaw(supervisor: _Supervisor, slot: int) -> tuple[float, float | None]:
    """SIGSTOP the slot's worker for FREEZE_SECONDS, then SIGCONT; (frozen at, seconds from the
    thaw to its next "Worker ready" or None when it did not rejoin within REJOIN_DEADLINE)."""
    worker = supervisor.current(slot)
    assert worker.proc is not None and worker.alive(), worker.log_tail()
    readies = _readies(worker)
    frozen_at = time.time()
    worker.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(FREEZE_SECONDS)
    finally:
        worker.proc.send_signal(signal.SIGCONT)
    thawed = time.monotonic()
    while time.monotonic() < thawed + REJOIN_DEADLINE:
        current = supervisor.current(slot)
        if current is worker and _readies(worker) > readies:
            return frozen_at, time.monotonic() - thawed
        if current is not worker:  # it exited; the supervisor started another
            break
        time.sleep(0.2)
    return frozen_at, None


def _longest_gap(times: list[float]) -> float:
    ordered = sorted(times)
    return max((b - a for a, b in itertools.pairwise(ordered)), default=0.0)


def _log_lines(workers: list[Worker], *needles: str, limit: int | None = None) -> list[str]:
    lines: list[str] = []
    for worker in workers:
        for line in worker.log_path.read_text(errors="replace").splitlines():
            if any(needle in line for needle in needles):
                lines.append(f"{worker.log_path.name}: {line.strip()}")
    return lines[:limit]


def _explain_wrong(
    gate: Gate, pnid: str, wrong: dict[str, tuple[str, str, float]], decided: dict[str, list[Record]]
) -> list[str]:
    """For a few wrong decisions: the window they saw, and where their user's opener, requests and
    state changelog records lie (an opener below the committed offset with no changelog record of it
    was skipped; one above it was not yet applied)."""
    t = gate.topo
    first = sorted(wrong, key=lambda rid: wrong[rid][2])[:3]
    lines = [
        f"  {rid}: {decided[rid][0].value.get('window')} held_past_limit="
        f"{decided[rid][0].value.get('held_past_limit')}"
        for rid in first
    ]
    keys = {f"{pnid}:{rid.removeprefix(pnid + '-').removesuffix('-again')}".encode() for rid in first}
    for topic in (t.inbound.name, t.requests.name, t.contact_state_changelog.name):
        for r in gate.read_all(topic):
            if r.key in keys:
                lines.append(f"  {topic} p{r.partition}@{r.offset} {r.key!r} {str(r.value)[:160]}")
    return lines


def test_frozen_workers_are_fenced_and_rejoin(
    bootstrap: str, workdir: Path, record_property: Callable[[str, object], None]
) -> None:
    # No WAGATE_INSTANCE_ID: dynamic membership, a frozen worker is evicted after one session timeout.
    gate = Gate(
        bootstrap,
        workdir,
        partitions=ZOMBIE_PARTITIONS,
        WAGATE_SESSION_TIMEOUT_SECONDS=str(int(SESSION_TIMEOUT)),
    )
    env = dict(gate.env)
    pnid = f"zb{uuid.uuid4().hex[:6]}"
    start_and_wait(gate)
    second = Worker(
        gate.settings.model_copy(
            update={"data_dir": workdir / gate.prefix / "second", "web_port": free_port()}
        ),
        workdir / f"{gate.prefix}second.log",
        **env,
    )
    supervisor = _Supervisor([gate.worker, second], env)
    second.start()
    load = _OpenerLoad(gate, pnid)
    freezes: list[tuple[float, float | None]] = []
    began = time.monotonic()
    try:
        second.wait_for_log("Worker ready", timeout=120)
        supervisor.start()
        load.start()
        deadline = time.monotonic() + 60
        while second.metric_sum("wagate_decisions_total") <= 0:  # the partitions are shared
            assert time.monotonic() < deadline, f"the second worker was given nothing:\n{second.log_tail()}"
            assert load.error is None, load.error
            time.sleep(0.5)
        time.sleep(3)
        for slot in (0, 1):
            freezes.append(_freeze_and_thaw(supervisor, slot))
            time.sleep(3)
        time.sleep(3)
    finally:
        load.halt.set()
        load.join(30)
        supervisor.halt.set()
        supervisor.join(10)
    assert load.error is None, load.error
    try:
        expected = dict(load.expected)
        with contextlib.suppress(TimeoutError):  # the missing ones are counted as lost below
            gate.decisions(expected, timeout=60)
        decided: dict[str, list[Record]] = {}
        for record in gate.all_decisions():
            rid = record.value.get("request_id")
            if rid in expected:
                decided.setdefault(rid, []).append(record)
    finally:
        for worker in supervisor.workers:
            if worker.proc is not None and worker.alive():
                worker.proc.send_signal(signal.SIGCONT)
            worker.stop()
    took = time.monotonic() - began
    lost = [rid for rid in expected if rid not in decided]
    twice = {
        rid: [r.value["reason"] for r in records] for rid, records in decided.items() if len(records) > 1
    }
    wrong = {
        rid: (expected[rid], records[0].value["reason"], records[0].value["decided_at"])
        for rid, records in decided.items()
        if records[0].value["reason"] != expected[rid]
    }
    wrong_kinds = collections.Counter((want, got) for want, got, _ in wrong.values())
    wrong_partitions = dict(sorted(collections.Counter(load.partition[rid] for rid in wrong).items()))
    times = [r.value["decided_at"] for records in decided.values() for r in records]
    in_run = [at for at in times if load.started_at <= at <= load.stopped_at]
    gap = _longest_gap(in_run)
    by_partition: dict[int, list[float]] = collections.defaultdict(list)
    for rid, records in decided.items():
        by_partition[load.partition[rid]] += [r.value["decided_at"] for r in records]
    partition_gap = max(
        (
            _longest_gap([at for at in ats if load.started_at <= at <= load.stopped_at])
            for ats in by_partition.values()
        ),
        default=0.0,
    )
    crashed = _log_lines(supervisor.workers, "Crashed")
    exits = supervisor.exits
    rejoined = [after for _, after in freezes]
    wrong_at = sorted(at - load.started_at for _, _, at in wrong.values())
    frozen_at = [round(at - load.started_at, 1) for at, _ in freezes]
    print(
        f"\nFrozen workers (SIGSTOP {FREEZE_SECONDS:.0f} s each, session timeout {SESSION_TIMEOUT:.0f} s), "
        f"{load.openers} openers in {load.stopped_at - load.started_at:.0f} s, {len(expected)} requests: "
        f"{len(lost)} lost, {len(twice)} decided twice, {len(wrong)} decided wrong {dict(wrong_kinds)}, "
        f"longest gap {gap:.1f} s (per partition {partition_gap:.1f} s), "
        f"{len(exits)} worker exits {exits}, {len(crashed)} 'Crashed' lines, "
        f"rejoined after {rejoined} s, test {took:.0f} s"
    )
    if wrong:
        print(
            f"wrong decisions from {wrong_at[0]:.1f} s to {wrong_at[-1]:.1f} s into the run "
            f"(freezes at {frozen_at} s, {FREEZE_SECONDS:.0f} s each), by partition {wrong_partitions}"
        )
        for line in _explain_wrong(gate, pnid, wrong, decided):
            print(line)
    for line in crashed[:3] + _log_lines(supervisor.workers, "CRITICAL", limit=3):
        print(line)
    record_property("zombie_requests", len(expected))
    record_property("zombie_lost", len(lost))
    record_property("zombie_decided_twice", len(twice))
    record_property("zombie_decided_wrong", len(wrong))
    record_property("zombie_longest_gap_seconds", round(gap, 1))
    record_property("zombie_longest_partition_gap_seconds", round(partition_gap, 1))
    record_property("zombie_worker_exits", len(exits))
    record_property("zombie_crashed_lines", len(crashed))
    assert lost == [], f"{len(lost)} lost, e.g. {lost[:5]}"
    assert twice == {}, list(twice.items())[:5]
    assert exits == [], f"a thawed worker exited instead of rejoining: {exits}\n" + "\n".join(crashed)
    assert crashed == []
    assert None not in rejoined, f"a thawed worker did not log 'Worker ready' again: {rejoined}"
    assert gap <= SESSION_TIMEOUT + 5
    assert wrong == {}, f"{len(wrong)} decided wrong, e.g. {list(wrong.items())[:3]}"


# -- a foreign open transaction --------------------------------------------------------------------


class _LoopThread:
    """An event loop in a thread of its own: the foreign producer outlives the harness's asyncio.run
    calls (aiokafka binds a producer to the loop it was made on)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class _ForeignTransaction:
    """Another application's transactional producer, with one transaction left open on wa.inbound."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.thread = _LoopThread()
        self.producer: AIOKafkaProducer | None = None
        self.open = False

    async def _start(self) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            transactional_id=f"foreign-{uuid.uuid4().hex[:8]}",
            transaction_timeout_ms=180_000,  # outlives the test: only the test ends it
        )
        await self.producer.start()

    async def _begin_and_send(self, topic: str, key: bytes, value: bytes, partition: int) -> int:
        assert self.producer is not None
        await self.producer.begin_transaction()
        self.open = True
        meta = await self.producer.send_and_wait(topic, value, key=key, partition=partition)
        return int(meta.offset)

    async def _end(self, commit: bool) -> None:
        assert self.producer is not None
        if self.open:
            await (self.producer.commit_transaction() if commit else self.producer.abort_transaction())
            self.open = False

    async def _stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    def start(self) -> None:
        self.thread.call(self._start())

    def begin_and_send(self, topic: str, key: bytes, value: bytes, partition: int) -> int:
        return self.thread.call(self._begin_and_send(topic, key, value, partition))

    def commit(self) -> None:
        self.thread.call(self._end(commit=True))

    def close(self) -> None:
        try:
            self.thread.call(self._end(commit=False))
            self.thread.call(self._stop())
        finally:
            self.thread.close()


def _users_on(pnid: str, partition: int, count: int, prefix: str) -> list[str]:
    users: list[str] = []
    i = 0
    while len(users) < count:
        user = f"{prefix}{i}"
        if partition_for(f"{pnid}:{user}", FOREIGN_PARTITIONS) == partition:
            users.append(user)
        i += 1
    return users


def _decide_timed(
    gate: Gate, requests: dict[str, tuple[str, dict[str, Any]]], timeout: float
) -> dict[str, tuple[Record, float]]:
    """Produce the requests (request_id -> (key, value)) and read their decisions as they come:
    request_id -> (first decision, seconds from its produce to its read). Missing ids were not
    decided within ``timeout``."""
    t = gate.topo
    produced: dict[str, float] = {}
    seen: dict[str, tuple[Record, float]] = {}
    read = [0]

    def until(records: list[Record]) -> bool:
        now = time.monotonic()
        for record in records[read[0] :]:
            rid = record.value.get("request_id") if isinstance(record.value, dict) else None
            if rid in produced and rid not in seen:
                seen[rid] = (record, now - produced[rid])
        read[0] = len(records)
        return len(seen) == len(requests)

    async def go() -> None:
        async with GateClient(gate.settings) as client:
            reader = asyncio.create_task(
                client.read([t.send.name, t.template.name, t.rejected.name], until, timeout)
            )
            await asyncio.sleep(1)  # the reader is fetching before the first request is written
            for rid, (key, value) in requests.items():
                produced[rid] = time.monotonic()
                await client.produce(t.requests.name, key, value)
            with contextlib.suppress(TimeoutError):  # the missing ones are the caller's to report
                await reader

    run(go())
    return seen


def test_foreign_open_transaction_on_inbound_holds_no_request(
    bootstrap: str, workdir: Path, record_property: Callable[[str, object], None]
) -> None:
    gate = Gate(
        bootstrap, workdir, partitions=FOREIGN_PARTITIONS, WAGATE_MAX_HOLD_SECONDS=str(int(HOLD_LIMIT))
    )
    pnid = f"ft{uuid.uuid4().hex[:6]}"
    p0 = _users_on(pnid, 0, USERS_PER_PARTITION, "a")
    p1 = _users_on(pnid, 1, USERS_PER_PARTITION, "b")
    stranger, late = _users_on(pnid, 0, 2, "x")  # the foreign event's user; a user opened after it
    start_and_wait(gate)
    foreign = _ForeignTransaction(gate.settings.kafka_bootstrap_servers)
    t = gate.topo
    began = time.monotonic()
    try:
        foreign.start()
        # The openers are acknowledged before the foreign transaction begins: readable by any
        # read_committed consumer, so the model is exact. (An event written to partition 0 after it
        # began stays invisible to every read_committed reader until it ends, whatever the gate does.)
        now = time.time()
        gate.produce_all((t.inbound.name, f"{pnid}:{u}", inbound(pnid, u, now - 60)) for u in p0 + p1)
        foreign_offset = foreign.begin_and_send(
            t.inbound.name,
            f"{pnid}:{stranger}".encode(),
            orjson.dumps(inbound(pnid, stranger, now - 60)),
            partition=0,
        )
        requests = {f"{pnid}-{u}": (f"{pnid}:{u}", text_request(pnid, u, f"{pnid}-{u}")) for u in p0 + p1}
        timed = _decide_timed(gate, requests, timeout=HOLD_LIMIT + 15)
        held_metric = gate.worker.metric_sum("wagate_decisions_past_hold_limit_total")
        # The foreign transaction commits: its event applies from then on, like the ones after it.
        foreign.commit()
        gate.produce(t.inbound.name, f"{pnid}:{late}", inbound(pnid, late, time.time() - 60))
        for user in (stranger, late):
            gate.produce(t.requests.name, f"{pnid}:{user}", text_request(pnid, user, f"{pnid}-{user}-after"))
        after_commit = {
            user: gate.decision(f"{pnid}-{user}-after", timeout=DECIDED_WITHIN).value["reason"]
            for user in (stranger, late)
        }
    finally:
        foreign.close()
        gate.worker.stop()
    took = time.monotonic() - began
    latency = {rid: seconds for rid, (_, seconds) in timed.items()}
    lat0 = [latency[f"{pnid}-{u}"] for u in p0 if f"{pnid}-{u}" in latency]
    lat1 = [latency[f"{pnid}-{u}"] for u in p1 if f"{pnid}-{u}" in latency]
    missing = sorted(set(requests) - set(timed))
    held = sorted(rid for rid, (record, _) in timed.items() if record.value.get("held_past_limit"))
    reasons = {rid: record.value["reason"] for rid, (record, _) in timed.items()}

    def fmt(values: list[float]) -> str:
        if not values:
            return "none decided"
        return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s"

    print(
        f"\nForeign transaction open on wa.inbound p0 (offset {foreign_offset}), "
        f"hold limit {HOLD_LIMIT:.0f} s: p0 {fmt(lat0)} ({len(lat0)}/{len(p0)}), "
        f"p1 {fmt(lat1)} ({len(lat1)}/{len(p1)}); "
        f"{len(held)} held_past_limit, metric {held_metric:.0f}; "
        f"reasons {dict(collections.Counter(reasons.values()))}; "
        f"after the commit {after_commit}; test {took:.0f} s"
    )
    record_property("foreign_p0_latency_max_seconds", round(max(lat0, default=-1.0), 2))
    record_property("foreign_p1_latency_max_seconds", round(max(lat1, default=-1.0), 2))
    record_property("foreign_held_past_limit", len(held))
    assert missing == [], f"not decided within {HOLD_LIMIT + 15:.0f} s: {missing}"
    assert held == [], f"decided at the hold limit: {held}"
    assert held_metric == 0
    assert max(lat0 + lat1) < DECIDED_WITHIN, f"p0 {sorted(lat0)}, p1 {sorted(lat1)}"
    assert set(reasons.values()) == {"window_open"}, reasons  # the openers before the transaction applied
    assert after_commit == {stranger: "window_open", late: "window_open"}
