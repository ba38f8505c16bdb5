"""Composition root: settings -> Faust app, topics, the contact-state table, the pipeline, web views.

This is the only module that knows how the parts are wired together.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

import faust
import orjson
from faust.exceptions import SameNode
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.agents.registry import RegistryFollower
from streams.agents.runner import PipelineRunner
from streams.core.processor import Clock
from streams.faust_private import count_kafka_requests
from streams.faust_private import install as install_pipeline
from streams.kafka_security import faust_credentials
from streams.metrics import GateMetrics
from streams.policy.keys import contact_key
from streams.policy.templates import Registry
from streams.sensors import LeanMonitor
from streams.settings import Settings
from streams.topology import CONTACT_STATE_TABLE, Topology, topology
from streams.web.admin import Site, admin_app
from streams.web.auth import TokenFile, bearer_refusal


@dataclass
class GateApp:
    app: faust.App
    topo: Topology
    runner: PipelineRunner
    metrics: GateMetrics


def broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


class _FaustApp(faust.App):
    """Faust's app, with the admin server (WAGATE_ADMIN_PORT) started before its consumer and recovery,
    and stopped after them."""

    admin: Site | None = None

    async def on_start(self) -> None:
        await super().on_start()
        if self.admin is not None:
            await self.admin.start()

    async def on_stop(self) -> None:
        await super().on_stop()
        if self.admin is not None:
            await self.admin.stop()


def create_app(settings: Settings, clock: Clock = time.time) -> GateApp:
    topo = topology(settings)
    app = _FaustApp(
        settings.faust_app_id,
        broker=broker_urls(settings.kafka_bootstrap_servers),
        broker_credentials=faust_credentials(settings),
        store="rocksdb://" if settings.store == "rocksdb" else "memory://",
        datadir=str(settings.data_dir),
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        # Faust's own exactly_once is not used: the runner runs per-partition transactions itself
        # (streams.agents.transactions); Faust then commits none of the pipeline's offsets.
        processing_guarantee="at_least_once",
        broker_commit_interval=settings.commit_interval_seconds,
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_seconds / 3),
        consumer_group_instance_id=settings.instance_id,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=settings.producer_linger_ms,
        producer_max_batch_size=settings.producer_max_batch_size,
        producer_max_request_size=max(settings.producer_max_batch_size, 1_048_576),
        broker_max_poll_records=settings.max_poll_records,
        key_serializer="raw",
        value_serializer="raw",
        table_standby_replicas=settings.standby_replicas,
        web_enabled=settings.web_enabled,
        web_bind=settings.web_bind or settings.web_host,
        web_host=settings.web_advertised_host or settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        # Faust's own views list every table key and the cluster's routing: off (the window API routes
        # by Faust's router service, not by these views).
        web_router_enabled=False,
        web_tables_enabled=False,
        monitor=LeanMonitor(),
    )

    table = app.Table(
        CONTACT_STATE_TABLE,
        key_type=bytes,  # bytes <-> raw serializer: the state is our own compact JSON, encoded by the policy
        value_type=bytes,
        partitions=settings.partitions,
        help="Per-contact customer service window and recently decided request ids",
    )
    metrics = GateMetrics()
    count_kafka_requests(lambda api: metrics.kafka_requests.labels(api).inc())
    cast(LeanMonitor, app.monitor).export_to(metrics.registry)
    registry = Registry(
        configured_numbers=settings.configured_numbers,
        configured_portfolios=settings.configured_portfolios,
        configured_limits=settings.configured_limits,
    )
    follower = RegistryFollower(settings, topo, registry, metrics)  # dead letters go out via the runner
    if settings.clock_offset_seconds:
        base_clock, offset = clock, settings.clock_offset_seconds

        def clock() -> float:
            return base_clock() + offset

    runner = PipelineRunner(app, settings, topo, table, settings.rules, metrics, registry, clock)
    follower.dead_letter = runner.dead_letter_compacted
    # The pipeline's inputs go straight from the fetch to the runner (no agents, no streams); the
    # topics are subscribed here, co-partitioned with the table by Faust's assignor.
    install_pipeline(app, runner)
    for spec in (topo.inbound, topo.requests, topo.webhooks):
        app.topics.add(
            app.topic(
                spec.name,
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
                partitions=spec.partitions,
                acks=False,  # the runner's processed offsets are what is committed, not Faust's acks
            )
        )

    async def follow_registry() -> None:
        await follower.run()

    async def open_pipeline() -> None:
        # Nothing is decided or normalized on a half-loaded registry (a known template would be unknown).
        await follower.loaded.wait()
        runner.registry_loaded()

    async def ordering_rounds() -> None:
        try:
            await runner.run_rounds()
        finally:
            await runner.stop()

    async def window_events() -> None:
        # Every worker serves its own partitions' timetable (what Faust's app.timer does, typed).
        async for _ in app.itertimer(settings.window_event_tick_seconds, name="window_events"):
            await runner.windows.tick()

    for task in (follow_registry, open_pipeline, ordering_rounds, window_events):
        app.task(task)  # on every worker, for as long as it runs

    # The token: from the file when one is named (read again when it changes: a rotated Secret).
    if settings.window_api_token_file is not None:
        window_token: Callable[[], bytes | None] = TokenFile(
            settings.window_api_token_file, settings.window_api_secret
        )
    else:
        fixed = settings.window_api_secret()
        window_token = lambda: fixed  # noqa: E731

    @app.page("/windows/{phone_number_id}/{user}")
    async def window_page(view: Any, request: Any, **_: Any) -> Any:
        token = window_token()
        refusal = bearer_refusal(request.headers.get("Authorization"), token)
        if refusal is not None:
            status = 404 if token is None else 401
            headers = {"WWW-Authenticate": 'Bearer realm="wagate window API"'} if status == 401 else {}
            return view.json({"error": refusal}, status=status, headers=headers)
        # A group is asked for as /windows/<phone_number_id>/group:<group_id>: the contact key either way.
        key = contact_key(request.match_info["phone_number_id"], request.match_info["user"])
        try:
            # The worker holding the contact's partition answers; Faust forwards the request there.
            return await app.router.route_req(table.name, key.encode(), view.web, request)
        except SameNode:
            asked_as = request.query.get("asked_as")
            report = runner.window(key, asked_as)
            if isinstance(report, str):
                # Another identifier of a contact: the contact's canonical identifier answers (its
                # worker may be another one), saying which identifier was asked for.
                pnid, user = request.match_info["phone_number_id"], request.match_info["user"]
                path = f"/windows/{quote(pnid, safe='')}/{quote(report, safe='')}"
                location = f"{path}?asked_as={quote(user, safe='')}"
                return view.bytes(b"", status=307, headers={"Location": location})
            return view.bytes(report.__pydantic_serializer__.to_json(report), content_type="application/json")

    def ready() -> tuple[int, bytes]:
        # Readiness: recovery done, the template registry read, the producers connected.
        checks = runner.readiness()
        return 200 if all(checks.values()) else 503, orjson.dumps(
            {"ready": all(checks.values()), "checks": checks}
        )

    if settings.admin_port is None:
        # Beside the window API, on Faust's web server.

        @app.page("/health")
        async def health_page(view: Any, request: Any) -> Any:
            # Liveness: the event loop answers. Cheap on purpose (a probe every few seconds).
            return view.text("ok")

        @app.page("/ready")
        async def ready_page(view: Any, request: Any) -> Any:
            status, body = ready()
            return view.bytes(body, content_type="application/json", status=status)

        @app.page("/metrics")
        async def metrics_page(web: Any, request: Any) -> Any:
            # aiohttp refuses a charset inside content_type, so the full Prometheus type goes in as a header.
            return web.bytes(generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    else:
        # Apart from the window API: Prometheus and the kubelet reach this port, API clients the other.
        # Started with the app, before recovery (Faust's own web server and tasks wait for it, and
        # recovery may take minutes: the kubelet's probes must be answered meanwhile).
        app.admin = Site(
            admin_app(lambda: generate_latest(metrics.registry), ready),
            settings.web_bind or settings.web_host,
            settings.admin_port,
        )

    return GateApp(app=app, topo=topo, runner=runner, metrics=metrics)
