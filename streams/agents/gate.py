"""The thin wiring between Kafka records and the policy.

Delivery discipline (at-least-once, nothing lost): every output record -- decision, dead letter,
re-partitioned stray, state changelog -- is handed to the Kafka producer (``await`` until it sits in
the producer's buffer) before the agent takes the next event, which is what acks this one. Faust
flushes the producer before it commits offsets, so no offset is committed past a record whose
outputs are not on the broker. A delivery that fails for good crashes the worker instead of
committing past it.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from faust.types import AppT, EventT, TableT

from streams.agents.state import PartitionedState
from streams.agents.windows import Ownership, WindowScheduler
from streams.metrics import GateMetrics
from streams.models import (
    DeadLetter,
    Decision,
    InboundEvent,
    NumberRecord,
    TemplateRecord,
    WindowEvent,
    WindowReport,
    trusted,
)
from streams.policy.decide import decide, decide_invalid
from streams.policy.keys import contact_key, partition_for, request_contact_key
from streams.policy.parse import InvalidPayload, parse_inbound_event, parse_send_request
from streams.policy.rules import WindowRules
from streams.policy.templates import Registry, template_key
from streams.policy.webhook import InvalidWebhook, normalize_webhook
from streams.policy.window import (
    ContactState,
    InboundEffect,
    apply_inbound,
    is_gate_miss,
    window_report,
)
from streams.policy.window_events import opened_event
from streams.topology import Topology

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def _text_or_b64(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii")


class Gate:
    def __init__(
        self,
        app: AppT,
        topo: Topology,
        table: TableT[bytes, bytes],
        rules: WindowRules,
        metrics: GateMetrics,
        clock: Clock = time.time,
        registry: Registry | None = None,
        window_events: bool = True,
    ) -> None:
        self.app = app
        self.topo = topo
        self.partitions = topo.requests.partitions
        self.state = PartitionedState(table, lambda key: partition_for(key.decode(), self.partitions))
        self.rules = rules
        self.metrics = metrics
        self.clock = clock
        self.registry = registry or Registry()
        self.window_events = window_events
        self.windows = WindowScheduler(
            rules=rules,
            clock=clock,
            ownership=self._ownership,
            load=lambda partition, key: self._load(key, partition),
            scan=self._scan,
            publish=self._publish_window_events,
            enabled=window_events,
        )
        metrics.open_windows.set_function(lambda: self.windows.open_windows)
        # Newest changelog send per partition in the current batch: its offset is persisted once.
        self._last_changelog: dict[int, Any] = {}

    # -- inputs ---------------------------------------------------------------------------------

    async def on_inbound(self, event: EventT[bytes]) -> None:
        message = event.message
        try:
            parsed = parse_inbound_event(message.value)
            if isinstance(parsed, InvalidPayload):
                await self.dead_letter(event, parsed.detail, cause="invalid_inbound")
                return
            key = contact_key(parsed.phone_number_id, parsed.user, parsed.group_id)
            if await self._repartitioned(event, key, partition_for(key, self.partitions), "inbound"):
                return
            state = self._load(key, message.partition)
            now = self.clock()
            if is_gate_miss(state, parsed, now, self.rules):
                self.metrics.gate_misses.inc()
                log.warning(
                    "gate miss: a 131047-type failure after a window_open send (see wagate_gate_misses)"
                )
            new_state, effect = apply_inbound(state, parsed, now, self.rules)
            if new_state is not state:
                await self._store(key, new_state, message.partition)
                self.windows.watch(message.partition, key, new_state)
            if effect is InboundEffect.OPENED and self.window_events:
                await self._produce_window_event(opened_event(key, new_state, self.rules), message.partition)
            self.metrics.count_inbound(parsed.kind, effect.value)
        except Exception as exc:  # bad input must never stop the worker: dead-letter it instead
            await self._internal_error(event, exc)

    async def on_webhook(self, event: EventT[bytes]) -> None:
        """A raw Cloud API body -> an InboundEvent per item on wa.inbound, TemplateRecords on wa.templates."""
        message = event.message
        try:
            try:
                result = normalize_webhook(message.value or b"", self.clock())
            except InvalidWebhook as exc:
                await self.dead_letter(event, exc.detail, cause=exc.cause)
                self.metrics.webhook_bodies.labels("dead_lettered").inc()
                return
            for inbound in result.events:
                await self._produce_inbound(inbound)
                self.metrics.webhook_items.labels(f"event_{inbound.kind}").inc()
            for pnid, waba in result.numbers:
                if self.registry.learn_number(pnid, waba):
                    await self._produce_number(pnid, waba)
            for template in result.templates:
                # Merged with what is known, so the compacted topic keeps whole records, not fragments.
                await self._produce_template(self.registry.apply(template))
                self.metrics.webhook_items.labels("template").inc()
            for _ in result.ignored_fields:
                self.metrics.webhook_items.labels("ignored_field").inc()
            if result.problems:
                # The readable items went on; the body is kept whole with what could not be read.
                await self.dead_letter(event, "; ".join(result.problems), cause="unreadable_items")
                self.metrics.webhook_bodies.labels("partial").inc()
            else:
                self.metrics.webhook_bodies.labels("normalized").inc()
        except Exception as exc:  # bad input must never stop the worker: dead-letter it instead
            await self._internal_error(event, exc)

    async def _produce_inbound(self, inbound: InboundEvent) -> None:
        key = contact_key(inbound.phone_number_id, inbound.user, inbound.group_id)
        value = inbound.__pydantic_serializer__.to_json(inbound, exclude_none=True)
        await self._produce(self.topo.inbound.name, key.encode(), value, partition_for(key, self.partitions))

    async def _produce_number(self, phone_number_id: str, waba_id: str) -> None:
        record = NumberRecord(phone_number_id=phone_number_id, waba_id=waba_id, updated_at=self.clock())
        value = record.__pydantic_serializer__.to_json(record)
        await self._produce(self.topo.numbers.name, phone_number_id.encode(), value)

    async def _produce_template(self, template: TemplateRecord) -> None:
        key = template_key(template.waba_id, template.name, template.language).encode()
        value = template.__pydantic_serializer__.to_json(template, exclude_none=True)
        await self._produce(self.topo.templates.name, key, value)

    async def on_request(self, event: EventT[bytes]) -> None:
        message = event.message
        started = time.perf_counter()
        try:
            now = self.clock()
            parsed = parse_send_request(message.value)
            if isinstance(parsed, InvalidPayload):
                rejection = decide_invalid(parsed, _text_or_b64(message.key), now)
                if rejection is None:
                    await self.dead_letter(
                        event, parsed.detail + "; no request_id could be read", "invalid_request"
                    )
                else:
                    await self.publish(rejection, message.key)
                return
            request, received = parsed
            key = request_contact_key(request.phone_number_id, request.to, request.recipient_type)
            # Hashed once: checked here, reused as the decision's partition.
            partition = partition_for(key, self.partitions)
            if await self._repartitioned(event, key, partition, "requests"):
                return
            state = self._load(key, message.partition)
            decision, new_state = decide(request, received, state, now, self.rules, self.registry)
            if new_state is not state:
                await self._store(key, new_state, message.partition)
            await self.publish(decision, key.encode(), partition)
            self.metrics.decision_processing.observe(time.perf_counter() - started)
            if request.created_at is not None:
                self.metrics.decision_latency.observe(max(0.0, now - request.created_at))
        except Exception as exc:  # bad input must never stop the worker: dead-letter it instead
            await self._internal_error(event, exc)

    # -- outputs --------------------------------------------------------------------------------

    async def publish(self, decision: Decision, key: bytes | None, partition: int | None = None) -> None:
        value = decision.__pydantic_serializer__.to_json(decision)
        await self._produce(self.topo.route_topic(decision.route), key, value, partition)
        self.metrics.count_decision(decision.route, decision.reason, decision.origin)

    async def dead_letter(self, event: EventT[bytes], error: str, cause: str) -> None:
        message = event.message
        record = trusted(
            DeadLetter,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=_text_or_b64(message.key),
            value_b64=None if message.value is None else base64.b64encode(message.value).decode("ascii"),
            error=error,
            at=self.clock(),
        )
        await self._produce(
            self.topo.deadletter.name, message.key, record.__pydantic_serializer__.to_json(record)
        )
        self.metrics.dead_letters.labels(message.topic.removeprefix(self.topo.prefix), cause).inc()

    async def _internal_error(self, event: EventT[bytes], exc: Exception) -> None:
        # Log the type and position only: the exception text may quote the payload (PII).
        message = event.message
        log.error(
            "internal error on %s[%d]@%d: %s (record dead-lettered)",
            message.topic,
            message.partition,
            message.offset,
            type(exc).__name__,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        await self.dead_letter(event, f"internal error: {type(exc).__name__}", cause="internal_error")

    async def _repartitioned(self, event: EventT[bytes], key: str, expected: int, source: str) -> bool:
        """Re-produce a record that sits on the wrong partition for its contact; True if it did."""
        message = event.message
        if message.partition == expected:
            return False
        await self._produce(message.topic, key.encode(), message.value, partition=expected)
        self.metrics.repartitioned.labels(source).inc()
        return True

    async def _produce_window_event(self, event: WindowEvent, partition: int) -> None:
        value = event.__pydantic_serializer__.to_json(event)
        await self._produce(self.topo.windows.name, event.contact.encode(), value, partition)
        self.metrics.window_events.labels(event.event).inc()

    async def _publish_window_events(
        self, partition: int, key: str, events: list[WindowEvent], marked: ContactState
    ) -> None:
        """The scheduler's events, and the state that marks them sent (the marks are written first,
        before anything is awaited: the state was read in this same step, so no agent write is lost)."""
        raw_key, value = key.encode(), marked.to_bytes()
        self.state.put(partition, raw_key, value)
        for event in events:
            await self._produce_window_event(event, partition)
        changelog = await self._produce(self.topo.contact_state_changelog.name, raw_key, value, partition)
        changelog.add_done_callback(self._on_changelog_delivered)  # type: ignore[attr-defined]

    def _ownership(self) -> Ownership | None:
        """The state partitions this worker holds, or None while a rebalance or recovery runs (Faust
        resumes the flow while it still reads the changelog: only `rebalancing` covers recovery)."""
        if self.app.rebalancing or not self.app.flow_control.is_active():
            return None
        requests = self.topo.requests.name
        return Ownership(
            self.app.consumer_generation_id,
            frozenset(tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == requests),
        )

    def _scan(self, partition: int) -> Iterator[tuple[str, ContactState]]:
        for key, value in self.state.scan(partition):
            try:
                state = ContactState.from_bytes(value)
            except (ValueError, TypeError, AttributeError) as exc:
                # The gate wrote it, so a bug: logged without the contact (PII), the rebuild goes on.
                log.error(
                    "unreadable contact state on partition %d skipped: %s", partition, type(exc).__name__
                )
                continue
            yield key.decode(), state

    # -- state ----------------------------------------------------------------------------------

    def window(self, key: str) -> WindowReport:
        """The contact's window now; call it on the worker that holds the contact's partition."""
        state = self._load(key, partition_for(key, self.partitions))
        return window_report(key, state, self.clock(), self.rules)

    def _load(self, key: str, partition: int) -> ContactState:
        return ContactState.from_bytes(self.state.get(partition, key.encode()))

    async def _store(self, key: str, state: ContactState, partition: int) -> None:
        raw_key, value = key.encode(), state.to_bytes()
        self.state.put(partition, raw_key, value)
        self._last_changelog[partition] = await self._produce(
            self.topo.contact_state_changelog.name, raw_key, value, partition=partition
        )

    async def on_batch(
        self, batch: Sequence[EventT[bytes]], handle: Callable[[EventT[bytes]], Awaitable[None]]
    ) -> None:
        for event in batch:
            await handle(event)
        # Once per batch: remember how far each partition's changelog is written (Faust: per write).
        for fut in self._last_changelog.values():
            fut.add_done_callback(self._on_changelog_delivered)
        self._last_changelog.clear()

    def _on_changelog_delivered(self, fut: Any) -> None:
        if not fut.cancelled() and fut.exception() is None:
            # Recovery resumes reading the changelog after this offset.
            self.state.persisted(fut.result().topic_partition, fut.result().offset)

    async def _produce(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None
    ) -> Awaitable[Any]:
        # Straight into the aiokafka producer Faust owns (and flushes before every commit): Faust's
        # send wrapper added a coroutine and a sensor dispatch per record on the hot path.
        kafka = self.app.producer._ensure_producer()  # type: ignore[attr-defined]
        fut = await kafka.send(topic, value, key=key, partition=partition)
        fut.add_done_callback(self._on_delivered)
        return fut  # type: ignore[no-any-return]

    def _on_delivered(self, fut: Any) -> None:
        if fut.cancelled() or fut.exception() is None:
            return
        exc = fut.exception()
        log.critical("delivery failed after retries (%s); crashing so the offset is not committed", exc)
        self.app.loop.create_task(self.app.crash(exc))
