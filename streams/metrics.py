"""Prometheus metrics. Every label value comes from a small fixed set: never a contact, number or id."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from streams.policy.rules import ORIGINS


class LoopHistogram(Collector):
    """A histogram observed per decision, on the event loop's thread only. prometheus_client's takes a
    lock per bucket and per sum and walks the buckets one by one: with three observed per decision it
    was 5% of the worker's time. Here: one bisect and two additions; scrapes (on the same loop) read
    the figures as they stand. Exposed exactly like prometheus_client's Histogram."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = (*sorted(buckets), math.inf)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # "le": the first bound >= value
        self.sum += value

    def collect(self) -> Iterator[Metric]:
        cumulative, running = [], 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            running += count
            cumulative.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
        yield HistogramMetricFamily(self.name, self.documentation, buckets=cumulative, sum_value=self.sum)


class LoopCounter(Collector):
    """A labelled counter incremented per record, on the event loop's thread only (see LoopHistogram:
    prometheus_client's child takes a lock per increment). Exposed as ``<name>_total``."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self.values: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def inc(self, *labels: str) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + 1.0

    def value(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in list(self.values.items()):
            family.add_metric(list(labels), value)
        yield family


# (portfolio id, its messaging limit (-1: unlimited), distinct users reached in the last 24 h)
PortfolioUsage = tuple[str, int, int]


class PortfolioGauges(Collector):
    """Each portfolio's messaging limit and usage, read at scrape time from the worker that holds the
    portfolio's partition (another worker exports nothing for it, so sums across workers are exact).
    The label is the business portfolio's id (configuration or the WABA id): never a user's."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.source: Callable[[], Iterable[PortfolioUsage]] = lambda: ()
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        limit = GaugeMetricFamily(
            "wagate_messaging_limit",
            "The business portfolio's messaging limit: distinct users reached outside their customer "
            "service window per moving 24 h (-1: unlimited), from Meta's webhook or WAGATE_MESSAGING_LIMITS",
            labels=["portfolio"],
        )
        used = GaugeMetricFamily(
            "wagate_messaging_limit_used",
            "Distinct users the portfolio reached with business-initiated messages in the last 24 h",
            labels=["portfolio"],
        )
        for portfolio, value, count in self.source():
            limit.add_metric([portfolio], value)
            used.add_metric([portfolio], count)
        yield limit
        yield used


class GateMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.decisions = LoopCounter(
            "wagate_decisions",
            "Decisions published, by route, reason and origin",
            ["route", "reason", "origin"],
            registry=self.registry,
        )
        self.inbound_events = LoopCounter(
            "wagate_inbound_events",
            "Inbound events applied, by kind and window effect",
            ["kind", "effect"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "wagate_dead_letters",
            "Records sent to the dead-letter topic, by source and cause",
            ["source", "cause"],
            registry=self.registry,
        )
        self.repartitioned = Counter(
            "wagate_repartitioned",
            "Records found on the wrong partition and re-produced by key",
            ["source"],
            registry=self.registry,
        )
        self.aliases_learnt = Counter(
            "wagate_aliases_learnt",
            "Identifiers learnt to be another name of a contact, by kind (user_id, parent_user_id)",
            ["kind"],
            registry=self.registry,
        )
        self.rekeyed = Counter(
            "wagate_rekeyed_by_alias",
            "Records addressed by a contact's non-canonical identifier and moved to its canonical contact",
            ["source"],
            registry=self.registry,
        )
        self.contacts_merged = Counter(
            "wagate_contacts_merged",
            "Window state kept under an identifier joined into its contact once the alias was learnt",
            registry=self.registry,
        )
        self.kafka_requests = Counter(
            "wagate_kafka_requests",
            "Requests this process's Kafka clients sent, by API (Produce, Fetch, AddPartitionsToTxn, "
            "EndTxn, OffsetCommit, ...): divided by wagate_decisions, the broker load a decision costs",
            ["api"],
            registry=self.registry,
        )
        self.transactions = Counter(
            "wagate_transactions",
            "Kafka transactions committed (exactly_once: one per input partition and step)",
            registry=self.registry,
        )
        self.transaction_seconds = Histogram(
            "wagate_transaction_seconds",
            "exactly_once: from a transaction's begin to its commit",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0),
            registry=self.registry,
        )
        self.webhook_bodies = Counter(
            "wagate_webhook_bodies",
            "Webhook bodies read from wa.webhooks, by outcome (normalized, partial, dead_lettered)",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_items = Counter(
            "wagate_webhook_items",
            "What webhook bodies held: inbound events by kind, template updates, ignored change fields",
            ["item"],
            registry=self.registry,
        )
        self.partitions_lost = Counter(
            "wagate_partitions_lost",
            "Partitions dropped because their transactional producer was fenced (the worker was frozen "
            "past the session timeout, or a transaction outlived its timeout); the worker rejoins the group",
            registry=self.registry,
        )
        self.registry_skipped = Counter(
            "wagate_registry_skipped_records",
            "Unusable records on wa.templates / wa.numbers / wa.contacts, skipped and dead-lettered",
            ["topic"],
            registry=self.registry,
        )
        self.gate_misses = Counter(
            "wagate_gate_misses",
            "131047-type failures for a contact the gate had sent free-form to on window_open (keep at 0)",
            registry=self.registry,
        )
        self.window_events = Counter(
            "wagate_window_events",
            "Events published to wa.windows, by event (opened, expiring, closed)",
            ["event"],
            registry=self.registry,
        )
        self.open_windows = Gauge(
            "wagate_open_windows",
            "Contacts whose customer service window is open, on this worker's partitions",
            registry=self.registry,
        )
        self.decision_processing = LoopHistogram(
            "wagate_decision_processing_seconds",
            "Time the worker spends deciding one request (parse, state, policy, produce)",
            (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
            registry=self.registry,
        )
        self.decision_latency = LoopHistogram(
            "wagate_decision_latency_seconds",
            "Request created_at to decision time",
            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.requests_held = Gauge(
            "wagate_requests_held",
            "Requests read and waiting for the inbound events written before them (ordering contract)",
            registry=self.registry,
        )
        self.hold_seconds = LoopHistogram(
            "wagate_request_hold_seconds",
            "How long a request waited for the inbound events written before it",
            (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.held_past_limit = Counter(
            "wagate_decisions_past_hold_limit",
            "Requests decided at WAGATE_MAX_HOLD_SECONDS before the inbound events before them were applied",
            registry=self.registry,
        )

        self.portfolios = PortfolioGauges(self.registry)
        self.limit_reservations = LoopCounter(
            "wagate_messaging_limit_reservations",
            "Business-initiated decisions checked against their portfolio's messaging limit, by outcome "
            "(new_user: a slot taken, known_user: reached in the last 24 h already, refused)",
            ["outcome"],
            registry=self.registry,
        )
        self.marketing_unavailable = Counter(
            "wagate_marketing_unavailable",
            "Marketing templates to a destination in WAGATE_MARKETING_PAUSES, by region and source (gate: "
            "rejected before Meta; meta: a 131049 failure Meta returned for such a destination)",
            ["region", "source"],
            registry=self.registry,
        )

    def count_decision(self, route: str, reason: str, origin: str | None) -> None:
        # An invalid request can carry any string as origin: keep the label set bounded.
        self.decisions.inc(route, reason, origin if origin in ORIGINS else "unknown")

    def count_inbound(self, kind: str, effect: str) -> None:
        self.inbound_events.inc(kind, effect)
