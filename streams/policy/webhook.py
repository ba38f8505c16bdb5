"""Meta's Cloud API webhook bodies -> InboundEvents and TemplateRecords (contract sections 2, 3, 5).

Pure: bytes and the receive time in, values out. One body can hold many entries, changes, messages,
statuses, calls and preferences for different numbers and users; each becomes its own event. Unknown
change fields and unknown message types are kept (as their type) or ignored, never fatal; an item that
cannot be read (no id, no user, no timestamp) is skipped and reported in ``problems`` so the caller can
dead-letter the body with the reason while the rest of it still counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from streams.models import InboundEvent, TemplateRecord
from streams.policy.contacts import Alias, Named, canonical_identifier
from streams.policy.keys import is_business_scoped
from streams.policy.limits import TIERS, parse_messaging_limit

WHATSAPP_OBJECT = "whatsapp_business_account"
TEMPLATE_FIELDS = frozenset(
    {"message_template_status_update", "template_category_update", "message_template_quality_update"}
)
# Change fields that carry user-side events for the window.
EVENT_FIELDS = frozenset({"messages", "calls", "user_preferences"})
# Change fields that carry the business portfolio's messaging limit, and its field names (the legacy one
# until Meta removed it in February 2026).
CAPABILITY_FIELDS = frozenset({"business_capability_update", "phone_number_quality_update"})
LIMIT_FIELDS = ("max_daily_conversations_per_business", "max_daily_conversation_per_phone")


class InvalidWebhook(ValueError):
    """The body as a whole is unusable. ``cause`` is a bounded label for metrics."""

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(detail)
        self.cause = cause
        self.detail = detail


@dataclass(frozen=True, slots=True)
class NormalizedWebhook:
    events: list[InboundEvent] = field(default_factory=list)
    templates: list[TemplateRecord] = field(default_factory=list)
    # (phone_number_id, waba_id) pairs seen in entries: which number belongs to which account.
    numbers: list[tuple[str, str]] = field(default_factory=list)
    # Items that could not be read, each naming where and why (no PII: paths and field names only).
    problems: list[str] = field(default_factory=list)
    # Change fields this gate does not use (account_update, message_echoes, ...): counted, not errors.
    ignored_fields: list[str] = field(default_factory=list)
    # Items that named one user by two or more identifiers (wa_id, BSUID, parent BSUID): one contact.
    aliases: list[Alias] = field(default_factory=list)
    # Messaging limits Meta announced: (waba_id, limit as policy.limits keeps it, the webhook's time).
    capabilities: list[tuple[str, int, float]] = field(default_factory=list)


def normalize_webhook(body: bytes, received_at: float) -> NormalizedWebhook:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidWebhook("invalid_json", f"the body is not one JSON document ({exc})") from None
    if not isinstance(document, dict) or document.get("object") != WHATSAPP_OBJECT:
        raise InvalidWebhook("not_whatsapp", f"not a WhatsApp webhook: 'object' must be '{WHATSAPP_OBJECT}'")
    entries = document.get("entry")
    if not isinstance(entries, list):
        raise InvalidWebhook("not_whatsapp", "not a WhatsApp webhook: 'entry' must be a list")
    out = NormalizedWebhook()
    for i, entry in enumerate(entries):
        where = f"entry[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("changes"), list):
            out.problems.append(f"{where}: not an object with a 'changes' list")
            continue
        waba_id = _text(entry.get("id"))
        entry_time = _number(entry.get("time"))
        for j, change in enumerate(entry["changes"]):
            _change(out, f"{where}.changes[{j}]", change, waba_id, entry_time, received_at)
    return out


def _change(
    out: NormalizedWebhook,
    where: str,
    change: Any,
    waba_id: str | None,
    entry_time: float | None,
    received_at: float,
) -> None:
    if not isinstance(change, dict) or not isinstance(change.get("value"), dict):
        out.problems.append(f"{where}: no 'value' object")
        return
    name = change.get("field")
    value: dict[str, Any] = change["value"]
    if name in TEMPLATE_FIELDS:
        _template(out, where, name, value, waba_id, entry_time or received_at)
        return
    if name in CAPABILITY_FIELDS and any(value.get(limit) is not None for limit in LIMIT_FIELDS):
        _capability(out, where, value, waba_id, entry_time or received_at)
        return
    if name not in EVENT_FIELDS:
        out.ignored_fields.append(str(name))
        return
    metadata = value.get("metadata")
    pnid = _text(metadata.get("phone_number_id")) if isinstance(metadata, dict) else None
    if pnid is None:
        out.problems.append(f"{where}.value: no metadata.phone_number_id")
        return
    if waba_id is not None:
        out.numbers.append((pnid, waba_id))
    display = _text(metadata.get("display_phone_number")) if isinstance(metadata, dict) else None
    contacts = [c for c in value.get("contacts") or [] if isinstance(c, dict)]
    ctx = _Context(pnid, waba_id, display, contacts)
    for key, convert in _ITEM_CONVERTERS.items():
        items = value.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            out.problems.append(f"{where}.value.{key}: not a list")
            continue
        for k, item in enumerate(items):
            item_where = f"{where}.value.{key}[{k}]"
            if not isinstance(item, dict):
                out.problems.append(f"{item_where}: not an object")
                continue
            fields = convert(ctx, item)
            if isinstance(fields, str):
                out.problems.append(f"{item_where}: {fields}")
                continue
            for identifiers in fields.pop(_IDENTIFIERS):
                alias = Alias.of(pnid, identifiers, fields["timestamp"])
                if alias is not None:
                    out.aliases.append(alias)
            try:
                out.events.append(InboundEvent.model_validate(fields))
            except ValidationError as exc:
                error = exc.errors()[0]
                loc = ".".join(str(part) for part in error["loc"])
                out.problems.append(f"{item_where}: {loc}: {error['msg']}")


@dataclass(frozen=True, slots=True)
class _Context:
    phone_number_id: str
    waba_id: str | None
    display_phone_number: str | None
    contacts: list[dict[str, Any]]
    # identifier -> every identifier of the contacts[] entries that name it: built once per change, so
    # that a body with many items and many contacts costs their sum, not their product.
    contact_ids: dict[str, set[Named]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for contact in self.contacts:
            named = _named(contact, _CONTACT_ID_FIELDS)
            for _, value in named:
                self.contact_ids.setdefault(value, set()).update(named)

    def base(self, event_id: Any, identifiers: Iterable[Named], timestamp: Any) -> dict[str, Any] | str:
        """The event's common fields. ``identifiers``: every id the item gives the user (wa_id, BSUID,
        parent BSUID); the contacts block adds the ids of the contact that shares one of them. The user
        is their canonical one (policy.contacts); the others ride along and reveal an alias."""
        if _text(event_id) is None:
            return "no 'id'"
        ids = self.with_contact_ids(identifiers)
        if not ids:
            return "no user id (wa_id/from or user_id)"
        ts = _number(timestamp)
        if ts is None:
            return "no numeric 'timestamp'"
        user = canonical_identifier(ids)
        fields: dict[str, Any] = {
            "event_id": _text(event_id),
            "phone_number_id": self.phone_number_id,
            "user": user,
            "timestamp": ts,
            "waba_id": self.waba_id,
            _IDENTIFIERS: [ids],
        }
        for kind, value in sorted(ids):
            if kind != "wa_id" and value != user:
                fields.setdefault(kind, value)
        return fields

    def with_contact_ids(self, identifiers: Iterable[Named]) -> set[Named]:
        ids = set(identifiers)
        for _, value in list(ids):
            ids |= self.contact_ids.get(value, set())
        return ids

    def only_contact(self) -> str | None:
        if len(self.contacts) == 1:
            return _first_text(self.contacts[0], "wa_id", "user_id")
        return None


# Where a contacts[] entry (or a system message's new identity) names the user, by kind.
_CONTACT_ID_FIELDS: tuple[Named, ...] = (
    ("wa_id", "wa_id"),
    ("user_id", "user_id"),
    ("parent_user_id", "parent_user_id"),
)
# The key under which the converters hand over their identifier sets.
_IDENTIFIERS = "_identifiers"


def _named(source: dict[str, Any], fields: tuple[Named, ...]) -> set[Named]:
    """The identifiers ``source`` gives in ``fields`` ((kind, field name) pairs)."""
    out: set[Named] = set()
    for kind, name in fields:
        value = _text(source.get(name))
        if value is not None:
            out.add((kind, value))
    return out


def _message(ctx: _Context, msg: dict[str, Any]) -> dict[str, Any] | str:
    identifiers = _named(
        msg, (("wa_id", "from"), ("user_id", "from_user_id"), ("parent_user_id", "from_parent_user_id"))
    )
    fields = ctx.base(msg.get("id"), identifiers, msg.get("timestamp"))
    if isinstance(fields, str):
        return fields
    mtype = _text(msg.get("type")) or "unknown"
    system = msg.get("system") if isinstance(msg.get("system"), dict) else None
    if mtype == "system" and system is not None:
        fields.update(kind="system", type=_text(system.get("type")) or "system")
        # user_changed_number / user_changed_user_id: the new identifiers are a new contact, and two
        # of them given together are one.
        new_ids = {named for named in _named(system, _CONTACT_ID_FIELDS) if named[1] != fields["user"]}
        if new_ids:
            fields["new_user"] = canonical_identifier(new_ids)
            fields[_IDENTIFIERS].append(new_ids)
    else:
        fields.update(kind="message", type=mtype)
    group_id = _text(msg.get("group_id"))
    if group_id is not None:
        fields["group_id"] = group_id
    if isinstance(msg.get("referral"), dict):
        fields["referral"] = msg["referral"]
    errors = _errors(msg.get("errors"))
    if errors:
        fields["errors"] = errors
    return fields


def _status(ctx: _Context, status: dict[str, Any]) -> dict[str, Any] | str:
    group = status.get("recipient_type") == "group"
    if group:
        names: tuple[Named, ...] = (
            ("wa_id", "recipient_participant_id"),
            ("user_id", "recipient_participant_user_id"),
            ("parent_user_id", "recipient_participant_parent_user_id"),
        )
        identifiers = _named(status, names) or _named(status, (("wa_id", "recipient_id"),))
    else:
        names = (
            ("wa_id", "recipient_id"),
            ("user_id", "recipient_user_id"),
            ("parent_user_id", "recipient_parent_user_id"),
            ("parent_user_id", "parent_recipient_user_id"),
        )
        identifiers = _named(status, names)
    fields = ctx.base(status.get("id"), identifiers, status.get("timestamp"))
    if isinstance(fields, str):
        return fields
    state = (_text(status.get("status")) or "unknown").lower()
    if status.get("type") == "call":
        # Statuses of a business-initiated call: ringing, accepted, rejected.
        fields.update(kind="call", type=state, direction="BUSINESS_INITIATED")
    else:
        fields.update(kind="status", type=state)
    if group:
        fields["group_id"] = _text(status.get("recipient_id"))
    errors = _errors(status.get("errors"))
    if errors:
        fields["errors"] = errors
    conversation = status.get("conversation")
    if isinstance(conversation, dict):
        fields["conversation"] = {
            "id": _text(conversation.get("id")),
            "expiration_timestamp": _number(conversation.get("expiration_timestamp")),
            "origin": conversation.get("origin") if isinstance(conversation.get("origin"), dict) else None,
        }
    if isinstance(status.get("pricing"), dict):
        fields["pricing"] = status["pricing"]
    return fields


def _call(ctx: _Context, call: dict[str, Any]) -> dict[str, Any] | str:
    direction = call.get("direction")
    side, other_side = ("to", "from") if direction == "BUSINESS_INITIATED" else ("from", "to")
    named_user = _text(call.get(side))
    if named_user is not None and named_user == ctx.display_phone_number:
        # Some payloads put the business number on the side the direction says is the user's;
        # the single contact block names the user reliably.
        side = other_side
        only = ctx.only_contact()
        if only is not None:
            call = {**call, side: only}
    identifiers = _named(
        call, (("wa_id", side), ("user_id", f"{side}_user_id"), ("parent_user_id", f"{side}_parent_user_id"))
    )
    fields = ctx.base(call.get("id"), identifiers, call.get("timestamp"))
    if isinstance(fields, str):
        return fields
    fields.update(kind="call", type=(_text(call.get("event")) or "unknown").lower())
    if direction in ("USER_INITIATED", "BUSINESS_INITIATED"):
        fields["direction"] = direction
    return fields


def _preference(ctx: _Context, pref: dict[str, Any]) -> dict[str, Any] | str:
    identifiers = _named(pref, _CONTACT_ID_FIELDS)
    only = ctx.only_contact()
    if not identifiers and only is not None:
        identifiers = {("user_id" if is_business_scoped(only) else "wa_id", only)}
    user = _first_text(pref, "wa_id", "user_id", "parent_user_id") or only
    category = _text(pref.get("category")) or "unknown"
    value = (_text(pref.get("value")) or "unknown").lower()
    # Meta gives preference updates no id: one made of what they say keeps the dedupe key stable.
    event_id = f"pref:{category}:{value}:{pref.get('timestamp')}:{user}"
    fields = ctx.base(event_id, identifiers, pref.get("timestamp"))
    if isinstance(fields, str):
        return fields
    fields.update(kind="preference", type=category, preference={"category": category, "value": value})
    return fields


_ITEM_CONVERTERS = {
    "messages": _message,
    "statuses": _status,
    "calls": _call,
    "user_preferences": _preference,
}


def _template(
    out: NormalizedWebhook, where: str, name: str, value: dict[str, Any], waba_id: str | None, at: float
) -> None:
    template_name = _text(value.get("message_template_name"))
    language = _text(value.get("message_template_language"))
    if waba_id is None or template_name is None or language is None:
        out.problems.append(f"{where}: a template update needs entry.id, message_template_name and _language")
        return
    record: dict[str, Any] = {
        "waba_id": waba_id,
        "name": template_name,
        "language": language,
        "template_id": _text(value.get("message_template_id")),
        "updated_at": at,
        "source": "webhook",
    }
    if name == "message_template_status_update":
        record["status"] = _text(value.get("event"))
        record["category"] = _text(value.get("message_template_category"))
        record["status_reason"] = _text(value.get("reason"))
    elif name == "template_category_update":
        record["category"] = _text(value.get("new_category"))
    else:
        record["quality"] = _text(value.get("new_quality_score"))
    try:
        out.templates.append(TemplateRecord.model_validate(record))
    except ValidationError as exc:
        error = exc.errors()[0]
        out.problems.append(f"{where}: {'.'.join(str(p) for p in error['loc'])}: {error['msg']}")


def _capability(
    out: NormalizedWebhook, where: str, value: dict[str, Any], waba_id: str | None, at: float
) -> None:
    """The portfolio's messaging limit, from the current field when present, else the legacy one."""
    name = next(limit for limit in LIMIT_FIELDS if value.get(limit) is not None)
    limit = parse_messaging_limit(value[name])
    if waba_id is None or limit is None:
        out.problems.append(
            f"{where}: a messaging limit needs entry.id and {name} as a number (-1: unlimited) or a "
            f"tier ({', '.join(TIERS)})"
        )
        return
    out.capabilities.append((waba_id, limit, at))


def _errors(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        return []
    return [
        {"code": error["code"], "title": _text(error.get("title"))}
        for error in raw
        if isinstance(error, dict) and isinstance(error.get("code"), int)
    ]


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and value:
        return value
    return None


def _first_text(source: dict[str, Any], *names: str) -> str | None:
    for name in names:
        text = _text(source.get(name))
        if text is not None:
            return text
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
