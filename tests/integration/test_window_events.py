"""wa.windows through the real broker: opened / expiring / closed, each once per window, across a
restart that wipes the worker's local state (the timetable is rebuilt from the changelog).

Windows are 40 s long here (settings, as the issue asks), never hours slept away.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streams.client import Record
from streams.policy.keys import contact_key, partition_for

from .conftest import inbound, start_and_wait
from .harness import Gate

WINDOW = 40.0
LEAD = 15.0
CLOSE_131047: dict[str, Any] = {
    "kind": "status",
    "type": "failed",
    "errors": [{"code": 131047, "title": "Re-engagement"}],
}


def _by_contact(records: list[Record]) -> dict[str, list[tuple[str, Any, Any]]]:
    events: dict[str, list[tuple[str, Any, Any]]] = defaultdict(list)
    for record in records:
        value = record.value
        events[value["contact"]].append((value["event"], value["at"], value["expires_at"]))
    return events


def _has(contact: str, event: str) -> Callable[[list[Record]], bool]:
    return lambda records: (event, contact) in {(r.value["event"], r.value["contact"]) for r in records}


def test_each_window_event_once_across_a_restart_from_the_changelog(bootstrap: str, workdir: Path) -> None:
    gate = Gate(
        bootstrap,
        workdir,
        WAGATE_WINDOW_SECONDS=str(WINDOW),
        WAGATE_WINDOW_EVENT_LEAD_SECONDS=str(LEAD),
        WAGATE_SAFETY_MARGIN_SECONDS="3",
        WAGATE_WINDOW_EVENT_TICK_SECONDS="0.2",
    )
    windows = gate.topo.windows.name
    start_and_wait(gate)
    pnid = "wev"
    a, b, c, old, status_only = (contact_key(pnid, user) for user in ("a", "b", "c", "old", "status"))
    t0 = time.time()
    inbound_topic = gate.topo.inbound.name
    gate.produce_many(
        [
            (inbound_topic, a, inbound(pnid, "a", t0)),
            (inbound_topic, b, inbound(pnid, "b", t0)),
            (inbound_topic, b, inbound(pnid, "b", t0 + 6)),  # a refresh: the window now ends 6 s later
            (inbound_topic, c, inbound(pnid, "c", t0 - 10)),
            (inbound_topic, c, inbound(pnid, "c", t0 - 5, **CLOSE_131047)),  # Meta closed it
            (inbound_topic, old, inbound(pnid, "old", t0 - 2 * 86_400)),  # ended long ago: no events
            (inbound_topic, status_only, inbound(pnid, "status", t0, kind="status", type="delivered")),
        ]
    )
    try:
        gate.read_until(windows, _has(a, "expiring"), timeout=60)  # due at t0 + 25
        # Windows open on this worker's partitions: a and b (c was closed by Meta).
        assert gate.worker.metric_sum("wagate_open_windows") == 2
        assert gate.worker.metric_sum("wagate_window_events_total") >= 5
        exit_code = gate.worker.signal(signal.SIGTERM)
        assert exit_code == 0, gate.worker.log_tail()
    finally:
        gate.worker.stop()
    # A new machine: the RocksDB files are gone; b's expiring and a's closed fall due while it starts.
    shutil.rmtree(gate.settings.data_dir, ignore_errors=True)
    gate.worker = gate.new_worker()
    start_and_wait(gate, timeout=180)
    try:
        gate.read_until(windows, _has(b, "closed"), timeout=120)  # due at t0 + 46
        time.sleep(2)  # ten ticks more: room for a duplicate to show
        records = gate.read_all(windows)
        assert gate.worker.metric_sum("wagate_open_windows") == 0
    finally:
        gate.worker.stop()

    events = _by_contact(records)
    approx = pytest.approx
    assert events[a] == [
        ("opened", approx(t0), approx(t0 + WINDOW)),
        ("expiring", approx(t0 + WINDOW - LEAD), approx(t0 + WINDOW)),
        ("closed", approx(t0 + WINDOW), approx(t0 + WINDOW)),
    ]
    assert events[b] == [
        ("opened", approx(t0), approx(t0 + WINDOW)),
        ("expiring", approx(t0 + 6 + WINDOW - LEAD), approx(t0 + 6 + WINDOW)),
        ("closed", approx(t0 + 6 + WINDOW), approx(t0 + 6 + WINDOW)),
    ]
    assert events[c] == [
        ("opened", approx(t0 - 10), approx(t0 - 10 + WINDOW)),
        ("closed", approx(t0 - 5), approx(t0 - 5)),
    ]
    assert old not in events and status_only not in events
    assert set(events) <= {a, b, c}, "events for contacts this test never touched"
    for record in records:  # keyed and partitioned like the contact's requests (contract section 1)
        assert record.key == record.value["contact"].encode()
        assert record.partition == partition_for(record.value["contact"], gate.settings.partitions)
