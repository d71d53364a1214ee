"""Log safety: other libraries' arguments withheld, floods cut to a budget."""

from __future__ import annotations

import io
import json
import logging

from fanfare_grpc.logs import (
    BUDGETED,
    MAX_BUDGETS,
    BudgetedStreamHandler,
    JsonFormatter,
    ThirdPartyRedaction,
    TokenBucket,
)

SECRET = "sk_test_" + "S" * 44


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _handler(clock: FakeMonotonic, burst: int = 5) -> tuple[BudgetedStreamHandler, io.StringIO]:
    stream = io.StringIO()
    handler = BudgetedStreamHandler(stream, records_per_second=2, burst=burst, monotonic=clock)
    handler.addFilter(ThirdPartyRedaction())
    handler.setFormatter(JsonFormatter())
    return handler, stream


def _record(name: str, level: int, message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, args, None)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_third_party_arguments_and_exception_messages_are_withheld() -> None:
    handler, stream = _handler(FakeMonotonic())
    record = _record("grpc._cython.cygrpc", logging.ERROR, "Invalid encoding on %s", SECRET)
    try:
        raise ValueError(f"bad value {SECRET}")
    except ValueError as error:
        record.exc_info = (type(error), error, error.__traceback__)
    handler.handle(record)
    handler.handle(_record("aiosqlite", logging.DEBUG, f"pre-formatted {'x' * 1000}"))
    logged = stream.getvalue()
    assert SECRET not in logged and SECRET[8:] not in logged
    first, second = _lines(stream)
    assert first["message"] == "Invalid encoding on %s [arguments withheld]"
    assert first["exception_type"] == "ValueError"
    assert "test_logs.py" in str(first["exception_frames"])
    assert len(str(second["message"])) == 300


def test_own_records_and_migration_steps_keep_their_arguments() -> None:
    handler, stream = _handler(FakeMonotonic())
    handler.handle(_record("fanfare_grpc", logging.INFO, "listening on %s", "127.0.0.1:1"))
    handler.handle(
        _record("alembic.runtime.migration", logging.INFO, "Running %s", "upgrade 0004 -> 0005")
    )
    assert [line["message"] for line in _lines(stream)] == [
        "listening on 127.0.0.1:1",
        "Running upgrade 0004 -> 0005",
    ]


def test_budgeted_records_beyond_the_burst_are_dropped_and_counted() -> None:
    clock = FakeMonotonic()
    handler, stream = _handler(clock)
    for _ in range(50):
        handler.handle(_record("grpc", logging.ERROR, "junk"))
    lines = _lines(stream)
    assert [line["message"] for line in lines] == ["junk"] * 5 + ["log budget exceeded"]
    assert lines[-1]["budget"] == "third_party" and lines[-1]["dropped_records"] == 1
    clock.now += 1.0  # two records a second refill
    for _ in range(10):
        handler.handle(_record("grpc", logging.ERROR, "junk"))
    lines = _lines(stream)[6:]
    # The 44 records dropped since the last report are counted before new ones pass.
    assert lines[0]["message"] == "log budget exceeded" and lines[0]["dropped_records"] == 44
    assert [line["message"] for line in lines[1:]] == ["junk", "junk"]


def test_categories_have_their_own_budgets_and_the_access_log_has_none() -> None:
    handler, stream = _handler(FakeMonotonic(), burst=1)
    anonymous = _record("fanfare_grpc", logging.INFO, "rpc finished")
    setattr(anonymous, BUDGETED, True)
    for _ in range(3):
        handler.handle(anonymous)
        handler.handle(_record("grpc", logging.ERROR, "junk"))
        handler.handle(_record("fanfare_grpc", logging.ERROR, "unexpected error"))
        handler.handle(_record("fanfare_grpc", logging.INFO, "rpc finished"))
    messages = [line["message"] for line in _lines(stream)]
    assert messages.count("rpc finished") == 1 + 3  # one anonymous, every vouched-for one
    assert messages.count("junk") == 1
    assert messages.count("unexpected error") == 1


def test_a_flood_of_one_warning_cannot_crowd_out_another() -> None:
    # A stranger can cause "refresh token reused" warnings at will; an outage starting
    # in the same second must still be written.
    handler, stream = _handler(FakeMonotonic())
    for _ in range(500):
        handler.handle(_record("fanfare_grpc", logging.WARNING, "refresh token reused"))
    handler.handle(_record("fanfare_grpc", logging.WARNING, "background job queues: down"))
    handler.handle(_record("fanfare_grpc", logging.ERROR, "background job failed"))
    lines = _lines(stream)
    messages = [line["message"] for line in lines]
    assert messages.count("refresh token reused") == 5
    assert messages[-2:] == ["background job queues: down", "background job failed"]
    [summary] = [line for line in lines if line["message"] == "log budget exceeded"]
    assert summary["dropped_message"] == "refresh token reused"


def test_budgets_are_bounded() -> None:
    handler, _ = _handler(FakeMonotonic())
    for index in range(MAX_BUDGETS + 50):
        handler.handle(_record("grpc", logging.ERROR, f"template {index}"))
    assert len(handler._budgets) == MAX_BUDGETS


def test_token_bucket_refills_at_its_rate() -> None:
    clock = FakeMonotonic()
    bucket = TokenBucket(rate=10, burst=3, monotonic=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.125
    assert bucket.take() and not bucket.take()
    clock.now += 100
    assert sum(bucket.take() for _ in range(10)) == 3
