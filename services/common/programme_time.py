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
