"""Kafka security settings: validated with the variable named, applied the same way to every client."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest
from pydantic import ValidationError

from streams.kafka_security import client_kwargs, explain, faust_credentials, ssl_context
from streams.settings import Settings

from ..tls import make_ca


def _settings(**env: str) -> Settings:
    return Settings(**env)  # type: ignore[arg-type]  # by variable name (validation aliases)


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    settings = _settings()
    assert client_kwargs(settings) == {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": "PLAINTEXT",
    }
    assert faust_credentials(settings) is None


def test_sasl_ssl_gives_every_client_the_login_and_the_tls_context(tmp_path: Path) -> None:
    ca, _, _ = make_ca(tmp_path, "unit-ca")
    settings = _settings(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_USERNAME="gate",
        KAFKA_SASL_PASSWORD="s3cret",
        KAFKA_SSL_CA_FILE=str(ca),
    )
    kwargs = client_kwargs(settings)
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("gate", "s3cret")
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert kwargs["ssl_context"].check_hostname is True
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.mechanism.value == "SCRAM-SHA-512" and credentials.ssl_context is not None
    assert "s3cret" not in repr(settings) and "s3cret" not in repr(credentials)


def test_hostname_check_can_be_turned_off_but_the_certificate_is_still_checked() -> None:
    context = ssl_context(_settings(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CHECK_HOSTNAME="false"))
    assert context is not None
    assert context.check_hostname is False and context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_USERNAME"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u"}, "KAFKA_SASL_PASSWORD"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": "/nonexistent/ca.pem"}, "KAFKA_SSL_CA_FILE"),
        ({"KAFKA_SSL_CA_FILE": "/etc/hostname"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SECURITY_PROTOCOL": "KERBEROS"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
    ],
)
def test_a_bad_security_setting_is_refused_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValidationError) as raised:
        _settings(**env)
    assert named in str(raised.value)


def test_connection_failures_name_the_setting_to_fix() -> None:
    settings = _settings(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL", KAFKA_SASL_USERNAME="gate", KAFKA_SASL_PASSWORD="s3cret"
    )
    login, refused = explain(
        Exception("[Error 58] SaslAuthenticationFailed: Authentication failed"), settings, "k:9093"
    )
    assert "KAFKA_SASL_PASSWORD" in login and refused and "s3cret" not in login
    untrusted = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    trust, refused = explain(untrusted, settings, "k:9093")
    assert "KAFKA_SSL_CA_FILE" in trust and refused
    nobody, refused = explain(ConnectionRefusedError(111, "Connect call failed"), settings, "k:9093")
    assert "KAFKA_BOOTSTRAP_SERVERS" in nobody and not refused
