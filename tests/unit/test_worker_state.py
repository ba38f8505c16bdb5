"""Local state is trusted only after a clean stop: after a kill it is rebuilt from the changelog."""

from __future__ import annotations

from pathlib import Path

from streams.worker import CLEAN_STOP_MARKER, discard_state_after_a_crash


def test_state_left_by_a_crash_is_dropped_and_a_clean_stop_keeps_it(tmp_path: Path) -> None:
    tables = tmp_path / "v1" / "tables"
    (tables / "contact_state-0.db").mkdir(parents=True)
    (tmp_path / CLEAN_STOP_MARKER).touch()
    assert discard_state_after_a_crash(tmp_path, tables) is False, "a clean stop: keep it"
    assert tables.exists() and not (tmp_path / CLEAN_STOP_MARKER).exists(), "the marker is used up"
    assert discard_state_after_a_crash(tmp_path, tables) is True, "no marker: the last run crashed"
    assert not tables.exists()
    assert discard_state_after_a_crash(tmp_path, tables) is False, "nothing to drop on a first start"
