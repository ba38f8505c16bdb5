"""Bearer tokens at the HTTP edge (the window API): checked in constant time, answered in words."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from pathlib import Path


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
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":  # (the scheme is case-insensitive, RFC 9110)
        return "Authorization is not a bearer token: send 'Authorization: Bearer <WAGATE_WINDOW_API_TOKEN>'"
    # aiohttp hands undecodable header bytes over as surrogates: encoded back, they compare unequal.
    if not hmac.compare_digest(credentials.strip().encode("utf-8", "surrogateescape"), token):
        return "the bearer token is not WAGATE_WINDOW_API_TOKEN"
    return None


class TokenFile:
    """A token kept in a file (a mounted Secret): read again whenever the file changes, so a rotated
    Secret takes effect without a restart. A file that cannot be read keeps the last token."""

    def __init__(self, path: Path, read: Callable[[], bytes | None]) -> None:
        self.path = path
        self.read = read
        self._seen: tuple[int, int] | None = None
        self._token: bytes | None = None

    def __call__(self) -> bytes | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return self._token
        seen = (stat.st_mtime_ns, stat.st_size)
        if seen != self._seen:
            try:
                self._token = self.read()
            except ValueError:  # mid-rotation: keep the last one
                return self._token
            self._seen = seen
        return self._token
