"""Running in containers: bind and advertised addresses apart, JSON log lines without payloads."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import orjson

from streams.app import create_app
from streams.logs import JsonFormatter
from streams.settings import Settings


def test_the_web_server_binds_one_address_and_advertises_another(tmp_path: Path) -> None:
    # In a pod: bind every interface, tell the other workers the pod's DNS name (window API routing).
    settings = Settings(
        store="memory",
        web_bind="0.0.0.0",
        web_advertised_host="wagate-1.wagate.svc",
        data_dir=tmp_path / "state",
    )
    conf = create_app(settings).app.conf
    assert conf.web_bind == "0.0.0.0"
    assert conf.web_host == "wagate-1.wagate.svc"
    assert str(conf.canonical_url).startswith("http://wagate-1.wagate.svc:")


def test_by_default_both_are_web_host(tmp_path: Path) -> None:
    conf = create_app(Settings(store="memory", web_host="10.1.2.3", data_dir=tmp_path / "s")).app.conf
    assert (conf.web_bind, conf.web_host) == ("10.1.2.3", "10.1.2.3")


def test_json_log_lines_carry_the_record_and_nothing_else() -> None:
    record = logging.LogRecord("streams.runner", logging.WARNING, __file__, 1, "held %d requests", (3,), None)
    line = orjson.loads(JsonFormatter().format(record))
    assert line["level"] == "warning" and line["logger"] == "streams.runner"
    assert line["message"] == "held 3 requests"
    assert set(line) == {"time", "level", "logger", "message", "pid"}
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = orjson.loads(JsonFormatter().format(failed))
    assert line["error"] == "ValueError" and "boom" in line["trace"]
