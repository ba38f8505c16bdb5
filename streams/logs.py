"""Log lines as text or as one JSON object per line (``WAGATE_LOG_FORMAT=json``), for both processes.

Only the record's own fields go out: time, level, logger, message (and the exception's type and
trace). The gate never puts payloads, phone numbers or user ids into log messages; this formatter
adds nothing that could carry them.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            line["error"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            line["trace"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def use_format(log_format: str, logger: logging.Logger | None = None) -> None:
    """Give every handler of ``logger`` (the root logger by default) the chosen format."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        handler.setFormatter(formatter(log_format))
