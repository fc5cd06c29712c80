"""What the services count as written text, as their request rules do (`reason.not_blank`,
`text.not_blank`, `actor.not_blank`), for the checks made before a request is sent."""

from __future__ import annotations

import unicodedata


def visible(value: str) -> bool:
    """Holds a character that shows: not only spaces, separators or invisible ones."""
    return any(not c.isspace() and unicodedata.category(c)[0] not in "ZC" for c in value)


def has_control_or_format(value: str) -> bool:
    """Holds a control or invisible formatting character (a zero-width space)."""
    return any(unicodedata.category(c) in ("Cc", "Cf") for c in value)
