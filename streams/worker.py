"""The Faust worker process, with logging that is quiet, cheap and free of payloads, and local state
that is trusted only after a clean stop (at_least_once) or always (exactly_once: RocksDB only ever
holds committed writes)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import faust

from streams.logs import use_format

# Their DEBUG records quote message keys and values (phone numbers, texts): never enable them here.
_PAYLOAD_LOGGERS = ("aiokafka", "kafka")

# Written when the worker stopped cleanly (everything it wrote to RocksDB is also on the changelog).
CLEAN_STOP_MARKER = "clean-stop"

log = logging.getLogger(__name__)


def discard_state_after_a_crash(data_dir: Path, table_dir: Path) -> bool:
    """Drop the local RocksDB state unless the last run stopped cleanly; True if it was dropped.

    The pipeline writes RocksDB before its outputs reach Kafka. After a kill, the local state can hold
    writes whose decisions never left: a request marked decided whose decision was lost, which the
    replay would then reject as a duplicate. The changelog has only what Kafka acknowledged, so after
    a crash the state is rebuilt from it (recovery reads the whole changelog: a slower start, a right
    one)."""
    marker = data_dir / CLEAN_STOP_MARKER
    clean = marker.exists()
    marker.unlink(missing_ok=True)  # a crash from here on leaves no marker
    if clean or not table_dir.exists() or not any(table_dir.iterdir()):
        return False
    shutil.rmtree(table_dir)
    return True


class GateWorker(faust.Worker):
    def __init__(
        self,
        app: faust.App,
        loglevel: str,
        data_dir: Path | None = None,
        committed_state_only: bool = False,
        log_format: str = "text",
        **kwargs: Any,
    ) -> None:
        self.log_format = log_format
        super().__init__(app, loglevel=loglevel, quiet=True, **kwargs)
        # Faust's terminal spinner puts the root logger at DEBUG, so every produce built a log record.
        self.spinner = None
        self.data_dir = data_dir
        if committed_state_only:
            # exactly_once: state reaches RocksDB only when its transaction commits, so after a crash
            # the local state is a prefix of the changelog: recovery replays only the tail.
            if data_dir is not None:
                (data_dir / CLEAN_STOP_MARKER).unlink(missing_ok=True)
        elif data_dir is not None and discard_state_after_a_crash(data_dir, Path(app.conf.tabledir)):
            log.warning("the last run did not stop cleanly: local state dropped, rebuilt from the changelog")

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        logger.setLevel(level)
        use_format(self.log_format, logger)
        for name in _PAYLOAD_LOGGERS:
            logging.getLogger(name).setLevel(max(level, logging.WARNING))

    def stop_and_shutdown(self) -> None:
        super().stop_and_shutdown()  # Faust flushes the producer and commits on a graceful stop
        if self.data_dir is not None and self.app.crash_reason is None:
            (self.data_dir / CLEAN_STOP_MARKER).touch()
