"""Conversions between Python dates and times and their protobuf forms, used by every
service and the journey activities."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime

from google.protobuf import timestamp_pb2
from google.type import date_pb2

_EPOCH = {True: datetime(1970, 1, 1, tzinfo=UTC), False: datetime(1970, 1, 1)}


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """As Timestamp.FromDatetime (a naive time is UTC), in exact integer arithmetic and a
    third of its cost: every response carrying a record's times makes this call."""
    since = moment - _EPOCH[moment.utcoffset() is not None]
    return timestamp_pb2.Timestamp(
        seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1_000
    )


def now_timestamp() -> timestamp_pb2.Timestamp:
    """The current time; a fifth of the cost of timestamp(datetime.now(UTC))."""
    ns = time.time_ns()
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def proto_date(value: date) -> date_pb2.Date:
    return date_pb2.Date(year=value.year, month=value.month, day=value.day)


def from_proto_date(value: date_pb2.Date) -> date:
    """A civil date the request validation has already checked."""
    return date(value.year, value.month, value.day)
