"""One record against the contact state: the gate's three handlers, synchronous and I/O-free.

Each handler appends what to produce to ``out`` and writes the contact state through the
``StateStore``; the adapter around the pipeline produces the outputs (the state's changelog record is
one of them) before it counts the input offset as processed. Bad input never raises out of a
handler: it becomes a rejection or a dead letter, and a metric counts it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from streams.core.records import InputRecord, Output, StateStore
from streams.metrics import GateMetrics
from streams.models import (
    ContactRecord,
    DeadLetter,
    Decision,
    InboundEvent,
    LimitEvent,
    NumberRecord,
    Reason,
    TemplateRecord,
    WindowEvent,
    trusted,
)
from streams.policy.contacts import (
    Alias,
    Named,
    announcements,
    carried_marketing,
    carried_state,
    learn_aliases,
    merge_states,
    point_event,
    point_to,
)
from streams.policy.decide import decide, decide_invalid
from streams.policy.deliverability import paused_marketing
from streams.policy.keys import contact_key, is_business_scoped, partition_for, request_contact_key
from streams.policy.limits import (
    PortfolioState,
    apply_capability,
    business_initiated,
    describe_limit,
    effective_limit,
    is_limited,
    minute_of,
    reserve,
    used,
)
from streams.policy.parse import InvalidPayload, parse_inbound_event, parse_send_request
from streams.policy.rules import (
    IDENTITY_CHANGE_TYPES,
    MARKETING_COOLDOWN_ERROR_CODE,
    MARKETING_PREFERENCE_CATEGORY,
    WindowRules,
)
from streams.policy.templates import Registry, template_key
from streams.policy.webhook import InvalidWebhook, normalize_webhook
from streams.policy.window import ContactState, InboundEffect, apply_inbound, is_gate_miss, view
from streams.policy.window_events import opened_event
from streams.topology import Topology

log = logging.getLogger(__name__)

Clock = Callable[[], float]
WindowWatch = Callable[[int, str, ContactState], None]

# What the gate echoes of an input (a dead letter's value, a rejected request) is capped, so that a
# huge record cannot make an output larger than Kafka takes (which would stop the worker).
MAX_ECHO_BYTES = 64 * 1024  # Meta's bodies are a few KB; past this the value stays on its source topic
MAX_KEY_ECHO_BYTES = 4096  # a key is echoed twice in a rejection (record key and contact)

# Aliases announced lately (phone_number_id, identifiers): a user's every message names the same ones,
# and announcing them once per worker run is enough (the announcements are idempotent).
ANNOUNCED_CACHE_SIZE = 100_000
_OPEN = ("open", "closing")

# How often a record may be moved from one identifier's partition to another's: aliases point only to
# higher-ranked identifiers, so the gate's own bookkeeping needs at most two moves; more means alias
# records that contradict each other, and the record stops instead of circling.
MAX_ALIAS_HOPS = 3
ALIAS_HOPS_HEADER = "wagate-alias-hops"
ALIAS_LOOP_ERROR = (
    f"moved {MAX_ALIAS_HOPS} times between identifiers of one user: the alias records on wa.inbound "
    "contradict each other (kind 'alias' is the gate's own; do not write it by hand)"
)

# The gate's own keys in the state store, beside the contact keys ("<phone_number_id>:<user>"): a
# portfolio's messaging-limit state, and when the portfolio last reached a user.
LIMITS_PREFIX = b"\x00limits\x00"
REACHED_PREFIX = b"\x00reached\x00"
# The users filed under one minute of a portfolio's count, in chunks of MINUTE_CHUNK: when the minute
# leaves the moving 24 h their records (REACHED_PREFIX) are deleted, so the state holds about a day of
# users. Chunks keep each write small; SWEEP_BUDGET bounds the deletions one record makes.
MINUTE_PREFIX = b"\x00minute\x00"
MINUTE_CHUNK = 100
SWEEP_BUDGET = 500
OWN_KEY_PREFIX = b"\x00"
# Request ids kept per reached user: a reservation delivered again (at_least_once, after a crash) is
# answered duplicate_request instead of sending the template twice.
RECENT_REQUEST_IDS = 8


def limits_key(portfolio: str) -> str:
    """The record key of a portfolio's limit events on wa.inbound: its partition is the portfolio's."""
    return f"limits:{portfolio}"


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


def _moved_again(record: InputRecord) -> tuple[tuple[str, bytes], ...] | None:
    """The headers for one more move of ``record`` between aliases, or None past MAX_ALIAS_HOPS."""
    hops = 0
    for name, value in record.headers or ():
        if name == ALIAS_HOPS_HEADER:
            try:
                hops = int(value)
            except ValueError:
                hops = MAX_ALIAS_HOPS
    if hops >= MAX_ALIAS_HOPS:
        return None
    return ((ALIAS_HOPS_HEADER, str(hops + 1).encode()),)


SIGNATURE_HEADER = "wagate-signature"
_LIMIT_FIELDS = ("waba_id", "messaging_limit", "user", "decision", "request", "not_after")


def _limit_record(kind: str, event_id: str, portfolio: str, timestamp: float, **fields: Any) -> LimitEvent:
    """A LimitEvent the gate writes (its fields are known good); the fields of the other type are None."""
    values = {**dict.fromkeys(_LIMIT_FIELDS), **fields}
    return trusted(
        LimitEvent,
        kind="limit",
        type=kind,
        event_id=event_id,
        portfolio=portfolio,
        timestamp=timestamp,
        **values,
    )


def _sign(key: bytes, value: bytes) -> bytes:
    return hmac.new(key, value, hashlib.sha256).hexdigest().encode()


def _business_initiated(decision: Decision) -> bool:
    message_type = decision.message.get("type") if decision.message else None
    return business_initiated(
        decision.route, message_type, decision.window.state, decision.recipient_type or ""
    )


def _reached_key(portfolio: str, user: str) -> bytes:
    return REACHED_PREFIX + portfolio.encode() + b"\x00" + user.encode()


def _minute_key(portfolio: str, minute: int, chunk: int) -> bytes:
    return MINUTE_PREFIX + portfolio.encode() + b"\x00" + f"{minute}:{chunk}".encode()


@dataclass(slots=True)
class _Reach:
    """When a portfolio last reached a user, and the request ids that reached them lately."""

    at: float
    request_ids: list[str]

    def to_bytes(self) -> bytes:
        return orjson.dumps({"a": self.at, "d": self.request_ids})

    @classmethod
    def read(cls, raw: bytes | None) -> _Reach | None:
        if not raw:
            return None
        data = orjson.loads(raw)
        return cls(float(data["a"]), list(data.get("d") or ()))


class _Placement(Enum):
    """Where a record stands against its contact's partition."""

    HOME = "home"  # on it
    MOVED = "moved"  # re-produced to it
    STUCK = "stuck"  # elsewhere and not movable: moved MAX_ALIAS_HOPS times already, or too large


_TOO_LARGE_TO_MOVE_ERROR = (
    f"larger than {MAX_ECHO_BYTES} bytes and on another partition than its contact's: records that large "
    "are not moved between partitions (write them with the contact key and Kafka's default partitioner)"
)


def _too_large_to_move(record: InputRecord) -> bool:
    """Records the gate re-produces are capped like its echoes: a moved copy larger than Kafka takes
    would fail its transaction and the worker would replay and fail again."""
    return len(record.value or b"") > MAX_ECHO_BYTES


def _other_identifiers(event: InboundEvent) -> list[Named]:
    """The BSUIDs an event gives beside its ``user``."""
    others: list[Named] = []
    if event.user_id:
        others.append(("user_id", event.user_id))
    if event.parent_user_id:
        others.append(("parent_user_id", event.parent_user_id))
    return others


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
        signing_key: bytes | None = None,
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
        self.signing_key = signing_key  # WAGATE_INTERNAL_KEY: limit records are signed and checked
        self._changelog = topo.contact_state_changelog.name
        self._announced: OrderedDict[tuple[str, tuple[str, ...]], None] = OrderedDict()
        # Portfolios' limit states by (partition, portfolio), as read or last written: the home partition
        # changes one per business-initiated decision, and its per-minute counts are costly to decode.
        # Written to the store and the changelog once per fetched batch (flush_portfolios), not per
        # decision; dropped with the partition, like the store's pending writes.
        self._portfolio_states: dict[tuple[int, str], PortfolioState] = {}
        self._dirty_portfolios: set[tuple[int, str]] = set()
        # The chunk users are being filed in, by (partition, portfolio, minute): (chunk number, users);
        # appended to per decision, written once per batch like the portfolio states, then dropped.
        self._minute_users: dict[tuple[int, str, int], tuple[int, list[str]]] = {}
        self._dirty_minutes: set[tuple[int, str, int]] = set()
        metrics.portfolios.source = self.portfolio_usage

    # -- state ----------------------------------------------------------------------------------

    def load(self, key: str, partition: int) -> ContactState:
        return ContactState.from_bytes(self.state.get(partition, key.encode()))

    def store(self, key: str, state: ContactState, partition: int, out: list[Output]) -> None:
        self._put(key.encode(), state.to_bytes(), partition, out)

    def _put(self, raw_key: bytes, value: bytes, partition: int, out: list[Output]) -> None:
        self.state.put(partition, raw_key, value)
        out.append(Output(self._changelog, raw_key, value, partition))

    def load_portfolio(self, portfolio: str, partition: int) -> PortfolioState:
        cached = self._portfolio_states.get((partition, portfolio))
        if cached is None:
            raw = self.state.get(partition, LIMITS_PREFIX + portfolio.encode())
            cached = self._portfolio_states[(partition, portfolio)] = PortfolioState.from_bytes(raw)
        return cached

    def _store_portfolio(self, portfolio: str, partition: int, state: PortfolioState) -> None:
        self._portfolio_states[(partition, portfolio)] = state
        self._dirty_portfolios.add((partition, portfolio))

    def flush_portfolios(self, partition: int, out: list[Output]) -> None:
        """Write the portfolio states ``partition``'s batch changed: call it before the batch's outputs
        go (they belong to the same transaction)."""
        for key in [key for key in self._dirty_portfolios if key[0] == partition]:
            self._dirty_portfolios.discard(key)
            self._put(LIMITS_PREFIX + key[1].encode(), self._portfolio_states[key].to_bytes(), partition, out)
        for minute in [minute for minute in self._minute_users if minute[0] == partition]:
            chunk, users = self._minute_users.pop(minute)
            if minute in self._dirty_minutes:
                self._dirty_minutes.discard(minute)
                self._put(_minute_key(minute[1], minute[2], chunk), orjson.dumps(users), partition, out)

    def _delete(self, raw_key: bytes, partition: int, out: list[Output]) -> None:
        self.state.put(partition, raw_key, b"")  # an empty value: deleted (and a tombstone below)
        out.append(Output(self._changelog, raw_key, None, partition))

    def _file(self, portfolio: str, partition: int, minute: int, user: str) -> None:
        """File ``user`` under ``minute``: its last chunk, or a new one when that is full."""
        key = (partition, portfolio, minute)
        current = self._minute_users.get(key)
        if current is None:
            chunk, users = 0, []
            while (raw := self.state.get(partition, _minute_key(portfolio, minute, chunk))) is not None:
                users = list(orjson.loads(raw)) if raw else []
                if len(users) < MINUTE_CHUNK:
                    break
                chunk, users = chunk + 1, []
            current = (chunk, users)
        chunk, users = current
        if len(users) >= MINUTE_CHUNK:
            chunk, users = chunk + 1, []
        users.append(user)
        self._minute_users[key] = (chunk, users)
        self._dirty_minutes.add(key)

    def _sweep(
        self, portfolio: str, partition: int, state: PortfolioState, out: list[Output]
    ) -> PortfolioState:
        """Delete the records of users filed under minutes that left the 24 h, SWEEP_BUDGET users at
        most: a minute of a large campaign is swept over the next records, not in one."""
        if not state.sweep:
            return state
        budget = SWEEP_BUDGET
        sweep = [list(item) for item in state.sweep]
        while sweep and budget > 0:
            minute, chunk = sweep[0]
            raw = self.state.get(partition, _minute_key(portfolio, minute, chunk))
            if raw is None:
                sweep.pop(0)  # every chunk of this minute is done
                continue
            try:
                users = [str(user) for user in orjson.loads(raw)] if raw else []
            except (orjson.JSONDecodeError, TypeError):
                users = []  # the gate wrote it: a bug; the chunk goes, its users' records stay
            for user in users:
                key = _reached_key(portfolio, user)
                try:
                    reach = _Reach.read(self.state.get(partition, key))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    reach = None
                    self._delete(key, partition, out)
                if reach is not None and minute_of(reach.at) == minute:
                    self._delete(key, partition, out)
            self._delete(_minute_key(portfolio, minute, chunk), partition, out)
            sweep[0] = [minute, chunk + 1]
            budget -= max(1, len(users))
        return PortfolioState(state.limit, state.limit_at, state.buckets, sweep)

    # -- inputs ---------------------------------------------------------------------------------

    def inbound(self, record: InputRecord, out: list[Output]) -> None:
        try:
            parsed = parse_inbound_event(record.value)
            if isinstance(parsed, InvalidPayload):
                self.dead_letter(record, parsed.detail, "invalid_inbound", out)
                return
            if isinstance(parsed, LimitEvent):
                self._limit_event(record, parsed, out)
                return
            key = contact_key(parsed.phone_number_id, parsed.user, parsed.group_id)
            placed = self._repartition(record, key, partition_for(key, self.partitions), "inbound", out)
            if placed is not _Placement.HOME:
                if placed is _Placement.STUCK:
                    self._dead_letter_stuck(record, out)
                return
            state = self.load(key, record.partition)
            if parsed.group_id is None:
                if state.alias_of is not None and not (parsed.kind == "alias" and parsed.type == "point"):
                    if not self._rekey_event(record, parsed, state.alias_of, out):
                        self._dead_letter_stuck(record, out)
                    return
                if parsed.kind == "alias":
                    self._alias(record, parsed, key, state, out)
                    return
            now = self.clock()
            self._count_paused_by_meta(parsed)
            if is_gate_miss(state, parsed, now, self.rules):
                self.metrics.gate_misses.inc()
                log.warning(
                    "gate miss: a 131047-type failure after a window_open send (see wagate_gate_misses)"
                )
            new_state, effect = apply_inbound(state, parsed, now, self.rules)
            if parsed.group_id is None and (parsed.user_id or parsed.parent_user_id):
                # An event that names its user by two identifiers (written straight to wa.inbound): the
                # contact learns the alias and tells the other identifier's partition.
                new_state = self._learn(
                    parsed.phone_number_id,
                    parsed.user,
                    new_state,
                    _other_identifiers(parsed),
                    parsed.timestamp,
                    out,
                    point=True,
                )
            if parsed.kind == "system" and parsed.type in IDENTITY_CHANGE_TYPES and parsed.new_user:
                self._carry_to_new_contact(record, parsed, state, out)
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
            for alias in result.aliases:
                self._announce(alias, record.timestamp, out)
            for inbound in result.events:
                if inbound.group_id is None:
                    # Named only by another identifier of a known contact: addressed to the contact now
                    # (its partition would move it there too, one hop later).
                    canonical = self.registry.canonical_of(inbound.phone_number_id, inbound.user)
                    if canonical is not None:
                        inbound = inbound.model_copy(update={"user": canonical, "via": inbound.user})
                        self.metrics.rekeyed.labels("webhooks").inc()
                out.append(self._inbound_output(inbound, record.timestamp))
                self.metrics.webhook_items.labels(f"event_{inbound.kind}").inc()
            for pnid, waba in result.numbers:
                if self.registry.learn_number(pnid, waba):
                    number = NumberRecord(phone_number_id=pnid, waba_id=waba, updated_at=self.clock())
                    value = number.__pydantic_serializer__.to_json(number)
                    out.append(Output(self.topo.numbers.name, pnid.encode(), value))
            for waba, limit, at in result.capabilities:
                self._announce_limit(waba, limit, at, record.timestamp, out)
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

    def _inbound_output(
        self, inbound: InboundEvent, timestamp_ms: int | None, headers: tuple[tuple[str, bytes], ...] = ()
    ) -> Output:
        key = contact_key(inbound.phone_number_id, inbound.user, inbound.group_id)
        value = inbound.__pydantic_serializer__.to_json(inbound, exclude_none=True)
        # The body's record timestamp: the event was written to Kafka when the body was.
        return Output(
            self.topo.inbound.name,
            key.encode(),
            value,
            partition_for(key, self.partitions),
            timestamp_ms,
            headers,
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
            asked = request_contact_key(request.phone_number_id, request.to, request.recipient_type)
            key, state = asked, None
            individual = request.recipient_type == "individual"
            if individual and record.key is not None and record.key != asked.encode():
                # Re-keyed here by alias (or a stray): decided under the record's contact if it names one
                # of this partition whose identifiers include 'to'.
                claimed = self._claimed_contact(record, request.phone_number_id)
                if claimed is not None:
                    claimed_state = self.load(claimed, record.partition)
                    if claimed_state.alias_of is not None:
                        if self._rekey_request(record, request.phone_number_id, claimed_state.alias_of, out):
                            return
                        key, state = claimed, claimed_state  # moved too often: decided here, unknown
                    elif request.to in claimed_state.aliases:
                        key, state = claimed, claimed_state
            # Hashed once: checked here, reused as the decision's partition.
            partition = partition_for(key, self.partitions)
            stray = False  # on another partition than its contact's, and it cannot be moved there
            if state is None:
                placed = self._repartition(record, key, partition, "requests", out)
                if placed is _Placement.MOVED:
                    return
                if placed is _Placement.STUCK:
                    if _too_large_to_move(record):
                        self._reject_unmovable(record, request.request_id, partition, out, held_past_limit)
                        return
                    # Moved too often: decided here as an unknown contact (a template at worst, never
                    # free-form), and nothing is stored on a partition that does not hold the contact.
                    state, stray = ContactState.from_bytes(None), True
                else:
                    state = self.load(key, record.partition)
                    if (
                        individual
                        and state.alias_of is not None
                        and self._rekey_request(record, request.phone_number_id, state.alias_of, out)
                    ):
                        return
            canonical = key.split(":", 1)[1]
            phone = canonical if individual and not is_business_scoped(canonical) else None
            decision, new_state = decide(request, received, state, now, self.rules, self.registry, phone)
            if key != asked:
                decision.contact = key
                decision.detail += (
                    " ('to' is another identifier of this contact: decided against its window.)"
                )
            if decision.reason == "marketing_unavailable_in_region":
                pause = paused_marketing(phone or request.to, now, self.rules.marketing_pauses)
                self.metrics.marketing_unavailable.labels(pause.region if pause else "", "gate").inc()
            if new_state is not state and not stray:
                self.store(key, new_state, record.partition, out)
            size = len(record.value or b"")
            portfolio = self._limited_portfolio(decision, request.phone_number_id, record.partition)
            if portfolio is not None:
                # Business-initiated under a limit: the portfolio's partition takes the slot or refuses.
                self._finish(decision, held_past_limit, size)
                self._ask_for_slot(
                    portfolio, canonical, decision, received, size, now, request.not_after, out
                )
            else:
                self.publish(decision, key.encode(), partition, out, held_past_limit, size)
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
        self._finish(decision, held_past_limit, echo_size)
        value = decision.__pydantic_serializer__.to_json(decision)
        out.append(Output(self.topo.route_topic(decision.route), key, value, partition))
        self.metrics.count_decision(decision.route, decision.reason, decision.origin)

    @staticmethod
    def _finish(decision: Decision, held_past_limit: bool, echo_size: int | None) -> None:
        if held_past_limit:
            decision.held_past_limit = True
            decision.detail += HELD_PAST_LIMIT_NOTE
        if decision.request is not None and echo_size is not None and echo_size > MAX_ECHO_BYTES:
            decision.request = None
            decision.detail += f" The request ({echo_size} bytes) is not echoed."

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

    # -- the portfolio's messaging limit (policy.limits) ------------------------------------------

    def _limited_portfolio(self, decision: Decision, pnid: str, partition: int) -> str | None:
        """The portfolio whose limit this decision must fit, or None (not business-initiated, no
        known finite limit). Every partition holds each portfolio's limit (capability events)."""
        if not _business_initiated(decision):
            return None
        portfolio = self.registry.portfolio_of(pnid)
        if portfolio is None:
            return None
        state = self.load_portfolio(portfolio, partition)
        if not is_limited(self._limit_of(portfolio, state)):
            return None
        return portfolio

    def _limit_output(self, event: LimitEvent, partition: int) -> Output:
        value = event.__pydantic_serializer__.to_json(event)
        headers = () if self.signing_key is None else ((SIGNATURE_HEADER, _sign(self.signing_key, value)),)
        return Output(
            self.topo.inbound.name, limits_key(event.portfolio).encode(), value, partition, None, headers
        )

    def _signed(self, record: InputRecord) -> bool:
        if self.signing_key is None:
            return True
        expected = _sign(self.signing_key, record.value or b"")
        return any(
            name == SIGNATURE_HEADER and hmac.compare_digest(value, expected)
            for name, value in record.headers or ()
        )

    def _ask_for_slot(
        self,
        portfolio: str,
        user: str,
        decision: Decision,
        received: dict[str, object],
        size: int,
        now: float,
        not_after: float | None,
        out: list[Output],
    ) -> None:
        ask = _limit_record(
            "reserve",
            f"reserve:{decision.request_id}",
            portfolio,
            now,
            user=user,
            decision=decision,
            request=received if size <= MAX_ECHO_BYTES else None,
            not_after=not_after,
        )
        out.append(self._limit_output(ask, self._home(portfolio)))

    def _announce_limit(self, waba: str, limit: int, at: float, timestamp_ms: int, out: list[Output]) -> None:
        """Meta's limit for a portfolio goes to every partition: each one decides which requests need a
        slot, in order with the requests written after the webhook (the ordering contract)."""
        portfolio = self.registry.portfolio_of_waba(waba)
        event = _limit_record(
            "capability", f"capability:{waba}:{at}", portfolio, at, waba_id=waba, messaging_limit=limit
        )
        for partition in range(self.partitions):
            output = self._limit_output(event, partition)
            output.timestamp_ms = timestamp_ms
            out.append(output)
        self.metrics.webhook_items.labels("messaging_limit").inc()

    def _limit_event(self, record: InputRecord, event: LimitEvent, out: list[Output]) -> None:
        if not self._signed(record):
            error = "limit event not signed with WAGATE_INTERNAL_KEY (only the gate writes kind 'limit')"
            self.dead_letter(record, error, "unsigned_limit_event", out)
            return
        if event.type == "capability":
            assert event.messaging_limit is not None  # the model requires it for this type
            state = self.load_portfolio(event.portfolio, record.partition)
            # A time far ahead (a bad clock, a hand-written record) must not pin the limit for good.
            at = min(event.timestamp, self.clock() + self.rules.future_skew_seconds)
            new_state = apply_capability(state, event.messaging_limit, at)
            if new_state is not state:
                self._store_portfolio(event.portfolio, record.partition, new_state)
            self.metrics.count_inbound("limit", "capability")
            return
        if record.partition != self._home(event.portfolio):  # the gate writes them to it: not ours
            error = f"limit event: a reservation for portfolio partition {self._home(event.portfolio)}"
            self.dead_letter(record, error, "invalid_inbound", out)
            return
        decision, user = event.decision, event.user
        assert decision is not None and user is not None  # the model requires them for this type
        if decision.contact is None or not _business_initiated(decision):
            error = "limit event: its decision is not a business-initiated template with a contact"
            self.dead_letter(record, error, "invalid_inbound", out)
            return
        now = self.clock()
        contact, partition = decision.contact, record.partition
        reached_key = _reached_key(event.portfolio, user)
        reach = _Reach.read(self.state.get(partition, reached_key))
        if reach is not None and decision.request_id in reach.request_ids:  # delivered again
            detail = (
                f"request_id '{decision.request_id}' was already decided at {reach.at}; it is never "
                "sent twice."
            )
            self._publish_instead(decision, event, "duplicate_request", detail, now, out)
            return
        if event.not_after is not None and now > event.not_after:  # it waited here past its deadline
            detail = (
                f"Decided at {now:.3f}, after the request's not_after {event.not_after} (while its "
                "portfolio's messaging limit was checked)."
            )
            self._publish_instead(decision, event, "stale_request", detail, now, out)
            return
        state = self.load_portfolio(event.portfolio, partition)
        limit = self._limit_of(event.portfolio, state)
        outcome = reserve(state, limit, None if reach is None else reach.at, now)
        # Reads and deletions first, the portfolio's new state last: an error on the way (the record is
        # then dead-lettered) leaves the count as it was.
        new_state = self._sweep(event.portfolio, partition, outcome.state, out)
        if outcome.granted:
            assert outcome.reached_at is not None  # a granted reservation says when
            recent = [] if reach is None else reach.request_ids[-(RECENT_REQUEST_IDS - 1) :]
            self._put(
                reached_key,
                _Reach(outcome.reached_at, [*recent, decision.request_id]).to_bytes(),
                partition,
                out,
            )
            if outcome.filed_in is not None:
                self._file(event.portfolio, partition, outcome.filed_in, user)
        self._store_portfolio(event.portfolio, partition, new_state)
        if outcome.granted:
            self.metrics.limit_reservations.inc("new_user" if outcome.counted else "known_user")
            self.publish(decision, contact.encode(), partition_for(contact, self.partitions), out)
            return
        self.metrics.limit_reservations.inc("refused")
        free = "" if outcome.free_at is None else f"; the next slot frees at {outcome.free_at:.0f}"
        detail = (
            f"Business portfolio {event.portfolio} has reached its messaging limit: {outcome.used} of "
            f"{describe_limit(limit)} users reached outside their window in the last 24 h{free}. Meta "
            "would refuse this template (messaging limit)."
        )
        self._publish_instead(decision, event, "messaging_limit_reached", detail, now, out)

    def _publish_instead(
        self,
        decision: Decision,
        event: LimitEvent,
        reason: Reason,
        detail: str,
        now: float,
        out: list[Output],
    ) -> None:
        """A rejection in place of the decision a reservation carried (the request echoed)."""
        assert decision.contact is not None
        rejection = trusted(
            Decision,
            **{
                **decision.__dict__,
                "route": "rejected",
                "reason": reason,
                "detail": detail + ("" if event.request is not None else " The request is not echoed."),
                "decided_at": now,
                "message": None,
                "pricing": None,
                "request": event.request,
            },
        )
        contact = decision.contact
        self.publish(rejection, contact.encode(), partition_for(contact, self.partitions), out)

    def _limit_of(self, portfolio: str, state: PortfolioState) -> int | None:
        return effective_limit(state, self.registry.configured_limits.get(portfolio))

    def _home(self, portfolio: str) -> int:
        return partition_for(limits_key(portfolio), self.partitions)

    def remember_portfolio(self, partition: int, raw_key: bytes, value: bytes) -> None:
        """A portfolio's state read back from the store (after recovery): its gauges show again."""
        if raw_key.startswith(LIMITS_PREFIX):
            portfolio = raw_key[len(LIMITS_PREFIX) :].decode()
            if (partition, portfolio) not in self._portfolio_states:
                self._portfolio_states[(partition, portfolio)] = PortfolioState.from_bytes(value)

    def forget_partition(self, partition: int) -> None:
        """The partition went (revoked, or lost with what was pending): its states are read anew."""
        for key in [key for key in self._portfolio_states if key[0] == partition]:
            del self._portfolio_states[key]
            self._dirty_portfolios.discard(key)
        for minute in [minute for minute in self._minute_users if minute[0] == partition]:
            del self._minute_users[minute]
            self._dirty_minutes.discard(minute)

    def portfolio_usage(self) -> list[tuple[str, int, int]]:
        """(portfolio, limit, used) of the portfolios whose partition this worker holds."""
        now = self.clock()
        usage = []
        for (partition, portfolio), state in list(self._portfolio_states.items()):
            if partition != self._home(portfolio):
                continue
            limit = self._limit_of(portfolio, state)
            if limit is None and not state.buckets:
                continue  # nothing known, nothing counted
            usage.append((portfolio, -1 if limit is None else limit, used(state, now)))
        return usage

    def _count_paused_by_meta(self, event: InboundEvent) -> None:
        """A 131049 failure for a destination the pause table names: Meta's side of the same count."""
        if event.kind != "status" or event.type != "failed" or not event.errors:
            return
        if not any(error.code == MARKETING_COOLDOWN_ERROR_CODE for error in event.errors):
            return
        pause = paused_marketing(event.user, event.timestamp, self.rules.marketing_pauses)
        if pause is not None:
            self.metrics.marketing_unavailable.labels(pause.region, "meta").inc()

    # -- one person, several identifiers (policy.contacts) ----------------------------------------

    def _announce(self, alias: Alias, timestamp_ms: int, out: list[Output]) -> None:
        """A webhook item named one user by several identifiers: the canonical contact learns the others
        and each other identifier's partition learns where its contact is, in this same step, so that a
        request written after the webhook finds the alias on its own partition (ordering contract)."""
        seen = (alias.phone_number_id, alias.identifiers)
        if seen in self._announced:
            self._announced.move_to_end(seen)
            return
        self._announced[seen] = None
        if len(self._announced) > ANNOUNCED_CACHE_SIZE:
            self._announced.popitem(last=False)
        for event in announcements(alias):
            out.append(self._inbound_output(InboundEvent.model_validate(event), timestamp_ms))

    def _point(
        self,
        pnid: str,
        identifier: str,
        canonical: str,
        at: float,
        timestamp_ms: int | None,
        out: list[Output],
    ) -> None:
        point = InboundEvent.model_validate(point_event(pnid, identifier, canonical, at))
        out.append(self._inbound_output(point, timestamp_ms))

    def _learn(
        self,
        pnid: str,
        canonical: str,
        state: ContactState,
        others: list[Named],
        at: float,
        out: list[Output],
        point: bool,
        timestamp_ms: int | None = None,
    ) -> ContactState:
        """The canonical contact records identifiers it did not know; wa.contacts gets a record for
        each of its identifiers; with ``point`` their partitions are told too."""
        new_state, new = learn_aliases(state, canonical, [value for _, value in others])
        if not new:
            return state
        kinds = dict((value, kind) for kind, value in others)
        for identifier in new:
            self.metrics.aliases_learnt.labels(kinds.get(identifier, "user_id")).inc()
            if point:
                self._point(pnid, identifier, canonical, at, timestamp_ms, out)
        contact = contact_key(pnid, canonical)
        identifiers = [canonical, *new_state.aliases]
        now = self.clock()
        for identifier in identifiers:
            record = ContactRecord(
                phone_number_id=pnid,
                identifier=identifier,
                contact=contact,
                identifiers=identifiers,
                updated_at=now,
            )
            key = contact_key(pnid, identifier)
            self.registry.learn_contact(pnid, identifier, contact)  # this worker knows it at once
            out.append(
                Output(
                    self.topo.contacts.name,
                    key.encode(),
                    record.__pydantic_serializer__.to_json(record),
                    partition_for(key, self.partitions),
                )
            )
        return new_state

    def _alias(
        self, record: InputRecord, event: InboundEvent, key: str, state: ContactState, out: list[Output]
    ) -> None:
        """An alias event (written by the gate): learn, point or merge."""
        new_state = state
        effect = InboundEffect.NONE
        if event.type == "learn":
            new_state = self._learn(
                event.phone_number_id,
                event.user,
                state,
                _other_identifiers(event),
                event.timestamp,
                out,
                False,
                record.timestamp,
            )
        elif event.type == "point" and event.alias_of:
            new_state, carried = point_to(state, event.user, event.alias_of, event.timestamp)
            if carried is not None:
                # What was kept under this identifier joins the contact's window (policy.contacts).
                merge = InboundEvent.model_validate(
                    {
                        "event_id": f"merge:{event.user}:{event.timestamp}",
                        "phone_number_id": event.phone_number_id,
                        "user": event.alias_of,
                        "timestamp": event.timestamp,
                        "kind": "alias",
                        "type": "merge",
                        "via": event.user,
                        "merged_state": carried.to_dict(),
                    }
                )
                out.append(self._inbound_output(merge, record.timestamp))
                self.metrics.contacts_merged.inc()
        elif event.type == "merge" and event.merged_state is not None:
            carried = carried_state(event.merged_state)
            if carried is None:
                self.dead_letter(
                    record,
                    "kind 'alias' type 'merge': merged_state is not a contact state",
                    "invalid_inbound",
                    out,
                )
                return
            now = self.clock()
            joined: list[Named] = [("user_id", alias) for alias in (event.via, *carried.aliases) if alias]
            learnt = self._learn(
                event.phone_number_id,
                event.user,
                state,
                joined,
                event.timestamp,
                out,
                False,
                record.timestamp,
            )
            new_state = merge_states(learnt, carried)
            if (
                view(state, now, self.rules).state not in _OPEN
                and view(new_state, now, self.rules).state in _OPEN
            ):
                effect = InboundEffect.OPENED
                if self.window_events:
                    self.window_event(opened_event(key, new_state, self.rules), record.partition, out)
        if new_state is not state:
            self.store(key, new_state, record.partition, out)
            self.watch(record.partition, key, new_state)
        self.metrics.count_inbound("alias", effect.value)

    def _carry_to_new_contact(
        self, record: InputRecord, event: InboundEvent, old: ContactState, out: list[Output]
    ) -> None:
        """A number (or BSUID) change: the user's marketing preference follows them to the new contact;
        the window does not (docs/contract.md)."""
        carried = carried_marketing(old)
        if carried is None or event.new_user is None:
            return
        at, opted_out = carried
        preference = InboundEvent.model_validate(
            {
                "event_id": f"carried:{event.event_id}",
                "phone_number_id": event.phone_number_id,
                "user": event.new_user,
                "timestamp": at,
                "kind": "preference",
                "type": MARKETING_PREFERENCE_CATEGORY,
                "preference": {
                    "category": MARKETING_PREFERENCE_CATEGORY,
                    "value": "stop" if opted_out else "resume",
                },
                "via": event.user,
            }
        )
        out.append(self._inbound_output(preference, record.timestamp))

    def _rekey_event(self, record: InputRecord, event: InboundEvent, target: str, out: list[Output]) -> bool:
        """Move the event to ``target``'s contact; False when it was moved too often already."""
        headers = _moved_again(record)
        if headers is None or _too_large_to_move(record):
            return False
        moved = event.model_copy(update={"user": target, "via": event.via or event.user})
        out.append(self._inbound_output(moved, record.timestamp, headers))
        self.metrics.rekeyed.labels("inbound").inc()
        return True

    def _rekey_request(self, record: InputRecord, pnid: str, target: str, out: list[Output]) -> bool:
        """Move the request to ``target``'s contact; False when it was moved too often already (alias
        records that contradict each other, e.g. written by hand to wa.inbound): it is then decided
        where it is, as an unknown contact, which can cost a template but never lets free-form out."""
        headers = _moved_again(record)
        if headers is None or _too_large_to_move(record):
            self.metrics.rekeyed.labels("stopped").inc()
            log.warning("a request that cannot move again between aliases was decided where it stood")
            return False
        # The request is moved as written ('to' unchanged); its new key names the contact, which is what
        # the receiving partition checks against the contact's identifiers.
        key = contact_key(pnid, target)
        partition = partition_for(key, self.partitions)
        out.append(
            Output(self.topo.requests.name, key.encode(), record.value, partition, record.timestamp, headers)
        )
        self.metrics.rekeyed.labels("requests").inc()
        return True

    def _claimed_contact(self, record: InputRecord, pnid: str) -> str | None:
        """The record's key when it names a contact of this phone number on this partition."""
        raw = record.key
        if raw is None or not raw.startswith(pnid.encode() + b":") or b":group:" in raw:
            return None
        if partition_for(raw, self.partitions) != record.partition:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def _repartition(
        self, record: InputRecord, key: str, expected: int, source: str, out: list[Output]
    ) -> _Placement:
        """Re-produce a record that sits on the wrong partition for its contact. A move counts as a hop
        (the header goes with it): a request bounced between an alias and a contact that does not list
        it stops after MAX_ALIAS_HOPS instead of circling for ever."""
        if record.partition == expected:
            return _Placement.HOME
        headers = _moved_again(record)
        if headers is None or _too_large_to_move(record):
            self.metrics.rekeyed.labels("stopped").inc()
            return _Placement.STUCK
        out.append(Output(record.topic, key.encode(), record.value, expected, record.timestamp, headers))
        self.metrics.repartitioned.labels(source).inc()
        return _Placement.MOVED

    def _dead_letter_stuck(self, record: InputRecord, out: list[Output]) -> None:
        """An inbound event that cannot reach its contact's partition: moved too often, or too large."""
        if _too_large_to_move(record):
            self.dead_letter(record, _TOO_LARGE_TO_MOVE_ERROR, "too_large_to_move", out)
        else:
            self.dead_letter(record, ALIAS_LOOP_ERROR, "alias_loop", out)

    def _reject_unmovable(
        self,
        record: InputRecord,
        request_id: str,
        partition: int,
        out: list[Output],
        held_past_limit: bool,
    ) -> None:
        invalid = InvalidPayload(
            f"the request ({len(record.value or b'')} bytes) is on partition {record.partition}, its "
            f"contact's partition is {partition}, and records over {MAX_ECHO_BYTES} bytes are not moved "
            "between partitions: key requests by '<phone_number_id>:<to>' with Kafka's default "
            "partitioner (murmur2), see docs/producers.md",
            None,
            request_id,
        )
        record_key = None if record.key is None else record.key[:MAX_KEY_ECHO_BYTES]
        rejection = decide_invalid(invalid, text_or_b64(record_key), self.clock())
        assert rejection is not None  # a request_id was given
        self.publish(rejection, record_key, None, out, held_past_limit, len(record.value or b""))
