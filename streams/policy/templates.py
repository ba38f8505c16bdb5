"""The template registry as the decision sees it, and template validation (pure).

A registry entry is the merge of every TemplateRecord for one ``waba_id:name:language``: a newer
record (``updated_at``) overrides the fields it carries, a null field means "unchanged", an older
record changes nothing. Validation answers, before the sender calls Meta, whether a template message
or a fallback template will be accepted: known for the account, sendable, parameters that fit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from streams.models import Reason, TemplateRecord

SENDABLE_STATUSES = frozenset({"APPROVED", "REINSTATED"})
MEDIA_HEADER_FORMATS = frozenset({"IMAGE", "VIDEO", "DOCUMENT", "LOCATION"})
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
_MERGED_FIELDS = (
    "template_id",
    "status",
    "status_reason",
    "category",
    "parameter_format",
    "components",
    "quality",
)


def template_key(waba_id: str, name: str, language: str) -> str:
    return f"{waba_id}:{name}:{language}"


def merge_template(current: TemplateRecord | None, incoming: TemplateRecord) -> TemplateRecord:
    """The registry entry after ``incoming``: newest updated_at wins, field by field for partial updates."""
    if current is None:
        return incoming
    if incoming.updated_at < current.updated_at:
        return current
    values = current.model_dump()
    for name in _MERGED_FIELDS:
        value = getattr(incoming, name)
        if value is not None:
            values[name] = value
    values["updated_at"] = incoming.updated_at
    values["source"] = incoming.source
    return TemplateRecord.model_validate(values)


@dataclass
class Registry:
    """Every worker's copy of the template registry, of which number belongs to which account, and of
    which identifiers are another name of a contact (wa.contacts)."""

    templates: dict[str, TemplateRecord] = field(default_factory=dict)
    templates_per_waba: dict[str, int] = field(default_factory=dict)
    # phone_number_id -> waba_id: learnt from webhooks, overridden by nothing, completed by settings.
    numbers: dict[str, str] = field(default_factory=dict)
    configured_numbers: Mapping[str, str] = field(default_factory=dict)
    # (phone_number_id, identifier) -> canonical identifier, for non-canonical identifiers only.
    aliases: dict[tuple[str, str], str] = field(default_factory=dict)
    # waba_id -> business portfolio (an account not listed is its own portfolio), and the messaging
    # limits of portfolios no business_capability_update webhook reaches (WAGATE_MESSAGING_LIMITS).
    configured_portfolios: Mapping[str, str] = field(default_factory=dict)
    configured_limits: Mapping[str, int] = field(default_factory=dict)

    def learn_contact(self, phone_number_id: str, identifier: str, contact: str) -> None:
        """A wa.contacts record: ``identifier`` shares the window of the contact key ``contact``."""
        canonical = contact.split(":", 1)[1]
        if canonical == identifier:
            self.aliases.pop((phone_number_id, identifier), None)
        else:
            self.aliases[(phone_number_id, identifier)] = canonical

    def canonical_of(self, phone_number_id: str, identifier: str) -> str | None:
        return self.aliases.get((phone_number_id, identifier))

    def apply(self, record: TemplateRecord) -> TemplateRecord:
        key = template_key(record.waba_id, record.name, record.language)
        current = self.templates.get(key)
        merged = merge_template(current, record)
        if current is None:
            self.templates_per_waba[record.waba_id] = self.templates_per_waba.get(record.waba_id, 0) + 1
        self.templates[key] = merged
        return merged

    def learn_number(self, phone_number_id: str, waba_id: str) -> bool:
        """Record a number's account; True when it is news."""
        if self.numbers.get(phone_number_id) == waba_id:
            return False
        self.numbers[phone_number_id] = waba_id
        return True

    def waba_of(self, phone_number_id: str) -> str | None:
        return self.numbers.get(phone_number_id) or self.configured_numbers.get(phone_number_id)

    def portfolio_of_waba(self, waba_id: str) -> str:
        return self.configured_portfolios.get(waba_id, waba_id)

    def portfolio_of(self, phone_number_id: str) -> str | None:
        """The business portfolio a number sends for (None: its account is not known yet)."""
        waba = self.waba_of(phone_number_id)
        return None if waba is None else self.portfolio_of_waba(waba)

    def lookup(self, phone_number_id: str, name: str, language: str) -> TemplateLookup:
        waba = self.waba_of(phone_number_id)
        if waba is None or not self.templates_per_waba.get(waba):
            return TemplateLookup(waba, None, registry_known=False)
        return TemplateLookup(
            waba, self.templates.get(template_key(waba, name, language)), registry_known=True
        )


@dataclass(frozen=True, slots=True)
class TemplateLookup:
    waba_id: str | None
    record: TemplateRecord | None
    # False: no templates at all are known for the number's account: the send is unverified.
    registry_known: bool


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    reason: Reason
    detail: str


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def check_template(template: Mapping[str, Any], lookup: TemplateLookup) -> TemplateProblem | None:
    """None when the registry accepts this Cloud API template object, else why not."""
    name = template.get("name")
    language = (template.get("language") or {}).get("code")
    record = lookup.record
    if record is None:
        return TemplateProblem(
            "template_unknown",
            f"Template '{name}' ({language}) is not registered for account {lookup.waba_id}.",
        )
    if record.status not in SENDABLE_STATUSES:
        status = record.status or "unknown"
        return TemplateProblem(
            "template_not_sendable",
            f"Template '{name}' ({language}) is {status} since {_when(record.updated_at)}; "
            "only APPROVED or REINSTATED templates can be sent.",
        )
    mismatch = parameter_mismatch(template, record)
    if mismatch is not None:
        return TemplateProblem("template_parameter_mismatch", f"Template '{name}' ({language}): {mismatch}.")
    return None


def _placeholders(text: str) -> list[str]:
    return _PLACEHOLDER.findall(text)


def _component(components: Any, kind: str) -> dict[str, Any] | None:
    for component in components or []:
        if isinstance(component, dict) and str(component.get("type", "")).lower() == kind:
            return component
    return None


def parameter_mismatch(template: Mapping[str, Any], record: TemplateRecord) -> str | None:
    """What does not fit between the request's parameters and the template's placeholders, or None."""
    if record.components is None:
        return None  # a webhook-only record: its placeholders are unknown, nothing to compare
    sent = template.get("components")
    named = record.parameter_format == "NAMED"

    body = _component(record.components, "body")
    expected_body = _placeholders(str(body.get("text", ""))) if body else []
    given_body = (_component(sent, "body") or {}).get("parameters") or []
    if named:
        want = sorted(set(expected_body))
        got = sorted(str(p.get("parameter_name")) for p in given_body if isinstance(p, dict))
        if want != got:
            return f"body expects named parameters {want}, got {got}"
    elif len(given_body) != len(expected_body):
        return f"body expects {len(expected_body)} parameter(s), got {len(given_body)}"

    header = _component(record.components, "header")
    given_header = (_component(sent, "header") or {}).get("parameters") or []
    if header is not None:
        fmt = str(header.get("format", "TEXT")).upper()
        if fmt in MEDIA_HEADER_FORMATS:
            kinds = [str(p.get("type", "")).upper() for p in given_header if isinstance(p, dict)]
            if kinds != [fmt]:
                return (
                    f"header expects one {fmt.lower()} parameter, got {[k.lower() for k in kinds] or 'none'}"
                )
        else:
            expected_header = _placeholders(str(header.get("text", "")))
            if len(given_header) != len(expected_header):
                return f"text header expects {len(expected_header)} parameter(s), got {len(given_header)}"
            if any(isinstance(p, dict) and p.get("type") not in (None, "text") for p in given_header):
                return "text header takes text parameters only"
    elif given_header:
        return "the template has no header, but header parameters were given"
    return None


def template_category(lookup: TemplateLookup) -> str | None:
    """The registry's category (lower case) now: a reclassified template counts as its new one."""
    record = lookup.record
    if record is None or record.category is None:
        return None
    return record.category.lower()


def records_from_listing(document: Any, waba_id: str, synced_at: float) -> list[TemplateRecord]:
    """TemplateRecords from Meta's ``GET /{waba_id}/message_templates`` answer (``data`` array and all)."""
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise ValueError("expected Meta's message_templates answer: an object with a 'data' list")
    records = []
    for i, entry in enumerate(document["data"]):
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("language"):
            raise ValueError(f"data[{i}]: each template needs 'name' and 'language'")
        quality = entry.get("quality_score")
        records.append(
            TemplateRecord.model_validate(
                {
                    "waba_id": waba_id,
                    "name": entry["name"],
                    "language": entry["language"],
                    "template_id": str(entry["id"]) if entry.get("id") is not None else None,
                    "status": entry.get("status"),
                    "category": entry.get("category"),
                    "parameter_format": str(entry.get("parameter_format", "POSITIONAL")).upper(),
                    "components": entry.get("components"),
                    "quality": quality.get("score") if isinstance(quality, dict) else quality,
                    "updated_at": synced_at,
                    "source": "sync",
                }
            )
        )
    return records
