"""Typed settings, read from environment variables (the README lists them all).

Every variable is ``WAGATE_<FIELD>`` except the broker address, which follows the common
``KAFKA_BOOTSTRAP_SERVERS`` convention.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.policy.deliverability import parse_marketing_pauses
from streams.policy.limits import parse_configured_limits, parse_portfolio_map
from streams.policy.rules import DEFAULT_OPENER_TYPES, ORIGINS, OriginPolicy, WindowRules


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WAGATE_", extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "WAGATE_KAFKA_BOOTSTRAP_SERVERS"),
        description="host:port[,host:port] of the Kafka cluster",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        validation_alias=AliasChoices("KAFKA_SECURITY_PROTOCOL", "WAGATE_KAFKA_SECURITY_PROTOCOL"),
        description="how every client talks to Kafka: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="PLAIN",
        validation_alias=AliasChoices("KAFKA_SASL_MECHANISM", "WAGATE_KAFKA_SASL_MECHANISM"),
        description="SASL mechanism (SASL_PLAINTEXT, SASL_SSL)",
    )
    kafka_sasl_username: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SASL_USERNAME", "WAGATE_KAFKA_SASL_USERNAME"),
        description="SASL user name (required with SASL_*)",
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SASL_PASSWORD", "WAGATE_KAFKA_SASL_PASSWORD"),
        description="SASL password (required with SASL_*); never logged",
    )
    kafka_ssl_ca_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SSL_CA_FILE", "WAGATE_KAFKA_SSL_CA_FILE"),
        description="PEM file of the CA(s) that signed the brokers' certificates (unset: the system's CAs)",
    )
    kafka_ssl_cert_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SSL_CERT_FILE", "WAGATE_KAFKA_SSL_CERT_FILE"),
        description="PEM client certificate (chain) for mutual TLS",
    )
    kafka_ssl_key_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SSL_KEY_FILE", "WAGATE_KAFKA_SSL_KEY_FILE"),
        description="PEM private key of the client certificate (unset: it is in KAFKA_SSL_CERT_FILE)",
    )
    kafka_ssl_key_password: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SSL_KEY_PASSWORD", "WAGATE_KAFKA_SSL_KEY_PASSWORD"),
        description="password of an encrypted client key",
    )
    kafka_ssl_check_hostname: bool = Field(
        default=True,
        validation_alias=AliasChoices("KAFKA_SSL_CHECK_HOSTNAME", "WAGATE_KAFKA_SSL_CHECK_HOSTNAME"),
        description="check that the broker's certificate names the host connected to",
    )
    app_id: str = Field(
        default="wagate", description="Faust app id: consumer group and changelog topic prefix"
    )
    topic_prefix: str = Field(default="", description="prefix for every topic name, e.g. 'staging.'")
    partitions: int = Field(
        default=4, ge=1, description="partitions of wa.inbound, wa.outbound.requests, state"
    )
    replication_factor: int = Field(default=1, ge=1, description="replication of topics the gate creates")
    min_insync_replicas: int | None = Field(
        default=None,
        ge=1,
        description="min.insync.replicas of the topics the gate creates (unset: the broker's default); "
        "3 replicas with 2 in sync survive the loss of one broker without losing an acknowledged write",
    )
    data_dir: Path = Field(default=Path("var/wagate"), description="RocksDB state directory of this worker")
    store: Literal["rocksdb", "memory"] = Field(
        default="rocksdb", description="table store; memory only for unit tests"
    )
    web_enabled: bool = Field(default=True, description="serve /metrics on web_host:web_port")
    web_host: str = Field(
        default="127.0.0.1",
        description="address of the HTTP server (/metrics, /health, /ready, /windows): where it binds "
        "and what other workers are told, unless WAGATE_WEB_BIND / WAGATE_WEB_ADVERTISED_HOST say otherwise",
    )
    web_bind: str | None = Field(
        default=None,
        description="address the HTTP server binds to (0.0.0.0 in a container); default web_host",
    )
    web_advertised_host: str | None = Field(
        default=None,
        description="host name other workers use to reach this one (window API routing; a pod's DNS "
        "name in Kubernetes); default web_host",
    )
    web_port: int = Field(
        default=6066,
        ge=1,
        le=65535,
        description="port of the window API (and of /metrics, /health, /ready "
        "unless WAGATE_ADMIN_PORT moves them)",
    )
    admin_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="serve /metrics, /health and /ready on this port (bound to WAGATE_WEB_BIND or "
        "WAGATE_WEB_HOST) instead of the window API's, so a NetworkPolicy can open one and not the other",
    )
    window_api_token: SecretStr | None = Field(
        default=None,
        description="bearer token the window API requires (Authorization: Bearer <token>); the same on "
        "every worker (they forward requests to each other). Unset (and no _FILE): the window API is off",
    )
    window_api_token_file: Path | None = Field(
        default=None,
        description="a file holding the window API's token (a mounted Secret), instead of the variable",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="worker log level (payloads are never logged)"
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="text, or one JSON object per line (time, level, logger, message)"
    )

    window_seconds: float = Field(default=86_400.0, gt=0, description="customer service window length")
    safety_margin_seconds: float = Field(
        default=120.0, ge=0, description="free-form needs this much window left"
    )
    future_skew_seconds: float = Field(
        default=60.0, ge=0, description="inbound timestamps beyond now+skew are clamped"
    )
    dedupe_horizon_seconds: float = Field(
        default=7 * 86_400.0, gt=0, description="how long a decided request_id is remembered per contact"
    )
    dedupe_max_per_contact: int = Field(
        default=1_000, ge=1, description="decided request_ids kept per contact (newest win)"
    )
    opener_message_types: str = Field(
        default=",".join(sorted(DEFAULT_OPENER_TYPES)),
        description="comma-separated inbound message types that open/refresh the window",
    )
    window_events_enabled: bool = Field(
        default=True, description="publish opened/expiring/closed events to wa.windows"
    )
    window_event_lead_seconds: float = Field(
        default=3_600.0,
        gt=0,
        description="`expiring` goes out this long before the window closes (the follow-up point)",
    )
    window_event_max_delay_seconds: float = Field(
        default=86_400.0,
        ge=0,
        description="events overdue by more than this (worker down, old backlog) are not published",
    )
    window_event_tick_seconds: float = Field(
        default=1.0, gt=0, le=60, description="how often due window events are looked for"
    )
    group_unsupported_types: str = Field(
        default="interactive", description="message types that cannot be sent to a group"
    )

    producer_linger_ms: int = Field(
        default=0,
        ge=0,
        description="producer batching delay (the gate batches per fetch; 0 keeps latency low)",
    )
    producer_max_batch_size: int = Field(
        default=1_048_576, ge=16_384, description="bytes per partition batch; small batches stall sends"
    )
    max_poll_records: int = Field(default=2_000, ge=1, description="records fetched per poll")

    max_hold_seconds: float = Field(
        default=10.0,
        ge=0,
        description="longest a request waits for the inbound events written before it (then it is decided "
        "anyway, marked held_past_limit and counted); 0 turns the ordering contract off",
    )
    max_held_requests: int = Field(
        default=5_000,
        ge=1,
        description="requests held per partition before the gate stops fetching that request partition",
    )

    instance_id: str | None = Field(
        default=None,
        description="static group membership (group.instance.id): a worker restarted with the same id "
        "gets its partitions back at once instead of after the session timeout; unique per worker (a "
        "StatefulSet pod name, a host name). Unset: dynamic membership",
    )
    session_timeout_seconds: float = Field(
        default=10.0,
        ge=6,
        le=90,  # Faust's request timeout
        description="how long the group waits for a worker that stopped heartbeating before its "
        "partitions move (after a crash with dynamic membership, no request of them is decided meanwhile)",
    )

    standby_replicas: int = Field(
        default=0,
        ge=0,
        description="standby copies of each state partition kept by other workers (they follow the "
        "changelog): a worker taking over a dead one's partitions replays only the changelog's tail",
    )

    commit_interval_seconds: float = Field(
        default=1.0, gt=0, description="how often consumed offsets are committed (at_least_once)"
    )
    processing_guarantee: Literal["exactly_once", "at_least_once"] = Field(
        default="exactly_once",
        description="exactly_once: each input partition's decisions, state writes, window events, dead "
        "letters and input offsets are committed in one Kafka transaction (read the outputs with "
        "isolation.level=read_committed: one decision per request across any crash); at_least_once: "
        "no transactions, a crash may repeat decisions made since the last commit",
    )
    transaction_timeout_seconds: float = Field(
        default=20.0,
        ge=1,
        le=900,  # the broker's default transaction.max.timeout.ms
        description="exactly_once: a transaction left open by a dead worker is aborted by the broker "
        "after this long if no worker takes its partition over sooner (read_committed readers of the "
        "partitions it wrote wait meanwhile)",
    )

    transactions_in_flight: int = Field(
        default=1,
        ge=1,
        le=2,
        description="exactly_once: transactions a partition may have open at once. 1: the next one "
        "begins when the previous one has committed; 2: as soon as the previous one's records are "
        "acknowledged, and it commits after it (more, smaller transactions: on a broker short of CPU "
        "the p99 was worse). Either way the partition's two transactional ids (<app id>-p<N> and "
        "<app id>-p<N>-b) take turns",
    )

    origin_policy: str = Field(
        default="",
        description='per-origin rules as JSON, e.g. {"broadcast": {"free_form": false, "convert": false}}; '
        "keys free_form, convert, require_fallback (all default true/true/false)",
    )
    phone_number_wabas: str = Field(
        default="",
        description="phone_number_id=waba_id[,...] for numbers whose account no webhook has shown yet",
    )
    waba_portfolios: str = Field(
        default="",
        description="waba_id=portfolio_id[,...]: the business portfolio each WhatsApp Business Account "
        "belongs to, for the messaging limit Meta sets per portfolio (unlisted: each account is its own)",
    )
    messaging_limits: str = Field(
        default="",
        description="portfolio_id=limit[,...]: a portfolio's messaging limit (distinct users reached "
        "outside their window per moving 24 h; a number, -1 for unlimited, or TIER_250, TIER_2K, ...) "
        "where no business_capability_update webhook reaches the gate; the webhook's value wins",
    )
    internal_key: SecretStr | None = Field(
        default=None,
        description="a secret (16+ characters) every worker shares: the gate signs its own messaging-limit "
        "records on wa.inbound with it (HMAC-SHA256) and dead-letters unsigned ones, so a producer that "
        "may write wa.inbound cannot forge them. Unset: wa.inbound writers are trusted",
    )
    marketing_pauses: str = Field(
        default="",
        description="JSON list of destinations Meta does not deliver marketing templates to, e.g. "
        '[{"region": "US", "calling_codes": ["1"], "except_prefixes": ["1204"], "bsuid_countries": '
        '["US"], "from": "2025-04-01", "until": null}]; empty: Meta\'s known pauses (US numbers since '
        "2025-04-01); [] turns the check off",
    )
    clock_offset_seconds: float = Field(
        default=0.0,
        description="shift the decision clock (replays and tests of effective dates); 0 in production",
    )

    # -- webhook receiver (`wagate webhook`) ----------------------------------------------------
    webhook_host: str = Field(default="127.0.0.1", description="address the webhook receiver binds to")
    webhook_port: int = Field(default=8080, ge=1, le=65535, description="port of the webhook receiver")
    webhook_path: str = Field(default="/webhook", description="URL path Meta calls (callback URL path)")
    webhook_admin_host: str = Field(
        default="127.0.0.1",
        description="address of the receiver's /metrics and /health (0.0.0.0 in a container): apart from "
        "the public webhook port, so only Prometheus and the kubelet need to reach it",
    )
    webhook_admin_port: int = Field(
        default=8081, ge=1, le=65535, description="port of the receiver's /metrics and /health"
    )
    webhook_app_secret: SecretStr | None = Field(
        default=None, description="Meta app secret: X-Hub-Signature-256 is checked against it (required)"
    )
    webhook_verify_token: SecretStr | None = Field(
        default=None,
        description="the verify token set in Meta's webhook settings, for the GET handshake (unset: every "
        "handshake is refused; set but empty: refused at start-up)",
    )
    webhook_max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="larger bodies get 413 (Meta's are a few KB)"
    )
    webhook_produce_timeout_seconds: float = Field(
        default=10.0, gt=0, description="answer 503 (Meta retries) if Kafka has not acked by then"
    )
    webhook_read_timeout_seconds: float = Field(
        default=10.0, gt=0, description="a body not fully received by then is answered 408 (slow senders)"
    )
    webhook_max_concurrent_requests: int = Field(
        default=256, ge=1, description="POSTs handled at once; past it the answer is 503 and Meta retries"
    )

    @field_validator("opener_message_types", "group_unsupported_types")
    @classmethod
    def _comma_list(cls, value: str) -> str:
        items = [item.strip() for item in value.split(",") if item.strip()]
        for item in items:
            if not item.replace("_", "").isalnum():
                raise ValueError(f"'{item}' is not a message type name (letters, digits and _ only)")
        return ",".join(items)

    @field_validator(
        "origin_policy", "phone_number_wabas", "waba_portfolios", "messaging_limits", "marketing_pauses"
    )
    @classmethod
    def _parsed(cls, value: str, info: ValidationInfo) -> str:
        """Checked at start by the same parser that reads it later: a bad value names what is wrong."""
        _PARSERS[info.field_name](value)
        return value

    @field_validator("internal_key")
    @classmethod
    def _internal_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError(
                "must be at least 16 characters (e.g. `openssl rand -hex 24`); unset it to turn signing off"
            )
        return value

    def window_api_secret(self) -> bytes | None:
        """The window API's token (from the file when one is named), or None: the API is off."""
        if self.window_api_token_file is not None:
            try:
                return self.window_api_token_file.read_text().strip().encode()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(
                    f"WAGATE_WINDOW_API_TOKEN_FILE={self.window_api_token_file} cannot be read: {exc}"
                ) from None
        return None if self.window_api_token is None else self.window_api_token.get_secret_value().encode()

    @model_validator(mode="after")
    def _window_api_token(self) -> Settings:
        if self.window_api_token is not None and self.window_api_token_file is not None:
            raise ValueError("set WAGATE_WINDOW_API_TOKEN or WAGATE_WINDOW_API_TOKEN_FILE, not both")
        if self.window_api_token_file is not None and not self.window_api_token_file.is_file():
            raise ValueError(
                f"WAGATE_WINDOW_API_TOKEN_FILE={self.window_api_token_file} is not a readable file"
            )
        token = self.window_api_secret()
        if token is not None and len(token) < 16:
            source = (
                "WAGATE_WINDOW_API_TOKEN_FILE's content"
                if self.window_api_token_file
                else "WAGATE_WINDOW_API_TOKEN"
            )
            raise ValueError(
                f"{source} is {'empty' if not token else 'shorter than 16 characters'}: the window API "
                "answers anyone who has it (e.g. `openssl rand -hex 24`); unset it to turn the API off"
            )
        return self

    @model_validator(mode="after")
    def _kafka_security(self) -> Settings:
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_") and (
            not self.kafka_sasl_username or self.kafka_sasl_password is None
        ):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )
        tls = protocol in ("SSL", "SASL_SSL")
        for name, path in (
            ("KAFKA_SSL_CA_FILE", self.kafka_ssl_ca_file),
            ("KAFKA_SSL_CERT_FILE", self.kafka_ssl_cert_file),
            ("KAFKA_SSL_KEY_FILE", self.kafka_ssl_key_file),
        ):
            if path is None:
                continue
            if not tls:
                raise ValueError(
                    f"{name} is set but KAFKA_SECURITY_PROTOCOL={protocol} uses no TLS (SSL or SASL_SSL)"
                )
            if not path.is_file():
                raise ValueError(f"{name}={path}: no such file")
        if self.kafka_ssl_key_file is not None and self.kafka_ssl_cert_file is None:
            raise ValueError("KAFKA_SSL_KEY_FILE is set without KAFKA_SSL_CERT_FILE (the client certificate)")
        return self

    @model_validator(mode="after")
    def _lead_inside_window(self) -> Settings:
        if not self.safety_margin_seconds < self.window_event_lead_seconds < self.window_seconds:
            raise ValueError(
                f"WAGATE_WINDOW_EVENT_LEAD_SECONDS ({self.window_event_lead_seconds:g}) must be longer than "
                f"WAGATE_SAFETY_MARGIN_SECONDS ({self.safety_margin_seconds:g}), or `expiring` comes when "
                f"free-form is refused already, and shorter than WAGATE_WINDOW_SECONDS "
                f"({self.window_seconds:g})"
            )
        return self

    @cached_property
    def configured_numbers(self) -> dict[str, str]:
        return parse_phone_number_wabas(self.phone_number_wabas)

    @cached_property
    def configured_portfolios(self) -> dict[str, str]:
        return parse_waba_portfolios(self.waba_portfolios)

    @cached_property
    def configured_limits(self) -> dict[str, int]:
        return parse_configured_limits(self.messaging_limits)

    @property
    def faust_app_id(self) -> str:
        """Consumer group and changelog prefix: distinct per topic prefix, so deployments never share one."""
        return f"{self.topic_prefix}{self.app_id}"

    @cached_property
    def rules(self) -> WindowRules:
        return WindowRules(
            window_seconds=self.window_seconds,
            safety_margin_seconds=self.safety_margin_seconds,
            future_skew_seconds=self.future_skew_seconds,
            opener_message_types=frozenset(self.opener_message_types.split(",")),
            group_unsupported_types=frozenset(filter(None, self.group_unsupported_types.split(","))),
            dedupe_horizon_seconds=self.dedupe_horizon_seconds,
            dedupe_max_per_contact=self.dedupe_max_per_contact,
            origins=parse_origin_policy(self.origin_policy),
            event_lead_seconds=self.window_event_lead_seconds,
            event_max_delay_seconds=self.window_event_max_delay_seconds,
            marketing_pauses=parse_marketing_pauses(self.marketing_pauses),
        )


def parse_waba_portfolios(raw: str) -> dict[str, str]:
    return parse_portfolio_map(raw, "waba_id=portfolio_id")


def parse_origin_policy(raw: str) -> dict[str, OriginPolicy]:
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f'not JSON ({exc.msg}); example: {{"broadcast": {{"free_form": false}}}}') from None
    if not isinstance(data, dict):
        raise ValueError("must be a JSON object keyed by origin")
    policies: dict[str, OriginPolicy] = {}
    known = set(OriginPolicy.__dataclass_fields__)
    for origin, rules in data.items():
        if origin not in ORIGINS:
            raise ValueError(f"unknown origin '{origin}'; origins are {', '.join(sorted(ORIGINS))}")
        if not isinstance(rules, dict) or not all(isinstance(v, bool) for v in rules.values()):
            raise ValueError(f"'{origin}' must map to an object of true/false values")
        unknown = set(rules) - known
        if unknown:
            raise ValueError(f"'{origin}': unknown key(s) {sorted(unknown)}; keys are {sorted(known)}")
        policies[origin] = OriginPolicy(**rules)
    return policies


def parse_phone_number_wabas(raw: str) -> dict[str, str]:
    numbers: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        pnid, sep, waba = item.partition("=")
        if not sep or not pnid.strip() or not waba.strip():
            raise ValueError(f"'{item}' is not phone_number_id=waba_id")
        numbers[pnid.strip()] = waba.strip()
    return numbers


_PARSERS: dict[str | None, Callable[[str], object]] = {
    "origin_policy": parse_origin_policy,
    "phone_number_wabas": parse_phone_number_wabas,
    "waba_portfolios": parse_waba_portfolios,
    "messaging_limits": parse_configured_limits,
    "marketing_pauses": parse_marketing_pauses,
}
