"""One comparison of staff identities for every four-eyes and acting-as-oneself check."""

from __future__ import annotations

import pytest

from services.common.identity import same_person


@pytest.mark.parametrize(
    ("typed", "token"),
    [
        ("RUSTAM", "rustam"),
        (" rustam ", "rustam"),
        ("ru\ufb06am", "rustam"),  # the ligature st
        ("gross", "Groß"),  # ß folds to ss
        ("cw-\uff10\uff17", "cw-07"),  # full-width digits
    ],
)
def test_the_same_person_however_spelt(typed: str, token: str) -> None:
    assert same_person(typed, token) and same_person(token, typed)


@pytest.mark.parametrize(
    ("a", "b"), [("cw-07", "cw-08"), ("rustam", "rustem"), ("rus tam", "rustam")]
)
def test_different_people_stay_different(a: str, b: str) -> None:
    assert not same_person(a, b)
