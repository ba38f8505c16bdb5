"""Faust's sensor API, trimmed for the hot path.

Faust's default Monitor keeps per-message and per-event statistics (timestamps, deques, counters)
for every record: a large share of the gate's CPU at load. The gate's own Prometheus metrics
(metrics.py) count what operators need, so the per-event hooks are no-ops here; the rare hooks
(commits, rebalances, table/assignment lifecycle) keep Faust's behaviour and also feed Prometheus:
commit latency, rebalances and their duration, and consumer lag per topic (highwater minus committed
offset, read at scrape time).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from faust.sensors.monitor import Monitor
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry


class LeanMonitor(Monitor):
    commit_seconds: Histogram | None = None
    rebalances_total: Counter | None = None
    rebalance_seconds: Histogram | None = None

    def export_to(self, registry: CollectorRegistry) -> None:
        """Register Faust's own figures (lag, commits, rebalances) in the gate's Prometheus registry."""
        self.commit_seconds = Histogram(
            "wagate_commit_latency_seconds",
            "Offset commit duration",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self.rebalances_total = Counter(
            "wagate_rebalances", "Consumer group rebalances started", registry=registry
        )
        self.rebalance_seconds = Histogram(
            "wagate_rebalance_seconds",
            "Rebalance duration, recovery included",
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=registry,
        )
        registry.register(_LagCollector(self))

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        super().on_commit_completed(consumer, state)
        if self.commit_seconds is not None:
            self.commit_seconds.observe(self.commit_latency[-1])

    def on_rebalance_start(self, app: Any) -> dict[str, Any]:
        if self.rebalances_total is not None:
            self.rebalances_total.inc()
        return super().on_rebalance_start(app)

    def on_rebalance_end(self, app: Any, state: dict[str, Any]) -> None:
        super().on_rebalance_end(app, state)
        if self.rebalance_seconds is not None:
            self.rebalance_seconds.observe(state["latency_end"])

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> dict[str, Any] | None:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int, valsize: int) -> Any:
        return None

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        return None

    def on_table_get(self, table: Any, key: Any) -> None:
        return None

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        return None


class _LagCollector(Collector):
    """Consumer lag per topic of this worker's partitions: fetched highwater minus committed offset."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "wagate_consumer_lag",
            "Records not yet committed, per topic, on this worker's partitions",
            labels=["topic"],
        )
        lag: dict[str, int] = {}
        committed = dict(self.monitor.tp_committed_offsets)
        for tp, end in list(self.monitor.tp_end_offsets.items()):
            lag[tp.topic] = lag.get(tp.topic, 0) + max(0, end - committed.get(tp, 0))
        for topic, value in sorted(lag.items()):
            family.add_metric([topic], value)
        yield family
