"""The window API's bearer token: how it is checked, and which settings are refused."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.settings import Settings
from streams.web.auth import TokenFile, bearer_refusal

TOKEN = b"0123456789abcdef0123"


def test_only_the_right_bearer_token_passes_and_every_refusal_says_what_to_send() -> None:
    assert bearer_refusal(f"Bearer {TOKEN.decode()}", TOKEN) is None
    missing = bearer_refusal(None, TOKEN)
    assert missing is not None and "Authorization: Bearer" in missing
    basic = bearer_refusal("Basic dXNlcjpwYXNz", TOKEN)
    assert basic is not None and "not a bearer token" in basic
    wrong = bearer_refusal("Bearer 0123456789abcdef0124", TOKEN)
    assert wrong is not None and TOKEN.decode() not in wrong
    off = bearer_refusal(f"Bearer {TOKEN.decode()}", None)
    assert off is not None and "WAGATE_WINDOW_API_TOKEN" in off


def test_the_token_comes_from_the_variable_or_the_file(tmp_path: Path) -> None:
    assert Settings(window_api_token=TOKEN.decode()).window_api_secret() == TOKEN
    path = tmp_path / "token"
    path.write_text(TOKEN.decode() + "\n")  # a Secret mounted as a file often ends with a newline
    assert Settings(window_api_token_file=path).window_api_secret() == TOKEN
    assert Settings().window_api_secret() is None  # off


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"window_api_token": ""}, "WAGATE_WINDOW_API_TOKEN is empty"),
        ({"window_api_token": "short"}, "shorter than 16 characters"),
        ({"window_api_token": TOKEN.decode(), "window_api_token_file": "x"}, "not both"),
        ({"window_api_token_file": "/nonexistent/token"}, "is not a readable file"),
    ],
)
def test_a_token_that_protects_nothing_is_refused_naming_the_setting(
    settings: dict[str, str], said: str
) -> None:
    with pytest.raises(ValidationError, match=said):
        Settings(**settings)  # type: ignore[arg-type]


def test_the_scheme_is_case_insensitive_and_undecodable_bytes_are_refused_not_crashed() -> None:
    assert bearer_refusal(f"bearer {TOKEN.decode()}", TOKEN) is None
    assert bearer_refusal(f"BEARER  {TOKEN.decode()} ", TOKEN) is None
    # aiohttp hands a header's undecodable bytes over as surrogates (surrogateescape).
    mangled = b"Bearer \xff\xfe".decode("utf-8", "surrogateescape")
    assert bearer_refusal(mangled, TOKEN) == "the bearer token is not WAGATE_WINDOW_API_TOKEN"


def test_a_rotated_token_file_takes_effect_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN.decode())
    settings = Settings(window_api_token_file=path)
    current = TokenFile(path, settings.window_api_secret)
    assert current() == TOKEN
    rotated = b"fedcba9876543210fedcba"
    path.write_text(rotated.decode())
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))  # a later mtime, whatever the clock
    assert current() == rotated
    path.unlink()  # a Secret's files vanish for a moment while it is updated: the last token holds
    assert current() == rotated


def test_an_unreadable_token_file_names_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"\xff\xfe not text")
    with pytest.raises(ValidationError, match=r"WAGATE_WINDOW_API_TOKEN_FILE=.* cannot be read"):
        Settings(window_api_token_file=path)
