"""The webhook receiver: Meta's POSTs -> ``wa.webhooks``, byte for byte, acked by Kafka before 200.

Nothing accepted is lost: a body is answered 200 only once every in-sync replica has it (acks=all).
When Kafka cannot take it in time the answer is 503 and Meta retries the same body later (for up to 7
days); a body that did reach Kafka although the answer was 503 comes back as a duplicate, which the
gate's state absorbs (duplicate events change nothing).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import signal
from dataclasses import dataclass, field

from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, generate_latest

from streams.kafka_security import client_kwargs
from streams.logs import use_format
from streams.settings import Settings
from streams.topology import topology
from streams.web.admin import Site, admin_app

log = logging.getLogger("wagate.webhook")

SIGNATURE_HEADER = "X-Hub-Signature-256"


def signature_ok(body: bytes, header: str, secret: bytes) -> bool:
    """Meta's X-Hub-Signature-256: "sha256=" + hex HMAC-SHA256 of the raw body with the app secret."""
    prefix, _, given = header.partition("=")
    if prefix != "sha256" or not given:
        return False
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given.strip().lower())


def sign(body: bytes, secret: bytes) -> str:
    """The header value Meta sends for ``body`` (for clients and tests)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@dataclass
class ReceiverMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "wagate_webhook_requests",
            "Webhook receiver answers, by outcome",
            ["outcome"],
            registry=self.registry,
        )


class KafkaSink:
    """A producer started on first use and again after a failure, so the receiver outlives Kafka outages."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = topology(settings).webhooks.name
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _ensure(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                timeout_ms = int(self.settings.webhook_produce_timeout_seconds * 1000)
                producer = AIOKafkaProducer(
                    **client_kwargs(self.settings),
                    acks="all",
                    enable_idempotence=True,  # a batch retried after a broker's loss is written once
                    request_timeout_ms=timeout_ms,
                    max_request_size=max(self.settings.webhook_max_body_bytes * 2, 1_048_576),
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def put(self, body: bytes) -> None:
        """Return once Kafka has acknowledged ``body``; raise when it cannot within the timeout."""
        timeout = self.settings.webhook_produce_timeout_seconds
        producer = await asyncio.wait_for(self._ensure(), timeout)
        await asyncio.wait_for(producer.send_and_wait(self.topic, body), timeout)

    async def reset(self) -> None:
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), 5)
            except Exception:  # already broken: a new one is made on the next request
                log.debug("producer stop failed", exc_info=True)

    async def close(self) -> None:
        await self.reset()


def check_secrets(settings: Settings) -> tuple[bytes, bytes | None]:
    """The app secret and the verify token (None: unset, every handshake refused). An empty one is a
    mistake (an unset variable in a manifest): refused, naming the setting."""
    if settings.webhook_app_secret is None or not settings.webhook_app_secret.get_secret_value():
        raise ValueError(
            "WAGATE_WEBHOOK_APP_SECRET is not set: the receiver checks every POST's X-Hub-Signature-256 "
            "against your Meta app secret (App settings > Basic > App secret)"
        )
    token = settings.webhook_verify_token
    if token is not None and not token.get_secret_value():
        raise ValueError(
            "WAGATE_WEBHOOK_VERIFY_TOKEN is set but empty: an empty token would answer anyone's handshake. "
            "Set it to the verify token of Meta's webhook settings, or unset it to refuse every handshake"
        )
    return settings.webhook_app_secret.get_secret_value().encode(), (
        None if token is None else token.get_secret_value().encode()
    )


def create_receiver(
    settings: Settings, sink: KafkaSink | None = None, metrics: ReceiverMetrics | None = None
) -> web.Application:
    """The public side: Meta's handshake and POSTs on ``webhook_path``, nothing else."""
    secret, verify_token = check_secrets(settings)
    sink = sink or KafkaSink(settings)
    metrics = metrics or ReceiverMetrics()
    max_body = settings.webhook_max_body_bytes

    def answer(outcome: str, status: int, text: str) -> web.Response:
        metrics.requests.labels(outcome).inc()
        return web.Response(status=status, text=text)

    async def handshake(request: web.Request) -> web.Response:
        query = request.query
        if query.get("hub.mode") != "subscribe" or "hub.challenge" not in query:
            return answer("handshake_refused", 400, "expected hub.mode=subscribe and hub.challenge")
        given = query.get("hub.verify_token", "")
        if verify_token is None or not hmac.compare_digest(given.encode(), verify_token):
            return answer(
                "handshake_refused", 403, "hub.verify_token does not match WAGATE_WEBHOOK_VERIFY_TOKEN"
            )
        return answer("handshake", 200, query["hub.challenge"])

    read_timeout = settings.webhook_read_timeout_seconds
    max_concurrent = settings.webhook_max_concurrent_requests
    in_flight = [0]  # POSTs being handled now (one event loop: a plain counter)

    async def receive(request: web.Request) -> web.Response:
        if in_flight[0] >= max_concurrent:
            # Past the limit nothing is read: Meta retries, and slow or flooding senders cost nothing.
            return answer("overloaded", 503, "too many webhook requests at once, retry later")
        in_flight[0] += 1
        try:
            return await receive_one(request)
        finally:
            in_flight[0] -= 1

    async def receive_one(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > max_body:
            return answer("too_large", 413, f"body over {max_body} bytes")
        try:
            body = await asyncio.wait_for(request.read(), read_timeout)
        except web.HTTPRequestEntityTooLarge:
            return answer("too_large", 413, f"body over {max_body} bytes")
        except TimeoutError:
            return answer("read_timeout", 408, f"body not received within {read_timeout:g} s")
        header = request.headers.get(SIGNATURE_HEADER)
        if not header:
            return answer("signature_missing", 401, f"{SIGNATURE_HEADER} header missing")
        if not signature_ok(body, header, secret):
            return answer("signature_invalid", 403, f"{SIGNATURE_HEADER} does not match the body")
        try:
            await sink.put(body)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning(
                "Kafka did not take a webhook body (%s); answering 503 so Meta retries", type(exc).__name__
            )
            await sink.reset()
            return answer("kafka_unavailable", 503, "Kafka unavailable, retry later")
        return answer("accepted", 200, "ok")

    async def on_cleanup(app: web.Application) -> None:
        await sink.close()

    # aiohttp's own limit as well: a body without Content-Length (chunked) is cut off at read time.
    app = web.Application(client_max_size=max_body)
    app.router.add_get(settings.webhook_path, handshake)
    app.router.add_post(settings.webhook_path, receive)
    app.on_cleanup.append(on_cleanup)
    return app


async def serve_receiver(settings: Settings, stop: asyncio.Event) -> None:
    """Both sides until ``stop`` is set."""
    metrics = ReceiverMetrics()
    sites = [
        Site(create_receiver(settings, metrics=metrics), settings.webhook_host, settings.webhook_port),
        Site(
            admin_app(lambda: generate_latest(metrics.registry)),
            settings.webhook_admin_host,
            settings.webhook_admin_port,
        ),
    ]
    try:
        for site in sites:
            await site.start()
        log.info(
            "webhook receiver on http://%s:%d%s -> %s; /metrics and /health on http://%s:%d",
            settings.webhook_host,
            settings.webhook_port,
            settings.webhook_path,
            topology(settings).webhooks.name,
            settings.webhook_admin_host,
            settings.webhook_admin_port,
        )
        await stop.wait()
    finally:
        for site in sites:
            await site.stop()


def run_receiver(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper())
    use_format(settings.log_format)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # its retry noise during an outage says nothing new

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve_receiver(settings, stop)

    asyncio.run(main())
