"""How every Kafka client of the project connects: TLS and SASL from the settings, in one place.

The worker (Faust's consumer and producer, the transactional producers, the rounds' offsets client,
the admin client), the receiver, the registry follower, ``wagate client``/``topics``/``demo`` and the
bench all take their connection arguments from ``client_kwargs`` (aiokafka) or
``faust_credentials`` (Faust). ``check_connection`` runs before a process starts its clients and turns
the first failure into a message that names the setting to fix: aiokafka itself only says "Unable to
bootstrap" whatever went wrong.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import faust
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError

from streams.settings import Settings


class KafkaConnectionFailed(RuntimeError):
    """Kafka could not be reached or refused us; the message names the setting to check.
    ``misconfigured``: Kafka answered and refused (login, TLS trust), so waiting will not help."""

    def __init__(self, message: str, misconfigured: bool) -> None:
        super().__init__(message)
        self.misconfigured = misconfigured


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL (None otherwise): the CA file (else the system's CAs),
    the client certificate and key for mutual TLS, and the hostname check."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(
        cafile=str(settings.kafka_ssl_ca_file) if settings.kafka_ssl_ca_file else None
    )
    context.check_hostname = settings.kafka_ssl_check_hostname
    if not settings.kafka_ssl_check_hostname:
        context.verify_mode = ssl.CERT_REQUIRED  # the certificate is still checked against the CA
    if settings.kafka_ssl_cert_file is not None:
        password = settings.kafka_ssl_key_password
        context.load_cert_chain(
            str(settings.kafka_ssl_cert_file),
            str(settings.kafka_ssl_key_file) if settings.kafka_ssl_key_file else None,
            password.get_secret_value() if password is not None else None,
        )
    return context


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        kwargs.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=password.get_secret_value() if password is not None else None,
        )
    return kwargs


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """The same for Faust's consumer and producer (``broker_credentials``)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings)
    if protocol == "SSL":
        assert context is not None
        return faust.SSLCredentials(context)
    password = settings.kafka_sasl_password
    credentials = faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=password.get_secret_value() if password is not None else None,
        ssl_context=context,
        mechanism=settings.kafka_sasl_mechanism,
    )
    return credentials


async def check_connection(settings: Settings, timeout: float = 15.0) -> None:
    """Connect (and log in) to the first bootstrap server that answers; raise KafkaConnectionFailed
    naming the setting to fix when none does."""
    kwargs = client_kwargs(settings)
    kwargs.pop("bootstrap_servers")
    failures: list[tuple[str, bool]] = []
    for server in settings.kafka_bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host, int(port), request_timeout_ms=int(timeout * 1000), **kwargs), timeout
            )
        except (OSError, KafkaError, TimeoutError, ValueError) as exc:
            failures.append(explain(exc, settings, server.strip()))
            continue
        conn.close()
        return
    messages = "; ".join(dict.fromkeys(message for message, _ in failures))
    raise KafkaConnectionFailed(messages, misconfigured=any(refused for _, refused in failures))


def explain(exc: BaseException, settings: Settings, server: str) -> tuple[str, bool]:
    """What went wrong connecting to ``server``, in terms of the settings; and whether Kafka answered
    and refused (a configuration to fix) rather than not answering."""
    text = f"{type(exc).__name__}: {exc}"
    protocol = settings.kafka_security_protocol
    if "SaslAuthenticationFailed" in text or "Authentication failed" in text:
        return (
            (
                f"Kafka at {server} refused the SASL login of KAFKA_SASL_USERNAME="
                f"{settings.kafka_sasl_username!r} with KAFKA_SASL_MECHANISM="
                f"{settings.kafka_sasl_mechanism}: check KAFKA_SASL_PASSWORD and the mechanism the "
                "cluster expects"
            ),
            True,
        )
    if "UnsupportedSaslMechanism" in text or "Unsupported SASL mechanism" in text:
        return (
            (
                f"Kafka at {server} does not offer KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism}: "
                "set the mechanism the cluster expects"
            ),
            True,
        )
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        if "match" in text or "hostname" in text.lower():
            return (
                (
                    f"the TLS certificate of Kafka at {server} is not for that host ({exc}): use the name "
                    "the certificate names in KAFKA_BOOTSTRAP_SERVERS, or KAFKA_SSL_CHECK_HOSTNAME=false"
                ),
                True,
            )
        ca = settings.kafka_ssl_ca_file or "the system's CAs"
        return (
            (
                f"the TLS certificate of Kafka at {server} is not trusted by {ca} ({exc}): set "
                "KAFKA_SSL_CA_FILE to the CA that signed the broker's certificate"
            ),
            True,
        )
    if isinstance(exc, ssl.SSLError):
        return (
            (
                f"TLS with Kafka at {server} failed ({exc}): check KAFKA_SECURITY_PROTOCOL={protocol} and "
                "KAFKA_SSL_CERT_FILE / KAFKA_SSL_KEY_FILE"
            ),
            True,
        )
    if isinstance(exc, ConnectionRefusedError) or "Connect call failed" in text:
        return f"nothing listens at {server}: check KAFKA_BOOTSTRAP_SERVERS", False
    if isinstance(exc, TimeoutError):
        return (
            (
                f"Kafka at {server} did not answer in time: check KAFKA_BOOTSTRAP_SERVERS and "
                f"KAFKA_SECURITY_PROTOCOL={protocol} (a TLS listener spoken to in plain text hangs)"
            ),
            False,
        )
    return (
        (
            f"cannot talk to Kafka at {server} ({text}): check KAFKA_BOOTSTRAP_SERVERS and "
            f"KAFKA_SECURITY_PROTOCOL={protocol} (the listener's protocol must match)"
        ),
        False,
    )
