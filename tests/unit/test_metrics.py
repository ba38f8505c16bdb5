"""The event-loop metrics (LoopHistogram, LoopCounter) are exposed exactly as prometheus_client's."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from streams.metrics import GateMetrics, LoopCounter, LoopHistogram

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _samples(registry: CollectorRegistry) -> list[str]:
    """The sample lines (no HELP/TYPE, no prometheus_client ``_created`` timestamps)."""
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if not line.startswith("#") and "_created" not in line
    ]


values = st.floats(min_value=0, max_value=100, allow_nan=False) | st.sampled_from(BUCKETS)


@given(st.lists(values, max_size=60))
def test_a_loop_histogram_exposes_what_prometheus_clients_would(observed: list[float]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("x_seconds", "doc", BUCKETS, registry=ours)
    reference = Histogram("x_seconds", "doc", buckets=BUCKETS, registry=theirs)
    for value in observed:  # bucket bounds included: "le" is inclusive
        loop.observe(value)
        reference.observe(value)
    assert _samples(ours) == _samples(theirs)


@given(st.lists(st.tuples(st.sampled_from(["send", "rejected"]), st.sampled_from(["a", "b", "c"]))))
def test_a_loop_counter_exposes_what_prometheus_clients_would(incs: list[tuple[str, str]]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopCounter("x", "doc", ["route", "origin"], registry=ours)
    reference = Counter("x", "doc", ["route", "origin"], registry=theirs)
    for route, origin in incs:
        loop.inc(route, origin)
        reference.labels(route, origin).inc()
    assert sorted(_samples(ours)) == sorted(_samples(theirs))


def test_decision_labels_stay_bounded() -> None:
    metrics = GateMetrics()
    metrics.count_decision("rejected", "invalid_request", "+15551234567")  # a stray string as origin
    assert metrics.decisions.value("rejected", "invalid_request", "unknown") == 1
    assert "+15551234567" not in generate_latest(metrics.registry).decode()
