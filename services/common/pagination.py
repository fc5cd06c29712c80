"""Opaque page tokens for keyset pagination (AIP-158).

A token is the sort key of the last item returned, base64-encoded JSON, bound to the
filter it was issued for so that a token cannot be replayed against another query.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from services.common.errors import invalid

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(requested: int) -> int:
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _fingerprint(query: Any) -> str:
    return hashlib.sha256(json.dumps(query, sort_keys=True, default=str).encode()).hexdigest()[:16]


def encode(last_key: list[Any], query: Any) -> str:
    payload = {"k": last_key, "q": _fingerprint(query)}
    return base64.urlsafe_b64encode(json.dumps(payload, default=str).encode()).decode()


def decode(token: str, query: Any) -> list[Any] | None:
    """The sort key to continue after, or None for the first page."""
    if not token:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode()))
        key, fingerprint = payload["k"], payload["q"]
    except (ValueError, KeyError, TypeError):
        raise invalid("page_token", "not a page token issued by this service") from None
    if fingerprint != _fingerprint(query) or not isinstance(key, list):
        raise invalid("page_token", "the page token belongs to a different query")
    return key
