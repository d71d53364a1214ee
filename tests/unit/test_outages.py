"""Outage log lines: one when it starts, one a minute while it lasts, one when it ends."""

from __future__ import annotations

import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from fanfare_grpc.outages import OutageLog

LOGGER = "test.outages"


class SteppedClock:
    """A monotonic clock that only moves when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _database_down() -> OperationalError:
    return OperationalError(
        "SELECT 1",
        {},
        OSError('connection to server at "127.0.0.1", port 5432 failed: Connection refused'),
    )


def _messages(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(record.levelno, record.getMessage()) for record in caplog.records]


def test_one_line_per_outage_then_one_a_minute_then_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = SteppedClock()
    outage = OutageLog(logging.getLogger(LOGGER), "background job queues", clock=clock)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        outage.succeeded()  # nothing was wrong: nothing to say
        assert caplog.records == []
        for _ in range(59):  # one failure per second for 59 s
            outage.failed(_database_down())
            clock.now += 1
        assert _messages(caplog) == [
            (
                logging.WARNING,
                (
                    "background job queues: database unreachable (Connection refused); "
                    "retrying, reported again every 60 s until it recovers"
                ),
            )
        ]
        assert outage.in_outage
        outage.failed(_database_down())  # 59 s after the first
        assert len(caplog.records) == 1
        clock.now += 1
        outage.failed(_database_down())  # 60 s after the first: a reminder
        clock.now += 30
        outage.failed(_database_down())  # 30 s after the reminder: quiet
        assert _messages(caplog)[1:] == [
            (logging.WARNING, "background job queues: database still unreachable after 60 s")
        ]
        clock.now += 5
        outage.succeeded()
        outage.succeeded()
        assert _messages(caplog)[2:] == [
            (logging.INFO, "background job queues: recovered after 95 s")
        ]
        assert not outage.in_outage
        # A new outage is reported at once.
        outage.failed(RedisConnectionError("Error 111 connecting to 127.0.0.1:6379."))
        assert _messages(caplog)[3][1].startswith("background job queues: cache unreachable")
    assert all(record.exc_info is None for record in caplog.records)  # never a traceback
    first = caplog.records[0]
    assert first.__dict__["backend"] == "database"
    assert first.__dict__["reason"] == "Connection refused"
