"""The webhook receiver as Meta sees it: handshake, signatures, size limit, and Kafka outages."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streams.settings import Settings
from streams.web.receiver import sign

from ..whatsapp_fixtures import fixture_bodies
from .harness import ROOT, Broker, Gate, Topics, free_port

SECRET = b"app-secret-for-tests"
TOKEN = "verify-me"
MAX_BODY = 8192


class Receiver:
    def __init__(self, bootstrap: str, prefix: str, log_path: Path, **extra_env: str) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        env = dict(
            os.environ,
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            WAGATE_TOPIC_PREFIX=prefix,
            WAGATE_WEBHOOK_PORT=str(self.port),
            WAGATE_WEBHOOK_ADMIN_PORT=str(self.admin_port),
            WAGATE_WEBHOOK_APP_SECRET=SECRET.decode(),
            WAGATE_WEBHOOK_VERIFY_TOKEN=TOKEN,
            WAGATE_WEBHOOK_MAX_BODY_BYTES=str(MAX_BODY),
            WAGATE_WEBHOOK_PRODUCE_TIMEOUT_SECONDS="3",
            **extra_env,
        )
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "webhook"],
            env=env,
            cwd=ROOT,
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.call("GET", "/health", port=self.admin_port)[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"receiver did not start:\n{log_path.read_text()}")
            time.sleep(0.2)

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        port: int | None = None,
    ) -> tuple[int, str]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port or self.port}{path}", data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def post(self, body: bytes, signature: str | None = "good") -> tuple[int, str]:
        headers = {"Content-Type": "application/json"}
        if signature == "good":
            headers["X-Hub-Signature-256"] = sign(body, SECRET)
        elif signature is not None:
            headers["X-Hub-Signature-256"] = signature
        return self.call("POST", "/webhook", body, headers)

    def outcomes(self) -> str:
        return self.call("GET", "/metrics", port=self.admin_port)[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def receiver(gate: Gate, workdir: Path) -> Iterator[Receiver]:
    started = Receiver(
        gate.settings.kafka_bootstrap_servers, gate.prefix, workdir / f"receiver-{uuid.uuid4().hex[:6]}.log"
    )
    yield started
    started.stop()


def test_handshake_answers_the_challenge_only_with_the_right_token(receiver: Receiver) -> None:
    ok = receiver.call(
        "GET", f"/webhook?hub.mode=subscribe&hub.verify_token={TOKEN}&hub.challenge=1158201444"
    )
    assert ok == (200, "1158201444")
    assert receiver.call("GET", "/webhook?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1")[0] == 403
    assert receiver.call("GET", "/webhook?hub.verify_token=x")[0] == 400


def test_no_secret_and_no_identifier_reaches_the_log_even_at_debug(gate: Gate, workdir: Path) -> None:
    """Meta's handshake carries the verify token in its query string and a POST's body carries phone
    numbers; aiohttp's default access log writes the request line. Every line, at DEBUG, is checked."""
    log_path = workdir / f"receiver-debug-{uuid.uuid4().hex[:6]}.log"
    receiver = Receiver(
        gate.settings.kafka_bootstrap_servers, gate.prefix, log_path, WAGATE_LOG_LEVEL="debug"
    )
    try:
        handshake = f"/webhook?hub.mode=subscribe&hub.verify_token={TOKEN}&hub.challenge=31337"
        assert receiver.call("GET", handshake) == (200, "31337")
        assert (
            receiver.call("GET", "/webhook?hub.mode=subscribe&hub.verify_token=guess&hub.challenge=1")[0]
            == 403
        )
        body = next(b for name, b in sorted(fixture_bodies().items()) if name.endswith("textMessage.json"))
        assert receiver.post(body) == (200, "ok")
        wa_id = orjson.loads(body)["entry"][0]["changes"][0]["value"]["contacts"][0]["wa_id"]
    finally:
        receiver.stop()
    logged = log_path.read_text(errors="replace")
    assert "GET /webhook 200" in logged and "POST /webhook 200" in logged  # the requests are logged...
    for secret in (TOKEN, "guess", SECRET.decode(), sign(body, SECRET), "hub.verify_token", wa_id, "31337"):
        assert secret not in logged, f"{secret!r} is in the receiver's log"  # ...without what they carry


def test_metrics_and_health_are_served_apart_from_the_public_port(receiver: Receiver) -> None:
    assert receiver.call("GET", "/metrics")[0] == 404
    assert receiver.call("GET", "/health")[0] == 404
    assert receiver.call("GET", "/health", port=receiver.admin_port) == (200, "ok")
    assert "wagate_webhook_requests" in receiver.outcomes()


def test_signed_bodies_reach_wa_webhooks_byte_for_byte_and_bad_ones_do_not(
    gate: Gate, receiver: Receiver
) -> None:
    body = next(b for name, b in sorted(fixture_bodies().items()) if name.endswith("textMessage.json"))
    marker = uuid.uuid4().hex.encode()
    good = body.replace(b"wamid.", b"wamid." + marker, 1)
    assert marker in good
    assert receiver.post(good) == (200, "ok")
    forged = body.replace(b"wamid.", b"wamid.forged" + marker, 1)
    assert receiver.post(forged, signature=None)[0] == 401
    assert receiver.post(forged, signature=sign(body, SECRET))[0] == 403  # signature of another body
    assert receiver.post(forged, signature="sha1=" + "0" * 40)[0] == 403
    assert receiver.post(b"{" + b" " * MAX_BODY + b"}")[0] == 413

    stored = [r.raw for r in gate.read_all(gate.topo.webhooks.name) if r.raw and marker in r.raw]
    assert stored == [good]
    metrics = receiver.outcomes()
    for outcome, count in [
        ("accepted", 1),
        ("signature_missing", 1),
        ("signature_invalid", 2),
        ("too_large", 1),
    ]:
        assert f'wagate_webhook_requests_total{{outcome="{outcome}"}} {count:.1f}' in metrics, metrics


def test_kafka_down_gets_503_and_the_retried_body_is_kept_once_kafka_is_back(workdir: Path) -> None:
    broker = Broker(workdir / f"outage-kafka-{uuid.uuid4().hex[:6]}")  # not started yet: Kafka is down
    prefix = f"outage{uuid.uuid4().hex[:6]}."
    receiver = Receiver(broker.bootstrap, prefix, workdir / f"receiver-outage-{prefix}log")
    try:
        body = b'{"object":"whatsapp_business_account","entry":[],"marker":"' + prefix.encode() + b'"}'
        status, _ = receiver.post(body)
        assert status == 503
        broker.start()
        try:
            topics = Topics(Settings(kafka_bootstrap_servers=broker.bootstrap, topic_prefix=prefix))
            # Meta retries the same body until it gets a 200
            deadline = time.monotonic() + 60
            while (status := receiver.post(body)[0]) != 200 and time.monotonic() < deadline:
                time.sleep(1)
            assert status == 200
            assert [r.raw for r in topics.read_all(topics.topo.webhooks.name)] == [body]
        finally:
            broker.stop()
        assert 'wagate_webhook_requests_total{outcome="kafka_unavailable"}' in receiver.outcomes()
    finally:
        receiver.stop()


def _slow_post(port: int, sent: bytes, announced: int) -> socket.socket:
    """A POST that announces ``announced`` bytes of body and sends only ``sent``, then stalls."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Hub-Signature-256: sha256=00\r\nContent-Length: {announced}\r\n\r\n"
    )
    conn.sendall(head.encode() + sent)
    return conn


def _status(conn: socket.socket) -> int:
    line = conn.makefile("rb").readline().decode()  # "HTTP/1.1 408 Request Timeout"
    return int(line.split()[1])


def test_slow_bodies_time_out_and_a_flood_past_the_limit_is_told_to_retry(gate: Gate, workdir: Path) -> None:
    receiver = Receiver(
        gate.settings.kafka_bootstrap_servers,
        gate.prefix,
        workdir / f"receiver-abuse-{uuid.uuid4().hex[:6]}.log",
        WAGATE_WEBHOOK_READ_TIMEOUT_SECONDS="1",
        WAGATE_WEBHOOK_MAX_CONCURRENT_REQUESTS="2",
    )
    try:
        before = len(gate.read_all(gate.topo.webhooks.name))
        slow = [_slow_post(receiver.port, b'{"object":', 500) for _ in range(2)]
        time.sleep(0.3)  # both are inside the receiver, waiting for their bodies
        body = b'{"object":"whatsapp_business_account","entry":[]}'
        assert receiver.post(body)[0] == 503, "a third request at once is past the limit"
        assert [_status(conn) for conn in slow] == [408, 408]
        for conn in slow:
            conn.close()
        assert receiver.post(body) == (200, "ok"), "the slots are free again"
        assert receiver.post(body, signature="sha256=" + "0" * 64)[0] == 403
        # Only the one signed, whole body reached Kafka: slow, refused and forged ones cost no write.
        assert len(gate.read_all(gate.topo.webhooks.name)) == before + 1
        metrics = receiver.outcomes()
        for outcome, count in [("read_timeout", 2), ("overloaded", 1), ("accepted", 1)]:
            assert f'wagate_webhook_requests_total{{outcome="{outcome}"}} {count:.1f}' in metrics, metrics
        assert SECRET.decode() not in receiver.log_path.read_text()
    finally:
        receiver.stop()
