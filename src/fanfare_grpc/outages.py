"""Backend outages in the log: a line when one starts, one every 30 s while it lasts,
one when it ends; never a traceback per retry or per failing call.

A loop that retries every second, or a stream of calls answering UNAVAILABLE, would
otherwise bury everything else in the log under identical tracebacks for as long as
the database or Redis is down.

Two views of one outage: ``DependencyOutages`` (one per process, shared by every
component) says what is down ("redis unreachable for 90 s"), with the traceback of
its first failure; an ``OutageLog`` per retrying activity says what that activity
does meanwhile ("cached API keys re-checked every 1 s").
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from fanfare_grpc.backends import (
    backend_error_reason,
    is_backend_unavailable,
    unavailable_backend_name,
)

REMINDER_SECONDS = 60.0
# How often a dependency that stays down is reported again; also the least time
# between two "unreachable" lines of one dependency, whatever it does.
OUTAGE_REPORT_SECONDS = 30.0
# How far down an exception's cause chain its dependency is looked for.
_MAX_CAUSE_DEPTH = 8


def dependency_name(error: BaseException) -> str:
    """``database``, ``redis``, or ``backend`` when the error does not say (a bare
    socket error or timeout with no driver exception behind it)."""
    current: BaseException | None = error
    for _ in range(_MAX_CAUSE_DEPTH):
        if current is None:
            break
        if isinstance(current, SQLAlchemyError):
            return "database"
        if isinstance(current, RedisError):
            return "redis"
        current = current.__cause__ or current.__context__
    return "backend"


@dataclasses.dataclass
class _Outage:
    started: float
    # Activities that saw it fail: one of them working again means it is back.
    activities: set[str]
    # Whether its start was logged (a dependency that flaps starts outages quietly).
    logged: bool = False


class DependencyOutages:
    """The outage state of each dependency this process uses; one per process.

    Every component that reaches the database or Redis reports its backend failures
    here (``failed``) and, when it retries, its successes (``succeeded``); health
    probes report a dependency that answers (``reachable``). The log then holds, per
    dependency and outage: the first failure with its traceback, one line per
    ``report_seconds`` while it lasts ("redis unreachable for 90 s: <reason>"), and
    one "redis recovered after 95 s" line.

    A dependency says "unreachable" at most once per ``report_seconds``, whatever it
    does: one that comes and goes (a full Redis answers PING but refuses writes, so
    every probe "recovers" it) starts its next outages quietly, and a quiet outage
    that lasts is logged, traceback included, once that interval has passed.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        clock: Callable[[], float] = time.monotonic,
        report_seconds: float = OUTAGE_REPORT_SECONDS,
    ) -> None:
        self._logger = logger
        self._clock = clock
        self._report = report_seconds
        self._outages: dict[str, _Outage] = {}
        # When each dependency last logged an "unreachable" line.
        self._last_line: dict[str, float] = {}

    def in_outage(self, dependency: str) -> bool:
        """Whether ``dependency`` failed and has not been seen working since."""
        return dependency in self._outages

    def failed(self, activity: str, error: BaseException) -> None:
        """``activity`` could not reach a backend (``is_backend_unavailable(error)``)."""
        dependency = dependency_name(error)
        now = self._clock()
        outage = self._outages.get(dependency)
        if outage is None:
            outage = self._outages[dependency] = _Outage(now, set())
        outage.activities.add(activity)
        last = self._last_line.get(dependency)
        if last is not None and now - last < self._report:
            return
        self._last_line[dependency] = now
        reason = backend_error_reason(error)
        fields = {"dependency": dependency, "activity": activity, "reason": reason}
        if not outage.logged:
            outage.logged = True
            self._logger.warning(
                # Which activity noticed is a field: the message names only the
                # dependency, so each activity's own lines stay easy to pick out.
                f"{dependency} unreachable ({reason}); "
                f"reported every {self._report:g} s until it recovers",
                exc_info=error,
                extra=fields,
            )
            return
        self._logger.warning(
            f"{dependency} unreachable for {now - outage.started:.0f} s: {reason}",
            extra={**fields, "outage_seconds": round(now - outage.started, 3)},
        )

    def succeeded(self, activity: str) -> None:
        """``activity`` worked: every dependency it saw failing is back."""
        for dependency, outage in list(self._outages.items()):
            if activity in outage.activities:
                self._recovered(dependency, outage)

    def reachable(self, dependency: str) -> None:
        """A probe of ``dependency`` succeeded."""
        outage = self._outages.get(dependency)
        if outage is not None:
            self._recovered(dependency, outage)

    def _recovered(self, dependency: str, outage: _Outage) -> None:
        del self._outages[dependency]
        if not outage.logged:
            return  # its start was not logged either
        duration = self._clock() - outage.started
        self._logger.info(
            f"{dependency} recovered after {duration:.0f} s",
            extra={"dependency": dependency, "outage_seconds": round(duration, 3)},
        )


class OutageLog:
    """Throttled log lines for one retrying activity (a job, a subscription).

    Call ``failed`` on each failed attempt and ``succeeded`` on each good one;
    ``meanwhile`` tells operators what the service does until then. With the
    process's ``outages``, the failure is reported there too (the traceback of the
    dependency's first failure, its reminders, its recovery) and this activity only
    says when it starts and stops failing.
    """

    def __init__(
        self,
        logger: logging.Logger,
        activity: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        reminder_seconds: float = REMINDER_SECONDS,
        meanwhile: str = "",
        outages: DependencyOutages | None = None,
    ) -> None:
        self._logger = logger
        self._activity = activity
        self._meanwhile = f" ({meanwhile})" if meanwhile else ""
        self._clock = clock
        self._reminder = reminder_seconds
        self._outages = outages
        self._started: float | None = None
        self._last_logged = 0.0

    @property
    def in_outage(self) -> bool:
        """Whether the last attempt failed."""
        return self._started is not None

    def failed(self, error: BaseException) -> None:
        """Log the first failure, then at most one reminder per ``reminder_seconds``."""
        now = self._clock()
        backend = unavailable_backend_name(error)
        fields = {
            "activity": self._activity,
            "backend": backend,
            "reason": backend_error_reason(error),
        }
        if self._outages is not None:
            self._outages.failed(self._activity, error)
        if self._started is None:
            self._started = self._last_logged = now
            # With the shared tracker, the dependency's own lines are the reminders.
            reminders = (
                "" if self._outages is not None else f", reported again every {self._reminder:g} s"
            )
            self._logger.warning(
                f"{self._activity}: {backend} unreachable ({fields['reason']}); "
                f"retrying{self._meanwhile}{reminders} until it recovers",
                extra=fields,
            )
            return
        if self._outages is None and now - self._last_logged >= self._reminder:
            self._last_logged = now
            self._logger.warning(
                f"{self._activity}: {backend} still unreachable after {now - self._started:.0f} s",
                extra=fields,
            )

    def succeeded(self) -> None:
        """End an outage (one line saying how long it lasted); otherwise nothing."""
        if self._outages is not None:
            self._outages.succeeded(self._activity)
        if self._started is None:
            return
        duration = self._clock() - self._started
        self._started = None
        self._logger.info(
            f"{self._activity}: recovered after {duration:.0f} s",
            extra={"activity": self._activity, "outage_seconds": round(duration, 3)},
        )


class RetriedFailureLog:
    """Failures of an activity that retries by itself: outages through ``OutageLog``,
    anything else (a bug) with its traceback."""

    def __init__(
        self,
        logger: logging.Logger,
        activity: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        meanwhile: str = "",
        outages: DependencyOutages | None = None,
    ) -> None:
        self._logger = logger
        self._activity = activity
        self._outage = OutageLog(
            logger, activity, clock=clock, meanwhile=meanwhile, outages=outages
        )

    def failed(self, error: Exception) -> None:
        """One attempt failed."""
        if is_backend_unavailable(error):
            self._outage.failed(error)
        else:
            self._logger.warning(f"{self._activity} failed", exc_info=error)

    def succeeded(self) -> None:
        """One attempt succeeded."""
        self._outage.succeeded()
