"""Request times that no datetime holds are INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import datetime as dt

import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from fanfare_grpc import errors
from fanfare_grpc.servicers import convert


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(2**62, 0), (-(2**62), 0), (253402300800, 0), (0, -1), (0, 10**9)],
)
def test_invalid_timestamps_name_the_field(seconds: int, nanos: int) -> None:
    with pytest.raises(errors.InvalidArgument) as raised:
        convert.from_timestamp(timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos), "opens_at")
    assert [violation.field for violation in raised.value.violations] == ["opens_at"]


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(2**62, 0), (-(2**62), 0), (100, -1), (-100, 1), (0, 10**9), (0, -(10**9))],
)
def test_invalid_durations_name_the_field(seconds: int, nanos: int) -> None:
    with pytest.raises(errors.InvalidArgument) as raised:
        convert.from_duration(duration_pb2.Duration(seconds=seconds, nanos=nanos), "handoff_ttl")
    assert [violation.field for violation in raised.value.violations] == ["handoff_ttl"]


def test_valid_times_convert() -> None:
    moment = dt.datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=dt.UTC)
    assert convert.from_timestamp(convert.timestamp(moment), "t") == moment  # type: ignore[arg-type]
    assert convert.from_duration(duration_pb2.Duration(seconds=-1, nanos=-5), "d") == dt.timedelta(
        seconds=-1, microseconds=0
    )
    assert convert.from_duration(convert.duration(dt.timedelta(minutes=5)), "d") == dt.timedelta(
        minutes=5
    )
