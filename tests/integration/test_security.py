"""The gate on a secured broker: a SASL_SSL listener (TLS with a CA made for the test, SASL/PLAIN and
SASL/SCRAM-SHA-512 users). Every client goes through it: the worker (Faust's consumer and producer,
the transactional producers, the rounds' and registry's clients), the receiver and the test's own
client. A wrong password or an untrusted CA stops the worker at start-up with a message that names
the setting to fix."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import inbound, start_and_wait, text_request
from .harness import Gate, wagate
from .secure_broker import PASSWORD, SCRAM_PASSWORD, SCRAM_USER, USER, SecureBroker, start_secure_broker
from .test_receiver import Receiver
from .test_webhooks import envelope, user_message


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    broker = start_secure_broker(tmp_path_factory.mktemp("secure-broker"))
    try:
        yield broker
    finally:
        broker.stop()


def _security(broker: SecureBroker, **override: str) -> dict[str, Any]:
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": USER,
        "KAFKA_SASL_PASSWORD": PASSWORD,
        "KAFKA_SSL_CA_FILE": str(broker.ca_file),
        **override,
    }


def test_the_gate_decides_through_a_sasl_ssl_listener(secure: SecureBroker, workdir: Path) -> None:
    gate = Gate(secure.bootstrap, workdir, security=_security(secure))
    pnid = f"pn{uuid.uuid4().hex[:8]}"
    start_and_wait(gate, timeout=120)
    receiver = Receiver(
        secure.bootstrap, gate.prefix, workdir / f"{gate.prefix}receiver.log", **_security(secure)
    )
    try:
        # A webhook body through the receiver, an event straight on wa.inbound: both open a window.
        status, _ = receiver.post(envelope(pnid, messages=[user_message("hook", time.time())]))
        assert status == 200
        gate.produce(gate.topo.inbound.name, f"{pnid}:ann", inbound(pnid, "ann", time.time() - 60))
        gate.produce(gate.topo.requests.name, f"{pnid}:ann", text_request(pnid, "ann", f"{pnid}-ann"))
        gate.produce(gate.topo.requests.name, f"{pnid}:hook", text_request(pnid, "hook", f"{pnid}-hook"))
        decided = gate.decisions([f"{pnid}-ann", f"{pnid}-hook"], timeout=60)
        assert {rid: records[0].value["reason"] for rid, records in decided.items()} == {
            f"{pnid}-ann": "window_open",
            f"{pnid}-hook": "window_open",
        }
    finally:
        receiver.stop()
        gate.worker.stop()


def test_scram_sha_512_logs_in(secure: SecureBroker, workdir: Path) -> None:
    security = _security(
        secure,
        KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_USERNAME=SCRAM_USER,
        KAFKA_SASL_PASSWORD=SCRAM_PASSWORD,
    )
    result = wagate(
        "topics", KAFKA_BOOTSTRAP_SERVERS=secure.bootstrap, WAGATE_TOPIC_PREFIX="scram.", **security
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"KAFKA_SASL_PASSWORD": "wrong-pw-7f3a"}, "KAFKA_SASL_PASSWORD"),
        ({"KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"}, "KAFKA_SASL_MECHANISM"),
        ({"KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}, "KAFKA_SECURITY_PROTOCOL"),
    ],
)
def test_a_wrong_login_stops_the_worker_at_start_up_naming_the_setting(
    secure: SecureBroker, workdir: Path, override: dict[str, str], named: str
) -> None:
    security = _security(secure, **override)
    if security["KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT":
        security = {"KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    started = time.monotonic()
    result = wagate(
        "worker",
        timeout=90,
        KAFKA_BOOTSTRAP_SERVERS=secure.bootstrap,
        WAGATE_TOPIC_PREFIX=f"bad{uuid.uuid4().hex[:6]}.",
        WAGATE_DATA_DIR=str(workdir / "bad-login"),
        WAGATE_WEB_ENABLED="false",
        **security,
    )
    assert result.returncode != 0
    assert named in result.stderr, result.stderr[-2000:]
    assert PASSWORD not in result.stderr and "wrong-pw-7f3a" not in result.stderr  # no secret in any log
    assert time.monotonic() - started < 60


def test_an_untrusted_ca_stops_the_worker_at_start_up_naming_the_setting(
    secure: SecureBroker, workdir: Path
) -> None:
    result = wagate(
        "worker",
        timeout=90,
        KAFKA_BOOTSTRAP_SERVERS=secure.bootstrap,
        WAGATE_DATA_DIR=str(workdir / "bad-ca"),
        WAGATE_WEB_ENABLED="false",
        **_security(secure, KAFKA_SSL_CA_FILE=str(secure.other_ca_file)),
    )
    assert result.returncode != 0
    assert "KAFKA_SSL_CA_FILE" in result.stderr and "not trusted" in result.stderr, result.stderr[-2000:]
