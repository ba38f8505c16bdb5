"""The committed Grafana dashboard is exactly what streams/dashboard.py generates."""

from __future__ import annotations

from pathlib import Path

import orjson

from streams.dashboard import DASHBOARD_PATH, PANELS, render

ROOT = Path(__file__).resolve().parents[2]


def test_committed_dashboard_equals_the_generator() -> None:
    assert (ROOT / DASHBOARD_PATH).read_text() == render(), "run `wagate dashboard` and commit the result"


def test_every_panel_the_operators_asked_for_is_there() -> None:
    titles = {panel["title"] for panel in orjson.loads(render())["panels"]}
    for wanted in (
        "Block rate",
        "Block rate by origin",
        "Rejections by reason",
        "Template conversion rate",
        "Gate misses",
        "Decision latency",
        "Consumer lag",
        "Dead letters",
    ):
        assert wanted in titles
    assert len(titles) == len(PANELS)
