"""wa.windows: which events are due when (pure policy), and the scheduler's timetable across restarts
and rebalances, driven by a clock the test controls."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.agents.windows import Ownership, WindowScheduler
from streams.models import InboundEvent, WindowEvent
from streams.policy.rules import WindowRules
from streams.policy.window import EMPTY_STATE, ContactState, InboundEffect, apply_inbound
from streams.policy.window_events import due_events, next_event_at, opened_event

from .factories import DAY, HOUR, T0, inbound

RULES = WindowRules()  # 24 h window, expiring 1 h before the end
CLOSE_131047: dict[str, Any] = {
    "kind": "status",
    "type": "failed",
    "errors": [{"code": 131047, "title": "Re-engagement"}],
}


def opened_at(ts: float, now: float = T0) -> ContactState:
    state, effect = apply_inbound(EMPTY_STATE, inbound(ts), now, RULES)
    assert effect is InboundEffect.OPENED
    return state


def test_opened_event_carries_the_window_it_opened() -> None:
    event = opened_event("pn1:u1", opened_at(T0 - HOUR), RULES)
    assert (event.event, event.at, event.last_inbound_at, event.expires_at) == (
        "opened",
        T0 - HOUR,
        T0 - HOUR,
        T0 - HOUR + DAY,
    )


def test_expiring_is_due_lead_before_the_end_then_closed_at_the_end_each_once() -> None:
    state = opened_at(T0)
    end = T0 + DAY
    assert next_event_at(state, T0, RULES) == end - HOUR
    assert due_events("c", state, end - HOUR - 1, RULES) == ([], state)
    events, state = due_events("c", state, end - HOUR, RULES)
    assert [(e.event, e.at, e.expires_at) for e in events] == [("expiring", end - HOUR, end)]
    assert due_events("c", state, end - 1, RULES)[0] == []  # once
    assert next_event_at(state, end - 1, RULES) == end
    events, state = due_events("c", state, end + 5, RULES)
    assert [(e.event, e.at, e.expires_at) for e in events] == [("closed", end, end)]
    assert due_events("c", state, end + 10, RULES)[0] == []
    assert next_event_at(state, end + 10, RULES) is None


def test_a_refresh_before_the_rescue_point_moves_it_and_one_after_it_gets_its_own() -> None:
    state = opened_at(T0)
    state, effect = apply_inbound(state, inbound(T0 + 2 * HOUR, event_id="m2"), T0 + 2 * HOUR, RULES)
    assert effect is InboundEffect.REFRESHED
    assert next_event_at(state, T0 + 2 * HOUR, RULES) == T0 + 2 * HOUR + DAY - HOUR
    events, state = due_events("c", state, T0 + 2 * HOUR + DAY - HOUR, RULES)
    assert [e.expires_at for e in events] == [T0 + 2 * HOUR + DAY]
    # The user writes again in the last hour: a new end, a new rescue point.
    late = T0 + 2 * HOUR + DAY - 30 * 60
    state, _ = apply_inbound(state, inbound(late, event_id="m3"), late, RULES)
    events, state = due_events("c", state, late + DAY - HOUR, RULES)
    assert [(e.event, e.expires_at) for e in events] == [("expiring", late + DAY)]


def test_meta_closing_the_window_publishes_closed_at_once_and_no_expiring() -> None:
    state = opened_at(T0)
    state, effect = apply_inbound(state, inbound(T0 + HOUR, **CLOSE_131047), T0 + HOUR, RULES)
    assert effect is InboundEffect.CLOSED
    assert next_event_at(state, T0 + HOUR, RULES) == T0 + HOUR
    events, state = due_events("c", state, T0 + HOUR, RULES)
    assert [(e.event, e.at) for e in events] == [("closed", T0 + HOUR)]


def test_a_window_that_ended_longer_ago_than_the_max_delay_is_never_published() -> None:
    state = opened_at(T0 - 3 * DAY, now=T0 - 3 * DAY)
    assert next_event_at(state, T0, RULES) is None
    assert due_events("c", state, T0, RULES)[0] == []


def test_a_contact_that_never_wrote_has_no_events() -> None:
    state, _ = apply_inbound(EMPTY_STATE, inbound(T0, kind="status", type="delivered"), T0, RULES)
    assert next_event_at(state, T0, RULES) is None
    assert due_events("c", state, T0 + 2 * DAY, RULES)[0] == []


def test_marks_survive_the_state_encoding() -> None:
    _, state = due_events("c", opened_at(T0), T0 + DAY, RULES)
    assert ContactState.from_bytes(state.to_bytes()) == state
    assert state.closed_sent_for == T0 + DAY


# -- the scheduler, with the table, the clock and the ownership in the test's hands ------------------

SHORT = WindowRules(window_seconds=100.0, safety_margin_seconds=5.0, event_lead_seconds=30.0)
CONTACTS = ["pn:a", "pn:b", "pn:c"]


@dataclass
class Worker:
    """What the app does around the scheduler: the inbound agent's state writes and opened events."""

    rules: WindowRules
    now: float = T0
    generation: int = 1
    table: dict[str, ContactState] = field(default_factory=dict)
    published: list[WindowEvent] = field(default_factory=list)
    scheduler: WindowScheduler = field(init=False)

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """A new process on the same table: the timetable is gone and must be rebuilt."""
        self.scheduler = WindowScheduler(
            rules=self.rules,
            clock=lambda: self.now,
            ownership=lambda: Ownership(self.generation, frozenset({0})),
            load=lambda partition, key: self.table.get(key, EMPTY_STATE),
            scan=lambda partition: iter(list(self.table.items())),
            publish=self._publish,
        )

    async def _publish(
        self, partition: int, key: str, events: list[WindowEvent], marked: ContactState
    ) -> None:
        self.table[key] = marked
        self.published.extend(events)

    def inbound(self, key: str, event: InboundEvent) -> None:
        state = self.table.get(key, EMPTY_STATE)
        new, effect = apply_inbound(state, event, self.now, self.rules)
        if new is not state:
            self.table[key] = new
            self.scheduler.watch(0, key, new)
        if effect is InboundEffect.OPENED:
            self.published.append(opened_event(key, new, self.rules))

    def tick(self) -> None:
        asyncio.run(self.scheduler.tick())


def test_the_scheduler_publishes_each_event_once_across_a_restart_and_a_rebalance() -> None:
    worker = Worker(SHORT)
    worker.tick()  # builds the (empty) timetable
    worker.inbound("pn:a", inbound(T0))
    worker.now = T0 + 75
    worker.tick()
    assert [e.event for e in worker.published] == ["opened", "expiring"]
    worker.restart()
    worker.tick()
    worker.generation += 1  # a rebalance: rebuilt again
    worker.tick()
    assert [e.event for e in worker.published] == ["opened", "expiring"]
    worker.now = T0 + 100
    worker.tick()
    worker.restart()
    worker.tick()
    assert [e.event for e in worker.published] == ["opened", "expiring", "closed"]
    assert worker.scheduler.open_windows == 0


def test_the_scheduler_publishes_nothing_while_a_rebalance_is_in_progress() -> None:
    worker = Worker(SHORT)
    worker.tick()
    worker.inbound("pn:a", inbound(T0))
    worker.scheduler.ownership = lambda: None
    worker.now = T0 + 200
    worker.tick()
    assert [e.event for e in worker.published] == ["opened"]
    worker.scheduler.ownership = lambda: Ownership(2, frozenset({0}))
    worker.tick()
    assert [e.event for e in worker.published] == ["opened", "closed"]


def test_open_windows_counts_windows_open_on_the_owned_partitions() -> None:
    worker = Worker(SHORT)
    worker.tick()
    worker.inbound("pn:a", inbound(T0))
    worker.inbound("pn:b", inbound(T0 - 50))
    worker.inbound("pn:c", inbound(T0, kind="status", type="read"))
    assert worker.scheduler.open_windows == 2
    worker.restart()
    worker.tick()
    assert worker.scheduler.open_windows == 2
    worker.now = T0 + 60
    worker.tick()
    assert worker.scheduler.open_windows == 1


steps = st.lists(
    st.one_of(
        st.tuples(st.just("message"), st.sampled_from(CONTACTS), st.floats(-150, 10)),
        st.tuples(st.just("close"), st.sampled_from(CONTACTS), st.floats(-150, 0)),
        st.tuples(st.just("advance"), st.just(""), st.floats(0, 120)),
        st.tuples(st.just("restart"), st.just(""), st.just(0.0)),
        st.tuples(st.just("rebalance"), st.just(""), st.just(0.0)),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_every_window_gets_one_closed_and_at_most_one_expiring_whatever_happens(
    script: list[tuple[str, str, float]],
) -> None:
    worker = Worker(SHORT)
    worker.tick()
    for n, (step, contact, value) in enumerate(script):
        if step == "message":
            worker.inbound(contact, inbound(worker.now + value, event_id=f"m{n}"))
        elif step == "close":
            worker.inbound(contact, inbound(worker.now + value, event_id=f"c{n}", **CLOSE_131047))
        elif step == "advance":
            worker.now += value
        elif step == "restart":
            worker.restart()
        else:
            worker.generation += 1
        worker.tick()
    worker.now += SHORT.window_seconds + 60  # messages are up to 10 s ahead of the clock
    worker.tick()

    counts = Counter((e.contact, e.event, e.expires_at) for e in worker.published if e.event != "opened")
    assert all(count == 1 for count in counts.values()), counts
    for event in worker.published:
        if event.event == "expiring":
            assert event.at == event.expires_at - SHORT.event_lead_seconds
    # Every window that was ever opened has ended by now, and its end was announced.
    for contact, state in worker.table.items():
        opened = [e for e in worker.published if e.contact == contact and e.event == "opened"]
        if opened:
            assert state.closed_sent_for is not None and state.last_opener_at is not None
            assert (contact, "closed", state.closed_sent_for) in counts
    assert worker.scheduler.open_windows == 0
