"""Checks of what the operator typed, made before anything is called: each bad value
raises BadInput with one line that says what is wrong and what is expected."""

from __future__ import annotations

import json
import re
import uuid
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from services.common.districts import known_districts
from services.common.text import has_control_or_format, visible

# The services' own patterns (proto/mineaction/*/v1: buf.validate annotations). ASCII only:
# Python's \d also matches other scripts' digits (١٠ would be read as 10).
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,63}$")
_CODE = re.compile(r"^[a-z][a-z0-9_]{1,39}$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$", re.ASCII)
_AMOUNT = re.compile(r"^\d+(\.\d+)?$", re.ASCII)
_ACTION = re.compile(r"^[a-z][a-z_]{1,39}$")
_DATA_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

LANGUAGES = ("en", "az")
MAX_AMOUNT_MINOR = 10_000_000_000  # the services' limit on one request: 100 million AZN


class BadInput(Exception):
    """Refused before any call; the message is the whole story, on one line."""


def identifier(value: str, what: str) -> str:
    """An opaque id as the services accept it (3-64 letters, digits, '-' and '_')."""
    value = value.strip()
    if not _ID.match(value):
        raise BadInput(
            f"{what} {value!r} is not a valid id: use 3 to 64 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return value


def code(value: str, what: str) -> str:
    """A product, programme or assistance-type code such as `fish_farming`."""
    value = value.strip()
    if not _CODE.match(value):
        raise BadInput(f"{what} {value!r} is not valid: use lower-case letters, digits and '_'")
    return value


def known_district(value: str, what: str = "district", option: str = "") -> str:
    """A district on the programme's list, the one every service checks; `option` names
    the option it was given as, if any (`--district: unknown district 'saatly'; ...`)."""
    value = value.strip()
    at = f"{option}: " if option else ""
    if not value:
        raise BadInput(f"{at}{what} is required")
    if value not in known_districts():
        listed = ", ".join(known_districts())
        raise BadInput(f"{at}unknown {what} {value!r}; the districts are {listed}")
    return value


def staff(value: str, what: str) -> str:
    """Who did something (a staff id): required, at most 64 characters, and no control or
    invisible formatting character (the services refuse them: a zero-width space made
    another person to four eyes)."""
    value = text(value, what, 64)
    if has_control_or_format(value):
        raise BadInput(f"{what} {value!r} holds a control or invisible formatting character")
    return value


def amount_minor(value: str, what: str = "amount", *, allow_zero: bool = False) -> int:
    """Manat as typed (`12.50`, `1500`) to integer qəpik, exactly: no floats, no
    rounding; more than two decimals, negative or absurd amounts are refused, and zero
    unless `allow_zero` (an income may be nothing; a loan or a payment may not)."""
    text = _decimal_point(value.strip(), what, value)
    sign_rule = "must not be negative" if allow_zero else "must be positive"
    if text.startswith("-"):
        raise BadInput(f"{what} {sign_rule}, got {value!r}")
    match = _AMOUNT.match(text)
    if not match:
        raise BadInput(f"{what} {value!r} is not an amount in manat, e.g. 12.50")
    if match.group(1) and len(match.group(1)) > 3:
        raise BadInput(f"{what} {value!r} has more than 2 decimals (1 AZN = 100 qəpik)")
    minor = int(Decimal(text) * 100)  # exact: at most two decimals
    if minor < 0 or (minor == 0 and not allow_zero):
        raise BadInput(f"{what} must be positive, got {value!r}")
    if minor > MAX_AMOUNT_MINOR:
        raise BadInput(f"{what} {value!r} is above the limit of {MAX_AMOUNT_MINOR // 100:,} AZN")
    return minor


_GROUPED = re.compile(r"^\d{1,3}(,\d{3})+(\.\d+)?$")
_DECIMAL_COMMA = re.compile(r"^\d+,\d{1,2}$")
# As the CLI prints amounts in Azerbaijani: thousands by points, a decimal comma.
_GROUPED_AZ = re.compile(r"^\d{1,3}(\.\d{3})+,\d{1,2}$")


def _decimal_point(text: str, what: str, value: str) -> str:
    """Amounts as staff copy them from the CLI's own output ("1,300.00", or "1.300,00" in
    Azerbaijani) or type them ("312,50"), as plain digits with a decimal point. A comma
    before exactly three digits and nothing else ("1,500") could be either, and is
    refused."""
    if "," not in text:
        return text
    if _DECIMAL_COMMA.match(text):
        return text.replace(",", ".")
    if _GROUPED.match(text) and "." in text:
        return text.replace(",", "")
    if _GROUPED_AZ.match(text):  # "1.000,50", as `--lang az` prints it
        return text.replace(".", "").replace(",", ".")
    raise BadInput(
        f"{what} {value!r} is not an amount in manat: write 1500 or 1,500.00 for fifteen "
        "hundred, 1.50 or 1,50 for one and a half"
    )


def text(value: str, what: str, max_len: int) -> str:
    """Free text a person must give (a reason): required (more than spaces and invisible
    characters, as the services count it), at most `max_len` characters."""
    if not visible(value):
        if value:  # given, but it says nothing
            raise BadInput(f"{what} is blank: it holds only spaces or invisible characters")
        raise BadInput(f"{what} is required")
    value = value.strip()
    if len(value) > max_len:
        raise BadInput(f"{what} is longer than {max_len} characters")
    return value


def action(value: str) -> str:
    """An assistance lifecycle action such as `allocate_from_stock`."""
    value = value.strip()
    if not _ACTION.match(value):
        raise BadInput(
            f"action {value!r} is not valid: use lower-case letters and '_', e.g. deliver"
        )
    return value


def _scalar(raw: str) -> Any:
    """A data value as typed: JSON (44, true, "x", [..]) when it parses, else the text."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def data_pairs(pairs: list[str], what: str) -> dict[str, Any]:
    """KEY=VALUE pairs (repeated option) as a dict; values are JSON when they parse
    (`seat_width_cm=44` is a number, `kind=manual` a string)."""
    data: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not _DATA_KEY.match(key):
            raise BadInput(f"{what} {pair!r}: use KEY=VALUE, e.g. seat_width_cm=44")
        if key in data:
            raise BadInput(f"{what}: {key!r} is given twice")
        data[key] = _scalar(raw.strip())
    if len(data) > 64:
        raise BadInput(f"{what}: at most 64 keys")
    return data


def iso_date(value: str, what: str = "date") -> date:
    value = value.strip()
    if not _ISO_DATE.match(value):
        raise BadInput(f"{what} {value!r} is not a date in the form YYYY-MM-DD")
    try:
        parsed = date.fromisoformat(value)
    except ValueError:
        raise BadInput(f"{what} {value!r} is not a real calendar date") from None
    if not 1900 <= parsed.year <= 2100:
        raise BadInput(f"{what} {value!r} is outside 1900-2100")
    return parsed


def language(value: str) -> str:
    value = value.strip().lower()
    if value not in LANGUAGES:
        raise BadInput(f"unknown language {value!r}: use en (English) or az (Azerbaijani)")
    return value


def existing_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise BadInput(f"{what} {str(path)!r} does not exist")
    if not path.is_file():
        raise BadInput(f"{what} {str(path)!r} is not a file")
    return path


def count(value: int, what: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise BadInput(f"{what} must be from {low} to {high}, got {value}")
    return value


def share(value: float, what: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise BadInput(f"{what} must be a share from 0 to 1, got {value}")
    return value


def request_id() -> str:
    return str(uuid.uuid4())
