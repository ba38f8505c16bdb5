"""One person, several identifiers: phone numbers (wa_id), business-scoped user ids and parent BSUIDs.

Pure rules (docs/contract.md, "One person, several identifiers"):

- An identifier's kind is read from its form: a BSUID is ``CC.<alphanumerics>`` (a parent BSUID
  ``CC.ENT.<alphanumerics>``); anything else is a wa_id (a phone number).
- The canonical identifier of a contact, whose key holds the window and decides the partition, is its
  wa_id when one is known, else its BSUID, else its parent BSUID: a strict ranking, so the same set of
  identifiers always gives the same contact whatever order they were learnt in, and an alias always
  points to a higher-ranked identifier (no cycles).
- Until one webhook item names two identifiers together, they are separate contacts: never guessed.
- Under a non-canonical identifier's key the state keeps only ``alias_of``; whatever window state it
  held before is joined into the canonical contact's (``merge_states``). Every part of the state is a
  maximum or newest-wins value, so the join is commutative, associative and idempotent: any order of
  the webhooks that reveal an alias gives the same contact.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

from streams.models import IdentifierKind
from streams.policy.keys import is_business_scoped
from streams.policy.window import EMPTY_STATE, TIME_KEYS, ContactState

_RANK: dict[IdentifierKind, int] = {"wa_id": 2, "user_id": 1, "parent_user_id": 0}
# State fields that are identity, not window: never forwarded by a merge as window content.
_IDENTITY_FIELDS = frozenset({"alias_of", "alias_at", "aliases"})


def is_phone(identifier: str) -> bool:
    return not is_business_scoped(identifier)


Named = tuple[IdentifierKind, str]  # an identifier with the kind of field that gave it


def canonical_identifier(identifiers: Iterable[Named]) -> str:
    """The identifier whose contact holds the window: the wa_id, else the BSUID, else the parent BSUID
    (ties, which Meta's payloads never give, by text so the choice is still independent of order)."""
    return max(identifiers, key=lambda named: (_RANK[named[0]], named[1]))[1]


@dataclass(frozen=True, slots=True)
class Alias:
    """A webhook item named one user by two or more identifiers at ``at``."""

    phone_number_id: str
    canonical: str
    others: tuple[Named, ...]  # sorted
    at: float

    @classmethod
    def of(cls, phone_number_id: str, identifiers: Iterable[Named], at: float) -> Alias | None:
        present = set(identifiers)
        if len({value for _, value in present}) < 2:
            return None
        canonical = canonical_identifier(present)
        others = tuple(sorted(named for named in present if named[1] != canonical))
        return cls(phone_number_id, canonical, others, at)

    @property
    def identifiers(self) -> tuple[str, ...]:
        return (self.canonical, *(value for _, value in self.others))


def point_event(phone_number_id: str, identifier: str, canonical: str, at: float) -> dict[str, Any]:
    """The alias event that tells ``identifier``'s partition where its contact is (an InboundEvent)."""
    return {
        "event_id": f"alias:{identifier}",
        "phone_number_id": phone_number_id,
        "user": identifier,
        "timestamp": at,
        "kind": "alias",
        "type": "point",
        "alias_of": canonical,
    }


def announcements(alias: Alias) -> list[dict[str, Any]]:
    """The alias events (InboundEvents) for a webhook item that named one user by several identifiers:
    ``learn`` events for the canonical contact, then a ``point`` for each identifier they list, to that
    identifier's partition.

    An event carries at most one identifier per kind (``user_id``, ``parent_user_id``), so an item with
    two BSUIDs takes two learn events. What the contact lists and what points to it must agree: a point
    without its learn would send records to a contact that does not list them, which sends them back."""
    events: list[dict[str, Any]] = []
    pending = list(alias.others)
    while pending:
        learn: dict[str, Any] = {
            "event_id": f"alias:{alias.canonical}" + (f":{len(events)}" if events else ""),
            "phone_number_id": alias.phone_number_id,
            "user": alias.canonical,
            "timestamp": alias.at,
            "kind": "alias",
            "type": "learn",
        }
        later: list[Named] = []
        for kind, value in pending:
            if kind in learn:
                later.append((kind, value))
            else:
                learn[kind] = value
        events.append(learn)
        pending = later
    for _, other in alias.others:
        events.append(point_event(alias.phone_number_id, other, alias.canonical, alias.at))
    return events


def has_window_content(state: ContactState) -> bool:
    """Anything besides identity: a window, a decision, a preference... (what a merge must carry)."""
    return any(
        getattr(state, f.name) != getattr(EMPTY_STATE, f.name)
        for f in fields(ContactState)
        if f.name not in _IDENTITY_FIELDS
    )


def learn_aliases(
    state: ContactState, canonical: str, identifiers: Iterable[str]
) -> tuple[ContactState, list[str]]:
    """The canonical contact records its other identifiers; returns the new state and what was new.
    A phone number is never an alias (it is canonical wherever it appears)."""
    known = set(state.aliases)
    new = sorted({i for i in identifiers if i != canonical and i not in known and not is_phone(i)})
    if not new:
        return state, []
    return replace(state, aliases=tuple(sorted(known | set(new)))), new


def point_to(
    state: ContactState, identifier: str, canonical: str, at: float
) -> tuple[ContactState, ContactState | None]:
    """The state under ``identifier`` once it is known to be an alias of ``canonical``, and the window
    state to join into the canonical contact (None when there is nothing to carry).

    The newest alias wins (a user who changed number has a new BSUID; an old one never comes back). A
    phone number never points anywhere, nor does a contact to one of its own aliases: the alias graph
    has no cycles, so a re-keyed record always comes to rest."""
    if canonical == identifier or is_phone(identifier) or canonical in state.aliases:
        return state, None
    if state.alias_of is not None and state.alias_at is not None and at <= state.alias_at:
        return state, None
    carried: ContactState | None = None
    if has_window_content(state) or state.aliases:
        carried = replace(state, alias_of=None, alias_at=None)
    return ContactState(alias_of=canonical, alias_at=at), carried


def _newest(a: tuple[float | None, Any], b: tuple[float | None, Any]) -> tuple[float | None, Any]:
    if a[0] is None:
        return b
    if b[0] is None:
        return a
    return b if b[0] > a[0] else a


def _max(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def merge_states(a: ContactState, b: ContactState) -> ContactState:
    """The join of two states of one person: what applying both's events to one contact would give.
    Commutative, associative and idempotent. Identity: ``a``'s ``alias_of``; aliases united."""
    decided = dict(a.decided)
    for request_id, at in b.decided.items():
        decided[request_id] = max(at, decided.get(request_id, at))
    # Marketing: the newest preference wins; at equal times a stop wins (as in apply_inbound).
    pref_a = (a.marketing_pref_at, a.marketing_opted_out)
    pref_b = (b.marketing_pref_at, b.marketing_opted_out)
    if pref_a[0] is None or (pref_b[0] is not None and pref_b > pref_a):
        pref_at, opted_out = pref_b
    else:
        pref_at, opted_out = pref_a
    free_started, free_until = _newest(
        (a.free_entry_started_at, a.free_entry_until), (b.free_entry_started_at, b.free_entry_until)
    )
    if a.free_entry_started_at == b.free_entry_started_at:
        free_until = _max(a.free_entry_until, b.free_entry_until)
    reported_at, reported_until = _newest(
        (a.free_entry_reported_at, a.free_entry_reported_until),
        (b.free_entry_reported_at, b.free_entry_reported_until),
    )
    if a.free_entry_reported_at == b.free_entry_reported_at:
        reported_until = _max(a.free_entry_reported_until, b.free_entry_reported_until)
    return ContactState(
        last_opener_at=_max(a.last_opener_at, b.last_opener_at),
        closed_at=_max(a.closed_at, b.closed_at),
        decided=decided,
        marketing_pref_at=pref_at,
        marketing_opted_out=bool(opted_out),
        marketing_cooldown_until=_max(a.marketing_cooldown_until, b.marketing_cooldown_until),
        referral_at=_max(a.referral_at, b.referral_at),
        free_entry_started_at=free_started,
        free_entry_until=free_until,
        free_entry_reported_at=reported_at,
        free_entry_reported_until=reported_until,
        free_form_sent_at=_max(a.free_form_sent_at, b.free_form_sent_at),
        expiring_sent_for=_max(a.expiring_sent_for, b.expiring_sent_for),
        closed_sent_for=_max(a.closed_sent_for, b.closed_sent_for),
        alias_of=a.alias_of,
        alias_at=a.alias_at,
        aliases=tuple(sorted(set(a.aliases) | set(b.aliases))),
    )


def carried_state(data: dict[str, Any]) -> ContactState | None:
    """A ``merge`` event's state, or None when it is not one the gate could have written (every time a
    number, request ids mapped to times, aliases a list of texts): a bad one must not enter the store,
    where every later event of the contact would trip on it."""
    if not isinstance(data, dict):
        return None
    for name in TIME_KEYS:
        value = data.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return None
    decided = data.get("d") or {}
    if not isinstance(decided, dict) or not all(
        isinstance(at, int | float) and not isinstance(at, bool) for at in decided.values()
    ):
        return None
    aliases = data.get("al") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        return None
    if not isinstance(data.get("mo", False), bool) or data.get("ao") is not None:
        return None
    return ContactState.from_dict(data)


def carried_marketing(state: ContactState) -> tuple[float, bool] | None:
    """What a number change carries to the user's new contact: the newest marketing preference
    (time, opted out). The window does not carry: Meta closes it (docs/contract.md)."""
    if state.marketing_pref_at is None:
        return None
    return state.marketing_pref_at, state.marketing_opted_out
