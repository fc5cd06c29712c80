"""The programme's own calendar: its days begin and end in Baku, whatever the clock of
the machine a service runs on."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

PROGRAMME_TIME_ZONE = "Asia/Baku"
_ZONE = ZoneInfo(PROGRAMME_TIME_ZONE)


def programme_today() -> date:
    return datetime.now(_ZONE).date()
