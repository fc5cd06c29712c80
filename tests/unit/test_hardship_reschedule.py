"""The grace and term a hardship reschedule asks lending for (workers/journey/workflows.py
`not_sooner`): the first rescheduled instalment never falls before the next instalment of
the schedule it replaces, and the borrower keeps the number of instalments asked for."""

from __future__ import annotations

from datetime import date

import pytest

from services.lending.schedule import build_schedule
from workers.journey.workflows import not_sooner


def first_due(effective: date, grace: int, term: int) -> date:
    """Lending's first instalment for that request (RescheduleLoan builds it so)."""
    return build_schedule(100_000, effective, term, grace)[0].due_date


def test_in_the_first_grace_the_grace_reaches_the_old_first_instalment() -> None:
    # Fish farming disbursed on 27 November: first instalment on 27 August, 9 months on.
    # Hospitalised on 27 February, the officer asks for 18 months, 3 of them grace.
    grace, term = not_sooner(date(2027, 2, 27), "2027-08-27", 3, 18)
    assert (grace, term) == (5, 20)  # 15 instalments, as asked
    assert first_due(date(2027, 2, 27), grace, term) == date(2027, 8, 27)


def test_a_day_of_the_month_after_the_old_one_still_falls_later() -> None:
    grace, term = not_sooner(date(2027, 3, 10), "2027-08-27", 0, 12)
    assert (grace, term) == (5, 17)
    assert first_due(date(2027, 3, 10), grace, term) == date(2027, 9, 10)


def test_month_ends_are_clamped_as_lending_clamps_them() -> None:
    # From 31 August, 6 months on is 28 February: still before 1 March, so one more.
    grace, _ = not_sooner(date(2026, 8, 31), "2027-03-01", 0, 12)
    assert grace == 6
    assert first_due(date(2026, 8, 31), grace, 12 + grace) == date(2027, 3, 31)


def test_the_grace_asked_for_stands_when_it_already_reaches_further() -> None:
    assert not_sooner(date(2027, 2, 27), "2027-03-27", 3, 18) == (3, 18)
    assert not_sooner(date(2027, 2, 27), "2027-06-27", 3, 18) == (3, 18)


def test_with_nothing_ahead_the_request_is_unchanged() -> None:
    assert not_sooner(date(2027, 2, 27), "", 0, 6) == (0, 6)


def test_a_reschedule_that_cannot_keep_the_next_instalment_is_refused_saying_why() -> None:
    # A borrower who prepaid: the next instalment is 31 months away, past 24 of grace.
    with pytest.raises(ValueError, match="more than 24 months of grace away"):
        not_sooner(date(2026, 11, 27), "2029-06-27", 0, 36)
    # Six months of grace to keep it, and 120 months of instalments: past 120 in all,
    # so the instalments would be fewer and larger than asked.
    with pytest.raises(ValueError, match="ask for at most 114 months"):
        not_sooner(date(2026, 11, 27), "2027-06-27", 0, 120)
    assert not_sooner(date(2026, 11, 27), "2027-06-27", 0, 114) == (6, 120)
    assert first_due(date(2026, 11, 27), 6, 120) == date(2027, 6, 27)
