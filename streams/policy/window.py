"""Per-contact window state and how one inbound event changes it.

Every field is a maximum over the events seen, so applying the same events in any order, or
applying one twice, yields the same state: retries and duplicates from Meta change nothing, and
an old retry never moves the window back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import orjson

from streams.models import InboundEvent, WindowStateName
from streams.policy.rules import (
    CALL_OPENER_TYPES,
    NUMBER_CHANGE_TYPE,
    WINDOW_CLOSED_ERROR_CODES,
    WindowRules,
)


@dataclass(frozen=True, slots=True)
class ContactState:
    last_opener_at: float | None = None
    # Set by an authoritative "window closed" signal (131047 and kin, number change): the window is
    # closed from then on, whatever the local clock says, until an opener newer than it arrives.
    closed_at: float | None = None
    # request_id -> decided_at, for the duplicate check; pruned by age and count.
    decided: dict[str, float] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return orjson.dumps({"o": self.last_opener_at, "c": self.closed_at, "d": self.decided})

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> ContactState:
        if not raw:
            return EMPTY_STATE
        data: dict[str, Any] = orjson.loads(raw)
        return cls(last_opener_at=data.get("o"), closed_at=data.get("c"), decided=data.get("d") or {})


EMPTY_STATE = ContactState()


class InboundEffect(StrEnum):
    OPENED = "opened"  # no open window before, open now
    REFRESHED = "refreshed"  # an open window got a later expiry
    CLOSED = "closed"  # an authoritative close signal
    NONE = "none"  # nothing changed (status, duplicate, old retry, non-opener)


@dataclass(frozen=True, slots=True)
class WindowSnapshot:
    state: WindowStateName
    last_inbound_at: float | None
    expires_at: float | None
    seconds_left: float


def effective_timestamp(event_ts: float, now: float, rules: WindowRules) -> float:
    """WhatsApp's timestamp is the clock; one too far in the future is clamped to receipt time."""
    return now if event_ts > now + rules.future_skew_seconds else event_ts


def is_opener(event: InboundEvent, rules: WindowRules) -> bool:
    if event.kind == "message":
        return event.type in rules.opener_message_types or event.referral is not None
    if event.kind == "call":
        # connect: the user called (answered or not), or accepted a business call.
        return event.type in CALL_OPENER_TYPES
    return False


def is_authoritative_close(event: InboundEvent) -> bool:
    if event.kind == "status" and event.type == "failed" and event.errors:
        return any(error.code in WINDOW_CLOSED_ERROR_CODES for error in event.errors)
    return event.kind == "system" and event.type == NUMBER_CHANGE_TYPE


def apply_inbound(
    state: ContactState, event: InboundEvent, now: float, rules: WindowRules
) -> tuple[ContactState, InboundEffect]:
    ts = effective_timestamp(event.timestamp, now, rules)
    if is_opener(event, rules):
        if state.last_opener_at is not None and ts <= state.last_opener_at:
            return state, InboundEffect.NONE
        was_open = view(state, now, rules).state in ("open", "closing")
        new = replace(state, last_opener_at=ts)
        if view(new, now, rules).state not in ("open", "closing"):
            return new, InboundEffect.NONE  # an old opener: recorded, but the window stays shut
        return new, InboundEffect.REFRESHED if was_open else InboundEffect.OPENED
    if is_authoritative_close(event):
        if state.closed_at is not None and ts <= state.closed_at:
            return state, InboundEffect.NONE
        return replace(state, closed_at=ts), InboundEffect.CLOSED
    return state, InboundEffect.NONE


def view(state: ContactState, now: float, rules: WindowRules) -> WindowSnapshot:
    """The window as a decision at ``now`` sees it."""
    opener = state.last_opener_at
    closed = state.closed_at
    if opener is None:
        # Closed by Meta's word (131047, number change) before we saw any opener: no expiry to report.
        return WindowSnapshot("none" if closed is None else "closed", None, None, 0.0)
    expires = opener + rules.window_seconds
    if closed is not None and closed >= opener:
        expires = min(expires, closed)
    left = expires - now
    if left <= 0:
        return WindowSnapshot("closed", opener, expires, 0.0)
    if left < rules.safety_margin_seconds:
        return WindowSnapshot("closing", opener, expires, left)
    return WindowSnapshot("open", opener, expires, left)


def remember_decision(state: ContactState, request_id: str, now: float, rules: WindowRules) -> ContactState:
    horizon = now - rules.dedupe_horizon_seconds
    decided = {rid: at for rid, at in state.decided.items() if at >= horizon}
    decided[request_id] = now
    if len(decided) > rules.dedupe_max_per_contact:
        newest = sorted(decided.items(), key=lambda item: item[1])[-rules.dedupe_max_per_contact :]
        decided = dict(newest)
    return replace(state, decided=decided)
