"""The timetable of ``wa.windows`` events for the partitions this worker owns.

One min-heap of (due, contact) per partition, fed by every window change the inbound agent makes
(``watch``) and rebuilt from the table once per rebalance, after recovery: a tick pops what is due
instead of scanning millions of contacts. Entries are hints: a popped one is re-read from the table
and `policy.window_events` decides what, if anything, is due, so a stale entry costs a read and
nothing else. At most one live entry per contact (``_due``); a superseded one is skipped when popped.

What a tick publishes is marked in the contact state (written through the changelog like every other
state change), which is what keeps a restart or a rebalance from publishing anything twice.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from streams.models import WindowEvent
from streams.policy.rules import WindowRules
from streams.policy.window import ContactState
from streams.policy.window_events import due_events, next_event_at, open_until

log = logging.getLogger(__name__)

# Give the event loop a turn every this many contacts while rebuilding.
_YIELD_EVERY = 1_000


@dataclass(frozen=True, slots=True)
class Ownership:
    """The consumer generation and the state partitions this worker holds while records flow."""

    generation: int
    partitions: frozenset[int]


class WindowScheduler:
    def __init__(
        self,
        *,
        rules: WindowRules,
        clock: Callable[[], float],
        ownership: Callable[[], Ownership | None],
        load: Callable[[int, str], ContactState],
        scan: Callable[[int], Iterator[tuple[str, ContactState] | None]],
        publish: Callable[[int, str, list[WindowEvent], ContactState], Awaitable[None]],
        enabled: bool = True,
    ) -> None:
        """`ownership` is None while a rebalance is in progress; `publish` sends the events and stores
        the state that marks them sent (a disabled scheduler only keeps the open-windows count)."""
        self.rules = rules
        self.clock = clock
        self.ownership = ownership
        self.load = load
        self.scan = scan
        self.publish = publish
        self.enabled = enabled
        self._generation: int | None = None  # the generation the timetable was built for
        self._heaps: dict[int, list[tuple[float, str]]] = {}
        self._due: dict[int, dict[str, float]] = {}  # the live entry per contact
        self._open: dict[int, dict[str, float]] = {}  # contacts with an open window -> expires_at

    @property
    def open_windows(self) -> int:
        return sum(len(contacts) for contacts in self._open.values())

    def watch(self, partition: int, contact: str, state: ContactState) -> None:
        """The agent changed a contact's window: (re)schedule it. Before the rebuild it is ignored:
        the rebuild reads it from the table."""
        if partition in self._heaps:
            self._schedule(partition, contact, state, self.clock())

    def _schedule(self, partition: int, contact: str, state: ContactState, now: float) -> None:
        until = open_until(state, now, self.rules)
        if until is None:
            self._open[partition].pop(contact, None)
        else:
            self._open[partition][contact] = until
        due = next_event_at(state, now, self.rules)
        live = self._due[partition]
        if due is None:
            live.pop(contact, None)
        elif contact not in live or due < live[contact]:
            # A later due leaves the earlier entry alone: when it pops, the re-read reschedules.
            live[contact] = due
            heapq.heappush(self._heaps[partition], (due, contact))

    def _reset(self, ownership: Ownership) -> None:
        self._generation = ownership.generation
        self._heaps = {p: [] for p in ownership.partitions}
        self._due = {p: {} for p in ownership.partitions}
        self._open = {p: {} for p in ownership.partitions}

    def _still(self, ownership: Ownership) -> bool:
        now = self.ownership()
        return now is not None and now.generation == ownership.generation

    async def rebuild(self, ownership: Ownership) -> bool:
        """Schedule every contact of the owned partitions from the table; False if a rebalance cut in."""
        self._reset(ownership)
        now = self.clock()
        scanned = 0
        for partition in sorted(ownership.partitions):
            for item in self.scan(partition):  # None: a key that is not a contact's
                if item is not None:
                    self._schedule(partition, item[0], item[1], now)
                scanned += 1
                if scanned % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                    if not self._still(ownership):
                        self._generation = None
                        return False
        log.info(
            "Window events: timetable rebuilt for partitions %s (%d keys, %d open windows)",
            sorted(ownership.partitions),
            scanned,
            self.open_windows,
        )
        return True

    async def tick(self) -> None:
        """Publish what is due. Nothing happens while a rebalance is in progress."""
        ownership = self.ownership()
        if ownership is None:
            return
        if ownership.generation != self._generation and not await self.rebuild(ownership):
            return
        now = self.clock()
        for partition, heap in self._heaps.items():
            live = self._due[partition]
            handled: list[tuple[str, ContactState]] = []
            while heap and heap[0][0] <= now:
                due, contact = heapq.heappop(heap)
                if live.get(contact) != due:
                    continue  # superseded by an earlier entry
                del live[contact]
                state = self.load(partition, contact)
                events, marked = due_events(contact, state, now, self.rules)
                if events and self.enabled:
                    await self.publish(partition, contact, events, marked)
                    if not self._still(ownership):
                        return  # the partition may be gone: the next generation rebuilds
                handled.append((contact, marked))
            # Rescheduled after the loop: a contact is looked at once per tick, whatever is due.
            for contact, marked in handled:
                self._schedule(partition, contact, marked, now)
