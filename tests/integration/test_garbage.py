"""Garbage mixed into a load on the real broker: the worker never stops, every record is accounted
for (a decision or a dead letter naming it), and the valid requests are decided as usual."""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path
from typing import Any

from .conftest import inbound, start_and_wait, text_request
from .harness import Gate

VALID = 1_000


def _garbage(rnd: random.Random, pnid: str, n: int) -> tuple[bytes | None, bytes | None, str | None]:
    """(key, value, request_id if one is readable) for garbage record number ``n``."""
    kinds: list[Any] = [
        lambda: (None, rnd.randbytes(rnd.randint(1, 300)), None),  # random bytes
        lambda: (b"k", b"[" * 3_000 + b"]" * 3_000, None),  # deep nesting
        lambda: (b"k", b'{"request_id": "r", "timestamp": NaN}', None),  # NaN: not JSON
        lambda: (b"k", None, None),  # a tombstone
        lambda: (rnd.randbytes(12) + b"\xff", b'{"to": 5}', None),  # key not UTF-8, no request_id
    ]
    rid = f"{pnid}-g{n}"
    readable: list[Any] = [  # a readable request_id: rejected as invalid_request, not dead-lettered
        lambda: (b"k", text_request(pnid, "x", rid, origin=7), rid),  # wrong type
        lambda: (b"k", text_request(pnid, "x", rid, not_after=-1e18, created_at="yesterday"), rid),
        lambda: (b"k", {**text_request(pnid, "x", rid), "message": "x" * 900_000}, rid),  # 900 KB
    ]
    key, value, readable_id = rnd.choice(kinds + readable)()
    return key, value, readable_id


def test_a_load_with_ten_percent_garbage_is_all_accounted_for(bootstrap: str, workdir: Path) -> None:
    gate = Gate(bootstrap, workdir)  # topics of its own: the garbage stays out of the shared ones
    start_and_wait(gate)
    try:
        _run(gate)
    finally:
        gate.worker.stop()


def _run(gate: Gate) -> None:
    rnd = random.Random(11)
    pnid = f"pn{uuid.uuid4().hex[:8]}"
    t = gate.topo
    now = time.time()
    valid = [f"{pnid}-v{i}" for i in range(VALID)]
    records: list[tuple[str, Any, Any]] = [
        (t.inbound.name, f"{pnid}:u{i}", inbound(pnid, f"u{i}", now - 60)) for i in range(50)
    ]
    garbage_requests: dict[int, str | None] = {}  # position in the load -> readable request_id
    garbage_inbound: list[int] = []
    for i, rid in enumerate(valid):
        records.append((t.requests.name, f"{pnid}:u{i % 50}", text_request(pnid, f"u{i % 50}", rid)))
        if i % 10 == 0:  # one in ten: garbage, on requests and on inbound in turn
            key, value, readable_id = _garbage(rnd, pnid, i)
            if (i // 10) % 2:
                garbage_requests[len(records)] = readable_id
                records.append((t.requests.name, key, value))
            else:
                garbage_inbound.append(len(records))
                records.append((t.inbound.name, key, value if value is not None else b"\x00"))
    positions = gate.produce_all(records)

    decided = gate.decisions(valid + [rid for rid in garbage_requests.values() if rid], timeout=180)
    assert all(len(decided[rid]) == 1 for rid in valid), "a valid request was lost or decided twice"
    readable = [rid for rid in garbage_requests.values() if rid]
    assert {decided[rid][0].value["reason"] for rid in readable} == {"invalid_request"}
    big = [r for rid in readable for r in decided[rid] if "is not echoed" in r.value["detail"]]
    assert all(r.value["request"] is None for r in big)

    expected = {(t.requests.name, *positions[n]) for n, rid in garbage_requests.items() if rid is None}
    expected |= {(t.inbound.name, *positions[n]) for n in garbage_inbound}

    def lettered(letters: list[Any]) -> set[tuple[str, int, int]]:
        found = {(r.value["topic"], r.value["partition"], r.value["offset"]) for r in letters if r.value}
        return found & expected

    letters = gate.dead_letters(lambda records: lettered(records) == expected, timeout=120)
    assert lettered(letters) == expected
    assert len(readable) + len(expected) == len(garbage_requests) + len(garbage_inbound)
    assert gate.worker.alive(), gate.worker.log_tail()
    print(
        f"\nGarbage: {len(garbage_requests) + len(garbage_inbound)} bad records in a load of {VALID}: "
        f"{len(readable)} rejected as invalid_request, {len(expected)} dead-lettered, none lost"
    )


def test_unusable_records_on_compacted_topics_are_dead_lettered_and_never_stop_a_worker(
    bootstrap: str, workdir: Path
) -> None:
    """wa.contacts, wa.templates and wa.numbers are compacted and read whole at every start: one record
    the gate cannot use (a valid ContactRecord whose contact has no ':' crashed every worker on every
    restart) must be skipped, counted and dead-lettered, and the worker must keep deciding."""
    gate = Gate(bootstrap, workdir)
    t = gate.topo
    pnid = f"pn{uuid.uuid4().hex[:8]}"
    bad_contact = {
        "phone_number_id": pnid,
        "identifier": "US.1",
        "contact": "no-colon",
        "identifiers": ["US.1"],
        "updated_at": time.time(),
    }
    bad = [
        (t.contacts.name, f"{pnid}:US.1", bad_contact),
        (t.templates.name, "waba:t:en", b"not json"),
        (t.numbers.name, pnid, {"phone_number_id": pnid}),  # no waba_id
    ]
    positions = set()
    for (topic, _, _), (partition, offset) in zip(bad, gate.produce_all(bad), strict=True):
        positions.add((topic, partition, offset))
    try:
        for _restart in range(2):  # read at start, and again at every restart
            start_and_wait(gate)
            assert gate.worker.alive(), gate.worker.log_tail()
            assert gate.worker.metric_sum("wagate_registry_skipped_records_total") == len(bad)
            gate.worker.stop()
            assert "Crashed" not in gate.worker.log_path.read_text(errors="replace")
            gate.worker = gate.new_worker()

        def lettered(letters: list[Any]) -> set[tuple[str, int, int]]:
            return {(r.value["topic"], r.value["partition"], r.value["offset"]) for r in letters if r.value}

        letters = gate.dead_letters(lambda records: positions <= lettered(records), timeout=60)
        assert positions <= lettered(letters)
        errors = {r.value["topic"]: r.value["error"] for r in letters if r.value}
        assert "contact must be '<phone_number_id>:<identifier>'" in errors[t.contacts.name]
        assert "waba_id" in errors[t.numbers.name]
    finally:
        gate.worker.stop()
