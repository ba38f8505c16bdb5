"""The Grafana dashboard, as code: ``wagate dashboard`` writes deploy/grafana/dashboards/wagate.json.

Plain data, one function per panel kind, so a query is read (and reviewed) next to its title; the
committed JSON must equal what this produces (tests/unit/test_dashboard.py), and every panel's query is
evaluated against a real Prometheus scraping a real worker (tests/integration/test_prometheus.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "wagate-prometheus"}
DASHBOARD_PATH = Path("deploy/grafana/dashboards/wagate.json")


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"


def _rejected_share(by: str) -> str:
    group = f" by ({by})" if by else ""
    return (
        f'sum{group} (rate(wagate_decisions_total{{route="rejected"}}[5m]))'
        f" / sum{group} (rate(wagate_decisions_total[5m]))"
    )


PANELS: tuple[Panel, ...] = (
    Panel(
        "Block rate",
        "Share of send requests rejected (all origins).",
        (Query(_rejected_share(""), "rejected share"),),
        unit="percentunit",
    ),
    Panel(
        "Block rate by origin",
        "Which producers are being stopped: broadcast tools sending free-form outside the window show here.",
        (Query(_rejected_share("origin"), "{{origin}}"),),
        unit="percentunit",
    ),
    Panel(
        "Rejections by reason",
        "Why requests are rejected.",
        (Query('sum by (reason) (rate(wagate_decisions_total{route="rejected"}[5m]))', "{{reason}}"),),
        unit="reqps",
    ),
    Panel(
        "Template conversion rate",
        "Share of requests converted to their fallback template.",
        (
            Query(
                'sum(rate(wagate_decisions_total{route="template"}[5m]))'
                " / sum(rate(wagate_decisions_total[5m]))",
                "converted share",
            ),
        ),
        unit="percentunit",
    ),
    Panel(
        "Gate misses",
        "131047-type failures after a window_open send: this should stay at zero.",
        (Query("sum(increase(wagate_gate_misses_total[1h]))", "misses in the last hour"),),
        kind="stat",
    ),
    Panel(
        "Decision latency",
        "Request created_at to decision, p50 and p99.",
        (
            Query(
                "histogram_quantile(0.5, sum by (le) (rate(wagate_decision_latency_seconds_bucket[5m])))",
                "p50",
            ),
            Query(
                "histogram_quantile(0.99, sum by (le) (rate(wagate_decision_latency_seconds_bucket[5m])))",
                "p99",
            ),
        ),
        unit="s",
    ),
    Panel(
        "Requests held for inbound events",
        "Requests waiting for the inbound events written before them (the ordering contract), how long "
        "they wait (p99), and decisions made at WAGATE_MAX_HOLD_SECONDS before those events were applied.",
        (
            Query("sum(wagate_requests_held)", "held now"),
            Query(
                "histogram_quantile(0.99, sum by (le) (rate(wagate_request_hold_seconds_bucket[5m])))",
                "hold time p99 (s)",
            ),
            Query("sum(increase(wagate_decisions_past_hold_limit_total[15m]))", "past the hold limit"),
        ),
    ),
    Panel(
        "Consumer lag",
        "Records not yet committed per topic, all workers.",
        (Query("sum by (topic) (wagate_consumer_lag)", "{{topic}}"),),
    ),
    Panel(
        "Dead letters",
        "Records the gate could not route, by source and cause (read them in wa.deadletter).",
        (Query("sum by (source, cause) (increase(wagate_dead_letters_total[15m]))", "{{source}} {{cause}}"),),
    ),
    Panel(
        "Open windows",
        "Contacts whose customer service window is open now, all workers.",
        (Query("sum(wagate_open_windows)", "open windows"),),
    ),
    Panel(
        "Window events",
        "opened / expiring / closed events published to wa.windows (expiring: the follow-up point).",
        (Query("sum by (event) (rate(wagate_window_events_total[5m]))", "{{event}}"),),
        unit="ops",
    ),
    Panel(
        "Inbound events",
        "Window effects of inbound events.",
        (Query("sum by (effect) (rate(wagate_inbound_events_total[5m]))", "{{effect}}"),),
        unit="ops",
    ),
    Panel(
        "Messaging limit used",
        "Per business portfolio: distinct users reached with business-initiated templates in the last 24 h, "
        "as a share of Meta's messaging limit (WagateMessagingLimitNear fires at 80%), and the requests "
        "rejected with messaging_limit_reached.",
        (
            Query(
                "max by (portfolio) (wagate_messaging_limit_used)"
                " / max by (portfolio) (wagate_messaging_limit > 0)",
                "{{portfolio}} used",
            ),
        ),
        unit="percentunit",
    ),
    Panel(
        "Sends Meta would refuse, stopped first",
        "Rejected before Meta: messaging limit reached, authentication templates to a BSUID-only contact "
        "(131062), marketing to a paused destination; and 131049 failures Meta returned for a paused one.",
        (
            Query(
                'sum by (reason) (increase(wagate_decisions_total{reason=~"messaging_limit_reached|'
                'recipient_requires_phone|marketing_unavailable_in_region"}[15m]))',
                "{{reason}}",
            ),
            Query(
                'sum by (region) (increase(wagate_marketing_unavailable_total{source="meta"}[15m]))',
                "Meta refused marketing to {{region}}",
            ),
        ),
    ),
    Panel(
        "One person, several identifiers",
        "Identifiers learnt to be another name of a contact (phone number, BSUID, parent BSUID), records "
        "addressed by one of them and moved to the contact, and windows kept under a BSUID joined into it.",
        (
            Query("sum by (kind) (increase(wagate_aliases_learnt_total[15m]))", "learnt {{kind}}"),
            Query("sum by (source) (increase(wagate_rekeyed_by_alias_total[15m]))", "moved {{source}}"),
            Query("sum(increase(wagate_contacts_merged_total[15m]))", "windows joined"),
        ),
    ),
)


def _panel(index: int, panel: Panel) -> dict[str, Any]:
    width = 12
    return {
        "id": index + 1,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": (index % 2) * width, "y": (index // 2) * 8, "w": width, "h": 8},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": q.expr, "legendFormat": q.legend}
            for i, q in enumerate(panel.queries)
        ],
    }


def dashboard() -> dict[str, Any]:
    return {
        "uid": "wagate",
        "title": "wagate: WhatsApp service-window gate",
        "tags": ["wagate", "whatsapp", "kafka"],
        "timezone": "utc",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "panels": [_panel(i, p) for i, p in enumerate(PANELS)],
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def all_queries() -> list[tuple[str, str]]:
    return [(panel.title, query.expr) for panel in PANELS for query in panel.queries]
