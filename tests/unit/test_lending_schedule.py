"""Schedules and arrears as pure functions: exact sums, calendar months, grace,
moratorium, rounding, allocation and paused days past due."""

from __future__ import annotations

import itertools
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.programme_time import add_months
from services.lending import arrears
from services.lending.schedule import build_schedule, due_dates, owing_again, split_principal

anchors = st.dates(min_value=date(2000, 1, 1), max_value=date(2090, 12, 31))
terms = st.integers(min_value=1, max_value=120).flatmap(
    lambda term: st.tuples(st.just(term), st.integers(min_value=0, max_value=term - 1))
)
moratoria = st.frozensets(st.integers(min_value=1, max_value=12), max_size=11)
principals = st.integers(min_value=0, max_value=10_000_000_000)


def test_month_end_clamps_from_the_anchor_day() -> None:
    assert add_months(date(2026, 1, 31), 1) == date(2026, 2, 28)
    assert add_months(date(2028, 1, 31), 1) == date(2028, 2, 29)
    assert add_months(date(2026, 1, 31), 2) == date(2026, 3, 31)  # not 28 March
    assert add_months(date(2026, 11, 30), 3) == date(2027, 2, 28)
    dates = due_dates(date(2026, 1, 31), term_months=4, grace_months=0)
    assert dates == [date(2026, 2, 28), date(2026, 3, 31), date(2026, 4, 30), date(2026, 5, 31)]


def test_remainder_goes_one_qepik_at_a_time_to_the_first_instalments() -> None:
    assert split_principal(100_000, 3) == [33_334, 33_333, 33_333]
    assert split_principal(200, 3) == [67, 67, 66]
    assert split_principal(2, 3) == [1, 1, 0]


def test_fish_farming_grace_and_livestock_winter_moratorium() -> None:
    fish = build_schedule(500_000, date(2026, 3, 2), term_months=24, grace_months=8)
    assert fish[0].due_date == date(2026, 12, 2)  # the ninth month: after the harvest
    assert len(fish) == 16 and {i.principal_minor for i in fish} == {31_250}
    livestock = build_schedule(
        400_000, date(2026, 9, 15), term_months=24, grace_months=4, moratorium_months={1, 2}
    )
    assert all(i.due_date.month not in (1, 2) for i in livestock)
    assert livestock[-1].due_date == date(2028, 9, 15)  # the maturity does not move
    assert sum(i.principal_minor for i in livestock) == 400_000


def test_a_schedule_entirely_inside_a_moratorium_extends_past_it() -> None:
    only = due_dates(date(2026, 11, 10), term_months=2, grace_months=1, moratorium_months={1})
    assert only == [date(2027, 2, 10)]


@given(principals, anchors, terms, moratoria)
def test_schedules_are_exact_monotonic_and_respect_grace(
    principal: int, anchor: date, term_grace: tuple[int, int], moratorium: frozenset[int]
) -> None:
    term, grace = term_grace
    schedule = build_schedule(principal, anchor, term, grace, moratorium)
    assert sum(i.principal_minor for i in schedule) == principal
    assert schedule[-1].cumulative_minor == principal
    assert [i.number for i in schedule] == list(range(1, len(schedule) + 1))
    dates = [i.due_date for i in schedule]
    assert all(a < b for a, b in itertools.pairwise(dates))
    assert dates[0] >= add_months(anchor, grace + 1)  # nothing falls due during grace
    assert all(d.month not in moratorium for d in dates)
    amounts = [i.principal_minor for i in schedule]
    assert max(amounts) - min(amounts) <= 1
    assert amounts == sorted(amounts, reverse=True)  # the remainder sits up front
    if len(moratorium) == 0:
        assert len(schedule) == term - grace
        assert dates[-1] == add_months(anchor, term)
    for d in dates:  # calendar months from the anchor day, clamped to month end
        assert d.day == anchor.day or (d.day < anchor.day and (d + timedelta(days=1)).day == 1)


@given(principals, anchors, terms, st.lists(st.integers(0, 10_000_000_000), max_size=5))
def test_allocation_is_oldest_first_and_never_exceeds_what_is_due(
    principal: int, anchor: date, term_grace: tuple[int, int], payments: list[int]
) -> None:
    schedule = build_schedule(principal, anchor, *term_grace)
    repaid = 0
    for payment in payments:
        amount = min(payment, principal - repaid)
        allocation = arrears.allocate(schedule, repaid, amount)
        assert sum(a for _, a in allocation) == amount
        numbers = [n for n, _ in allocation]
        assert numbers == sorted(numbers)
        repaid += amount
        paid = arrears.paid_amounts(schedule, repaid)
        assert sum(paid) == repaid
        # Oldest due first: an instalment is touched only once all earlier ones are paid.
        for earlier, later in zip(schedule, paid[1:], strict=False):
            if later > 0:
                assert paid[earlier.number - 1] == earlier.principal_minor


@given(principals, anchors, terms, st.integers(0, 10_000_000_000), st.integers(0, 10_000_000_000))
def test_allocation_from_cumulative_amounts_is_the_waterfall_difference(
    principal: int, anchor: date, term_grace: tuple[int, int], before: int, payment: int
) -> None:
    """allocate (cumulative amounts only, used by RecordRepayment) adds to each instalment
    exactly what paid_amounts says it has after the payment and did not have before."""
    schedule = build_schedule(principal, anchor, *term_grace)
    repaid = min(before, principal)
    amount = min(payment, principal - repaid)
    was = arrears.paid_amounts(schedule, repaid)
    now = arrears.paid_amounts(schedule, repaid + amount)
    expected = [(i.number, a - b) for i, b, a in zip(schedule, was, now, strict=True) if a > b]
    assert arrears.allocate(schedule, repaid, amount) == expected


def test_days_past_due_stop_growing_during_a_pause() -> None:
    due = date(2026, 5, 1)
    assert arrears.overdue_days(due, date(2026, 5, 1), []) == 0
    assert arrears.overdue_days(due, date(2026, 5, 31), []) == 30
    hospital = [(date(2026, 5, 11), date(2026, 6, 9))]  # 30 days in hospital
    assert arrears.overdue_days(due, date(2026, 5, 10), hospital) == 9
    assert arrears.overdue_days(due, date(2026, 5, 20), hospital) == 9
    assert arrears.overdue_days(due, date(2026, 6, 9), hospital) == 9
    assert arrears.overdue_days(due, date(2026, 6, 10), hospital) == 10
    overlapping = [*hospital, (date(2026, 6, 1), date(2026, 6, 19))]
    assert arrears.overdue_days(due, date(2026, 6, 30), overlapping) == 9 + 11


@given(
    anchors,
    st.integers(0, 400),
    st.lists(st.tuples(st.integers(-100, 400), st.integers(1, 366)), max_size=4),
)
def test_paused_days_are_never_counted_and_dpd_never_shrinks_with_time(
    due: date, days: int, pauses: list[tuple[int, int]]
) -> None:
    spans = [(due + timedelta(days=s), due + timedelta(days=s + n)) for s, n in pauses]
    as_of = due + timedelta(days=days)
    dpd = arrears.overdue_days(due, as_of, spans)
    paused = {
        due + timedelta(days=k)
        for k in range(1, days + 1)
        if any(a <= due + timedelta(days=k) <= b for a, b in spans)
    }
    assert dpd == days - len(paused)
    assert arrears.overdue_days(due, as_of + timedelta(days=1), spans) >= dpd


@pytest.mark.parametrize(
    ("dpd", "bucket"),
    [(0, "CURRENT"), (1, "1_30"), (30, "1_30"), (31, "31_60"), (61, "61_90"), (91, "OVER_90")],
)
def test_buckets(dpd: int, bucket: str) -> None:
    assert arrears.bucket(dpd) == bucket


@given(
    principal=st.integers(1, 5_000_000),
    term=st.integers(1, 36),
    grace=st.integers(0, 12),
    owed=st.integers(1, 5_000_000),
)
def test_a_schedule_owing_a_bounced_payment_again_stays_exact_and_keeps_its_shape(
    principal: int, term: int, grace: int, owed: int
) -> None:
    grace = min(grace, term - 1)
    schedule = build_schedule(principal, date(2026, 1, 31), term, grace, (1, 2))
    again = owing_again(schedule, owed)
    assert sum(i.principal_minor for i in again) == principal + owed
    assert again[-1].cumulative_minor == principal + owed
    assert [i.due_date for i in again] == [i.due_date for i in schedule]
    assert all(a.principal_minor >= b.principal_minor for a, b in zip(again, schedule, strict=True))
    # Months without principal (grace, moratorium) stay without, but for the last.
    assert all(
        a.principal_minor == 0
        for a, b in zip(again[:-1], schedule[:-1], strict=True)
        if b.principal_minor == 0
    )
    cumulative = [i.cumulative_minor for i in again]
    assert cumulative == sorted(cumulative)
