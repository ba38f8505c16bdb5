"""A broker with a SASL_SSL listener, for the security tests: a CA and a server certificate made on
the spot (the ``cryptography`` package), PEM files that Kafka reads as key stores, SASL/PLAIN and
SASL/SCRAM-SHA-512 users."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..tls import make_ca, make_server_cert
from .harness import KAFKA_SH, free_port

USER, PASSWORD = "wagate", "wagate-secret"
SCRAM_USER, SCRAM_PASSWORD = "wagate-scram", "scram-secret"


@dataclass
class SecureBroker:
    data: Path
    port: int
    ca_file: Path  # the CA that signed the broker's certificate
    other_ca_file: Path  # a CA the broker's certificate does not chain to
    env: dict[str, str]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        subprocess.run([str(KAFKA_SH), "stop", str(self.data)], env=self.env, check=False, timeout=120)


def start_secure_broker(data: Path) -> SecureBroker:
    """One KRaft node: SASL_SSL for clients, PLAINTEXT between broker and controller on 127.0.0.1."""
    data.mkdir(parents=True, exist_ok=True)
    ca_file, ca, ca_key = make_ca(data, "test-ca")
    other_ca_file, _, _ = make_ca(data, "other-ca")
    chain, key = make_server_cert(data, ca, ca_key)
    port, internal, controller = free_port(), free_port(), free_port()
    jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{USER}" password="{PASSWORD}" user_{USER}="{PASSWORD}";'
    )
    scram_jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    overrides = data / "secure.properties"
    overrides.write_text(
        "\n".join(
            [
                f"listeners=SASL_SSL://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal},"
                f"CONTROLLER://127.0.0.1:{controller}",
                f"advertised.listeners=SASL_SSL://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal}",
                "listener.security.protocol.map=SASL_SSL:SASL_SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=INTERNAL",
                f"controller.quorum.voters=1@127.0.0.1:{controller}",
                "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512",
                f"listener.name.sasl_ssl.plain.sasl.jaas.config={jaas}",
                f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram_jaas}",
                "ssl.keystore.type=PEM",
                f"ssl.keystore.location={chain}",
                "ssl.truststore.type=PEM",
                f"ssl.truststore.location={ca_file}",
                "ssl.client.auth=none",
                "",
            ]
        )
    )
    env = dict(
        os.environ,
        KAFKA_PORT=str(port),
        KAFKA_CONTROLLER_PORT=str(controller),
        KAFKA_SERVER_PROPERTIES=str(overrides),
        KAFKA_FORMAT_ARGS=f"--add-scram SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]",
        KAFKA_HEAP="384m",
    )
    _ = key
    subprocess.run([str(KAFKA_SH), "start", str(data)], env=env, check=True, timeout=180)
    return SecureBroker(data, port, ca_file, other_ca_file, env)
