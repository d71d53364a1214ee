"""JSON log lines on stderr: one object per line, machine-readable first."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, TextIO

# Attributes every LogRecord has; anything else passed through ``extra=`` is a field.
_STANDARD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """Formats a record as a single JSON object with its ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            # Tracebacks stay in the server log (never in responses) for debugging.
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


# Drivers that log statement parameters (secrets, hashes) at DEBUG: never below WARNING.
QUIET_LOGGERS = ("aiosqlite", "sqlalchemy.engine", "sqlalchemy.pool", "psycopg", "redis")
OWN_LOGGER = "fanfare_grpc"
# Other libraries' messages are cut here: they are templates, not reports.
THIRD_PARTY_MESSAGE_LIMIT = 300
# Records of one message template outside the per-call access log, per second.
DEFAULT_RECORDS_PER_SECOND = 20.0
DEFAULT_BURST = 200
# Distinct (category, message template) budgets kept at once.
MAX_BUDGETS = 1024
# Set through ``extra={BUDGETED: True}`` on records caused by callers nobody vouches
# for (calls without a principal): they share the "anonymous" budget.
BUDGETED = "_budgeted"


# Other libraries' loggers whose arguments are known to hold nothing a caller sent:
# alembic's migration steps name revisions ("Running upgrade 0004 -> 0005").
ARGUMENTS_KEPT = frozenset({"alembic.runtime.migration"})


def _is_own(record: logging.LogRecord) -> bool:
    return record.name == OWN_LOGGER or record.name.startswith(OWN_LOGGER + ".")


class ThirdPartyRedaction(logging.Filter):
    """Other libraries' records keep their message template, never its arguments.

    grpcio logs a whole metadata value (credentials included) when a header is not
    UTF-8, and database drivers log statement parameters at DEBUG. Such values travel
    in a record's arguments and exception messages, so whatever a library's logger
    level, only the template, the exception type and the stack frames get through.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if _is_own(record) or record.name in ARGUMENTS_KEPT:
            return True
        template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        if record.args:
            template += " [arguments withheld]"
        record.msg = template[:THIRD_PARTY_MESSAGE_LIMIT]
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            exception = record.exc_info[1]
            record.exception_type = type(exception).__qualname__
            record.exception_frames = "".join(traceback.format_tb(exception.__traceback__))
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


@dataclasses.dataclass
class TokenBucket:
    """At most ``rate`` events a second on average, ``burst`` at once."""

    rate: float
    burst: float
    monotonic: Callable[[], float] = time.monotonic
    _tokens: float = dataclasses.field(init=False)
    _last: float = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self._tokens = self.burst
        self._last = self.monotonic()

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = self.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def budget_category(record: logging.LogRecord) -> str | None:
    """Which log budget a record spends, None for the unbudgeted access log.

    Anything a stranger can trigger at will is budgeted: other libraries' records
    (grpcio's complaints about malformed frames), records of anonymous calls, and
    every warning or error, so that a flood of bad traffic cannot grow the log
    faster than a fixed rate.
    """
    if not _is_own(record):
        return "third_party"
    if getattr(record, BUDGETED, False):
        return "anonymous"
    if record.levelno >= logging.WARNING:
        return "problems"
    return None


@dataclasses.dataclass
class _Budget:
    bucket: TokenBucket
    dropped: int = 0
    reported_at: float = float("-inf")


class BudgetedStreamHandler(logging.StreamHandler[TextIO]):
    """A stream handler that drops records over their budget.

    Each message template of each category has its own budget, so a flood of one
    kind of record (a stranger replaying a refresh token, grpcio complaining about
    junk headers) cannot crowd out another (an outage starting, a job failing). What
    was dropped is reported: one line per template and second at most, counting the
    records it left out.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        records_per_second: float = DEFAULT_RECORDS_PER_SECOND,
        burst: int = DEFAULT_BURST,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(stream)
        self._monotonic = monotonic
        self._rate = records_per_second
        self._burst = burst
        self._budgets: collections.OrderedDict[tuple[str, str], _Budget] = collections.OrderedDict()

    def emit(self, record: logging.LogRecord) -> None:
        category = budget_category(record)
        if category is None:
            super().emit(record)
            return
        key = (category, record.msg if isinstance(record.msg, str) else "")
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = _Budget(
                TokenBucket(self._rate, self._burst, self._monotonic)
            )
            self._forget_oldest()
        self._budgets.move_to_end(key)
        if not budget.bucket.take():
            budget.dropped += 1
            if self._monotonic() - budget.reported_at >= 1.0:
                self._report_dropped(key, budget)
            return
        if budget.dropped:
            self._report_dropped(key, budget)
        super().emit(record)

    def _forget_oldest(self) -> None:
        # Templates are ours or other libraries' (never a caller's text), so few;
        # the bound only keeps a misbehaving library from growing this map.
        while len(self._budgets) > MAX_BUDGETS:
            key, budget = self._budgets.popitem(last=False)
            if budget.dropped:
                self._report_dropped(key, budget)

    def _report_dropped(self, key: tuple[str, str], budget: _Budget) -> None:
        budget.reported_at = self._monotonic()
        dropped, budget.dropped = budget.dropped, 0
        summary = logging.LogRecord(
            OWN_LOGGER, logging.WARNING, __file__, 0, "log budget exceeded", None, None
        )
        summary.budget = key[0]
        summary.dropped_message = key[1]
        summary.dropped_records = dropped
        super().emit(summary)


def configure_logging(level: str, stream: TextIO | None = None) -> None:
    """Send every ``fanfare_grpc`` (and root) log record to ``stream`` as JSON."""
    handler = BudgetedStreamHandler(stream or sys.stderr)
    handler.addFilter(ThirdPartyRedaction())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
