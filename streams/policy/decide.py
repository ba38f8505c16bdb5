"""The decision: one SendRequest, the contact's window, the time -> exactly one Decision.

Check order matters and is part of the contract: duplicates first (a repeat is never sent twice),
then staleness, deliverability, templates, and finally the window for free-form messages.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from streams.models import (
    Decision,
    Intent,
    Pricing,
    Reason,
    RecipientType,
    Route,
    SendRequest,
    WindowView,
    trusted,
)
from streams.policy.deliverability import needs_phone_number, paused_marketing
from streams.policy.keys import is_business_scoped, request_contact_key
from streams.policy.parse import InvalidPayload
from streams.policy.pricing import price
from streams.policy.rules import SENDABLE_MESSAGE_TYPES, WindowRules
from streams.policy.templates import (
    Registry,
    TemplateLookup,
    TemplateProblem,
    check_template,
    template_category,
)
from streams.policy.window import (
    ContactState,
    WindowSnapshot,
    free_entry_point_until,
    marketing_block,
    remember_decision,
    start_free_entry_point,
    view,
)

_NO_WINDOW = trusted(WindowView, state="none", last_inbound_at=None, expires_at=None)

_FREE_FORM_DETAIL: dict[str, str] = {
    "window_closed": "The customer service window is closed{since}; free-form messages need a template.",
    "no_window": "The user has never messaged this number, so only a template can start the conversation.",
    "window_closing": "The window closes at {expires}, within the {margin:.0f} s safety margin.",
    "marketing_requires_template": (
        "Marketing content must go out as a marketing template, even in an open window."
    ),
}


def _window_view(snapshot: WindowSnapshot) -> WindowView:
    return trusted(
        WindowView,
        state=snapshot.state,
        last_inbound_at=snapshot.last_inbound_at,
        expires_at=snapshot.expires_at,
    )


def _cloud_body(request: SendRequest, message: dict[str, Any], to: str | None = None) -> dict[str, Any]:
    # The Cloud API takes a phone number or group id as 'to' and a BSUID or parent BSUID as 'recipient'.
    recipient = to or request.to
    address = "recipient" if is_business_scoped(recipient) else "to"
    return {
        "messaging_product": "whatsapp",
        "recipient_type": request.recipient_type,
        address: recipient,
        **message,
    }


def _decision(
    request: SendRequest,
    received: dict[str, Any],
    *,
    route: Route,
    reason: Reason,
    detail: str,
    now: float,
    window: WindowView,
    message: dict[str, Any] | None = None,
    pricing: Pricing | None = None,
) -> Decision:
    return trusted(
        Decision,
        request_id=request.request_id,
        contact=request_contact_key(request.phone_number_id, request.to, request.recipient_type),
        phone_number_id=request.phone_number_id,
        to=request.to,
        recipient_type=request.recipient_type,
        origin=request.origin,
        route=route,
        reason=reason,
        detail=detail,
        decided_at=now,
        window=window,
        metadata=request.metadata,
        message=message,
        pricing=pricing,
        request=received if route == "rejected" else None,
        held_past_limit=False,
    )


@dataclass(frozen=True, slots=True)
class _Ask:
    """One request being decided, with everything the checks read."""

    request: SendRequest
    received: dict[str, Any]
    state: ContactState
    snapshot: WindowSnapshot
    now: float
    rules: WindowRules
    registry: Registry | None
    phone: str | None  # the contact's phone number (wa_id), when the gate knows it

    @property
    def window(self) -> WindowView:
        return _window_view(self.snapshot)

    def reject(self, reason: Reason, detail: str) -> Decision:
        return _decision(
            self.request,
            self.received,
            route="rejected",
            reason=reason,
            now=self.now,
            window=self.window,
            detail=detail,
        )

    def accept(
        self,
        route: Route,
        reason: Reason,
        detail: str,
        message: dict[str, Any],
        pricing: Pricing,
        to: str | None = None,
    ) -> Decision:
        """A send or template decision carrying the complete Cloud API body built from ``message``
        (addressed to ``to`` instead of the request's own 'to' when given)."""
        if to is not None:
            detail += " Sent to the contact's phone number: Meta sends this template to no BSUID."
        return _decision(
            self.request,
            self.received,
            route=route,
            reason=reason,
            now=self.now,
            window=self.window,
            message=_cloud_body(self.request, message, to),
            detail=detail,
            pricing=pricing,
        )

    def template_price(self, category: Intent) -> Pricing:
        return price(
            is_template=True, intent=category, window_open=self.snapshot.state == "open", now=self.now
        )

    def lookup(self, template: dict[str, Any]) -> tuple[TemplateLookup | None, TemplateProblem | None]:
        """The registry's entry for a template object and what is wrong with it (None, None: no registry)."""
        if self.registry is None:
            return None, None
        lookup = self.registry.lookup(
            self.request.phone_number_id,
            str(template.get("name")),
            str((template.get("language") or {}).get("code")),
        )
        if not lookup.registry_known:
            return lookup, None
        return lookup, check_template(template, lookup)

    def marketing_blocked(self, category: str, template: bool = True) -> Decision | None:
        """A marketing block for ``category``. ``template``: the category is what goes out (the
        registry's, else the request's): only then can the destination's pause apply."""
        if category != "marketing":
            return None
        blocked = marketing_block(self.state, self.now)
        if blocked is not None:
            return self.reject(*blocked)
        if not template or self.request.recipient_type != "individual":
            return None
        pause = paused_marketing(self.phone or self.request.to, self.now, self.rules.marketing_pauses)
        if pause is None:
            return None
        since = datetime.fromtimestamp(pause.effective_from, UTC).date().isoformat()
        return self.reject(
            "marketing_unavailable_in_region",
            f"Meta does not deliver marketing templates to {pause.region} numbers (since {since}; "
            "WAGATE_MARKETING_PAUSES): use a utility template for transactional content.",
        )

    def address(self, lookup: TemplateLookup | None) -> str | Decision | None:
        """Where a template goes: None for the request's own 'to', the contact's phone number for an
        authentication template Meta will not send to a BSUID, or a rejection when none is known."""
        if (
            lookup is None
            or self.request.recipient_type != "individual"
            or not is_business_scoped(self.request.to)
            or not needs_phone_number(lookup.record)
        ):
            return None
        if self.phone is not None:
            return self.phone
        return self.reject(
            "recipient_requires_phone",
            "Authentication templates with a one-tap, zero-tap or copy-code button need the user's phone "
            "number (Meta error 131062), and this contact is known only by its business-scoped user ID.",
        )


_TEMPLATE_CATEGORIES: dict[str, Intent] = {
    "marketing": "marketing",
    "utility": "utility",
    "authentication": "authentication",
}


def _category(default: Intent, lookup: TemplateLookup | None) -> Intent:
    """The registry's category when it knows the template, else the request's own."""
    known = template_category(lookup) if lookup is not None else None
    return _TEMPLATE_CATEGORIES.get(known or "", default)


def _template_message(ask: _Ask) -> Decision:
    request, received = ask.request, ask.received
    template = received["message"]["template"]
    lookup, problem = ask.lookup(template)
    if problem is not None:
        return ask.reject(problem.reason, problem.detail)
    category = _category(request.intent, lookup)
    blocked = ask.marketing_blocked(category)
    if blocked is not None:
        return blocked
    to = ask.address(lookup)
    if isinstance(to, Decision):
        return to
    name, code = template["name"], template["language"]["code"]
    if lookup is not None and lookup.record is not None:
        reason: Reason = "template"
        detail = f"Template '{name}' ({code}) is {lookup.record.status}, category {category}."
    else:
        reason = "template_unverified"
        account = lookup.waba_id if lookup is not None and lookup.waba_id else "unknown"
        detail = (
            f"Template '{name}' ({code}) is sent unverified: account {account} has no registered templates."
        )
    return ask.accept("send", reason, detail, received["message"], ask.template_price(category), to)


def _free_form(ask: _Ask) -> Decision:
    request, received, snapshot = ask.request, ask.received, ask.snapshot
    policy = ask.rules.origin(request.origin)
    if not policy.free_form:
        return ask.reject(
            "origin_not_allowed",
            f"Origin '{request.origin}' may not send free-form messages (WAGATE_ORIGIN_POLICY): "
            "use a template.",
        )
    fallback = request.fallback_template
    if policy.require_fallback and fallback is None:
        return ask.reject(
            "invalid_request",
            f"request field 'fallback_template' is required for origin '{request.origin}' "
            "(WAGATE_ORIGIN_POLICY)",
        )
    if request.intent == "marketing":
        reason: Reason = "marketing_requires_template"
    elif snapshot.state == "open":
        return ask.accept(
            "send",
            "window_open",
            f"The window is open for another {snapshot.seconds_left / 3600:.1f} h.",
            received["message"],
            price(is_template=False, intent=request.intent, window_open=True, now=ask.now),
        )
    elif snapshot.state == "closing":
        reason = "window_closing"
    elif snapshot.state == "closed":
        reason = "window_closed"
    else:
        reason = "no_window"
    since = "" if snapshot.expires_at is None else f" since {snapshot.expires_at:.0f}"
    detail = _FREE_FORM_DETAIL[reason].format(
        expires=snapshot.expires_at, since=since, margin=ask.rules.safety_margin_seconds
    )
    if fallback is None:
        return ask.reject(reason, detail + " No fallback_template was given.")
    if not policy.convert:
        return ask.reject(
            reason,
            detail + f" Conversion to the fallback template is disabled for origin '{request.origin}'.",
        )
    lookup, problem = ask.lookup(received["fallback_template"])
    if problem is not None:
        return ask.reject(problem.reason, f"{detail} The fallback_template cannot go: {problem.detail}")
    category = _category("marketing" if request.intent == "marketing" else "utility", lookup)
    blocked = ask.marketing_blocked(category)
    if blocked is not None:
        return blocked
    to = ask.address(lookup)
    if isinstance(to, Decision):
        return to
    return ask.accept(
        "template",
        reason,
        detail + f" Sending fallback template '{fallback.name}' ({fallback.language.code}) instead.",
        {"type": "template", "template": received["fallback_template"]},
        ask.template_price(category),
        to,
    )


def decide(
    request: SendRequest,
    received: dict[str, Any],
    state: ContactState,
    now: float,
    rules: WindowRules,
    registry: Registry | None = None,
    phone: str | None = None,
) -> tuple[Decision, ContactState]:
    """Decide one request against its contact's state at ``now``; returns the new state to store.
    ``phone``: the contact's phone number (wa_id) when known, for templates that need one."""
    if request.request_id in state.decided:
        at = state.decided[request.request_id]
        decision = _decision(
            request,
            received,
            route="rejected",
            reason="duplicate_request",
            now=now,
            window=_window_view(view(state, now, rules)),
            detail=f"request_id '{request.request_id}' was already decided at {at}; it is never sent twice.",
        )
        return decision, state
    ask = _Ask(request, received, state, view(state, now, rules), now, rules, registry, phone)
    decision = _decide_new(ask)
    new_state = remember_decision(state, request.request_id, now, rules)
    if decision.reason == "window_open":
        new_state = replace(new_state, free_form_sent_at=now)
    if decision.route != "rejected":
        new_state = start_free_entry_point(new_state, now)
        if decision.pricing is not None and free_entry_point_until(new_state, now) is not None:
            free = trusted(
                Pricing, category=decision.pricing.category, billable=False, basis="free_entry_point"
            )
            decision = trusted(Decision, **{**decision.__dict__, "pricing": free})
    return decision, new_state


def _decide_new(ask: _Ask) -> Decision:
    request = ask.request
    if request.not_after is not None and ask.now > request.not_after:
        return ask.reject(
            "stale_request", f"Decided at {ask.now:.3f}, after the request's not_after {request.not_after}."
        )
    mtype = request.message.type
    if mtype not in SENDABLE_MESSAGE_TYPES or (
        request.recipient_type == "group" and mtype in ask.rules.group_unsupported_types
    ):
        recipient = "a group" if request.recipient_type == "group" else "a user"
        return ask.reject("unsupported_message", f"Message type '{mtype}' cannot be sent to {recipient}.")
    blocked = ask.marketing_blocked(request.intent, template=False)
    if blocked is not None:
        return blocked
    if mtype == "template":
        return _template_message(ask)
    return _free_form(ask)


def decide_invalid(invalid: InvalidPayload, record_key: str | None, now: float) -> Decision | None:
    """An unreadable request becomes a rejection when its request_id can be read, else None (dead letter)."""
    if invalid.request_id is None:
        return None
    received = invalid.received if isinstance(invalid.received, dict) else {}

    def field(name: str) -> str | None:
        value = received.get(name)
        return value if isinstance(value, str) else None

    # As the schema reads it: omitted means "individual"; a value that is neither is unknown (null).
    recipient_type: RecipientType | None = None
    given = received.get("recipient_type", "individual")
    if given in ("individual", "group"):
        recipient_type = given
    return trusted(
        Decision,
        request_id=invalid.request_id,
        contact=record_key,
        phone_number_id=field("phone_number_id"),
        to=field("to"),
        recipient_type=recipient_type,
        origin=field("origin"),
        route="rejected",
        reason="invalid_request",
        detail=invalid.detail,
        decided_at=now,
        window=_NO_WINDOW,
        metadata=received.get("metadata") if isinstance(received.get("metadata"), dict) else None,
        message=None,
        pricing=None,
        request=invalid.received,
        held_past_limit=False,
    )
