"""The Quix Streams peer of ``wagate bench``: the gate's core path written the way a Quix Streams user
would write it, to compare with what users would pick instead of wagate.

Requests are joined against inbound events in one RocksDB store with its changelog topic (Quix's
``concat`` of the two co-partitioned topics shares one state store), with the *same* policy functions as
the gate and the reference loop (parse, ``apply_inbound``, ``decide``) and the decision routed to
wa.outbound.send / .template / .rejected by a dynamic ``to_topic``. What it leaves out, like the
reference: aliases, templates, window events, dead letters, the ordering contract.

It runs in a virtualenv of its own (``.venv-quix``, made by ``make bench`` from
``deploy/bench/quix-requirements.txt``): Quix Streams pins pydantic and confluent-kafka ranges of its
own. ``python -m streams.bench_quix exactly-once|at-least-once``, with the gate's environment
(``KAFKA_BOOTSTRAP_SERVERS``, ``WAGATE_TOPIC_PREFIX``, ``WAGATE_DATA_DIR``).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from quixstreams import Application, message_context

from streams.models import InboundEvent
from streams.policy.decide import decide, decide_invalid
from streams.policy.parse import InvalidPayload, parse_inbound_event, parse_send_request
from streams.policy.window import EMPTY_STATE, ContactState, apply_inbound
from streams.settings import Settings
from streams.topology import topology

GUARANTEES = ("exactly-once", "at-least-once")
# Quix's default commit interval is 5 s; under exactly-once that is each decision's delay. 100 ms is
# what Kafka Streams uses under exactly-once, and what a user after latency would set. At-least-once
# keeps Quix's default: its outputs are visible before the commit.
COMMIT_INTERVAL_S = {"exactly-once": 0.1, "at-least-once": 5.0}


def main(guarantee: str) -> None:
    settings = Settings()
    topo = topology(settings)
    rules = settings.rules
    app = Application(
        broker_address=settings.kafka_bootstrap_servers,
        consumer_group=f"{settings.faust_app_id}-quix",
        auto_offset_reset="earliest",
        processing_guarantee=guarantee,
        commit_interval=COMMIT_INTERVAL_S[guarantee],
        state_dir=f"{settings.data_dir}/quix-state",
        use_changelog_topics=True,
        loglevel="WARNING",
        producer_extra_config={"linger.ms": 5},
    )

    def raw(name: str) -> Any:
        return app.topic(name, key_deserializer="bytes", value_deserializer="bytes", value_serializer="bytes")

    inbound, requests = raw(topo.inbound.name), raw(topo.requests.name)
    routes = {name: raw(topo.route_topic(name)) for name in ("send", "template", "rejected")}

    # The route of the decision in flight: Quix runs one record through the whole dataframe before
    # the next, so the dynamic to_topic below reads the route its step just decided.
    route = ["send"]

    def step(value: bytes | None, state: Any) -> bytes | None:
        """One record against its contact's state (Quix scopes ``state`` by the record's key): None for
        an inbound event, else the decision."""
        now = time.time()
        if message_context().topic == inbound.name:
            event = parse_inbound_event(value)
            if isinstance(event, InboundEvent):
                stored = state.get("contact")
                current = EMPTY_STATE if stored is None else ContactState.from_dict(stored)
                new, _ = apply_inbound(current, event, now, rules)
                if new is not current:
                    state.set("contact", new.to_dict())
            return None
        parsed = parse_send_request(value)
        if isinstance(parsed, InvalidPayload):
            rejection = decide_invalid(parsed, None, now)
            if rejection is None:
                return None
            route[0] = rejection.route
            return rejection.__pydantic_serializer__.to_json(rejection)
        request, received = parsed
        stored = state.get("contact")
        current = EMPTY_STATE if stored is None else ContactState.from_dict(stored)
        decision, new = decide(request, received, current, now, rules)
        if new is not current:
            state.set("contact", new.to_dict())
        route[0] = decision.route
        return decision.__pydantic_serializer__.to_json(decision)

    sdf = app.dataframe(inbound).concat(app.dataframe(requests))
    sdf = sdf.apply(step, stateful=True).filter(lambda out: out is not None)
    sdf.to_topic(lambda value, key, timestamp, headers: routes[route[0]])
    app.run()


if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in GUARANTEES:
        main(sys.argv[1])
    else:
        sys.exit(f"usage: python -m streams.bench_quix {'|'.join(GUARANTEES)}   (run by `wagate bench`)")
