"""Per-contact window state and how one inbound event changes it.

Every field is a maximum over the events seen, so applying the same events in any order, or
applying one twice, yields the same state: retries and duplicates from Meta change nothing, and
an old retry never moves the window back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson

from streams.models import InboundEvent, Reason, WindowReport, WindowStateName
from streams.policy.rules import (
    BUSINESS_INITIATED,
    CALL_ACCEPTED_TYPE,
    CALL_CONNECT_TYPE,
    FREE_ENTRY_POINT_ANSWER_SECONDS,
    FREE_ENTRY_POINT_ORIGIN,
    FREE_ENTRY_POINT_SECONDS,
    IDENTITY_CHANGE_TYPES,
    MARKETING_COOLDOWN_ERROR_CODE,
    MARKETING_COOLDOWN_SECONDS,
    MARKETING_OPT_OUT_ERROR_CODE,
    MARKETING_PREFERENCE_CATEGORY,
    MARKETING_RESUME_VALUES,
    MARKETING_STOP_VALUES,
    WINDOW_CLOSED_ERROR_CODES,
    WindowRules,
)


# Treated as immutable: the policy makes a new state with dataclasses.replace and never assigns to one
# (tests/unit/test_properties.py checks that no policy function changes the state it was given). Not
# frozen=True: a frozen dataclass builds every instance through object.__setattr__, one call per field,
# which made building states (one per record, more per decision) a tenth of the worker's time.
@dataclass(slots=True)
class ContactState:
    last_opener_at: float | None = None
    # Set by an authoritative "window closed" signal (131047 and kin, number change): the window is
    # closed from then on, whatever the local clock says, until an opener newer than it arrives.
    closed_at: float | None = None
    # request_id -> decided_at, for the duplicate check; pruned by age and count.
    decided: dict[str, float] = field(default_factory=dict)
    # Marketing preference: the newest stop/resume (or 131050) wins; at equal times a stop wins.
    marketing_pref_at: float | None = None
    marketing_opted_out: bool = False
    # A 131049 holds marketing back until this time.
    marketing_cooldown_until: float | None = None
    # The newest user message that carried an ad / Page-button referral.
    referral_at: float | None = None
    # Free entry point window started by the gate's answer to a referral ...
    free_entry_started_at: float | None = None
    free_entry_until: float | None = None
    # ... and Meta's word on its end: (status time, conversation.expiration_timestamp) of the newest
    # status on a referral_conversion conversation.
    free_entry_reported_at: float | None = None
    free_entry_reported_until: float | None = None
    # When the gate last let a free-form message out on window_open: a 131047 after it is a gate miss.
    free_form_sent_at: float | None = None
    # The expires_at of the window whose `expiring` / `closed` event went out (wa.windows): each once.
    expiring_sent_for: float | None = None
    closed_sent_for: float | None = None
    # Identity (docs/contract.md, "One person, several identifiers"). Under a non-canonical identifier's
    # key the state holds only ``alias_of``: the canonical identifier whose contact holds the window.
    # Under the canonical key, ``aliases`` lists the contact's other identifiers.
    alias_of: str | None = None
    alias_at: float | None = None
    aliases: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The stored form (short keys: the state is read per request)."""
        data: dict[str, Any] = {"o": self.last_opener_at, "c": self.closed_at, "d": self.decided}
        # Optional parts only when set: most contacts never have them.
        for key, name in _OPTIONAL_TIMES:
            value = getattr(self, name)
            if value is not None:
                data[key] = value
        if self.marketing_opted_out:
            data["mo"] = True
        if self.alias_of is not None:
            data["ao"] = self.alias_of
            data["aa"] = self.alias_at
        if self.aliases:
            data["al"] = list(self.aliases)
        return data

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> ContactState:
        if not raw:
            return EMPTY_STATE
        return cls.from_dict(orjson.loads(raw))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContactState:
        return cls(
            last_opener_at=data.get("o"),
            closed_at=data.get("c"),
            decided=data.get("d") or {},
            marketing_pref_at=data.get("mp"),
            marketing_opted_out=bool(data.get("mo", False)),
            marketing_cooldown_until=data.get("cd"),
            referral_at=data.get("r"),
            free_entry_started_at=data.get("fs"),
            free_entry_until=data.get("fu"),
            free_entry_reported_at=data.get("fra"),
            free_entry_reported_until=data.get("fru"),
            free_form_sent_at=data.get("ff"),
            expiring_sent_for=data.get("xe"),
            closed_sent_for=data.get("xc"),
            alias_of=data.get("ao"),
            alias_at=data.get("aa"),
            aliases=tuple(data.get("al") or ()),
        )


EMPTY_STATE = ContactState()

# The stored form's optional times: (key, field).
_OPTIONAL_TIMES: tuple[tuple[str, str], ...] = (
    ("mp", "marketing_pref_at"),
    ("cd", "marketing_cooldown_until"),
    ("r", "referral_at"),
    ("fs", "free_entry_started_at"),
    ("fu", "free_entry_until"),
    ("fra", "free_entry_reported_at"),
    ("fru", "free_entry_reported_until"),
    ("ff", "free_form_sent_at"),
    ("xe", "expiring_sent_for"),
    ("xc", "closed_sent_for"),
)
# Every key of the stored form whose value is a time (a number or null).
TIME_KEYS: tuple[str, ...] = ("o", "c", *(key for key, _ in _OPTIONAL_TIMES))


class InboundEffect(StrEnum):
    OPENED = "opened"  # no open window before, open now
    REFRESHED = "refreshed"  # an open window got a later expiry
    CLOSED = "closed"  # an authoritative close signal
    MARKETING_STOPPED = "marketing_stopped"  # opted out of marketing (stop, 131050)
    MARKETING_RESUMED = "marketing_resumed"
    MARKETING_COOLDOWN = "marketing_cooldown"  # 131049
    FREE_ENTRY_POINT = "free_entry_point"  # Meta reported the end of a free entry point window
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
        if event.type == CALL_CONNECT_TYPE:
            return event.direction != BUSINESS_INITIATED  # the user called, answered or not
        return event.type == CALL_ACCEPTED_TYPE  # the user accepted the business's call
    return False


def is_authoritative_close(event: InboundEvent) -> bool:
    if event.kind == "status" and event.type == "failed" and event.errors:
        return any(error.code in WINDOW_CLOSED_ERROR_CODES for error in event.errors)
    return event.kind == "system" and event.type in IDENTITY_CHANGE_TYPES


def _error_codes(event: InboundEvent) -> set[int]:
    return {error.code for error in event.errors} if event.kind == "status" and event.errors else set()


def _marketing_preference(event: InboundEvent) -> bool | None:
    """True: stop marketing; False: resume; None: this event says nothing about it."""
    if MARKETING_OPT_OUT_ERROR_CODE in _error_codes(event):
        return True
    pref = event.preference
    if event.kind == "preference" and pref is not None and pref.category == MARKETING_PREFERENCE_CATEGORY:
        if pref.value in MARKETING_STOP_VALUES:
            return True
        if pref.value in MARKETING_RESUME_VALUES:
            return False
    return None


def _window_effect(
    state: ContactState, event: InboundEvent, ts: float, now: float, rules: WindowRules
) -> tuple[ContactState, InboundEffect]:
    if is_opener(event, rules):
        if event.referral is not None and (state.referral_at is None or ts > state.referral_at):
            state = replace(state, referral_at=ts)
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


def _marketing_effect(
    state: ContactState, event: InboundEvent, ts: float
) -> tuple[ContactState, InboundEffect]:
    effect = InboundEffect.NONE
    stop = _marketing_preference(event)
    if stop is not None:
        at = state.marketing_pref_at
        newer = at is None or ts > at or (ts == at and stop and not state.marketing_opted_out)
        if newer:
            state = replace(state, marketing_pref_at=ts, marketing_opted_out=stop)
            effect = InboundEffect.MARKETING_STOPPED if stop else InboundEffect.MARKETING_RESUMED
    if MARKETING_COOLDOWN_ERROR_CODE in _error_codes(event):
        until = ts + MARKETING_COOLDOWN_SECONDS
        if state.marketing_cooldown_until is None or until > state.marketing_cooldown_until:
            state = replace(state, marketing_cooldown_until=until)
            effect = InboundEffect.MARKETING_COOLDOWN
    return state, effect


def _free_entry_report(
    state: ContactState, event: InboundEvent, ts: float
) -> tuple[ContactState, InboundEffect]:
    conversation = event.conversation
    if event.kind != "status" or conversation is None or conversation.expiration_timestamp is None:
        return state, InboundEffect.NONE
    origin = conversation.origin or {}
    if origin.get("type") != FREE_ENTRY_POINT_ORIGIN:
        return state, InboundEffect.NONE
    until = conversation.expiration_timestamp
    at, known = state.free_entry_reported_at, state.free_entry_reported_until
    if at is None or ts > at or (ts == at and known is not None and until > known):
        return replace(state, free_entry_reported_at=ts, free_entry_reported_until=until), (
            InboundEffect.FREE_ENTRY_POINT
        )
    return state, InboundEffect.NONE


def apply_inbound(
    state: ContactState, event: InboundEvent, now: float, rules: WindowRules
) -> tuple[ContactState, InboundEffect]:
    """The new state and the effect to count. Every part is a newest-wins or maximum update."""
    ts = effective_timestamp(event.timestamp, now, rules)
    state, effect = _window_effect(state, event, ts, now, rules)
    state, marketing = _marketing_effect(state, event, ts)
    state, free_entry = _free_entry_report(state, event, ts)
    for other in (marketing, free_entry):
        if effect is InboundEffect.NONE:
            effect = other
    return state, effect


def is_gate_miss(state: ContactState, event: InboundEvent, now: float, rules: WindowRules) -> bool:
    """A "window closed" failure (131047 and kin) for a contact the gate had just sent free-form to.

    Meta gives the failed status the wamid the sender got, which the gate never sees; a failure at or
    after the gate's last window_open send, within one window length of it, is attributed to it.
    """
    sent = state.free_form_sent_at
    if sent is None or event.kind != "status" or not is_authoritative_close(event):
        return False
    ts = effective_timestamp(event.timestamp, now, rules)
    return sent - rules.future_skew_seconds <= ts <= sent + rules.window_seconds


def free_entry_point_until(state: ContactState, now: float) -> float | None:
    """The end of the free entry point window ``now`` is in, or None."""
    start, end = state.free_entry_started_at, state.free_entry_until
    reported_at = state.free_entry_reported_at
    if reported_at is not None and (start is None or reported_at >= start):
        # Meta's expiration_timestamp is the ground truth for the window it reports on.
        start = start if start is not None else reported_at
        end = state.free_entry_reported_until
    if start is None or end is None or not start <= now < end:
        return None
    return end


def start_free_entry_point(state: ContactState, now: float) -> ContactState:
    """The business answers (a send or template decision): a referral within 24 h opens 72 h free."""
    referral = state.referral_at
    if referral is None or not 0 <= now - referral <= FREE_ENTRY_POINT_ANSWER_SECONDS:
        return state
    if state.free_entry_started_at is not None and state.free_entry_started_at >= referral:
        return state  # this referral was answered already
    if free_entry_point_until(state, now) is not None:
        return state
    return replace(state, free_entry_started_at=now, free_entry_until=now + FREE_ENTRY_POINT_SECONDS)


def marketing_block(state: ContactState, now: float) -> tuple[Reason, str] | None:
    """(reason, detail) when marketing must not go to this contact now, else None."""
    if state.marketing_opted_out:
        return (
            "marketing_opted_out",
            f"The user stopped marketing messages at {state.marketing_pref_at:.0f} and has not resumed.",
        )
    until = state.marketing_cooldown_until
    if until is not None and now < until:
        return (
            "marketing_cooldown",
            f"Meta held back a marketing message (131049); marketing waits until {until:.0f}.",
        )
    return None


def window_expiry(state: ContactState, rules: WindowRules) -> float | None:
    """When the newest window ends: 24 h after its last opener, or earlier when Meta said it closed."""
    opener = state.last_opener_at
    if opener is None:
        return None
    expires = opener + rules.window_seconds
    closed = state.closed_at
    if closed is not None and closed >= opener:
        expires = min(expires, closed)
    return expires


def view(state: ContactState, now: float, rules: WindowRules) -> WindowSnapshot:
    """The window as a decision at ``now`` sees it."""
    opener = state.last_opener_at
    expires = window_expiry(state, rules)
    if opener is None or expires is None:
        # Closed by Meta's word (131047, number change) before we saw any opener: no expiry to report.
        return WindowSnapshot("none" if state.closed_at is None else "closed", None, None, 0.0)
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


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def window_report(
    contact: str, state: ContactState, now: float, rules: WindowRules, asked_as: str | None = None
) -> WindowReport:
    """The contact's window for a person. ``asked_as``: the identifier asked for, when the gate answered
    for the contact it is an alias of."""
    snapshot = view(state, now, rules)
    if snapshot.state == "open":
        summary = f"Open until {_utc(snapshot.expires_at or now)}: free-form messages go out."
    elif snapshot.state == "closing":
        summary = (
            f"Closing at {_utc(snapshot.expires_at or now)}, inside the {rules.safety_margin_seconds:.0f} s "
            "safety margin: send a template."
        )
    elif snapshot.state == "closed" and snapshot.expires_at is not None:
        summary = f"Closed since {_utc(snapshot.expires_at)}: only templates until the user writes again."
    elif snapshot.state == "closed":
        summary = "Closed by Meta (131047 or a number change): only templates until the user writes again."
    else:
        summary = "The user has never written to this number: only templates can start the conversation."
    if state.marketing_opted_out:
        summary += " The user stopped marketing messages."
    return WindowReport(
        contact=contact,
        state=snapshot.state,
        last_inbound_at=snapshot.last_inbound_at,
        expires_at=snapshot.expires_at,
        seconds_left=snapshot.seconds_left,
        free_entry_point_until=free_entry_point_until(state, now),
        marketing_opted_out=state.marketing_opted_out,
        marketing_cooldown_until=state.marketing_cooldown_until
        if state.marketing_cooldown_until is not None and state.marketing_cooldown_until > now
        else None,
        identifiers=[contact.split(":", 1)[1], *state.aliases] if ":group:" not in contact else [],
        asked_as=asked_as,
        summary=summary,
    )
