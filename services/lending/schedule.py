"""Repayment schedules: a pure function of principal, anchor date and product terms.

No I/O and no clock, so it is fast and property-testable. Rules (docs/lending.md):

- Instalments are monthly. Instalment k falls due `grace_months + k` calendar months
  after the anchor (the first disbursement), counted from the anchor's day each time and
  clamped to the month's end: 31 Jan -> 28/29 Feb -> 31 Mar.
- The term includes the grace: the last candidate month is `term_months` after the
  anchor. Candidate months in a moratorium (calendar months 1..12) carry no instalment;
  their principal is spread over the others, so the maturity does not move. Only when
  every candidate month is in a moratorium does the schedule extend to the first month
  outside it.
- Rounding: every instalment is `principal // n`; the remainder `principal % n` is spread
  one qəpik at a time over the *first* instalments. Instalments therefore differ by at
  most one qəpik, never grow over time, and sum exactly to the principal.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import date
from typing import NamedTuple

from services.common.programme_time import MONTH_DAYS, add_months, month_end


class Instalment(NamedTuple):
    number: int  # 1-based
    due_date: date
    principal_minor: int
    cumulative_minor: int  # principal due up to and including this instalment


_new_instalment = Instalment._make


def due_dates(
    anchor: date, term_months: int, grace_months: int, moratorium_months: Collection[int] = ()
) -> list[date]:
    """The instalment due dates (see the module rules)."""
    if not 0 <= grace_months < term_months:
        raise ValueError("grace_months must be at least 0 and less than term_months")
    if len(set(moratorium_months)) >= 12:
        raise ValueError("at least one calendar month must be outside the moratorium")
    # add_months inlined: this loop is most of the cost of a schedule.
    start = anchor.year * 12 + anchor.month - 1
    day = anchor.day
    dates = []
    for index in range(start + grace_months + 1, start + term_months + 1):
        year, month = divmod(index, 12)
        month += 1
        if month in moratorium_months:
            continue
        if day <= 28:
            dates.append(date(year, month, day))
        else:
            last = month_end(year, month) if month == 2 else MONTH_DAYS[month - 1]
            dates.append(date(year, month, day if day <= last else last))
    offset = term_months
    while not dates:
        offset += 1
        extra = add_months(anchor, offset)
        if extra.month not in moratorium_months:
            dates.append(extra)
    return dates


def split_principal(principal_minor: int, count: int) -> list[int]:
    """`count` amounts summing to the principal; the remainder goes to the first ones."""
    if principal_minor < 0 or count < 1:
        raise ValueError("principal must be non-negative and count positive")
    base, remainder = divmod(principal_minor, count)
    return [base + 1] * remainder + [base] * (count - remainder)


def build_schedule(
    principal_minor: int,
    anchor: date,
    term_months: int,
    grace_months: int,
    moratorium_months: Collection[int] = (),
) -> list[Instalment]:
    dates = due_dates(anchor, term_months, grace_months, moratorium_months)
    count = len(dates)
    if principal_minor < 0:
        raise ValueError("principal must be non-negative")
    base, remainder = divmod(principal_minor, count)  # as split_principal, inlined for speed
    schedule: list[Instalment] = []
    cumulative = 0
    for index, due in enumerate(dates):
        amount = base + 1 if index < remainder else base
        cumulative += amount
        schedule.append(_new_instalment((index + 1, due, amount, cumulative)))
    return schedule


def instalments_from_arrays(
    due_dates: Sequence[date], cumulative: Sequence[int]
) -> list[Instalment]:
    """A stored revision's instalments back from its due-date and cumulative arrays."""
    previous = 0
    result = []
    for number, (due, total) in enumerate(zip(due_dates, cumulative, strict=True), start=1):
        result.append(Instalment(number, due, total - previous, total))
        previous = total
    return result


def owing_again(instalments: Sequence[Instalment], amount: int) -> list[Instalment]:
    """The schedule owing `amount` more principal (a payment it counted as made, which
    bounced), spread over its instalments in proportion to the principal each already
    carries, as rebuilding it with the amount outstanding would have spread it: each
    cumulative figure grows by amount x cumulative / total, rounded down, and the last
    takes the remainder. Still exact and monotonic; months without principal (grace,
    moratorium) stay without."""
    total = instalments[-1].cumulative_minor
    cumulative = [
        i.cumulative_minor + (amount * i.cumulative_minor // total if total else 0)
        for i in instalments
    ]
    cumulative[-1] = total + amount
    return instalments_from_arrays([i.due_date for i in instalments], cumulative)
