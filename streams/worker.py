"""The Faust worker process, with logging that is quiet, cheap and free of payloads."""

from __future__ import annotations

import logging
from typing import Any

import faust

# Their DEBUG records quote message keys and values (phone numbers, texts): never enable them here.
_PAYLOAD_LOGGERS = ("aiokafka", "kafka")


class GateWorker(faust.Worker):
    def __init__(self, app: faust.App, loglevel: str, **kwargs: Any) -> None:
        super().__init__(app, loglevel=loglevel, quiet=True, **kwargs)
        # Faust's terminal spinner puts the root logger at DEBUG, so every produce built a log record.
        self.spinner = None

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        logger.setLevel(level)
        for name in _PAYLOAD_LOGGERS:
            logging.getLogger(name).setLevel(max(level, logging.WARNING))
