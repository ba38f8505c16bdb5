"""The per-partition pipeline: fetched records of the gate's inputs -> outputs, state, processed offsets.

One object for all the partitions a worker owns; every call is synchronous and does no I/O, so a
call's state changes are atomic with respect to the event loop. The adapter (``streams.agents.runner``)
produces a step's outputs, then marks its ``done`` offsets processed, in the order the steps were made.

Order inside one step: every inbound event read is applied first (inbound is never held), then
webhook bodies are normalized, then requests join the aligner's queues, and whatever the aligner
lets go is decided.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from streams.core.aligner import Aligner, FetchView, RoundPlan
from streams.core.processor import Processor
from streams.core.records import InputRecord, Source, Step
from streams.metrics import GateMetrics

# Requests decided per call at most: a round that releases thousands of held requests at once (a
# backlog behind a restart) would otherwise keep the event loop busy for seconds, transactions and
# heartbeats included. The rest is released by the next call (``backlogged`` says one is due).
RELEASE_BUDGET = 1_000


class Pipeline:
    def __init__(
        self, processor: Processor, aligner: Aligner, metrics: GateMetrics, ready: bool = True
    ) -> None:
        topo = processor.topo
        self.processor = processor
        self.aligner = aligner
        self.metrics = metrics
        self.sources = {
            topo.inbound.name: Source.INBOUND,
            topo.requests.name: Source.REQUESTS,
            topo.webhooks.name: Source.WEBHOOKS,
        }
        self.ready = ready  # False until the template registry's first read is done: nothing is decided
        # Per (source, partition): the next offset last handed out as done (or sought to).
        self._done: dict[tuple[Source, int], int] = {}
        self.backlogged = False  # the last call left ready requests undecided (the budget): call release

    def source(self, topic: str) -> Source | None:
        return self.sources.get(topic)

    def feed(
        self,
        batches: Mapping[tuple[str, int], Sequence[InputRecord]],
        now: float,
        positions: Mapping[tuple[str, int], int] | None = None,
        views: Mapping[tuple[str, int], FetchView] | None = None,
    ) -> Step:
        """Records as fetched, per (topic, partition), in offset order; ``now`` is monotonic seconds.
        ``positions``: where the consumer's next fetch starts, per (topic, partition), read after this
        fetch: past its records and past transaction markers, whose offsets hold no record.
        ``views``: what the consumer knew of each partition after this fetch (the fast path)."""
        views = views or {}
        step = Step()
        processor = self.processor
        requests = []
        webhooks = []
        for (topic, partition), records in batches.items():
            if not records:
                continue
            source = self.sources[topic]
            if source is Source.INBOUND:
                out = step.out(partition)
                for record in records:
                    processor.inbound(record, out)
                processor.flush_portfolios(partition, out)
                next_offset = records[-1].offset + 1
                self.aligner.applied(partition, next_offset)
                step.done[(Source.INBOUND, partition)] = next_offset
            elif source is Source.WEBHOOKS:
                webhooks.append((partition, records))
            else:
                requests.append((partition, records))
        for partition, records in webhooks:
            out = step.out(partition)
            for record in records:
                processor.webhook(record, out)
            next_offset = records[-1].offset + 1
            step.done[(Source.WEBHOOKS, partition)] = next_offset
            step.webhooks_done[partition] = next_offset
        requests_topic = self.processor.topo.requests.name
        for partition, records in requests:
            self.aligner.hold(partition, records, now, views.get((requests_topic, partition)))
        for (topic, partition), position in (positions or {}).items():
            if self.sources.get(topic) is Source.INBOUND:
                self.aligner.applied(partition, position)
        if views:
            by_source: dict[Source, dict[int, FetchView]] = {Source.INBOUND: {}, Source.WEBHOOKS: {}}
            for (topic, partition), view in views.items():
                by_topic = self.sources.get(topic)
                if by_topic is not None and by_topic in by_source:
                    by_source[by_topic][partition] = view
            self.aligner.resolve_from_fetches(by_source[Source.INBOUND], by_source[Source.WEBHOOKS])
        self._release(now, step)
        for (topic, partition), position in (positions or {}).items():
            of_topic = self.sources.get(topic)
            if of_topic is not None and not (of_topic is Source.REQUESTS and self.aligner.holds(partition)):
                self._past_markers(step, of_topic, partition, position)
        self._note_done(step)
        return step

    def _past_markers(self, step: Step, source: Source, partition: int, position: int) -> None:
        """Every record below ``position`` is processed: past the last record there may be transaction
        markers, which hold no record. They are done too, or the committed offset stays below a
        read_committed reader's end offset and the group's lag never reaches 0."""
        key = (source, partition)
        if key not in self._done:
            return  # no seek reported yet (the consumer is recovering): the position is not ours yet
        if position > max(step.done.get(key, -1), self._done[key]):
            step.done[key] = position
            if source is Source.WEBHOOKS:
                step.webhooks_done[partition] = position

    def _note_done(self, step: Step) -> None:
        for key, next_offset in step.done.items():
            if next_offset > self._done.get(key, -1):
                self._done[key] = next_offset

    def release(self, now: float) -> Step:
        """Decide what the aligner lets go now (after a round, or at the hold limit)."""
        step = Step()
        self._release(now, step)
        self._note_done(step)
        return step

    def _release(self, now: float, step: Step) -> None:
        if not self.ready:
            return
        decide = self.processor.request
        budget = RELEASE_BUDGET
        self.backlogged = False
        for partition, released in self.aligner.release(now):  # pops one request per iteration
            decide(released.record, step.out(partition), released.past_limit)
            step.done[(Source.REQUESTS, partition)] = released.record.offset + 1
            if self.aligner.enabled:
                self.metrics.hold_seconds.observe(released.held_seconds)
                if released.past_limit:
                    self.metrics.held_past_limit.inc()
            budget -= 1
            if budget == 0:  # stop before the next one is taken off its queue
                self.backlogged = True
                break

    # -- rounds (the adapter does the reading in between) ------------------------------------------

    def plan_round(self, retry: bool = True) -> RoundPlan | None:
        return self.aligner.plan_round(retry)

    def complete_round(
        self,
        plan: RoundPlan,
        remote_progress: Mapping[int, int],
        webhook_ends: Mapping[int, int],
        inbound_ends: Mapping[int, int],
        now: float,
        remote_own: Mapping[int, int] | None = None,
    ) -> Step:
        self.aligner.complete_round(plan, remote_progress, webhook_ends, inbound_ends, remote_own)
        return self.release(now)

    # -- positions ----------------------------------------------------------------------------------

    def reset(self, topic: str, partition: int, position: int | None) -> None:
        """The consumer sought ``(topic, partition)`` to ``position`` (None: the partition was revoked)."""
        source = self.sources.get(topic)
        if source is not None:
            if position is None:
                self._done.pop((source, partition), None)
            else:
                self._done[(source, partition)] = position
        if source is Source.INBOUND:
            self.aligner.reset_inbound(partition, position)
            if position is None:
                self.processor.forget_partition(partition)
        elif source is Source.WEBHOOKS:
            self.aligner.reset_webhooks(partition, position)
        elif source is Source.REQUESTS:
            self.aligner.reset_requests(partition)
