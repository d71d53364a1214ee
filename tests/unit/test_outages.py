"""Outage log lines: one when it starts, one a minute while it lasts, one when it ends;
per dependency (shared by the whole process): the first failure with its traceback, one
line per 30 s, one on recovery."""

from __future__ import annotations

import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from sqlalchemy.exc import OperationalError

from fanfare_grpc.outages import DependencyOutages, OutageLog, dependency_name

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


def _redis_down() -> RedisConnectionError:
    return RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


def test_a_dependency_outage_has_one_traceback_a_line_every_30_s_and_a_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = SteppedClock()
    outages = DependencyOutages(logging.getLogger(LOGGER), clock=clock)
    activities = ("key invalidation channel", "background job queues", "/q.v1.Q/GetPosition")
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        outages.succeeded("background job queues")  # nothing was wrong: nothing to say
        outages.reachable("redis")
        assert caplog.records == []
        for _ in range(95):  # three activities failing every second for 95 s
            for activity in activities:
                outages.failed(activity, _redis_down())
            clock.now += 1
        assert outages.in_outage("redis")
        outages.succeeded("key usage recording")  # never saw redis fail: says nothing
        assert outages.in_outage("redis")
        outages.succeeded("background job queues")  # it works again: redis is back
        outages.succeeded("key invalidation channel")
        outages.reachable("redis")
        assert not outages.in_outage("redis")
    reason = "Error 111 connecting to 127.0.0.1:6379. Connection refused."
    assert _messages(caplog) == [
        (
            logging.WARNING,
            f"redis unreachable ({reason}); reported every 30 s until it recovers",
        ),
        (logging.WARNING, f"redis unreachable for 30 s: {reason}"),
        (logging.WARNING, f"redis unreachable for 60 s: {reason}"),
        (logging.WARNING, f"redis unreachable for 90 s: {reason}"),
        (logging.INFO, "redis recovered after 95 s"),
    ]
    first, *rest = caplog.records
    assert first.exc_info is not None  # the first failure's traceback, once
    assert first.exc_info[1].__class__ is RedisConnectionError
    assert all(record.exc_info is None for record in rest)
    assert first.__dict__["dependency"] == "redis"
    assert first.__dict__["activity"] == "key invalidation channel"


def test_each_dependency_has_its_own_outage(caplog: pytest.LogCaptureFixture) -> None:
    clock = SteppedClock()
    outages = DependencyOutages(logging.getLogger(LOGGER), clock=clock, report_seconds=10)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        outages.failed("background job queues", _database_down())
        clock.now += 4
        outages.failed("key invalidation channel", _redis_down())
        clock.now += 6
        outages.failed("background job queues", _database_down())  # 10 s: reported
        outages.failed("key invalidation channel", _redis_down())  # 6 s: quiet
        outages.reachable("database")  # a health probe answered
        clock.now += 4
        outages.failed("key invalidation channel", _redis_down())  # 10 s: reported
    assert [message for _, message in _messages(caplog)] == [
        "database unreachable (Connection refused); reported every 10 s until it recovers",
        (
            "redis unreachable (Error 111 connecting to 127.0.0.1:6379. Connection refused.); "
            "reported every 10 s until it recovers"
        ),
        "database unreachable for 10 s: Connection refused",
        "database recovered after 10 s",
        "redis unreachable for 10 s: Error 111 connecting to 127.0.0.1:6379. Connection refused.",
    ]
    assert [record.exc_info is not None for record in caplog.records] == [
        True,
        True,
        False,
        False,
        False,
    ]


def test_a_flapping_dependency_says_unreachable_at_most_once_per_30_s(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A full Redis answers the health probe's PING (every 2 s) but refuses every write.
    clock = SteppedClock()
    outages = DependencyOutages(logging.getLogger(LOGGER), clock=clock)
    full = RedisOutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'.")
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for second in range(70):
            outages.failed("/q.v1.Q/EnterQueue", full)
            if second % 2 == 1:
                outages.reachable("redis")
            clock.now += 1
    start = (
        "redis unreachable (OOM command not allowed when used memory > 'maxmemory'.); "
        "reported every 30 s until it recovers"
    )
    assert [message for _, message in _messages(caplog)] == [
        start,
        "redis recovered after 1 s",
        start,  # 30 s later
        "redis recovered after 1 s",
        start,
        "redis recovered after 1 s",
    ]
    assert [record.exc_info is not None for record in caplog.records] == [
        True,
        False,
        True,
        False,
        True,
        False,
    ]


def test_an_outage_started_quietly_is_logged_once_it_lasts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = SteppedClock()
    outages = DependencyOutages(logging.getLogger(LOGGER), clock=clock)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        outages.failed("background job queues", _database_down())
        clock.now += 1
        outages.succeeded("background job queues")
        clock.now += 1
        for _ in range(40):  # down again (quietly: it said so 2 s ago), for 40 s
            outages.failed("background job queues", _database_down())
            clock.now += 1
        outages.succeeded("background job queues")
    assert [message for _, message in _messages(caplog)] == [
        "database unreachable (Connection refused); reported every 30 s until it recovers",
        "database recovered after 1 s",
        # 30 s after the last "unreachable" line: said again, traceback included.
        "database unreachable (Connection refused); reported every 30 s until it recovers",
        "database recovered after 40 s",
    ]
    assert [record.exc_info is not None for record in caplog.records] == [
        True,
        False,
        True,
        False,
    ]


def test_an_activity_outage_is_reported_to_the_dependency_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = SteppedClock()
    outages = DependencyOutages(logging.getLogger(LOGGER), clock=clock)
    outage = OutageLog(
        logging.getLogger(LOGGER),
        "background job queues",
        clock=clock,
        meanwhile="nobody admitted",
        outages=outages,
    )
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for _ in range(70):
            outage.failed(_database_down())
            clock.now += 1
        outage.succeeded()
    assert [message for _, message in _messages(caplog)] == [
        "database unreachable (Connection refused); reported every 30 s until it recovers",
        # The activity says what it does meanwhile; the dependency's lines remind.
        (
            "background job queues: database unreachable (Connection refused); retrying "
            "(nobody admitted) until it recovers"
        ),
        "database unreachable for 30 s: Connection refused",
        "database unreachable for 60 s: Connection refused",
        "database recovered after 70 s",
        "background job queues: recovered after 70 s",
    ]
    assert [record.exc_info is not None for record in caplog.records] == [
        True,
        False,
        False,
        False,
        False,
        False,
    ]


def test_the_dependency_of_an_error() -> None:
    assert dependency_name(_database_down()) == "database"
    assert dependency_name(_redis_down()) == "redis"
    try:
        try:
            raise _redis_down()
        except RedisConnectionError as error:
            raise ConnectionError("lost") from error
    except ConnectionError as wrapped:
        assert dependency_name(wrapped) == "redis"
    assert dependency_name(TimeoutError()) == "backend"
