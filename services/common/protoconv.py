"""Conversions between Python dates and times and their protobuf forms, used by every
service and the journey activities."""

from __future__ import annotations

from datetime import date, datetime

from google.protobuf import timestamp_pb2
from google.type import date_pb2


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def proto_date(value: date) -> date_pb2.Date:
    return date_pb2.Date(year=value.year, month=value.month, day=value.day)


def from_proto_date(value: date_pb2.Date) -> date:
    """A civil date the request validation has already checked."""
    return date(value.year, value.month, value.day)
