"""Allocation and arrears: pure functions over a schedule revision.

Repayments are applied oldest due first, so what each instalment has been paid is a
"waterfall" of the principal repaid against the revision: instalment i is paid
`clamp(repaid - cumulative(i-1), 0, principal(i))`. A prepayment therefore fills the next
instalments in date order (it shortens the loan; it never re-amortises it).

Days past due count the calendar days after the due date, up to and including the as-of
date, that no hardship pause covers. The portfolio report computes the same figures in
SQL (services/lending/figures.py); a test holds the two to each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from typing import NamedTuple

from services.lending.schedule import Instalment

Pause = tuple[date, date]  # first and last day, inclusive


class InstalmentStatus(NamedTuple):
    number: int
    due_date: date
    principal_minor: int
    paid_minor: int
    days_past_due: int
    state: str  # an InstalmentState name without its prefix


def paid_amounts(schedule: Sequence[Instalment], repaid_minor: int) -> list[int]:
    """Principal paid on each instalment when `repaid_minor` is applied oldest first."""
    return [
        min(max(repaid_minor - (i.cumulative_minor - i.principal_minor), 0), i.principal_minor)
        for i in schedule
    ]


def allocate(
    schedule: Sequence[Instalment], repaid_before: int, amount: int
) -> list[tuple[int, int]]:
    """(instalment number, principal) pairs that a payment of `amount` adds."""
    return allocate_cumulative([i.cumulative_minor for i in schedule], repaid_before, amount)


def allocate_cumulative(
    cumulative: Sequence[int], repaid_before: int, amount: int
) -> list[tuple[int, int]]:
    """`allocate` from the cumulative amounts alone: instalment n gets the part of
    [repaid_before, repaid_before + amount) that falls in [cumulative(n-1), cumulative(n)),
    which is what `paid_amounts` adds to it."""
    low, high = repaid_before, repaid_before + amount
    result = []
    previous = 0
    for number, total in enumerate(cumulative, start=1):
        if previous >= high:
            break
        paid = min(high, total) - max(low, previous)
        if paid > 0:
            result.append((number, paid))
        previous = total
    return result


def overdue_days(due: date, as_of: date, pauses: Iterable[Pause]) -> int:
    """Days in (due, as_of] not covered by any pause; 0 when not yet overdue."""
    if as_of <= due:
        return 0
    first = due + timedelta(days=1)
    clipped = sorted((max(start, first), min(end, as_of)) for start, end in pauses if end >= first)
    paused = 0
    cursor = first
    for start, end in clipped:
        start = max(start, cursor)
        if start <= end:
            paused += (end - start).days + 1
            cursor = end + timedelta(days=1)
    return (as_of - due).days - paused


def statuses(
    schedule: Sequence[Instalment],
    repaid_minor: int,
    as_of: date,
    pauses: Iterable[Pause] = (),
    *,
    written_off: bool = False,
) -> list[InstalmentStatus]:
    pause_list = list(pauses)
    result = []
    for instalment, paid in zip(schedule, paid_amounts(schedule, repaid_minor), strict=True):
        due = instalment.due_date
        dpd = 0
        if paid == instalment.principal_minor:
            state = "PAID"
        elif written_off:
            state = "WRITTEN_OFF"
        elif due < as_of:
            state = "OVERDUE"
            dpd = overdue_days(due, as_of, pause_list)
        elif paid > 0:
            state = "PARTIALLY_PAID"
        else:
            state = "DUE" if due == as_of else "UPCOMING"
        result.append(
            InstalmentStatus(instalment.number, due, instalment.principal_minor, paid, dpd, state)
        )
    return result


BUCKETS = ((0, "CURRENT"), (30, "1_30"), (60, "31_60"), (90, "61_90"))


def bucket(days_past_due: int) -> str:
    """The delinquency bucket name: CURRENT, 1_30, 31_60, 61_90 or OVER_90."""
    for upper, name in BUCKETS:
        if days_past_due <= upper:
            return name
    return "OVER_90"
