"""One record against the contact state: the gate's three handlers, synchronous and I/O-free.

Each handler appends what to produce to ``out`` and writes the contact state through the
``StateStore``; the adapter around the pipeline produces the outputs (the state's changelog record is
one of them) before it counts the input offset as processed. Bad input never raises out of a
handler: it becomes a rejection or a dead letter, and a metric counts it.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable

from streams.core.records import InputRecord, Output, StateStore
from streams.metrics import GateMetrics
from streams.models import (
    DeadLetter,
    Decision,
    InboundEvent,
    NumberRecord,
    TemplateRecord,
    WindowEvent,
    trusted,
)
from streams.policy.decide import decide, decide_invalid
from streams.policy.keys import contact_key, partition_for, request_contact_key
from streams.policy.parse import InvalidPayload, parse_inbound_event, parse_send_request
from streams.policy.rules import WindowRules
from streams.policy.templates import Registry, template_key
from streams.policy.webhook import InvalidWebhook, normalize_webhook
from streams.policy.window import ContactState, InboundEffect, apply_inbound, is_gate_miss
from streams.policy.window_events import opened_event
from streams.topology import Topology

log = logging.getLogger(__name__)

Clock = Callable[[], float]
WindowWatch = Callable[[int, str, ContactState], None]

# What the gate echoes of an input (a dead letter's value, a rejected request) is capped, so that a
# huge record cannot make an output larger than Kafka takes (which would stop the worker).
MAX_ECHO_BYTES = 64 * 1024  # Meta's bodies are a few KB; past this the value stays on its source topic
MAX_KEY_ECHO_BYTES = 4096  # a key is echoed twice in a rejection (record key and contact)

HELD_PAST_LIMIT_NOTE = (
    " Decided after the hold limit (WAGATE_MAX_HOLD_SECONDS): inbound events written before this request"
    " may not have been applied yet."
)


def text_or_b64(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii")


class Processor:
    def __init__(
        self,
        topo: Topology,
        state: StateStore,
        rules: WindowRules,
        metrics: GateMetrics,
        registry: Registry,
        clock: Clock = time.time,
        window_events: bool = True,
        watch: WindowWatch | None = None,
    ) -> None:
        self.topo = topo
        self.partitions = topo.requests.partitions
        self.state = state
        self.rules = rules
        self.metrics = metrics
        self.registry = registry
        self.clock = clock
        self.window_events = window_events
        self.watch = watch or (lambda partition, key, state: None)
        self._changelog = topo.contact_state_changelog.name

    # -- state ----------------------------------------------------------------------------------

    def load(self, key: str, partition: int) -> ContactState:
        return ContactState.from_bytes(self.state.get(partition, key.encode()))

    def store(self, key: str, state: ContactState, partition: int, out: list[Output]) -> None:
        raw_key, value = key.encode(), state.to_bytes()
        self.state.put(partition, raw_key, value)
        out.append(Output(self._changelog, raw_key, value, partition))

    # -- inputs ---------------------------------------------------------------------------------

    def inbound(self, record: InputRecord, out: list[Output]) -> None:
        try:
            parsed = parse_inbound_event(record.value)
            if isinstance(parsed, InvalidPayload):
                self.dead_letter(record, parsed.detail, "invalid_inbound", out)
                return
            key = contact_key(parsed.phone_number_id, parsed.user, parsed.group_id)
            if self._repartitioned(record, key, partition_for(key, self.partitions), "inbound", out):
                return
            state = self.load(key, record.partition)
            now = self.clock()
            if is_gate_miss(state, parsed, now, self.rules):
                self.metrics.gate_misses.inc()
                log.warning(
                    "gate miss: a 131047-type failure after a window_open send (see wagate_gate_misses)"
                )
            new_state, effect = apply_inbound(state, parsed, now, self.rules)
            if new_state is not state:
                self.store(key, new_state, record.partition, out)
                self.watch(record.partition, key, new_state)
            if effect is InboundEffect.OPENED and self.window_events:
                self.window_event(opened_event(key, new_state, self.rules), record.partition, out)
            self.metrics.count_inbound(parsed.kind, effect.value)
        except Exception as exc:  # bad input must never stop the worker: dead-letter it instead
            self.internal_error(record, exc, out)

    def webhook(self, record: InputRecord, out: list[Output]) -> None:
        """A raw Cloud API body -> an InboundEvent per item on wa.inbound (with the body's record
        timestamp), merged TemplateRecords on wa.templates, NumberRecords on wa.numbers."""
        try:
            try:
                result = normalize_webhook(record.value or b"", self.clock())
            except InvalidWebhook as exc:
                self.dead_letter(record, exc.detail, exc.cause, out)
                self.metrics.webhook_bodies.labels("dead_lettered").inc()
                return
            for inbound in result.events:
                out.append(self._inbound_output(inbound, record.timestamp))
                self.metrics.webhook_items.labels(f"event_{inbound.kind}").inc()
            for pnid, waba in result.numbers:
                if self.registry.learn_number(pnid, waba):
                    number = NumberRecord(phone_number_id=pnid, waba_id=waba, updated_at=self.clock())
                    value = number.__pydantic_serializer__.to_json(number)
                    out.append(Output(self.topo.numbers.name, pnid.encode(), value))
            for update in result.templates:
                # Merged with what is known, so the compacted topic keeps whole records, not fragments.
                out.append(self._template_output(self.registry.apply(update)))
                self.metrics.webhook_items.labels("template").inc()
            for _ in result.ignored_fields:
                self.metrics.webhook_items.labels("ignored_field").inc()
            if result.problems:
                # The readable items went on; the body is kept whole with what could not be read.
                self.dead_letter(record, "; ".join(result.problems), "unreadable_items", out)
                self.metrics.webhook_bodies.labels("partial").inc()
            else:
                self.metrics.webhook_bodies.labels("normalized").inc()
        except Exception as exc:  # bad input must never stop the worker: dead-letter it instead
            self.internal_error(record, exc, out)

    def _inbound_output(self, inbound: InboundEvent, timestamp_ms: int) -> Output:
        key = contact_key(inbound.phone_number_id, inbound.user, inbound.group_id)
        value = inbound.__pydantic_serializer__.to_json(inbound, exclude_none=True)
        # The body's record timestamp: the event was written to Kafka when the body was.
        return Output(
            self.topo.inbound.name, key.encode(), value, partition_for(key, self.partitions), timestamp_ms
        )

    def _template_output(self, template: TemplateRecord) -> Output:
        key = template_key(template.waba_id, template.name, template.language).encode()
        value = template.__pydantic_serializer__.to_json(template, exclude_none=True)
        return Output(self.topo.templates.name, key, value)

    def request(self, record: InputRecord, out: list[Output], held_past_limit: bool = False) -> None:
        started = time.perf_counter()
        try:
            now = self.clock()
            parsed = parse_send_request(record.value)
            if isinstance(parsed, InvalidPayload):
                record_key = None if record.key is None else record.key[:MAX_KEY_ECHO_BYTES]
                rejection = decide_invalid(parsed, text_or_b64(record_key), now)
                if rejection is None:
                    self.dead_letter(
                        record, parsed.detail + "; no request_id could be read", "invalid_request", out
                    )
                else:
                    size = len(record.value or b"")
                    self.publish(rejection, record_key, None, out, held_past_limit, size)
                return
            request, received = parsed
            key = request_contact_key(request.phone_number_id, request.to, request.recipient_type)
            # Hashed once: checked here, reused as the decision's partition.
            partition = partition_for(key, self.partitions)
            if self._repartitioned(record, key, partition, "requests", out):
                return
            state = self.load(key, record.partition)
            decision, new_state = decide(request, received, state, now, self.rules, self.registry)
            if new_state is not state:
                self.store(key, new_state, record.partition, out)
            self.publish(decision, key.encode(), partition, out, held_past_limit, len(record.value or b""))
            self.metrics.decision_processing.observe(time.perf_counter() - started)
            if request.created_at is not None:
                self.metrics.decision_latency.observe(max(0.0, now - request.created_at))
        except Exception as exc:  # bad input must never stop the worker: dead-letter it instead
            self.internal_error(record, exc, out)

    # -- outputs --------------------------------------------------------------------------------

    def publish(
        self,
        decision: Decision,
        key: bytes | None,
        partition: int | None,
        out: list[Output],
        held_past_limit: bool = False,
        echo_size: int | None = None,
    ) -> None:
        if held_past_limit:
            decision.held_past_limit = True
            decision.detail += HELD_PAST_LIMIT_NOTE
        if decision.request is not None and echo_size is not None and echo_size > MAX_ECHO_BYTES:
            decision.request = None
            decision.detail += f" The request ({echo_size} bytes) is not echoed."
        value = decision.__pydantic_serializer__.to_json(decision)
        out.append(Output(self.topo.route_topic(decision.route), key, value, partition))
        self.metrics.count_decision(decision.route, decision.reason, decision.origin)

    def window_event(self, event: WindowEvent, partition: int, out: list[Output]) -> None:
        value = event.__pydantic_serializer__.to_json(event)
        out.append(Output(self.topo.windows.name, event.contact.encode(), value, partition))
        self.metrics.window_events.labels(event.event).inc()

    def dead_letter(self, record: InputRecord, error: str, cause: str, out: list[Output]) -> None:
        value = record.value
        key = None if record.key is None else record.key[:MAX_KEY_ECHO_BYTES]
        letter = trusted(
            DeadLetter,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=text_or_b64(key),
            value_b64=None if value is None else base64.b64encode(value[:MAX_ECHO_BYTES]).decode("ascii"),
            value_size=None if value is None else len(value),
            truncated=value is not None and len(value) > MAX_ECHO_BYTES,
            error=error,
            at=self.clock(),
        )
        out.append(Output(self.topo.deadletter.name, key, letter.__pydantic_serializer__.to_json(letter)))
        self.metrics.dead_letters.labels(record.topic.removeprefix(self.topo.prefix), cause).inc()

    def internal_error(self, record: InputRecord, exc: Exception, out: list[Output]) -> None:
        # Log the type and position only: the exception text may quote the payload (PII).
        log.error(
            "internal error on %s[%d]@%d: %s (record dead-lettered)",
            record.topic,
            record.partition,
            record.offset,
            type(exc).__name__,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        self.dead_letter(record, f"internal error: {type(exc).__name__}", "internal_error", out)

    def _repartitioned(
        self, record: InputRecord, key: str, expected: int, source: str, out: list[Output]
    ) -> bool:
        """Re-produce a record that sits on the wrong partition for its contact; True if it did."""
        if record.partition == expected:
            return False
        out.append(Output(record.topic, key.encode(), record.value, expected, record.timestamp))
        self.metrics.repartitioned.labels(source).inc()
        return True
