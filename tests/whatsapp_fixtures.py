"""The webhook fixtures in tests/fixtures/whatsapp (copied byte for byte, origin and MIT licences in its
SOURCES.md), one body per case, with what each must yield.

Single-envelope files are used byte for byte. The pywa files hold several named envelopes in one
object; each case is serialized on its own (the only way to send it as one webhook body).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import orjson

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "whatsapp"
MALFORMED = "whatsapp-business-java-api/textMessageStatusRead.json"


@dataclass(frozen=True)
class Expect:
    events: tuple[tuple[str, str], ...]  # (kind, type) of each InboundEvent, in order
    opens: bool = False  # does the body open a window for its contact
    templates: int = 0


_MSG = ("message", "text")
EXPECTED: dict[str, Expect] = {
    "pywa/call_connect.json#business_initiated": Expect((("call", "connect"),)),
    "pywa/call_connect.json#user_initiated": Expect((("call", "connect"),), opens=True),
    "pywa/call_status.json#call_status": Expect((("call", "ringing"),)),
    "pywa/call_terminate.json#call_terminate": Expect((("call", "terminate"),)),
    "pywa/callback_button.json#button": Expect((("message", "interactive"),), opens=True),
    "pywa/callback_button.json#quick_reply": Expect((("message", "button"),), opens=True),
    "pywa/callback_button.json#quick_reply_without_context": Expect((("message", "button"),), opens=True),
    "pywa/callback_selection.json#callback": Expect((("message", "interactive"),), opens=True),
    "pywa/callback_selection.json#description": Expect((("message", "interactive"),), opens=True),
    **{
        f"pywa/message.json#{case}": Expect((("message", mtype),), opens=True)
        for case, mtype in {
            "text": "text",
            "image": "image",
            "media_with_url": "image",
            "video": "video",
            "document": "document",
            "audio": "audio",
            "voice": "audio",
            "static_sticker": "sticker",
            "animated_sticker": "sticker",
            "current_location": "location",
            "chosen_location": "location",
            "contacts": "contacts",
            "order": "order",
            "reply": "text",
            "forwarded": "text",
            "forwarded_many_times": "text",
            "interactive_message_with_err": "interactive",
            "referral": "text",
        }.items()
    },
    # Undocumented as openers: reactions and unsupported types do not open by default.
    "pywa/message.json#reaction": Expect((("message", "reaction"),)),
    "pywa/message.json#unreaction_empty": Expect((("message", "reaction"),)),
    "pywa/message.json#unreaction_no_emoji": Expect((("message", "reaction"),)),
    "pywa/message.json#unsupported": Expect((("message", "unsupported"),)),
    "pywa/message.json#unsupported_with_type": Expect((("message", "unsupported"),)),
    **{
        f"pywa/message_status.json#{case}": Expect((("status", status),))
        for case, status in {
            "sent": "sent",
            "delivered": "delivered",
            "read": "read",
            "played": "played",
            "failed": "failed",
            "with_tracker": "sent",
            "group": "read",
        }.items()
    },
    "pywa/system.json#phone_number_change": Expect((("system", "user_changed_number"),)),
    "pywa/system.json#identity_change": Expect((("system", "customer_identity_changed"),)),
    "pywa/template_status_update.json#approved": Expect((), templates=1),
    "pywa/template_status_update.json#rejected": Expect((), templates=1),
    "pywa/template_category_update.json#marketing": Expect((), templates=1),
    "pywa/template_quality_update.json#yellow": Expect((), templates=1),
    "pywa/user_marketing_preferences.json#resume": Expect((("preference", "marketing_messages"),)),
    "pywa/user_marketing_preferences.json#signup": Expect((("preference", "marketing_messages"),)),
    "whatsapp-api-js/incoming.json": Expect((_MSG,), opens=True),
    "whatsapp-api-js/sent.json": Expect((("status", "sent"),)),
    "whatsapp-api-js/delivered.json": Expect((("status", "delivered"),)),
    "whatsapp-api-js/read.json": Expect((("status", "read"),)),
    "whatsapp-business-java-api/reEngagementMessageError.json": Expect((("status", "failed"),)),
    "whatsapp-business-java-api/textMessageStatusSent.json": Expect((("status", "sent"),)),
    "whatsapp-business-java-api/textMessageStatusDelivered.json": Expect((("status", "delivered"),)),
    "whatsapp-business-java-api/textMessage.json": Expect((_MSG,), opens=True),
    "whatsapp-business-java-api/buttonMessage.json": Expect((("message", "button"),), opens=True),
    "whatsapp-business-java-api/reactMessage.json": Expect((("message", "reaction"),)),
    "whatsapp-business-java-api/locationMessage.json": Expect((("message", "location"),), opens=True),
    "whatsapp-business-java-api/imageMessage.json": Expect((("message", "image"),), opens=True),
    "whatsapp-business-java-api/contactMessage.json": Expect((("message", "contacts"),), opens=True),
    "whatsapp-business-java-api/rejectedTemplate.json": Expect((), templates=1),
}


def fixture_bodies() -> dict[str, bytes]:
    """Every case id -> the webhook body to send; the malformed file is left out (see MALFORMED)."""
    bodies: dict[str, bytes] = {}
    for path in sorted(FIXTURES.glob("*/*.json")):
        name = str(path.relative_to(FIXTURES))
        if name == MALFORMED:
            continue
        raw = path.read_bytes()
        document = json.loads(raw)
        if "object" in document:
            bodies[name] = raw
        else:
            for case, envelope in document.items():
                bodies[f"{name}#{case}"] = orjson.dumps(envelope)
    return bodies


def malformed_body() -> bytes:
    return (FIXTURES / MALFORMED).read_bytes()
