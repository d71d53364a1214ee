"""Backend outages in the log: a line when one starts, one a minute while it lasts,
one when it ends; never a traceback per retry.

A loop that retries every second would otherwise bury everything else in the log
under identical tracebacks for as long as the database or Redis is down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fanfare_grpc.backends import (
    backend_error_reason,
    is_backend_unavailable,
    unavailable_backend_name,
)

REMINDER_SECONDS = 60.0


class OutageLog:
    """Throttled log lines for one retrying activity (a job, a subscription).

    Call ``failed`` on each failed attempt and ``succeeded`` on each good one;
    ``meanwhile`` tells operators what the service does until then.
    """

    def __init__(
        self,
        logger: logging.Logger,
        activity: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        reminder_seconds: float = REMINDER_SECONDS,
        meanwhile: str = "",
    ) -> None:
        self._logger = logger
        self._activity = activity
        self._meanwhile = f" ({meanwhile})" if meanwhile else ""
        self._clock = clock
        self._reminder = reminder_seconds
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
        if self._started is None:
            self._started = self._last_logged = now
            self._logger.warning(
                f"{self._activity}: {backend} unreachable ({fields['reason']}); "
                f"retrying{self._meanwhile}, reported again every {self._reminder:g} s "
                "until it recovers",
                extra=fields,
            )
            return
        if now - self._last_logged >= self._reminder:
            self._last_logged = now
            self._logger.warning(
                f"{self._activity}: {backend} still unreachable after {now - self._started:.0f} s",
                extra=fields,
            )

    def succeeded(self) -> None:
        """End an outage (one line saying how long it lasted); otherwise nothing."""
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
    ) -> None:
        self._logger = logger
        self._activity = activity
        self._outage = OutageLog(logger, activity, clock=clock, meanwhile=meanwhile)

    def failed(self, error: Exception) -> None:
        """One attempt failed."""
        if is_backend_unavailable(error):
            self._outage.failed(error)
        else:
            self._logger.warning(f"{self._activity} failed", exc_info=error)

    def succeeded(self) -> None:
        """One attempt succeeded."""
        self._outage.succeeded()
