"""Bearer tokens at the HTTP edge (the window API): checked in constant time, answered in words."""

from __future__ import annotations

import hmac

BEARER = "Bearer "


def bearer_refusal(header: str | None, token: bytes | None) -> str | None:
    """None when ``header`` (an Authorization header) carries ``token``; else why not, in one sentence
    that says what to send (never the token). ``token`` None: the API is off."""
    if token is None:
        return (
            "the window API is off: set WAGATE_WINDOW_API_TOKEN (or WAGATE_WINDOW_API_TOKEN_FILE) "
            "on every worker"
        )
    if not header:
        return "Authorization header missing: send 'Authorization: Bearer <WAGATE_WINDOW_API_TOKEN>'"
    if not header.startswith(BEARER):
        return "Authorization is not a bearer token: send 'Authorization: Bearer <WAGATE_WINDOW_API_TOKEN>'"
    if not hmac.compare_digest(header[len(BEARER) :].strip().encode(), token):
        return "the bearer token is not WAGATE_WINDOW_API_TOKEN"
    return None
