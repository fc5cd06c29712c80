"""The districts the programme works in or receives survivors from: one list for every
service that records a district (a survivor's intake, a loan, a need), so that reports
broken down by district add up across services."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

from services.common.errors import FieldViolation, invalid

DISTRICTS_FILE = Path(__file__).parent / "districts.yaml"


@cache
def known_districts() -> dict[str, dict[str, str]]:
    """District code -> names in English and Azerbaijani."""
    data = yaml.safe_load(DISTRICTS_FILE.read_text(encoding="utf-8"))
    return {d["code"]: {"en": d["en"], "az": d["az"]} for d in data["districts"]}


def district_violations(code: str, field: str) -> list[FieldViolation]:
    """The field violation for a district code not on the list (none for a known one)."""
    if code in known_districts():
        return []
    return [FieldViolation(field, _unknown(code), _REASON)]


def require_known_district(code: str, field: str = "district_code") -> None:
    """INVALID_ARGUMENT for a district not on the list."""
    if code not in known_districts():
        raise invalid(field, _unknown(code), _REASON)


def require_known_district_filter(code: str, field: str = "district_code") -> None:
    """A list's or report's district filter: empty means any district; one not on the
    list is INVALID_ARGUMENT, as on a write (a typo would otherwise find nothing)."""
    if code:
        require_known_district(code, field)


_REASON = "district.known"


def _unknown(code: str) -> str:
    return f"unknown district {code!r}"
