"""Who is who: a staff identity compared as one person however it is spelt.

Four eyes (who submitted may not approve; who proposed a write-off may not confirm it)
and "staff act as themselves" compare names typed by people and relayed by services
with the names in tokens. One comparison serves every place, so that no spelling passes
one check and fails another: `ruﬆam` (a ligature) or `RUSTAM` is `rustam` everywhere.
"""

from __future__ import annotations

import unicodedata


def identity_key(name: str) -> str:
    """NFKC-casefold (Unicode's caseless matching for identifiers): compatibility forms
    folded (the ligature ﬆ to st, full-width letters), case folded (ß to ss), then the
    surrounding spaces dropped."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold()).strip()


def same_person(a: str, b: str) -> bool:
    return identity_key(a) == identity_key(b)
