"""What goes on ``wa.windows`` and when (contract: WindowEvent). Pure: the scheduler in
streams/agents/windows.py keeps the timetable and publishes; this module decides.

A window here is what `window_expiry` describes: it opens with an opener when none was open, every
newer opener moves its end, and it ends at ``expires_at`` (or when Meta says it closed). Per window:

- ``opened`` once, when an inbound event opens it (the agent emits it with the state change);
- ``expiring`` once per ``expires_at``, at ``expires_at - lead``: a refresh before that point just
  moves it; a refresh after it gives the new end its own ``expiring`` (the rescue point moved);
- ``closed`` once, at ``expires_at``. No ``expiring`` once the window has ended: it is too late to act.

What was published is recorded in the contact state (``expiring_sent_for``, ``closed_sent_for``), so a
restart or a rebalance rebuilds the timetable from the table without publishing anything twice, and an
event overdue by more than ``rules.event_max_delay_seconds`` is not published at all.
"""

from __future__ import annotations

from dataclasses import replace

from streams.models import WindowEvent, trusted
from streams.policy.rules import WindowRules
from streams.policy.window import ContactState, window_expiry


def _announced(sent_for: float | None, expires: float) -> bool:
    return sent_for is not None and sent_for >= expires


def _event(contact: str, name: str, state: ContactState, expires: float, at: float) -> WindowEvent:
    return trusted(
        WindowEvent,
        contact=contact,
        event=name,
        expires_at=expires,
        last_inbound_at=state.last_opener_at,
        at=at,
    )


def opened_event(contact: str, state: ContactState, rules: WindowRules) -> WindowEvent:
    """The ``opened`` event for a state an inbound event has just opened (InboundEffect.OPENED)."""
    expires = window_expiry(state, rules)
    opener = state.last_opener_at
    if expires is None or opener is None:
        raise ValueError("opened_event needs a state with an opener")
    return _event(contact, "opened", state, expires, opener)


def open_until(state: ContactState, now: float, rules: WindowRules) -> float | None:
    """The end of the window open at ``now`` (the open-windows gauge counts these), else None."""
    expires = window_expiry(state, rules)
    return expires if expires is not None and now < expires else None


def next_event_at(state: ContactState, now: float, rules: WindowRules) -> float | None:
    """When this contact's next ``expiring``/``closed`` event is due (maybe already), or None."""
    expires = window_expiry(state, rules)
    if expires is None or _announced(state.closed_sent_for, expires):
        return None
    if now - expires > rules.event_max_delay_seconds:
        return None  # overdue beyond use: never published
    if now < expires and not _announced(state.expiring_sent_for, expires):
        return expires - rules.event_lead_seconds
    return expires


def due_events(
    contact: str, state: ContactState, now: float, rules: WindowRules
) -> tuple[list[WindowEvent], ContactState]:
    """The events due at ``now`` and the state that records them as published."""
    due = next_event_at(state, now, rules)
    expires = window_expiry(state, rules)
    if due is None or due > now or expires is None:
        return [], state
    if now >= expires:
        return [_event(contact, "closed", state, expires, expires)], replace(state, closed_sent_for=expires)
    return [_event(contact, "expiring", state, expires, due)], replace(state, expiring_sent_for=expires)
