"""Pydantic models of every payload on the wire (contract section 3).

These are the single source of the JSON Schemas in ``schemas/`` (``wagate schemas`` writes them).
Values are plain JSON objects: no framework metadata, times as epoch seconds.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

EpochSeconds = Annotated[float, Field(ge=0, description="epoch seconds")]
NonEmpty = Annotated[str, Field(min_length=1, max_length=256)]

Origin = Literal["agent", "human", "automation", "broadcast", "api"]
Intent = Literal["service", "marketing", "utility", "authentication"]
RecipientType = Literal["individual", "group"]
Route = Literal["send", "template", "rejected"]
WindowStateName = Literal["open", "closing", "closed", "none"]
InboundKind = Literal["message", "call", "status", "preference", "system", "alias"]
Reason = Literal[
    "window_open",
    "template",
    "template_unverified",
    "window_closed",
    "no_window",
    "window_closing",
    "marketing_requires_template",
    "template_unknown",
    "template_not_sendable",
    "template_parameter_mismatch",
    "marketing_opted_out",
    "marketing_cooldown",
    "stale_request",
    "duplicate_request",
    "invalid_request",
    "unsupported_message",
    "origin_not_allowed",
    "messaging_limit_reached",
    "recipient_requires_phone",
    "marketing_unavailable_in_region",
]


class _Open(BaseModel):
    """Meta adds fields over time: keep what we do not know instead of failing on it."""

    model_config = ConfigDict(extra="allow")


class MetaError(_Open):
    code: int
    title: str | None = None


class Preference(_Open):
    category: str
    value: str


class Conversation(_Open):
    id: str | None = None
    expiration_timestamp: EpochSeconds | None = None
    origin: dict[str, Any] | None = Field(
        default=None, description="Meta's conversation origin, e.g. {'type': 'referral_conversion'}"
    )


class InboundEvent(_Open):
    """One user-side event on ``wa.inbound``, keyed by contact key.

    Ordering: every request is decided after the gate has applied each inbound event of its partition
    written to Kafka before the request (here, or as a raw body on ``wa.webhooks``; events the gate
    normalizes from a body keep the body's record timestamp). Write the event, wait for Kafka's
    acknowledgement, then write the request.
    """

    event_id: NonEmpty = Field(description="wamid, call id or other id Meta gives")
    phone_number_id: NonEmpty
    user: NonEmpty = Field(description="wa_id, or the business-scoped user id when Meta sends no wa_id")
    timestamp: EpochSeconds = Field(description="WhatsApp's timestamp of the event")
    kind: InboundKind
    type: NonEmpty = Field(
        description="Meta's type: text, image, button, ...; sent/delivered/...; connect/..."
    )
    group_id: NonEmpty | None = None
    waba_id: str | None = None
    direction: Literal["USER_INITIATED", "BUSINESS_INITIATED"] | None = None
    referral: dict[str, Any] | None = None
    errors: list[MetaError] | None = None
    preference: Preference | None = None
    pricing: dict[str, Any] | None = None
    conversation: Conversation | None = None
    new_user: str | None = Field(
        default=None,
        description="system user_changed_number / user_changed_user_id: the user's new identifier (the new "
        "wa_id when Meta gives one, else the new business-scoped user id): a new contact",
    )
    user_id: NonEmpty | None = Field(
        default=None,
        description="the business-scoped user id (BSUID) Meta gave beside a wa_id in 'user': the gate learns "
        "that both name one contact (written by the gate's normalizer; producers may set it too)",
    )
    parent_user_id: NonEmpty | None = Field(
        default=None, description="the parent BSUID Meta gave beside 'user' (managed businesses only)"
    )
    alias_of: NonEmpty | None = Field(
        default=None,
        description="kind 'alias' (written by the gate): 'user' is another identifier of the contact "
        "'<phone_number_id>:<alias_of>'",
    )
    via: NonEmpty | None = Field(
        default=None,
        description="the identifier the event named the user by, when the gate moved it to the contact's "
        "canonical identifier in 'user'",
    )
    merged_state: dict[str, Any] | None = Field(
        default=None,
        description="kind 'alias', type 'merge' (written by the gate): the window state kept under the "
        "identifier in 'via' until it was known to be this contact, to be joined into this contact's",
    )


class TemplateLanguage(_Open):
    code: NonEmpty


class TemplateObject(_Open):
    """A Cloud API template object: ``{"name", "language": {"code"}, "components"}``."""

    name: NonEmpty
    language: TemplateLanguage
    components: list[dict[str, Any]] | None = None


class OutboundMessage(_Open):
    """A Cloud API message object without ``messaging_product`` and ``to``."""

    type: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z_]+$")]
    # Declared so that a bad template is reported at message.template.<field>.
    template: TemplateObject | None = None

    @model_validator(mode="after")
    def _body_for_type(self) -> OutboundMessage:
        body = self.template if self.type == "template" else (self.__pydantic_extra__ or {}).get(self.type)
        if not isinstance(body, dict | TemplateObject):
            raise ValueError(
                f"message.type is '{self.type}' but message.{self.type} is missing or not an object"
            )
        return self


class SendRequest(BaseModel):
    """A send intent on ``wa.outbound.requests``, keyed by contact key.

    Ordering: it is decided only after every inbound event of its contact's partition written to
    Kafka before it (on ``wa.inbound``, or as a webhook body on ``wa.webhooks``) is applied, or at
    WAGATE_MAX_HOLD_SECONDS, when its decision says ``held_past_limit: true``.
    """

    model_config = ConfigDict(extra="forbid")

    request_id: Annotated[str, Field(min_length=1, max_length=128, description="idempotency key")]
    phone_number_id: NonEmpty
    to: NonEmpty = Field(
        description="user (wa_id, business-scoped user id or parent BSUID) or group id; any identifier of a "
        "contact reaches its one window once the gate knows they belong together"
    )
    origin: Origin
    message: OutboundMessage
    recipient_type: RecipientType = "individual"
    fallback_template: TemplateObject | None = None
    intent: Intent = "service"
    created_at: EpochSeconds | None = None
    not_after: EpochSeconds | None = None
    metadata: dict[str, Any] | None = None


IdentifierKind = Literal["wa_id", "user_id", "parent_user_id"]


class ContactRecord(BaseModel):
    """``wa.contacts`` (compacted, key ``<phone_number_id>:<identifier>``, co-partitioned): one identifier
    of a user and the contact whose window it shares. Every identifier of a contact has its record, the
    canonical one included; the newest record of a key is the truth."""

    phone_number_id: NonEmpty
    identifier: NonEmpty = Field(description="a wa_id (phone number), BSUID or parent BSUID")
    contact: NonEmpty = Field(
        description="the contact key '<phone_number_id>:<canonical identifier>' that holds the window"
    )
    identifiers: list[str] = Field(description="every identifier of the contact, the canonical one first")
    updated_at: EpochSeconds

    @model_validator(mode="after")
    def _contact_of_this_number(self) -> ContactRecord:
        # wa.contacts is compacted: a record the gate cannot use would otherwise be read again by every
        # worker at every start. Refused here, it is dead-lettered once per read and counted.
        prefix = f"{self.phone_number_id}:"
        if not self.contact.startswith(prefix) or len(self.contact) == len(prefix):
            raise ValueError(
                f"contact must be '<phone_number_id>:<identifier>' with phone_number_id "
                f"{self.phone_number_id!r} (the contact key of this number)"
            )
        return self


class WindowView(BaseModel):
    state: WindowStateName
    last_inbound_at: EpochSeconds | None
    expires_at: EpochSeconds | None


class Pricing(BaseModel):
    category: Literal["service", "marketing", "utility", "authentication"]
    billable: bool
    basis: str


class Decision(BaseModel):
    """The gate's answer to one SendRequest, on ``wa.outbound.send|template|rejected``."""

    request_id: str
    contact: str | None = Field(
        description="the contact key the request was decided under: '<phone_number_id>:<canonical "
        "identifier>' (a request addressed by another identifier of a known contact is decided under the "
        "contact's canonical one; 'to' keeps the identifier the request used); the record key when the "
        "request was unreadable"
    )
    phone_number_id: str | None
    to: str | None
    recipient_type: RecipientType | None
    origin: str | None
    route: Route
    reason: Reason
    detail: str = Field(description="one sentence a person understands")
    decided_at: EpochSeconds
    window: WindowView
    metadata: dict[str, Any] | None = None
    message: dict[str, Any] | None = Field(
        default=None, description="send/template: the complete body to POST to /{phone_number_id}/messages"
    )
    pricing: Pricing | None = Field(default=None, description="send/template only")
    request: dict[str, Any] | str | None = Field(
        default=None, description="rejected only: the request as received (text when not valid JSON)"
    )
    held_past_limit: bool = Field(
        default=False,
        description="true when the request was decided at the hold limit (WAGATE_MAX_HOLD_SECONDS) before "
        "every inbound event written to Kafka before it was applied: the window may be stale",
    )


class LimitEvent(BaseModel):
    """The gate's own bookkeeping of portfolio messaging limits, on ``wa.inbound`` (``kind: limit``).

    ``capability``: a portfolio's limit from a ``business_capability_update`` webhook, written by the
    normalizer to every partition (each decides whether a request needs a slot). ``reserve``: a
    business-initiated decision waiting for a slot, written by the contact's partition to the
    portfolio's (key ``limits:<portfolio>``), which publishes it or rejects it with
    ``messaging_limit_reached``. Producers do not write these.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["limit"]
    type: Literal["capability", "reserve"]
    event_id: NonEmpty
    portfolio: NonEmpty = Field(
        description="the business portfolio (WAGATE_WABA_PORTFOLIOS, else the WABA id)"
    )
    timestamp: EpochSeconds = Field(description="capability: the webhook's time; reserve: the decision's")
    waba_id: NonEmpty | None = Field(default=None, description="capability: the WABA the webhook named")
    messaging_limit: int | None = Field(
        default=None, ge=-1, description="capability: distinct users per moving 24 h; -1 is unlimited"
    )
    user: NonEmpty | None = Field(
        default=None, description="reserve: the contact's canonical identifier, counted once per 24 h"
    )
    decision: Decision | None = Field(
        default=None, description="reserve: the send or template decision to publish if a slot is free"
    )
    request: dict[str, Any] | str | None = Field(
        default=None, description="reserve: the request as received, echoed by a rejection"
    )
    not_after: EpochSeconds | None = Field(
        default=None, description="reserve: the request's not_after: later than this it is stale"
    )

    @model_validator(mode="after")
    def _fields_of_type(self) -> LimitEvent:
        if self.type == "capability" and self.messaging_limit is None:
            raise ValueError("a capability event needs messaging_limit")
        if self.type == "reserve" and (self.user is None or self.decision is None):
            raise ValueError("a reserve event needs user and decision")
        return self


class NumberRecord(BaseModel):
    """``wa.numbers`` (compacted, key phone_number_id): the WhatsApp Business Account of a number."""

    phone_number_id: NonEmpty
    waba_id: NonEmpty
    updated_at: EpochSeconds


class WindowReport(BaseModel):
    """``GET /windows/{phone_number_id}/{user}``: a contact's window as the gate sees it now."""

    contact: str
    state: WindowStateName
    last_inbound_at: EpochSeconds | None
    expires_at: EpochSeconds | None
    seconds_left: float
    free_entry_point_until: EpochSeconds | None
    marketing_opted_out: bool
    marketing_cooldown_until: EpochSeconds | None = None
    identifiers: list[str] = Field(
        default_factory=list,
        description="every identifier the gate knows for this contact (wa_id, BSUIDs), the canonical first",
    )
    asked_as: str | None = Field(
        default=None, description="the identifier asked for, when it is not the contact's canonical one"
    )
    summary: str = Field(
        description="one sentence for a person: open until when, or template required and why"
    )


class WindowEvent(BaseModel):
    contact: str
    event: Literal["opened", "expiring", "closed"]
    expires_at: EpochSeconds
    last_inbound_at: EpochSeconds
    at: EpochSeconds


class DeadLetter(BaseModel):
    """A record the gate could not route, on ``wa.deadletter``."""

    topic: str
    partition: int
    offset: int
    key: str | None = Field(description="the record key as text, or base64 when not UTF-8")
    value_b64: str | None = Field(
        description="the record value, base64; only its first 64 KiB when it is larger (see value_size; "
        "the whole record stays on its topic, at partition and offset)"
    )
    value_size: int | None = Field(default=None, description="the record value's size in bytes")
    truncated: bool = Field(default=False, description="value_b64 holds only the start of the value")
    error: str
    at: EpochSeconds


class TemplateRecord(BaseModel):
    """One template's state, or an update to it: a field left null is unchanged by this record."""

    waba_id: str
    name: str
    language: str
    template_id: str | None = None
    status: str | None = Field(
        default=None, description="APPROVED, PAUSED, ...; null in a category or quality update"
    )
    status_reason: str | None = None
    category: str | None = None
    parameter_format: Literal["POSITIONAL", "NAMED"] | None = None
    components: list[dict[str, Any]] | None = None
    quality: str | None = None
    updated_at: EpochSeconds
    source: Literal["webhook", "sync"]


M = TypeVar("M", bound=BaseModel)


def trusted(cls: type[M], **values: Any) -> M:
    """``cls.model_construct(**values)`` for values that name every field, minus its per-field loop.

    The gate builds a few of these per request on the hot path, where model_construct's Python loop
    over the fields was measurable. It sets exactly what model_construct sets for a model without
    extras, private attributes or post-init; tests/unit/test_models.py pins the equivalence.
    """
    model = cls.__new__(cls)
    object.__setattr__(model, "__dict__", values)
    object.__setattr__(model, "__pydantic_fields_set__", set(values))
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model


WIRE_MODELS: dict[str, type[BaseModel]] = {
    "InboundEvent": InboundEvent,
    "LimitEvent": LimitEvent,
    "SendRequest": SendRequest,
    "Decision": Decision,
    "WindowEvent": WindowEvent,
    "DeadLetter": DeadLetter,
    "TemplateRecord": TemplateRecord,
    "WindowReport": WindowReport,
    "NumberRecord": NumberRecord,
    "ContactRecord": ContactRecord,
}
