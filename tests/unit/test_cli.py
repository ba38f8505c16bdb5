"""What a person sees when the configuration or the cluster is wrong: the variable and the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def wagate(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_an_invalid_setting_names_the_variable() -> None:
    result = wagate("topics", WAGATE_PARTITIONS="0")
    assert result.returncode != 0
    assert "invalid configuration" in result.stderr and "WAGATE_PARTITIONS" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_invalid_opener_type_list_says_what_is_wrong() -> None:
    result = wagate("topics", WAGATE_OPENER_MESSAGE_TYPES="text,im age")
    assert result.returncode != 0 and "'im age' is not a message type name" in result.stderr


def test_an_unreachable_broker_says_which_address_and_what_to_do() -> None:
    result = wagate("topics", KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    assert result.returncode != 0
    assert "nothing listens at 127.0.0.1:1: check KAFKA_BOOTSTRAP_SERVERS" in result.stderr
    assert "make kafka-start" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_every_command() -> None:
    result = wagate("--help")
    assert result.returncode == 0
    for command in ("worker", "topics", "schemas", "demo", "bench", "bench-scale"):
        assert command in result.stdout


def test_bench_scale_refuses_counts_that_are_not_whole_numbers_and_names_the_option() -> None:
    result = wagate("bench-scale", "--workers", "1,two")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--workers" in result.stderr and "expected comma-separated whole numbers" in result.stderr
    result = wagate("bench-scale", "--partitions", "0")
    assert result.returncode == 2 and "every count must be at least 1" in result.stderr


def test_the_quix_peer_names_how_to_get_its_interpreter(tmp_path: Path) -> None:
    result = wagate(
        "bench", "--systems", "quix", WAGATE_BENCH_QUIX_PYTHON=str(tmp_path / "missing" / "python")
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "make bench" in result.stderr and "WAGATE_BENCH_QUIX_PYTHON" in result.stderr


def test_bench_measures_every_system_by_default_and_its_help_names_them() -> None:
    from streams.bench import SYSTEMS, WARMUP_REQUESTS

    result = wagate("bench", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert all(system in text for system in SYSTEMS), text
    assert f"(default {WARMUP_REQUESTS};" in text, text  # the help states the default run_bench uses
    result = wagate("bench", "--systems", "gate,nonsense")
    assert result.returncode != 0 and "nonsense" in result.stderr and "gate_limited" in result.stderr


def test_the_webhook_receiver_refuses_to_start_without_the_app_secret() -> None:
    result = wagate("webhook", WAGATE_WEBHOOK_APP_SECRET="")
    assert result.returncode != 0
    assert "WAGATE_WEBHOOK_APP_SECRET is not set" in result.stderr and "Traceback" not in result.stderr


def test_the_webhook_receiver_refuses_an_empty_verify_token() -> None:
    result = wagate("webhook", WAGATE_WEBHOOK_APP_SECRET="s3cret", WAGATE_WEBHOOK_VERIFY_TOKEN="")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "WAGATE_WEBHOOK_VERIFY_TOKEN is set but empty" in result.stderr


def test_webhook_help_names_its_settings() -> None:
    result = wagate("webhook", "--help")
    assert result.returncode == 0
    for variable in (
        "WAGATE_WEBHOOK_APP_SECRET",
        "WAGATE_WEBHOOK_VERIFY_TOKEN",
        "WAGATE_WEBHOOK_PORT",
        "WAGATE_WEBHOOK_ADMIN_PORT",
    ):
        assert variable in result.stdout


def test_a_window_event_lead_outside_the_window_says_which_variables_and_why() -> None:
    result = wagate("topics", WAGATE_WINDOW_EVENT_LEAD_SECONDS="60")  # under the 120 s safety margin
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "WAGATE_WINDOW_EVENT_LEAD_SECONDS (60) must be longer than WAGATE_SAFETY_MARGIN_SECONDS" in (
        result.stderr
    )
    assert "WAGATE_:" not in result.stderr
