"""The programme's own calendar: its days begin and end in Baku, whatever the clock of
the machine a service runs on."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from services.common.errors import invalid

PROGRAMME_TIME_ZONE = "Asia/Baku"
PROGRAMME_ZONE = ZoneInfo(PROGRAMME_TIME_ZONE)


def programme_today() -> date:
    return datetime.now(PROGRAMME_ZONE).date()


def programme_date(moment: datetime) -> date:
    """The day `moment` (an aware time, such as a simulated clock's) falls on in Baku."""
    return moment.astimezone(PROGRAMME_ZONE).date()


def not_after_today(field: str, on: date, *, simulated_clock: bool = False) -> None:
    """A day that has come (in Baku): INVALID_ARGUMENT on `field` otherwise, reason
    DATE_IN_FUTURE. Only a service whose clock is simulated (journeys under time
    skipping, the `simulate` command) accepts later days."""
    today = programme_today()
    if on > today and not simulated_clock:
        raise invalid(field, f"must not be after today ({today} in Baku)", "DATE_IN_FUTURE")


MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def month_end(year: int, month: int) -> int:
    """The last day of a month."""
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        return 29
    return MONTH_DAYS[month - 1]


def add_months(anchor: date, months: int) -> date:
    """The anchor's day `months` calendar months later, clamped to that month's end (31
    January and one month: 28 or 29 February). Due dates, follow-ups and journeys all
    count months so."""
    year, month = divmod(anchor.year * 12 + anchor.month - 1 + months, 12)
    month += 1
    day = anchor.day
    if day > 28:  # only the last days of a month can need clamping
        day = min(day, month_end(year, month))
    return date(year, month, day)
