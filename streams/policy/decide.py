"""The decision: one SendRequest, the contact's window, the time -> exactly one Decision.

Check order matters and is part of the contract: duplicates first (a repeat is never sent twice),
then staleness, deliverability, templates, and finally the window for free-form messages.
"""

from __future__ import annotations

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
from streams.policy.keys import request_contact_key
from streams.policy.parse import InvalidPayload
from streams.policy.pricing import price
from streams.policy.rules import SENDABLE_MESSAGE_TYPES, WindowRules
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


def _cloud_body(request: SendRequest, message: dict[str, Any]) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": request.recipient_type,
        "to": request.to,
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
    )


def _free_form(
    request: SendRequest, received: dict[str, Any], snapshot: WindowSnapshot, now: float, rules: WindowRules
) -> Decision:
    window = _window_view(snapshot)
    if request.intent == "marketing":
        reason: Reason = "marketing_requires_template"
    elif snapshot.state == "open":
        body = _cloud_body(request, received["message"])
        left = snapshot.seconds_left
        return _decision(
            request,
            received,
            route="send",
            reason="window_open",
            now=now,
            window=window,
            message=body,
            detail=f"The window is open for another {left / 3600:.1f} h.",
            pricing=price(is_template=False, intent=request.intent, window_open=True, now=now),
        )
    elif snapshot.state == "closing":
        reason = "window_closing"
    elif snapshot.state == "closed":
        reason = "window_closed"
    else:
        reason = "no_window"
    since = "" if snapshot.expires_at is None else f" since {snapshot.expires_at:.0f}"
    detail = _FREE_FORM_DETAIL[reason].format(
        expires=snapshot.expires_at, since=since, margin=rules.safety_margin_seconds
    )
    fallback = request.fallback_template
    if fallback is None:
        return _decision(
            request,
            received,
            route="rejected",
            reason=reason,
            now=now,
            window=window,
            detail=detail + " No fallback_template was given.",
        )
    body = _cloud_body(request, {"type": "template", "template": received["fallback_template"]})
    fallback_intent: Intent = "marketing" if request.intent == "marketing" else "utility"
    return _decision(
        request,
        received,
        route="template",
        reason=reason,
        now=now,
        window=window,
        message=body,
        detail=detail + f" Sending fallback template '{fallback.name}' ({fallback.language.code}) instead.",
        pricing=price(
            is_template=True, intent=fallback_intent, window_open=snapshot.state == "open", now=now
        ),
    )


def decide(
    request: SendRequest, received: dict[str, Any], state: ContactState, now: float, rules: WindowRules
) -> tuple[Decision, ContactState]:
    """Decide one request against its contact's state at ``now``; returns the new state to store."""
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
    decision = _decide_new(request, received, state, now, rules)
    new_state = remember_decision(state, request.request_id, now, rules)
    if decision.route != "rejected":
        new_state = start_free_entry_point(new_state, now)
        if decision.pricing is not None and free_entry_point_until(new_state, now) is not None:
            free = trusted(
                Pricing, category=decision.pricing.category, billable=False, basis="free_entry_point"
            )
            decision = trusted(Decision, **{**decision.__dict__, "pricing": free})
    return decision, new_state


def _decide_new(
    request: SendRequest, received: dict[str, Any], state: ContactState, now: float, rules: WindowRules
) -> Decision:
    snapshot = view(state, now, rules)
    if request.not_after is not None and now > request.not_after:
        return _decision(
            request,
            received,
            route="rejected",
            reason="stale_request",
            now=now,
            window=_window_view(snapshot),
            detail=f"Decided at {now:.3f}, after the request's not_after {request.not_after}.",
        )
    mtype = request.message.type
    if mtype not in SENDABLE_MESSAGE_TYPES or (
        request.recipient_type == "group" and mtype in rules.group_unsupported_types
    ):
        recipient = "a group" if request.recipient_type == "group" else "a user"
        return _decision(
            request,
            received,
            route="rejected",
            reason="unsupported_message",
            now=now,
            window=_window_view(snapshot),
            detail=f"Message type '{mtype}' cannot be sent to {recipient}.",
        )
    if request.intent == "marketing":
        blocked = marketing_block(state, now)
        if blocked is not None:
            reason, detail = blocked
            return _decision(
                request,
                received,
                route="rejected",
                reason=reason,
                now=now,
                window=_window_view(snapshot),
                detail=detail,
            )
    if mtype == "template":
        template = received["message"]["template"]
        return _decision(
            request,
            received,
            route="send",
            reason="template_unverified",
            now=now,
            window=_window_view(snapshot),
            message=_cloud_body(request, received["message"]),
            detail=f"Template '{template['name']}' is sent unverified: no template registry for it yet.",
            pricing=price(
                is_template=True, intent=request.intent, window_open=snapshot.state == "open", now=now
            ),
        )
    return _free_form(request, received, snapshot, now, rules)


def decide_invalid(invalid: InvalidPayload, record_key: str | None, now: float) -> Decision | None:
    """An unreadable request becomes a rejection when its request_id can be read, else None (dead letter)."""
    if invalid.request_id is None:
        return None
    received = invalid.received if isinstance(invalid.received, dict) else {}

    def field(name: str) -> str | None:
        value = received.get(name)
        return value if isinstance(value, str) else None

    recipient_type: RecipientType | None = None
    if received.get("recipient_type") in ("individual", "group"):
        recipient_type = received["recipient_type"]
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
    )
