"""Templates Meta will not deliver to a recipient, known before Meta answers (contract section 10).

Pure: a template's registry record or a destination and the time in, an answer out.

- Authentication templates with an OTP button (copy code, one-tap, zero-tap) cannot go to a
  business-scoped user ID: Meta answers 131062. They need the user's phone number.
- Marketing templates to some destinations are not delivered at all (Meta paused them for US
  numbers from 2025-04-01). Which ones is a dated table, configuration like pricing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from streams.models import TemplateRecord
from streams.policy.keys import is_business_scoped

# Meta's error for an OTP authentication template sent to a BSUID or parent BSUID.
RECIPIENT_REQUIRES_PHONE_ERROR_CODE = 131062
OTP_BUTTON_TYPES: frozenset[str] = frozenset({"COPY_CODE", "ONE_TAP", "ZERO_TAP"})


def needs_phone_number(record: TemplateRecord | None) -> bool:
    """An authentication template whose OTP button Meta will not send to a BSUID (131062)."""
    if record is None or (record.category or "").upper() != "AUTHENTICATION":
        return False
    for component in record.components or []:
        if not isinstance(component, dict) or str(component.get("type", "")).upper() != "BUTTONS":
            continue
        for button in component.get("buttons") or []:
            if not isinstance(button, dict) or str(button.get("type", "")).upper() != "OTP":
                continue
            # Every OTP button is one of the three; an unknown otp_type is treated like them.
            return True
    return False


@dataclass(frozen=True, slots=True)
class MarketingPause:
    """Destinations Meta does not deliver marketing templates to, from ``effective_from`` (epoch s)
    until ``effective_until`` (None: until further notice)."""

    region: str  # a short label for metrics and details, e.g. "US" (never a phone number)
    calling_codes: tuple[str, ...]  # phone-number prefixes (digits, country code first), e.g. "1"
    except_prefixes: tuple[str, ...]  # phone-number prefixes inside calling_codes that still get them
    bsuid_countries: tuple[str, ...]  # the country prefix of a BSUID ("US.1234…"), upper case
    effective_from: float
    effective_until: float | None = None
    source: str = ""

    def applies(self, destination: str, now: float) -> bool:
        if now < self.effective_from or (self.effective_until is not None and now >= self.effective_until):
            return False
        if is_business_scoped(destination):
            return destination[:2] in self.bsuid_countries
        digits = destination.lstrip("+")
        if not digits.isdigit():
            return False
        return digits.startswith(self.calling_codes) and not digits.startswith(self.except_prefixes)


def _epoch(day: str) -> float:
    return datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC).timestamp()


# +1 numbers outside the United States (North American Numbering Plan area codes of Canada and of the
# Caribbean countries): Meta's pause names "the +1 calling code and a US area code". US territories
# (Puerto Rico, USVI, Guam, ...) are treated as US. Edit WAGATE_MARKETING_PAUSES to change it.
_CANADA = (  # the provinces' and territories' area codes, and 600 (non-geographic)
    "204 226 236 249 250 257 263 289 306 343 354 365 367 368 382 387 403 416 418 428 431 437 438 450 "
    "468 474 506 514 519 548 579 581 584 587 600 604 613 639 647 672 683 705 709 742 753 778 780 782 "
    "807 819 825 867 873 879 902 905 942"
)
_CARIBBEAN = "242 246 264 268 284 345 441 473 649 658 664 721 758 767 784 809 829 849 868 869 876"
NANP_OUTSIDE_US: tuple[str, ...] = tuple("1" + code for code in f"{_CANADA} {_CARIBBEAN}".split(" "))


DEFAULT_MARKETING_PAUSES: tuple[MarketingPause, ...] = (
    MarketingPause(
        region="US",
        calling_codes=("1",),
        except_prefixes=NANP_OUTSIDE_US,
        bsuid_countries=("US", "PR", "VI", "GU", "AS", "MP"),  # the US and its territories
        effective_from=_epoch("2025-04-01"),
        source="Meta: marketing template messages to US phone numbers paused from 2025-04-01",
    ),
)


def paused_marketing(
    destination: str, now: float, pauses: tuple[MarketingPause, ...]
) -> MarketingPause | None:
    """The pause that stops a marketing template to ``destination`` at ``now``, if any."""
    for pause in pauses:
        if pause.applies(destination, now):
            return pause
    return None


_PAUSE_KEYS = {"region", "calling_codes", "except_prefixes", "bsuid_countries", "from", "until", "source"}


def parse_marketing_pauses(raw: str) -> tuple[MarketingPause, ...]:
    """WAGATE_MARKETING_PAUSES: a JSON list of pauses; empty: Meta's known ones (the default table)."""
    if not raw.strip():
        return DEFAULT_MARKETING_PAUSES
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"not JSON ({exc.msg}); example: "
            '[{"region": "US", "calling_codes": ["1"], "from": "2025-04-01"}] ([] turns the check off)'
        ) from None
    if not isinstance(data, list):
        raise ValueError("must be a JSON list of pauses ([] turns the check off)")
    return tuple(_pause(i, item) for i, item in enumerate(data))


def _pause(i: int, item: Any) -> MarketingPause:
    where = f"pause [{i}]"
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be an object")
    unknown = set(item) - _PAUSE_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; keys are {sorted(_PAUSE_KEYS)}")
    region = item.get("region")
    if not isinstance(region, str) or not region or len(region) > 32:
        raise ValueError(f"{where}: 'region' (a label of up to 32 characters, e.g. \"US\") is required")

    def strings(name: str, check: Any) -> tuple[str, ...]:
        values = item.get(name, [])
        if not isinstance(values, list) or not all(isinstance(v, str) and check(v) for v in values):
            raise ValueError(f"{where}: '{name}' must be a list of {check.__doc__}")
        return tuple(values)

    def digits(value: str) -> bool:
        """digit strings (country code first, no '+')"""
        return value.isdigit()

    def country(value: str) -> bool:
        """upper-case country codes (the prefix of a BSUID, e.g. "US")"""
        return value.isalpha() and value.isupper()

    calling = strings("calling_codes", digits)
    countries = strings("bsuid_countries", country)
    if not calling and not countries:
        raise ValueError(f"{where}: give 'calling_codes' or 'bsuid_countries' (or both)")

    def day(name: str) -> float | None:
        value = item.get(name)
        if value is None:
            return None
        try:
            return _epoch(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: '{name}' must be a date, YYYY-MM-DD (UTC)") from None

    start = day("from")
    if start is None:
        raise ValueError(f"{where}: 'from' (YYYY-MM-DD, UTC) is required")
    source = item.get("source", "")
    return MarketingPause(
        region=region,
        calling_codes=calling,
        except_prefixes=strings("except_prefixes", digits),
        bsuid_countries=countries,
        effective_from=start,
        effective_until=day("until"),
        source=source if isinstance(source, str) else "",
    )
