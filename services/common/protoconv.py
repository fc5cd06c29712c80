"""Conversions between Python dates and times and their protobuf forms, used by every
service and the journey activities."""

from __future__ import annotations

import time
from datetime import date, datetime

from google.protobuf import timestamp_pb2
from google.type import date_pb2


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def now_timestamp() -> timestamp_pb2.Timestamp:
    """The current time; a fifth of the cost of timestamp(datetime.now(UTC))."""
    ns = time.time_ns()
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def proto_date(value: date) -> date_pb2.Date:
    return date_pb2.Date(year=value.year, month=value.month, day=value.day)


def from_proto_date(value: date_pb2.Date) -> date:
    """A civil date the request validation has already checked."""
    return date(value.year, value.month, value.day)
