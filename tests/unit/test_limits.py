"""The portfolio messaging limit's arithmetic (policy.limits): moving 24 h, distinct users, limit changes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.policy.limits import (
    BUCKET_SECONDS,
    DAY_SECONDS,
    UNLIMITED,
    PortfolioState,
    apply_capability,
    business_initiated,
    parse_configured_limits,
    parse_messaging_limit,
    reserve,
    used,
)

from .factories import T0


class Portfolio:
    """One portfolio's state and its users' last-reached times, as the home partition keeps them."""

    def __init__(self, limit: int | None) -> None:
        self.state = PortfolioState(limit=limit, limit_at=0.0)
        self.reached: dict[str, float] = {}

    def send(self, user: str, now: float) -> bool:
        outcome = reserve(self.state, self.state.limit, self.reached.get(user), now)
        self.state = outcome.state
        if outcome.reached_at is not None:
            self.reached[user] = outcome.reached_at
        # round trip through the stored form, as the changelog does
        self.state = PortfolioState.from_bytes(self.state.to_bytes())
        return outcome.granted


@pytest.mark.parametrize(
    ("value", "limit"),
    [
        ("TIER_250", 250),
        ("TIER_2K", 2_000),
        ("tier_10k", 10_000),
        ("TIER_100K", 100_000),
        ("TIER_UNLIMITED", UNLIMITED),
        (2000, 2_000),
        (-1, UNLIMITED),
        ("250", 250),
        (1000.0, 1_000),
        ("lots", None),
        (True, None),
        (None, None),
        ([250], None),
    ],
)
def test_meta_limit_values_as_names_or_numbers(value: object, limit: int | None) -> None:
    assert parse_messaging_limit(value) == limit


def test_configured_limits_name_the_bad_entry() -> None:
    assert parse_configured_limits("p1=250, p2=TIER_UNLIMITED") == {"p1": 250, "p2": UNLIMITED}
    with pytest.raises(ValueError, match="'p1=many'"):
        parse_configured_limits("p1=many")
    with pytest.raises(ValueError, match="portfolio_id=limit"):
        parse_configured_limits("p1")


def test_the_limit_counts_distinct_users_and_the_next_one_is_refused() -> None:
    portfolio = Portfolio(limit=250)
    granted = [portfolio.send(f"u{i}", T0 + i) for i in range(400)]
    assert granted == [True] * 250 + [False] * 150
    assert used(portfolio.state, T0 + 400) == 250
    # users already reached are never limited, however often they get a template
    assert all(portfolio.send(f"u{i}", T0 + 500 + i) for i in range(250))
    assert used(portfolio.state, T0 + 800) == 250


def test_a_slot_frees_24_hours_after_the_users_last_message_and_never_earlier() -> None:
    portfolio = Portfolio(limit=2)
    assert portfolio.send("a", T0) and portfolio.send("b", T0 + 3600)
    assert not portfolio.send("c", T0 + 7200)
    assert portfolio.send("a", T0 + 10 * 3600)  # a again: counted from now on
    assert not portfolio.send("c", T0 + DAY_SECONDS + 120)  # a's first minute passed, a is still in
    # b's minute has left the moving 24 h (within one minute of the exact time, never before it)
    assert not portfolio.send("c", T0 + 3600 + DAY_SECONDS - 1)
    assert portfolio.send("c", T0 + 3600 + DAY_SECONDS + BUCKET_SECONDS)
    assert not portfolio.send("d", T0 + 3600 + DAY_SECONDS + BUCKET_SECONDS + 1)
    assert portfolio.send("d", T0 + 10 * 3600 + DAY_SECONDS + BUCKET_SECONDS)


def test_upgrades_and_downgrades_mid_day_apply_to_the_next_decision() -> None:
    portfolio = Portfolio(limit=3)
    assert all(portfolio.send(u, T0) for u in "abc")
    assert not portfolio.send("d", T0 + 1)
    portfolio.state = apply_capability(portfolio.state, 5, T0 + 2)
    assert portfolio.send("d", T0 + 3) and portfolio.send("e", T0 + 3)
    assert not portfolio.send("f", T0 + 4)
    portfolio.state = apply_capability(portfolio.state, 2, T0 + 5)  # lowered below what is used
    assert not portfolio.send("f", T0 + 6)
    assert portfolio.send("a", T0 + 6)  # a known user still goes
    portfolio.state = apply_capability(portfolio.state, UNLIMITED, T0 + 7)
    assert all(portfolio.send(f"x{i}", T0 + 8) for i in range(100))
    assert used(portfolio.state, T0 + 8) == 105  # counted while unlimited: a later limit starts from it


def test_an_older_limit_update_changes_nothing() -> None:
    state = apply_capability(PortfolioState(), 2_000, T0)
    assert apply_capability(state, 250, T0 - 60) is state
    assert apply_capability(state, 10_000, T0 + 60).limit == 10_000


def test_a_refusal_says_when_the_next_slot_frees() -> None:
    state = PortfolioState(limit=1)
    first = reserve(state, 1, None, T0)
    refused = reserve(first.state, 1, None, T0 + 10)
    assert not refused.granted and refused.used == 1
    assert refused.free_at is not None and T0 + DAY_SECONDS <= refused.free_at <= T0 + DAY_SECONDS + 60
    assert reserve(PortfolioState(limit=0), 0, None, T0).free_at is None


@pytest.mark.parametrize(
    ("route", "mtype", "window", "recipient", "counted"),
    [
        ("send", "template", "closed", "individual", True),
        ("send", "template", "none", "individual", True),
        ("send", "template", "closing", "individual", True),  # may land after the window closes
        ("template", "template", "closed", "individual", True),  # free-form converted to its fallback
        ("send", "template", "open", "individual", False),  # inside the customer service window
        ("send", "text", "open", "individual", False),
        ("rejected", None, "closed", "individual", False),
        ("send", "template", "closed", "group", False),
    ],
)
def test_what_the_limit_counts(
    route: str, mtype: str | None, window: str, recipient: str, counted: bool
) -> None:
    assert business_initiated(route, mtype, window, recipient) is counted


# A day of sends to a handful of users at random times: the gate against an exact reference.
sends = st.lists(
    st.tuples(st.integers(0, 11), st.floats(0, 2 * DAY_SECONDS, allow_nan=False)), max_size=60
).map(lambda items: sorted(items, key=lambda item: item[1]))


@settings(max_examples=300, deadline=None)
@given(sends, st.integers(0, 8), st.lists(st.tuples(st.floats(0, 2 * DAY_SECONDS), st.integers(-1, 8))))
def test_never_more_users_than_the_limit_and_known_users_always_go(
    timeline: list[tuple[int, float]], limit: int, changes: list[tuple[float, int]]
) -> None:
    portfolio = Portfolio(limit=limit)
    last: dict[str, float] = {}  # the reference: each user's last business-initiated message
    pending = sorted(changes)
    for user_number, offset in timeline:
        now = T0 + offset
        while pending and pending[0][0] <= offset:
            at, new_limit = pending.pop(0)
            portfolio.state = apply_capability(portfolio.state, new_limit, T0 + at)
        user = f"u{user_number}"
        exact = {u for u, at in last.items() if at > now - DAY_SECONDS}  # reached in the last 24 h
        # never fewer than Meta counts, at most one minute's users more
        assert used(portfolio.state, now) >= len(exact)
        within_a_minute_more = {u for u, at in last.items() if at > now - DAY_SECONDS - BUCKET_SECONDS}
        assert used(portfolio.state, now) <= len(within_a_minute_more)
        current_limit = portfolio.state.limit
        granted = portfolio.send(user, now)
        if user in exact:
            assert granted, "a user reached in the last 24 h is never limited"
        elif current_limit is not None and current_limit >= 0 and len(exact) >= current_limit:
            assert not granted, "a new user past the limit must be refused"
        elif current_limit is None or current_limit < 0 or len(within_a_minute_more) < current_limit:
            assert granted, "a free slot must be taken"
        if granted:
            last[user] = now
