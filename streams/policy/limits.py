"""The business portfolio's messaging limit (contract section 10): pure arithmetic, no I/O.

Meta caps the distinct users a portfolio reaches with business-initiated messages (templates sent
while the user's customer service window is closed) in a moving 24 hours. The gate keeps, per
portfolio, one counter per minute of first contacts ("buckets") and, per user, when they were last
reached. A user reached again inside 24 h is not a new user: their count moves to the newer minute,
so they stay counted until 24 h after their last message. A minute stays counted until 24 h after its
end, so the count errs by at most one minute on the safe side (a slot frees up to 60 s late, never
early).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import orjson

DAY_SECONDS = 86_400.0
BUCKET_SECONDS = 60
UNLIMITED = -1

# Meta's values of max_daily_conversations_per_business (and of the phone_number_quality_update
# tiers), as names or numbers; -1 (and TIER_UNLIMITED) is unlimited.
TIERS: dict[str, int] = {
    "TIER_50": 50,
    "TIER_250": 250,
    "TIER_1K": 1_000,
    "TIER_2K": 2_000,
    "TIER_10K": 10_000,
    "TIER_100K": 100_000,
    "TIER_UNLIMITED": UNLIMITED,
}


def parse_messaging_limit(value: Any) -> int | None:
    """Meta's limit as the gate keeps it (a count, or UNLIMITED), or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return UNLIMITED if value < 0 else value
    if isinstance(value, float) and value.is_integer():
        return UNLIMITED if value < 0 else int(value)
    if isinstance(value, str):
        text = value.strip().upper()
        if text in TIERS:
            return TIERS[text]
        if text == "UNLIMITED":
            return UNLIMITED
        try:
            number = int(text)
        except ValueError:
            return None
        return UNLIMITED if number < 0 else number
    return None


def is_limited(limit: int | None) -> bool:
    """A limit the gate enforces: a known, finite one."""
    return limit is not None and limit >= 0


def describe_limit(limit: int | None) -> str:
    if limit is None:
        return "unknown"
    return "unlimited" if limit < 0 else str(limit)


def minute_of(at: float) -> int:
    """The minute of the count ``at`` falls in (the gate files each reached user under it)."""
    return math.floor(at / BUCKET_SECONDS)


def _still_counted(bucket: int, now: float) -> bool:
    return (bucket + 1) * BUCKET_SECONDS + DAY_SECONDS > now


@dataclass(slots=True)
class PortfolioState:
    """What one portfolio's home partition keeps: its limit and its first contacts per minute."""

    limit: int | None = None  # from business_capability_update; None: none seen (configuration applies)
    limit_at: float | None = None  # the newest update's time: an older retry changes nothing
    # minute -> users counted in it. A minute whose users all moved on stays (count 0) until it leaves
    # the 24 h: the gate filed its users' records under it, and they are deleted then.
    buckets: dict[int, int] = field(default_factory=dict)
    # Minutes that left the 24 h whose users' records are still being deleted: [minute, next chunk].
    sweep: list[list[int]] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        # Dense from the first minute kept: at most 1,441 small numbers (count + 1; 0: no minute).
        data: dict[str, object] = {"l": self.limit, "la": self.limit_at}
        if self.buckets:
            first, last = min(self.buckets), max(self.buckets)
            data["m"] = first
            data["c"] = [self.buckets[m] + 1 if m in self.buckets else 0 for m in range(first, last + 1)]
        if self.sweep:
            data["s"] = self.sweep
        return orjson.dumps(data)

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> PortfolioState:
        if not raw:
            return cls()
        data = orjson.loads(raw)
        first = data.get("m", 0)
        buckets = {first + i: c - 1 for i, c in enumerate(data.get("c") or ()) if c}
        return cls(data.get("l"), data.get("la"), buckets, [list(item) for item in data.get("s") or ()])


def effective_limit(state: PortfolioState, configured: int | None) -> int | None:
    """Meta's word (the webhook) when the gate has it, else the configured limit."""
    return state.limit if state.limit is not None else configured


def used(state: PortfolioState, now: float) -> int:
    """Distinct users reached in the last 24 h (at most one minute's worth more, never fewer)."""
    return sum(count for bucket, count in state.buckets.items() if _still_counted(bucket, now))


def apply_capability(state: PortfolioState, limit: int, at: float) -> PortfolioState:
    """A limit from Meta; the newest (by its webhook time) wins, whatever order they arrive in."""
    if state.limit_at is not None and at < state.limit_at:
        return state
    return PortfolioState(limit, at, dict(state.buckets), list(state.sweep))


@dataclass(frozen=True, slots=True)
class Reservation:
    granted: bool
    state: PortfolioState
    reached_at: float | None  # the user's new "last reached" time (unchanged when refused)
    used: int  # users counted after this decision
    counted: bool  # this decision took a new slot
    free_at: float | None  # refused: when the oldest counted minute frees a slot
    # Minutes that left the moving 24 h with this decision: their users' records can go.
    expired: tuple[int, ...] = ()
    # The minute the user is counted in now (their record is to be filed under it), when it changed.
    filed_in: int | None = None


def reserve(state: PortfolioState, limit: int | None, reached_at: float | None, now: float) -> Reservation:
    """A business-initiated message to one user at ``now``: does it fit the portfolio's limit?

    ``reached_at``: when this portfolio last reached the user (None: never). A user reached in the last
    24 h is never limited; anyone else takes a slot when one is free. With no finite limit (it was
    raised to unlimited after the request left its partition) the message goes and is counted.
    """
    # A minute stays (with a count of 0 once its users moved on) until it leaves the 24 h: the gate
    # files each user's record under a minute, and a minute's expiry is when those records go.
    buckets = {b: c for b, c in state.buckets.items() if _still_counted(b, now)}
    expired = tuple(sorted(b for b in state.buckets if b not in buckets))
    # The minutes that left the 24 h join the sweep: their users' records are deleted bit by bit.
    sweep = [*state.sweep, *([m, 0] for m in expired)]

    def result(
        granted: bool, reached: float | None, counted: bool, free_at: float | None = None
    ) -> Reservation:
        new_state = PortfolioState(state.limit, state.limit_at, buckets, sweep)
        return Reservation(
            granted, new_state, reached, sum(buckets.values()), counted, free_at, expired, filed
        )

    filed = None
    known = reached_at is not None and reached_at > now - DAY_SECONDS
    if known and reached_at is not None and reached_at > now:  # another worker's clock ran ahead
        return result(True, reached_at, False)
    # The minute the user was last counted in, while it still counts (past their 24 h it may, for up
    # to a minute): the user moves out of it, so nobody is counted twice.
    old_bucket = None if reached_at is None else minute_of(reached_at)
    if old_bucket is not None and buckets.get(old_bucket, 0) == 0:
        old_bucket = None
    others = sum(buckets.values()) - (1 if old_bucket is not None else 0)
    if not known and limit is not None and 0 <= limit <= others:
        counted = [b for b, c in buckets.items() if c > 0]
        free_at = (min(counted) + 1) * BUCKET_SECONDS + DAY_SECONDS if counted else None
        return result(False, reached_at, False, free_at)
    new_bucket = minute_of(now)
    if old_bucket is not None:
        buckets[old_bucket] -= 1
    buckets[new_bucket] = buckets.get(new_bucket, 0) + 1
    filed = None if old_bucket == new_bucket else new_bucket
    return result(True, now, not known)


def business_initiated(route: str, message_type: str | None, window_state: str, recipient_type: str) -> bool:
    """A decision that sends a template to a user whose window is not open: what the limit counts.

    A ``closing`` window counts as closed: the gate's safety margin says the message may land after it.
    Groups are not counted (Meta's limit counts users).
    """
    return (
        route in ("send", "template")
        and message_type == "template"
        and window_state != "open"
        and recipient_type == "individual"
    )


MAX_ID_LENGTH = 200  # portfolio and account ids: a record key and a metric label


def parse_portfolio_map(raw: str, what: str) -> dict[str, str]:
    """``id=value[,id=value]`` (the settings' format for WABA -> portfolio and portfolio -> limit)."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"'{item}' is not {what}")
        for text in (key, value):
            if len(text) > MAX_ID_LENGTH or not text.isprintable():
                raise ValueError(f"'{item}': ids are printable, at most {MAX_ID_LENGTH} characters")
        pairs[key] = value
    return pairs


def parse_configured_limits(raw: str) -> dict[str, int]:
    limits: dict[str, int] = {}
    for portfolio, value in parse_portfolio_map(raw, "portfolio_id=limit").items():
        limit = parse_messaging_limit(value)
        if limit is None:
            raise ValueError(
                f"'{portfolio}={value}': the limit must be a whole number (-1: unlimited) or one of "
                f"{', '.join(TIERS)}"
            )
        limits[portfolio] = limit
    return limits
