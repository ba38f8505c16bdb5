"""Faust's sensor API, trimmed for the hot path.

Faust's default Monitor keeps per-message and per-event statistics (timestamps, deques, counters)
for every record: a large share of the gate's CPU at load. The gate's own Prometheus metrics
(metrics.py) count what operators need, so the per-event hooks are no-ops here; the rare hooks
(commits, rebalances, table/assignment lifecycle) keep Faust's behaviour.
"""

from __future__ import annotations

from typing import Any

from faust.sensors.monitor import Monitor


class LeanMonitor(Monitor):
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
