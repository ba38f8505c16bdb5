"""The tunable parts of the window rules (contract section 5), as one immutable value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from streams.policy.deliverability import DEFAULT_MARKETING_PAUSES, MarketingPause

# Content types both sides use: a user sends them, a business can send them.
_CONTENT_TYPES: frozenset[str] = frozenset(
    {"text", "image", "video", "audio", "document", "sticker", "location", "contacts", "interactive"}
)
# User-authored message types that Meta documents as opening/refreshing the customer service window
# (button: a reply to a template's quick-reply; order: a catalog order). reaction, system, unsupported
# and request_welcome are undocumented: off by default, a setting adds them.
DEFAULT_OPENER_TYPES: frozenset[str] = _CONTENT_TYPES | {"button", "order"}
# Call events that mean the user called (connect, answered or not) or accepted a business call
# (the call status "accepted"). A business-initiated connect alone is the business calling: no opener.
CALL_CONNECT_TYPE = "connect"
CALL_ACCEPTED_TYPE = "accepted"
BUSINESS_INITIATED = "BUSINESS_INITIATED"
# Failed-status error codes that mean "the window is closed", whatever our state says:
# 131047 (Cloud API re-engagement), 470 (legacy On-Premises), 63016 (Twilio's mapping of it).
WINDOW_CLOSED_ERROR_CODES: frozenset[int] = frozenset({131047, 470, 63016})
# System messages that say the user is now someone else to this business: a new phone number (with its
# new BSUID), or a new BSUID alone (a user whose number is withheld). The old contact's window closes;
# the new identifier is a new contact (docs/contract.md, "One person, several identifiers").
NUMBER_CHANGE_TYPE = "user_changed_number"
USER_ID_CHANGE_TYPE = "user_changed_user_id"
IDENTITY_CHANGE_TYPES: frozenset[str] = frozenset({NUMBER_CHANGE_TYPE, USER_ID_CHANGE_TYPE})
# Marketing: 131050 = the user stopped marketing messages; 131049 = Meta held a marketing message back
# (per-user marketing limit), which the gate treats as a 24 h cooldown.
MARKETING_OPT_OUT_ERROR_CODE = 131050
MARKETING_COOLDOWN_ERROR_CODE = 131049
MARKETING_COOLDOWN_SECONDS = 86_400.0
MARKETING_PREFERENCE_CATEGORY = "marketing_messages"
MARKETING_STOP_VALUES: frozenset[str] = frozenset({"stop"})
# A signup through a marketing opt-in link is consent as much as a resume is.
MARKETING_RESUME_VALUES: frozenset[str] = frozenset({"resume", "signup"})
# Free entry point: a referral (ad, Page button) answered within 24 h opens 72 h of free messages.
FREE_ENTRY_POINT_ANSWER_SECONDS = 86_400.0
FREE_ENTRY_POINT_SECONDS = 259_200.0
FREE_ENTRY_POINT_ORIGIN = "referral_conversion"
# Cloud API message types a business can send; anything else cannot be delivered.
SENDABLE_MESSAGE_TYPES: frozenset[str] = _CONTENT_TYPES | {"template", "reaction"}


ORIGINS: frozenset[str] = frozenset({"agent", "human", "automation", "broadcast", "api"})


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """What one producer origin may do (WAGATE_ORIGIN_POLICY). Defaults: everything allowed."""

    free_form: bool = True  # may send free-form messages at all
    convert: bool = True  # may be converted to its fallback template when free-form cannot go
    require_fallback: bool = False  # free-form requests must carry a fallback_template


ALLOW_ALL = OriginPolicy()


@dataclass(frozen=True, slots=True)
class WindowRules:
    window_seconds: float = 86_400.0
    safety_margin_seconds: float = 120.0
    future_skew_seconds: float = 60.0
    opener_message_types: frozenset[str] = field(default=DEFAULT_OPENER_TYPES)
    group_unsupported_types: frozenset[str] = field(default=frozenset({"interactive"}))
    dedupe_horizon_seconds: float = 7 * 86_400.0
    dedupe_max_per_contact: int = 1_000
    origins: Mapping[str, OriginPolicy] = field(default_factory=dict)
    # wa.windows: `expiring` goes out this long before the window closes (the "rescue" point) ...
    event_lead_seconds: float = 3_600.0
    # ... and an event overdue by more than this (a worker down that long, a replayed backlog of old
    # messages) is not published: nobody can act on it any more, and a restart must not flood.
    event_max_delay_seconds: float = 86_400.0
    # Destinations Meta does not deliver marketing templates to (WAGATE_MARKETING_PAUSES).
    marketing_pauses: tuple[MarketingPause, ...] = DEFAULT_MARKETING_PAUSES

    def origin(self, name: str) -> OriginPolicy:
        return self.origins.get(name, ALLOW_ALL)
