"""Opaque page tokens for keyset pagination (AIP-158).

A token is the sort key of the last item returned, base64-encoded JSON, bound to the
filter it was issued for so that a token cannot be replayed against another query.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from datetime import date
from typing import Any

from services.common.errors import invalid

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(requested: int) -> int:
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _fingerprint(query: Any, key: list[Any] | None = None) -> str:
    """Over the key too: a token whose key was edited is not one this service issued.
    Without a key, as tokens were issued before (still read while they are in use; their
    key is checked by its readers all the same)."""
    payload = json.dumps(query if key is None else [query, key], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def encode(last_key: list[Any], query: Any) -> str:
    payload = {"k": last_key, "q": _fingerprint(query, last_key)}
    return base64.urlsafe_b64encode(json.dumps(payload, default=str).encode()).decode()


def text(part: Any) -> str:
    """Text PostgreSQL can hold: no NUL, nothing that is not UTF-8 (a lone surrogate)."""
    if not isinstance(part, str) or "\x00" in part:
        raise TypeError(part)
    part.encode()  # UnicodeEncodeError, a ValueError, for a lone surrogate
    return part


def _integer(bits: int) -> Callable[[Any], int]:
    def integer(part: Any) -> int:
        if type(part) is not int or not -(2 ** (bits - 1)) <= part < 2 ** (bits - 1):
            raise ValueError(part)
        return part

    return integer


int32, int64 = _integer(32), _integer(64)


def xid8(part: Any) -> str:
    """A PostgreSQL transaction id (xid8), kept as its decimal text."""
    if not isinstance(part, str) or not part.isascii() or not part.isdigit() or int(part) >= 2**64:
        raise ValueError(part)
    return part


iso_date = date.fromisoformat  # TypeError for anything but text


def decode(
    token: str, query: Any, parts: tuple[Callable[[Any], Any], ...], field: str = "page_token"
) -> list[Any] | None:
    """The sort key to continue after, each part read by its `parts` reader (text, int32,
    int64, iso_date), or None for the first page. Any token this service did not issue for
    this query is INVALID_ARGUMENT, never a failure further on."""
    if not token:
        return None
    what = "page token" if field == "page_token" else "cursor"
    reason = f"{what.upper().replace(' ', '_')}_NOT_ISSUED"  # PAGE_TOKEN_..., CURSOR_...
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode()))
        key, fingerprint = payload["k"], payload["q"]
        typed = [read(part) for read, part in zip(parts, key, strict=True)]
    except (ValueError, KeyError, TypeError):
        raise invalid(field, f"not a {what} issued by this service", reason) from None
    if fingerprint not in (_fingerprint(query, key), _fingerprint(query)):
        for_what = "this query (filters)" if field == "page_token" else "this feed"
        raise invalid(field, f"not a {what} this service issued for {for_what}", reason)
    return typed
