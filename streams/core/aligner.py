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

The fast path (``resolve_from_fetches``) needs no round: a later fetch response from the same broker
gives the barrier directly when it can be proved to (see there); a round is the fallback.

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


@dataclass(frozen=True, slots=True)
class FetchView:
    """What the consumer knew of one partition right after a fetch."""

    stamp: int  # wall-clock ms at which the newest fetch response covering it was processed
    # That response's end as the gate reads: the last stable offset under exactly_once (read_committed:
    # a transaction still open has not been written yet, so nothing waits for it), else the high watermark.
    end: int | None
    leader: int | None  # the broker it is fetched from


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
    fetched: FetchView | None = None  # its request partition's view when it arrived

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
        self._local_at: dict[int, int] = {}  # ... and when that was acknowledged (wall ms)
        self._arrivals: list[Held] = []
        self._waiting: list[Cohort] = []
        self._paused: set[int] = set()
        # wa.inbound partition -> the offset past this worker's records there in committed transactions.
        self._own: dict[int, int] = {}

    @property
    def enabled(self) -> bool:
        return self.max_hold_seconds > 0

    # -- what the pipeline and the adapter report ---------------------------------------------------

    def hold(
        self, partition: int, records: Iterable[InputRecord], now: float, fetched: FetchView | None = None
    ) -> None:
        queue = self._held.setdefault(partition, deque())
        for record in records:
            held = Held(record, now, fetched=fetched)
            queue.append(held)
            if self.enabled:
                self._arrivals.append(held)

    def applied(self, partition: int, next_offset: int) -> None:
        if next_offset > self._applied.get(partition, -1):
            self._applied[partition] = next_offset

    def webhooks_on_broker(self, partition: int, next_offset: int, at_ms: int = 0) -> None:
        """The events of this worker's bodies below ``next_offset`` are acknowledged by Kafka (at
        ``at_ms``, wall clock)."""
        if partition in self._local and next_offset > self._local[partition]:
            self._local[partition] = next_offset
            self._local_at[partition] = at_ms

    def own_committed(self, partition: int, next_offset: int) -> None:
        """A transaction of this worker that wrote wa.inbound ``partition`` below ``next_offset`` has
        committed. Its commit markers may still be on their way, so the last stable offset may not show
        it yet: barriers are never set below it (the gate's own committed events are waited for)."""
        if next_offset > self._own.get(partition, 0):
            self._own[partition] = next_offset

    def resolve_from_fetches(
        self, inbound: Mapping[int, FetchView], webhooks: Mapping[int, FetchView]
    ) -> None:
        """The fast path (Kafka Streams' way, KIP-695, made exact): no round trip when the consumer's
        own fetches already prove what a request waits for.

        The consumer fetches from one broker one request at a time and asks for every partition it
        has nothing buffered for. So a response processed after the one that delivered a request
        (a later ``stamp``, same broker) was *requested* after that request was written, and its high
        watermark covers everything written before the request. That gives the barrier directly,
        when: the request's wa.inbound partition, and every wa.webhooks partition, were answered by
        such a later response from the same broker; every wa.webhooks partition is this worker's and
        normalized up to that high watermark; and that progress was acknowledged before the request
        arrived (so its events were on the broker before the later response was requested). Anything
        else (other brokers, other workers' webhook partitions, webhooks in flight) goes by rounds.
        """
        if len(self._local) < self.partitions or not self._arrivals:
            return
        for w in range(self.partitions):
            view = webhooks.get(w)
            if view is None or view.end is None or view.end > self._local[w]:
                return
        remaining = []
        for held in self._arrivals:
            if held.gone:
                continue
            barrier = self._fetched_barrier(held, inbound, webhooks)
            if barrier is None:
                remaining.append(held)
            else:
                held.cohort = Cohort({held.record.partition}, {}, {held.record.partition: barrier}, live=1)
        self._arrivals = remaining

    def _fetched_barrier(
        self, held: Held, inbound: Mapping[int, FetchView], webhooks: Mapping[int, FetchView]
    ) -> int | None:
        arrived = held.fetched
        if arrived is None or arrived.leader is None:
            return None
        view = inbound.get(held.record.partition)
        if view is None or view.end is None or not _later(view, arrived):
            return None
        for w in range(self.partitions):
            if not _later(webhooks[w], arrived) or self._local_at.get(w, 0) >= arrived.stamp:
                return None
        return max(view.end, self._own.get(held.record.partition, 0))

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
        self._local_at.pop(partition, None)  # bodies below a committed offset were flushed long ago
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

    def plan_round(self, retry: bool = True) -> RoundPlan | None:
        """The next round's queries; None when no request waits for one. ``retry`` False: only for
        requests that arrived since the last round (cohorts waiting for webhook progress are asked
        about on their own, slower, beat)."""
        self._waiting = [cohort for cohort in self._waiting if cohort.live > 0]
        arrivals = [held for held in self._arrivals if not held.gone]
        self._arrivals = []
        waiting = list(self._waiting) if retry else []
        if not arrivals and not waiting:
            return None
        inbound = {held.record.partition for held in arrivals}
        for cohort in waiting:
            inbound |= cohort.partitions
        return RoundPlan(
            epoch=self.epoch,
            arrivals=arrivals,
            local_progress=dict(self._local),
            remote_webhooks=[w for w in range(self.partitions) if w not in self._local],
            webhooks=list(range(self.partitions)),
            inbound=sorted(inbound),
            waiting=waiting,
        )

    def complete_round(
        self,
        plan: RoundPlan,
        remote_progress: Mapping[int, int],
        webhook_ends: Mapping[int, int],
        inbound_ends: Mapping[int, int],
        remote_own: Mapping[int, int] | None = None,
    ) -> None:
        """The round's answers: committed offsets of the remote webhook partitions (read before the end
        offsets), the end offsets (last stable offsets under exactly_once), and ``remote_own``: per
        wa.inbound partition, the offset past the records that other workers' transactions committing
        that webhook progress wrote there (their markers may still be on their way)."""
        remote_own = remote_own or {}
        if plan.epoch != self.epoch:
            # A reset came in between: the positions read may predate a seek. Ask again.
            self.abandon_round(plan)
            return
        progress = {**remote_progress, **plan.local_progress}
        # Rounds may overlap (each arrival is asked about at once): a cohort another round already
        # resolved is skipped; a later round's answer is as good as an earlier one's (only larger).
        cohorts = [cohort for cohort in plan.waiting if cohort.barrier is None]
        arrivals = [held for held in plan.arrivals if not held.gone]
        new: Cohort | None = None
        if arrivals:
            new = Cohort({held.record.partition for held in arrivals}, dict(webhook_ends))
            for held in arrivals:
                held.cohort = new
            new.live = len(arrivals)
            cohorts.append(new)
        for cohort in cohorts:
            if all(progress.get(w, 0) >= end for w, end in cohort.targets.items()):
                cohort.barrier = {
                    p: max(inbound_ends[p], self._own.get(p, 0), remote_own.get(p, 0))
                    for p in cohort.partitions
                }
                if cohort in self._waiting:
                    self._waiting.remove(cohort)
            elif cohort is new:
                self._waiting.append(cohort)

    def abandon_round(self, plan: RoundPlan) -> None:
        """The round's reads failed: its arrivals wait for the next round."""
        self._arrivals = plan.arrivals + self._arrivals

    @property
    def has_arrivals(self) -> bool:
        return self.oldest_arrival() is not None

    def oldest_arrival(self) -> float | None:
        """When the oldest request still without a cohort arrived (monotonic), if any."""
        arrivals = self._arrivals
        gone = 0
        while gone < len(arrivals) and (arrivals[gone].gone or arrivals[gone].cohort is not None):
            gone += 1
        if gone:
            del arrivals[:gone]
        return arrivals[0].since if arrivals else None

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

    def holds(self, partition: int) -> bool:
        return bool(self._held.get(partition))

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


def _later(view: FetchView, arrived: FetchView) -> bool:
    """A response from the same broker, processed after the one that delivered the request."""
    return view.leader == arrived.leader and view.stamp > arrived.stamp


_INBOUND_ENDS_PREFIX = "wagate/inbound:"


def format_inbound_ends(ends: Mapping[int, int]) -> str:
    """Offset-commit metadata: 'wagate/inbound:3=1200,5=88' (Kafka keeps up to 4 KiB by default; a
    transaction writes a handful of partitions)."""
    return _INBOUND_ENDS_PREFIX + ",".join(f"{p}={end}" for p, end in sorted(ends.items()))


def parse_inbound_ends(metadata: str) -> dict[int, int]:
    """The reverse of ``format_inbound_ends``; anything else (another writer's metadata) gives {}."""
    if not metadata.startswith(_INBOUND_ENDS_PREFIX):
        return {}
    ends: dict[int, int] = {}
    for item in metadata.removeprefix(_INBOUND_ENDS_PREFIX).split(","):
        partition, _, end = item.partition("=")
        if partition.isdigit() and end.isdigit():
            ends[int(partition)] = int(end)
    return ends
