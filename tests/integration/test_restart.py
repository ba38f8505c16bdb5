"""Stop the worker mid-stream (SIGTERM, then SIGKILL with its local state wiped) and start it again.

Afterwards every request has a decision, no window is forgotten or reopened, and no request is sent
twice. Under exactly_once (the default) a read_committed reader sees one decision per request; under
at_least_once a replayed request_id is rejected as a duplicate.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import inbound, start_and_wait, text_request
from .harness import Gate, Worker, free_port

HOUR = 3600.0
OPEN_USERS = 40
REQUESTS = 3000


def _load(gate: Gate, pnid: str) -> list[str]:
    now = time.time()
    t = gate.topo
    records = [
        (t.inbound.name, f"{pnid}:u{i}", inbound(pnid, f"u{i}", now - HOUR)) for i in range(OPEN_USERS)
    ]
    # "closed": open once, then Meta's 131047 closed it; it must stay closed across restarts.
    records += [
        (t.inbound.name, f"{pnid}:closed", inbound(pnid, "closed", now - 2 * HOUR)),
        (
            t.inbound.name,
            f"{pnid}:closed",
            inbound(
                pnid,
                "closed",
                now - HOUR,
                kind="status",
                type="failed",
                errors=[{"code": 131047, "title": "Re-engagement"}],
            ),
        ),
    ]
    gate.produce_many(records)
    gate.wait_consumed(t.inbound.name)
    ids = [f"{pnid}-{i}" for i in range(REQUESTS)]
    gate.produce_many(
        (t.requests.name, f"{pnid}:u{i % OPEN_USERS}", text_request(pnid, f"u{i % OPEN_USERS}", rid))
        for i, rid in enumerate(ids)
    )
    return ids


def _wait_for_some(gate: Gate, ids: list[str], count: int) -> None:
    gate.decisions(ids[:count], timeout=120)


def _check(gate: Gate, pnid: str, ids: list[str]) -> Counter[str]:
    try:
        gate.decisions(ids, timeout=180)
    except TimeoutError:
        gate.worker.dump_stacks()  # a stuck worker leaves its task stacks in its log
        raise
    gate.wait_consumed(gate.topo.requests.name, timeout=120)  # every replay has been decided too
    decided: dict[str, list] = {rid: [] for rid in ids}  # type: ignore[type-arg]
    for record in gate.all_decisions():
        if record.value["request_id"] in decided:
            decided[record.value["request_id"]].append(record)
    # A request written twice (a producer's retry) is rightly decided twice: send, then
    # duplicate_request. Only decisions beyond its copies on the topic count as decided twice.
    copies = Counter(
        r.value.get("request_id") for r in gate.read_all(gate.topo.requests.name) if isinstance(r.value, dict)
    )
    outcome: Counter[str] = Counter()
    for rid, records in decided.items():
        sends = [r for r in records if r.value["route"] == "send"]
        assert len(sends) == 1, f"{rid}: {[r.value['reason'] for r in records]}"
        assert sends[0].value["reason"] == "window_open", "a window was forgotten"
        extra = [r.value["reason"] for r in records if r.value["route"] != "send"]
        assert set(extra) <= {"duplicate_request"}, extra
        outcome["duplicates"] += max(0, len(records) - copies[rid])
        outcome["input_copies"] += copies[rid] - 1
    if gate.env.get("WAGATE_PROCESSING_GUARANTEE", "exactly_once") == "exactly_once":
        assert outcome["duplicates"] == 0, f"{outcome['duplicates']} requests decided twice"
    # After the restart: open windows are remembered, the closed one stays closed.
    gate.produce(gate.topo.requests.name, f"{pnid}:u1", text_request(pnid, "u1", f"{pnid}-after-open"))
    gate.produce(
        gate.topo.requests.name, f"{pnid}:closed", text_request(pnid, "closed", f"{pnid}-after-closed")
    )
    assert gate.decision(f"{pnid}-after-open").value["reason"] == "window_open"
    assert gate.decision(f"{pnid}-after-closed").value["reason"] == "window_closed"
    return outcome


@pytest.fixture
def own_gate(bootstrap: str, workdir: Path) -> Gate:
    return Gate(bootstrap, workdir)


def _stop_mid_stream_and_restart(gate: Gate, pnid: str, sig: int, wipe_local_state: bool) -> Counter[str]:
    start_and_wait(gate)
    ids = _load(gate, pnid)
    _wait_for_some(gate, ids, 300)
    exit_code = gate.worker.signal(sig)
    if sig == signal.SIGTERM:
        assert exit_code == 0, gate.worker.log_tail()
    if wipe_local_state:
        # A new machine: the RocksDB files are gone, state must come back from the changelog topic.
        shutil.rmtree(gate.settings.data_dir, ignore_errors=True)
    gate.worker = gate.new_worker()
    start_and_wait(gate, timeout=180)
    try:
        return _check(gate, pnid, ids)
    finally:
        gate.worker.stop()


def test_sigterm_mid_stream_then_restart(
    own_gate: Gate, record_property: Callable[[str, object], None]
) -> None:
    outcome = _stop_mid_stream_and_restart(own_gate, "term", signal.SIGTERM, wipe_local_state=False)
    record_property("sigterm_duplicate_decisions", outcome["duplicates"])
    print(f"\nSIGTERM restart: {REQUESTS} requests, {outcome['duplicates']} duplicate decisions")
    # A graceful stop commits what it has decided: nothing is decided twice.
    assert outcome["duplicates"] == 0


def test_sigkill_mid_stream_then_restart_from_the_changelog(
    own_gate: Gate, record_property: Callable[[str, object], None]
) -> None:
    outcome = _stop_mid_stream_and_restart(own_gate, "kill", signal.SIGKILL, wipe_local_state=True)
    record_property("sigkill_duplicate_decisions", outcome["duplicates"])
    print(
        f"\nSIGKILL restart, local state deleted: {REQUESTS} requests, {outcome['duplicates']} decided twice"
    )


def test_sigkill_mid_stream_at_least_once_replays_are_rejected_as_duplicates(
    bootstrap: str, workdir: Path, record_property: Callable[[str, object], None]
) -> None:
    """The at_least_once guarantee: no transactions; what was decided after the last commit is decided
    again on replay, as duplicate_request (never a second send)."""
    gate = Gate(bootstrap, workdir, WAGATE_PROCESSING_GUARANTEE="at_least_once")
    outcome = _stop_mid_stream_and_restart(gate, "alo", signal.SIGKILL, wipe_local_state=False)
    record_property("sigkill_at_least_once_duplicate_decisions", outcome["duplicates"])
    print(
        f"\nSIGKILL restart, at_least_once: {REQUESTS} requests, {outcome['duplicates']} duplicate_request "
        "rejections (replays after the last commit)"
    )


class _Trickle(threading.Thread):
    """Keeps producing requests for the open users, in small chunks, until told to stop."""

    def __init__(self, gate: Gate, pnid: str) -> None:
        super().__init__(daemon=True)
        self.gate, self.pnid = gate, pnid
        self.ids: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            chunk = [f"{self.pnid}-t{n + i}" for i in range(100)]
            self.gate.produce_many(
                (
                    self.gate.topo.requests.name,
                    f"{self.pnid}:u{i % OPEN_USERS}",
                    text_request(self.pnid, f"u{i % OPEN_USERS}", rid),
                )
                for i, rid in enumerate(chunk, start=n)
            )
            self.ids += chunk
            n += len(chunk)
            time.sleep(0.2)


def test_second_worker_joins_mid_stream_then_leaves(
    own_gate: Gate, workdir: Path, record_property: Callable[[str, object], None]
) -> None:
    """Two rebalances under load: partitions move to a new worker and back while requests flow."""
    gate = own_gate
    start_and_wait(gate)
    ids = _load(gate, "rebal")
    trickle = _Trickle(gate, "rebal")
    trickle.start()
    second_settings = gate.settings.model_copy(
        update={"data_dir": workdir / gate.prefix / "state-second", "web_port": free_port()}
    )
    second = Worker(second_settings, workdir / f"{gate.prefix}second.log")
    try:
        second.start()
        second.wait_for_log("Worker ready", timeout=120)
        time.sleep(3)  # both workers deciding
        decided_by_second = second.metric_sum("wagate_decisions_total")
        assert decided_by_second > 0, "the second worker was given no partitions"
        assert second.signal(signal.SIGTERM) == 0, second.log_tail()
        time.sleep(3)  # partitions back on the first worker, requests still coming
    finally:
        trickle.halt.set()
        trickle.join()
        second.stop()
    try:
        outcome = _check(gate, "rebal", ids + trickle.ids)
    finally:
        gate.worker.stop()
    record_property("rebalance_duplicate_decisions", outcome["duplicates"])
    print(
        f"\nRebalance: {len(ids) + len(trickle.ids)} requests, {decided_by_second} on the second worker, "
        f"{outcome['duplicates']} duplicate decisions"
    )


def _silence_after_kill(gate: Gate, pnid: str, label: str) -> float:
    """SIGKILL the worker under a steady load and start it again at once: every request decided (no
    second send), and the seconds from the kill to the next decision."""
    start_and_wait(gate)
    ids = _load(gate, pnid)
    trickle = _Trickle(gate, pnid)
    trickle.start()
    try:
        _wait_for_some(gate, ids, 300)
        killed_at = time.time()
        gate.worker.signal(signal.SIGKILL)
        gate.worker = gate.new_worker()
        gate.worker.start()
        time.sleep(15)  # requests keep coming while it starts
    finally:
        trickle.halt.set()
        trickle.join()
    try:
        outcome = _check(gate, pnid, ids + trickle.ids)
        after = [r.value["decided_at"] for r in gate.all_decisions() if r.value["decided_at"] > killed_at]
    finally:
        gate.worker.stop()
    silence = float(min(after)) - killed_at
    duplicates = outcome["duplicates"]
    print(f"\nSIGKILL + restart ({label}): no decision for {silence:.1f} s; {duplicates} duplicates")
    return silence


def test_sigkill_then_restart_with_the_same_instance_id_decides_again_within_seconds(
    bootstrap: str, workdir: Path, record_property: Callable[[str, object], None]
) -> None:
    gate = Gate(bootstrap, workdir, WAGATE_INSTANCE_ID="worker-1")
    silence = _silence_after_kill(gate, "static", "static membership")
    record_property("static_membership_silence_seconds", round(silence, 1))
    # Static membership: the restarted worker takes its partitions back without waiting for the dead
    # member's session to expire; what is left is the worker's own start-up.
    assert silence <= 10.0


def test_sigkill_then_restart_without_an_instance_id_waits_one_session_timeout(
    bootstrap: str, workdir: Path, record_property: Callable[[str, object], None]
) -> None:
    gate = Gate(bootstrap, workdir, WAGATE_SESSION_TIMEOUT_SECONDS="10")
    silence = _silence_after_kill(gate, "dynamic", "dynamic membership, 10 s session timeout")
    record_property("dynamic_membership_silence_seconds", round(silence, 1))
    # The group waits for the dead member's session to expire before the partitions move (it was a
    # minute with Faust's default session timeout), then the rebalance and the worker's start-up.
    assert 8.0 <= silence <= 25.0


def test_a_worker_killed_for_good_its_standby_partner_takes_over(
    bootstrap: str, workdir: Path, record_property: Callable[[str, object], None]
) -> None:
    """Two workers with a standby copy of each other's state; one is killed and stays dead: the
    survivor decides every request of its partitions, with every window it knew."""
    env: dict[str, Any] = {"WAGATE_STANDBY_REPLICAS": "1", "WAGATE_SESSION_TIMEOUT_SECONDS": "10"}
    gate = Gate(bootstrap, workdir, partitions=4, replication=1, min_insync=None, **env)
    pnid = "standby"
    start_and_wait(gate)
    second = Worker(
        gate.settings.model_copy(
            update={"data_dir": workdir / gate.prefix / "second", "web_port": free_port()}
        ),
        workdir / f"{gate.prefix}second.log",
        **env,
    )
    second.start()
    try:
        second.wait_for_log("Worker ready", timeout=120)
        ids = _load(gate, pnid)
        trickle = _Trickle(gate, pnid)
        trickle.start()
        try:
            _wait_for_some(gate, ids, 300)
            assert second.metric_sum("wagate_decisions_total") > 0, "the second worker was given nothing"
            killed_at = time.time()
            second.signal(signal.SIGKILL)
            time.sleep(20)
        finally:
            trickle.halt.set()
            trickle.join()
        _check(gate, pnid, ids + trickle.ids)
        first_after: dict[int, float] = {}
        for record in gate.all_decisions():
            at = record.value["decided_at"]
            if at > killed_at and at < first_after.get(record.partition, float("inf")):
                first_after[record.partition] = at
    finally:
        second.stop()
        gate.worker.stop()
    takeover = max(first_after.values()) - killed_at
    record_property("standby_takeover_seconds", round(takeover, 1))
    print(
        f"\nWorker killed for good: its partitions decided again after {takeover:.1f} s (standby replicas 1)"
    )
    assert len(first_after) == gate.settings.partitions
    assert takeover <= 30.0
