"""Pricing annotation for send/template decisions, from effective-dated rules (one table, here).

The decision's own time picks the rule. Registry-backed template categories refine this later;
until then a template's category is the producer's declared intent (utility when it says service).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from streams.models import Intent, Pricing, trusted


@dataclass(frozen=True, slots=True)
class PricingRule:
    effective_from: float
    free_form_billable: bool  # a non-template message inside the service window
    in_window_utility_billable: bool  # a utility template sent inside an open window


def _epoch(year: int, month: int, day: int) -> float:
    return datetime(year, month, day, tzinfo=UTC).timestamp()


# Newest first. Before 2025-07-01 Meta billed 24 h conversations; we annotate those as per-message too.
PRICING_RULES: tuple[PricingRule, ...] = (
    PricingRule(_epoch(2026, 10, 1), free_form_billable=True, in_window_utility_billable=True),
    PricingRule(_epoch(2025, 7, 1), free_form_billable=False, in_window_utility_billable=False),
)


def rule_at(now: float) -> PricingRule:
    for rule in PRICING_RULES:
        if now >= rule.effective_from:
            return rule
    return PRICING_RULES[-1]


def price(*, is_template: bool, intent: Intent, window_open: bool, now: float) -> Pricing:
    rule = rule_at(now)
    if not is_template:
        # Free-form only ever goes out inside the window: service, billed at the utility rate since 2026-10.
        billable = rule.free_form_billable
        return trusted(
            Pricing,
            category="service",
            billable=billable,
            basis="per_message" if billable else "service_window",
        )
    category = "utility" if intent == "service" else intent
    if category == "utility" and window_open and not rule.in_window_utility_billable:
        return trusted(Pricing, category="utility", billable=False, basis="service_window")
    return trusted(Pricing, category=category, billable=True, basis="per_message")
