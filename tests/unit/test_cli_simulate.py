"""simulate's stated assumptions: the first cohort behaves in exactly the stated shares."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from cli.inputs import BadInput
from cli.simulate import Assumptions, behaviour_of, behaviours, product_terms


def assumptions(**changes: object) -> Assumptions:
    values: dict[str, object] = dict(
        survivors=10, months=36, product_id="carpet_weaving", amount_minor=300_000,
        capital_minor=3_000_000, on_time=0.7, late=0.2, default=0.1, days_late=45,
        default_after=3, seed=1, chart=Path("x.png"),
    )  # fmt: skip
    values.update(changes)
    return Assumptions(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "shares", "expected"),
    [(10, (0.7, 0.2, 0.1), (7, 2, 1)), (3, (0.5, 0.25, 0.25), (1, 1, 1)),
     (7, (1.0, 0.0, 0.0), (7, 0, 0)), (5, (0.34, 0.33, 0.33), (2, 2, 1))],
)  # fmt: skip
def test_cohort_in_the_stated_shares(
    n: int, shares: tuple[float, float, float], expected: tuple[int, int, int]
) -> None:
    a = assumptions(survivors=n, on_time=shares[0], late=shares[1], default=shares[2])
    counts = Counter(behaviours(a, random.Random(1)))
    assert (counts["on_time"], counts["late"], counts["default"]) == expected


def test_behaviours() -> None:
    a = assumptions()
    late = behaviour_of("late", a)
    assert late is not None and late.days_late == 45
    default = behaviour_of("default", a)
    assert default is not None and default.stop_after == 3
    assert behaviour_of("default", assumptions(default_after=0)) is None  # never pays


def test_product_and_amount_checked_against_products_yaml() -> None:
    assert product_terms(assumptions())["term_months"] == 18
    with pytest.raises(BadInput, match="unknown loan product"):
        product_terms(assumptions(product_id="space_travel"))
    with pytest.raises(BadInput, match="outside the carpet_weaving"):
        product_terms(assumptions(amount_minor=9_999_900))
