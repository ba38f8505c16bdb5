"""Exactly-once across crashes: SIGKILL at ten random points of a run at about 1,000 requests/s.

The worker is killed with SIGKILL and restarted at once (same RocksDB folder, static membership),
ten times, while a load generator keeps writing. The load is built so that a model of the inputs
says what every decision must be:

- 40 users whose windows were opened before the run: their requests are ``send``/``window_open``;
- per chunk, a new user whose opener is acknowledged before their request is written (the ordering
  contract): ``send``/``window_open``, also when the opener and the request are replayed after a kill;
- per chunk, a user who never wrote: ``no_window``.

Checked with a read_committed reader: every request has exactly one decision, and it is the model's;
nothing is sent twice. Afterwards a probe request for every user the run opened is decided against
the window state the kills left behind, which must equal the model. Reported: the time from each
kill to the worker's next decision.
"""

from __future__ import annotations

import random
import signal
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from .conftest import inbound, start_and_wait, text_request
from .harness import Gate, PacedLoad

OPEN_USERS = 1_000
CHUNK = 100  # requests per chunk: one for a newly opened user, one for a never-seen one
CHUNKS_PER_SECOND = 10  # about 1,000 requests/s
KILLS = 10
SEED = 20261202


class _Load(PacedLoad):
    """Chunks of requests at a steady pace, each preceded by the opener of a new user."""

    def __init__(self, gate: Gate, pnid: str) -> None:
        super().__init__(gate.settings.kafka_bootstrap_servers, CHUNKS_PER_SECOND)
        self.gate, self.pnid = gate, pnid
        self.opened: list[str] = []  # users the run opened

    async def tick(self, producer: AIOKafkaProducer, n: int) -> None:
        t, pnid = self.gate.topo, self.pnid
        fresh, never = f"v{n}", f"n{n}"
        opener = inbound(pnid, fresh, time.time() - 5)
        await producer.send_and_wait(t.inbound.name, orjson.dumps(opener), key=f"{pnid}:{fresh}".encode())
        self.opened.append(fresh)
        batch: list[tuple[str, str, str]] = [(fresh, f"{pnid}-{n}-fresh", "window_open")]
        batch.append((never, f"{pnid}-{n}-never", "no_window"))
        batch += [(f"u{i % OPEN_USERS}", f"{pnid}-{n}-{i}", "window_open") for i in range(CHUNK - len(batch))]
        for user, rid, reason in batch:
            value = orjson.dumps(text_request(pnid, user, rid))
            await producer.send(t.requests.name, value, key=f"{pnid}:{user}".encode())
            self.expected[rid] = reason
        await producer.flush()


def _decided(gate: Gate) -> float:
    try:
        return gate.worker.metric_sum("wagate_decisions_total")
    except OSError:  # still starting: /metrics not served yet
        return 0.0


def test_sigkill_at_ten_random_points_every_request_decided_exactly_once(
    bootstrap: str, workdir: Path, record_property: Callable[[str, object], None]
) -> None:
    rng = random.Random(SEED)
    gate = Gate(bootstrap, workdir, WAGATE_INSTANCE_ID="eos-worker")
    assert gate.settings.processing_guarantee == "exactly_once"  # the default
    pnid = "eos"
    now = time.time()
    gate.produce_many(
        (gate.topo.inbound.name, f"{pnid}:u{i}", inbound(pnid, f"u{i}", now - 3_600))
        for i in range(OPEN_USERS)
    )
    start_and_wait(gate)
    load = _Load(gate, pnid)
    load.start()
    silences: list[float] = []
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(1.0, 5.0))  # a random point of the run
            killed_at = time.monotonic()
            gate.worker.signal(signal.SIGKILL)
            gate.worker = gate.new_worker()
            gate.worker.start()
            deadline = killed_at + 60
            while _decided(gate) <= 0:
                assert time.monotonic() < deadline, gate.worker.log_tail()
                assert gate.worker.alive(), gate.worker.log_tail()
                time.sleep(0.05)
            silences.append(time.monotonic() - killed_at)
        time.sleep(2)
    finally:
        load.halt.set()
        load.join()
    assert load.error is None, load.error
    try:
        expected = dict(load.expected)
        gate.decisions(expected, timeout=180)
        gate.wait_consumed(gate.topo.requests.name, timeout=120)  # replays decided too, if any
        decided: dict[str, list[tuple[str, str]]] = {}
        for record in gate.all_decisions():
            rid = record.value["request_id"]
            decided.setdefault(rid, []).append((record.value["route"], record.value["reason"]))
        twice = {rid: routes for rid, routes in decided.items() if rid in expected and len(routes) > 1}
        lost = [rid for rid in expected if rid not in decided]
        wrong = {
            rid: decided[rid] for rid in expected if rid in decided and decided[rid][0][1] != expected[rid]
        }
        sends = sum(1 for rid in expected for route, _ in decided.get(rid, []) if route == "send")
        # The state the kills left behind: every window the run opened is open, the others are not.
        probes = {f"{pnid}-probe-{user}": user for user in load.opened[:: max(1, len(load.opened) // 200)]}
        probes[f"{pnid}-probe-never"] = "never-wrote"
        gate.produce_many(
            (gate.topo.requests.name, f"{pnid}:{user}", text_request(pnid, user, rid))
            for rid, user in probes.items()
        )
        probe_reasons = {rid: records[0].value["reason"] for rid, records in gate.decisions(probes).items()}
        # The group's lag comes back to 0 (offsets past the commit markers are committed too).
        deadline = time.monotonic() + 30
        while (lag := gate.worker.metric_sum("wagate_consumer_lag")) > 0 and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        gate.worker.stop()
    requests = len(expected)
    print(
        f"\nSIGKILL x{KILLS} at random points, {requests} requests at ~{CHUNK * CHUNKS_PER_SECOND}/s: "
        f"{len(lost)} lost, {len(twice)} decided twice, {len(wrong)} decided wrong, "
        f"kill -> next decision median {statistics.median(silences):.1f} s, max {max(silences):.1f} s"
    )
    record_property("eos_kills", KILLS)
    record_property("eos_requests", requests)
    record_property("eos_decided_twice", len(twice))
    record_property("eos_silence_median_seconds", round(statistics.median(silences), 1))
    record_property("eos_silence_max_seconds", round(max(silences), 1))
    assert lost == []
    assert twice == {}, list(twice.items())[:5]
    assert wrong == {}, list(wrong.items())[:5]
    assert sends == sum(1 for reason in expected.values() if reason == "window_open")
    assert probe_reasons.pop(f"{pnid}-probe-never") == "no_window"
    assert set(probe_reasons.values()) == {"window_open"}
    assert max(silences) <= 10.0
    assert lag == 0
