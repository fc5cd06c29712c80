"""protoconv.timestamp gives exactly what protobuf's own Timestamp.FromDatetime gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from services.common.protoconv import timestamp

ZONES = st.sampled_from([None, UTC, timezone(timedelta(hours=4)), timezone(timedelta(hours=-3))])


@given(
    moment=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    zone=ZONES,
)
def test_timestamp_matches_from_datetime(moment: datetime, zone: timezone | None) -> None:
    moment = moment.replace(tzinfo=zone)  # naive: UTC, as FromDatetime reads it
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(moment)
    assert timestamp(moment) == expected


def test_a_moment_before_the_epoch_keeps_its_nanos_positive() -> None:
    stamp = timestamp(datetime(1969, 12, 31, 23, 59, 59, 250_000, tzinfo=UTC))
    assert (stamp.seconds, stamp.nanos) == (-1, 250_000_000)
