"""When a held request may be decided: the ordering contract, as bookkeeping.

Contract: a request is decided only after the gate has applied every inbound event of its partition
that was written to Kafka before the request's record, whether written to ``wa.inbound`` directly or
as a raw body to ``wa.webhooks`` (any partition) and normalized by the gate.

Kafka's log order is what "written before" means here, so the aligner works with offsets, not clocks:

1. A request that arrives joins a *cohort*: the requests that arrived since the last round. A round
   first snapshots how far each ``wa.webhooks`` partition is normalized *and on the broker* (this
   worker's own partitions from its producer's acknowledgements; the others from the consumer
   group's committed offsets, which the gate commits only after flushing what it produced), then
   asks Kafka for the end offsets of ``wa.webhooks`` and of the cohort's ``wa.inbound`` partitions.
2. The webhook end offsets read after a request arrived are the cohort's *targets*: every body
   written before the request lies below them.
3. Once a snapshot shows every target reached, the inbound end offsets read in that same round (so
   after the snapshot, so after those bodies' events were acknowledged) are the cohort's *barrier*.
4. A request is ready when its partition's inbound events are applied up to its barrier.

Inbound records are never held: they are applied as soon as they are read, so a request also sees
events written after it that were already read (the gate decides on the wall clock: the freshest
state is the right one). Requests leave in offset order per partition. A request held longer than
``max_hold_seconds`` is decided anyway and marked; ``max_hold_seconds == 0`` turns alignment off.
A partition holding ``max_held`` requests is paused (the adapter stops fetching it) until half of
them are gone, so holding never stalls the fetching of inbound events.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from streams.core.records import InputRecord


@dataclass(slots=True, eq=False)
class Cohort:
    partitions: set[int]
    targets: dict[int, int]  # wa.webhooks partition -> end offset read after the cohort arrived
    barrier: dict[int, int] | None = None  # wa.inbound partition -> offset to apply up to
    live: int = 0  # its requests still held


@dataclass(slots=True, eq=False)
class Held:
    record: InputRecord
    since: float  # monotonic seconds when it arrived
    cohort: Cohort | None = None
    gone: bool = False  # released or dropped

    def leave(self) -> None:
        self.gone = True
        if self.cohort is not None:
            self.cohort.live -= 1


@dataclass(frozen=True, slots=True)
class Released:
    record: InputRecord
    held_seconds: float
    past_limit: bool


@dataclass(slots=True)
class RoundPlan:
    """What one round must read from Kafka, and what it was read for."""

    epoch: int
    arrivals: list[Held]  # requests with no cohort yet: they get this round's targets
    local_progress: dict[int, int]  # snapshot, taken before any query of the round
    remote_webhooks: list[int]  # wa.webhooks partitions whose progress is the group's committed offset
    webhooks: list[int]  # every wa.webhooks partition: their end offsets are read
    inbound: list[int]  # wa.inbound partitions whose end offsets are read
    waiting: list[Cohort] = field(default_factory=list)  # cohorts whose targets were not yet reached


class Aligner:
    def __init__(self, partitions: int, max_hold_seconds: float, max_held: int) -> None:
        self.partitions = partitions
        self.max_hold_seconds = max_hold_seconds
        self.max_held = max_held
        self.epoch = 0  # bumped by every reset: a round planned before it is void
        self._held: dict[int, deque[Held]] = {}
        self._applied: dict[int, int] = {}  # wa.inbound partition -> next offset to apply (known)
        self._local: dict[int, int] = {}  # own wa.webhooks partition -> normalized, acknowledged up to
        self._arrivals: list[Held] = []
        self._waiting: list[Cohort] = []
        self._paused: set[int] = set()

    @property
    def enabled(self) -> bool:
        return self.max_hold_seconds > 0

    # -- what the pipeline and the adapter report ---------------------------------------------------

    def hold(self, partition: int, records: Iterable[InputRecord], now: float) -> None:
        queue = self._held.setdefault(partition, deque())
        for record in records:
            held = Held(record, now)
            queue.append(held)
            if self.enabled:
                self._arrivals.append(held)

    def applied(self, partition: int, next_offset: int) -> None:
        if next_offset > self._applied.get(partition, -1):
            self._applied[partition] = next_offset

    def webhooks_on_broker(self, partition: int, next_offset: int) -> None:
        """The events of this worker's bodies below ``next_offset`` are acknowledged by Kafka."""
        if partition in self._local and next_offset > self._local[partition]:
            self._local[partition] = next_offset

    def reset_inbound(self, partition: int, position: int | None) -> None:
        """Assigned or sought: records from ``position`` on will be read (None: not ours any more)."""
        self.epoch += 1
        if position is None:
            self._applied.pop(partition, None)
        else:
            self._applied[partition] = position

    def reset_webhooks(self, partition: int, position: int | None) -> None:
        """Bodies below a committed position were normalized and flushed by whoever committed it."""
        self.epoch += 1
        if position is None:
            self._local.pop(partition, None)
        else:
            self._local[partition] = position

    def reset_requests(self, partition: int) -> None:
        """Held requests of a sought or revoked partition are dropped unprocessed: read again later."""
        self.epoch += 1
        for held in self._held.pop(partition, ()):
            held.leave()
        self._paused.discard(partition)

    # -- rounds -----------------------------------------------------------------------------------

    def plan_round(self) -> RoundPlan | None:
        """The next round's queries; None when no request waits for one."""
        self._waiting = [cohort for cohort in self._waiting if cohort.live > 0]
        arrivals = [held for held in self._arrivals if not held.gone]
        self._arrivals = []
        if not arrivals and not self._waiting:
            return None
        inbound = {held.record.partition for held in arrivals}
        for cohort in self._waiting:
            inbound |= cohort.partitions
        return RoundPlan(
            epoch=self.epoch,
            arrivals=arrivals,
            local_progress=dict(self._local),
            remote_webhooks=[w for w in range(self.partitions) if w not in self._local],
            webhooks=list(range(self.partitions)),
            inbound=sorted(inbound),
            waiting=list(self._waiting),
        )

    def complete_round(
        self,
        plan: RoundPlan,
        remote_progress: Mapping[int, int],
        webhook_ends: Mapping[int, int],
        inbound_ends: Mapping[int, int],
    ) -> None:
        """The round's answers: committed offsets of the remote webhook partitions (read before the end
        offsets), and the end offsets."""
        if plan.epoch != self.epoch:
            # A reset came in between: the positions read may predate a seek. Ask again.
            self.abandon_round(plan)
            return
        progress = {**remote_progress, **plan.local_progress}
        cohorts = list(plan.waiting)
        arrivals = [held for held in plan.arrivals if not held.gone]
        if arrivals:
            cohort = Cohort({held.record.partition for held in arrivals}, dict(webhook_ends))
            for held in arrivals:
                held.cohort = cohort
            cohort.live = len(arrivals)
            cohorts.append(cohort)
        waiting = []
        for cohort in cohorts:
            if all(progress.get(w, 0) >= end for w, end in cohort.targets.items()):
                cohort.barrier = {p: inbound_ends[p] for p in cohort.partitions}
            else:
                waiting.append(cohort)
        self._waiting = waiting

    def abandon_round(self, plan: RoundPlan) -> None:
        """The round's reads failed: its arrivals wait for the next round."""
        self._arrivals = plan.arrivals + self._arrivals

    @property
    def has_waiting(self) -> bool:
        """Cohorts whose webhook targets were not reached yet: another round is due soon."""
        return bool(self._waiting)

    # -- release ----------------------------------------------------------------------------------

    def release(self, now: float) -> Iterator[tuple[int, Released]]:
        """Requests that may be decided now, in offset order per partition."""
        limit = self.max_hold_seconds
        for partition, queue in self._held.items():
            applied = self._applied.get(partition)
            while queue:
                held = queue[0]
                waited = now - held.since
                if not self.enabled:
                    ready, past = True, False
                else:
                    barrier = held.cohort.barrier if held.cohort is not None else None
                    ready = barrier is not None and applied is not None and applied >= barrier[partition]
                    past = not ready and waited >= limit
                if not (ready or past):
                    break
                queue.popleft()
                held.leave()
                yield partition, Released(held.record, waited, past)

    def next_expiry(self) -> float | None:
        """When the oldest held request reaches the hold limit (monotonic), if any is held."""
        oldest = [queue[0].since for queue in self._held.values() if queue]
        return min(oldest) + self.max_hold_seconds if oldest else None

    @property
    def held(self) -> int:
        return sum(len(queue) for queue in self._held.values())

    def paused(self) -> set[int]:
        """Request partitions not to fetch from: full ones, until half their requests are gone."""
        for partition, queue in self._held.items():
            if len(queue) >= self.max_held:
                self._paused.add(partition)
            elif len(queue) <= self.max_held // 2:
                self._paused.discard(partition)
        return self._paused
