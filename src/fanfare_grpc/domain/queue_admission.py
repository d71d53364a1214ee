"""Background queue work: scheduled open/close, admission at the configured rate,
expiry of unredeemed admissions.

Several workers may run at once (``serve`` processes and ``worker`` processes).
Schedules use conditional updates in the database (one worker wins each
transition). Admission is claimed per queue and per one-second tick through the cache (set if
absent), so each tick's share is admitted once whichever worker runs it; shares are
computed from the tick number, so admissions are spread evenly (e.g. 30/min: one
every 2 s), never one burst per minute.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable
from typing import Protocol

from fanfare_grpc import errors
from fanfare_grpc.cache.protocols import KeyValueStore
from fanfare_grpc.domain.queue_config import QueueConfigService
from fanfare_grpc.domain.queue_entries import QueueEntries, queue_ref
from fanfare_grpc.domain.queues import Queue, QueueStatus, ScheduledQueue

# Shares are computed per whole second (the rate is per minute, in integers).
TICK_SECONDS = 1
# Ticks missed (no worker ran them) are made up for at most this far back, so an
# outage never ends in a burst.
CATCH_UP_TICKS = 2
TICK_CLAIM_TTL_SECONDS = 120.0
# Admitted consumers of a closed queue may still redeem until their tokens expire.
CLOSED_QUEUE_SWEEP = dt.timedelta(hours=25)


class QueueSchedule(Protocol):
    """Cross-organization index of queues (worker only)."""

    async def needing_work(self, closed_since: dt.datetime) -> list[ScheduledQueue]:
        """The queues the worker has something to do for: SCHEDULED, OPEN and PAUSED
        ones, DRAFT ones with a ``closes_at``, and those CLOSED since ``closed_since``
        (their admissions may still expire). Never every draft or closed queue ever
        made: this runs every second."""
        ...


class QueueWorker:
    """One pass over every live queue per call of ``run_once``."""

    def __init__(
        self,
        schedule: QueueSchedule,
        config: QueueConfigService,
        entries: QueueEntries,
        elections: KeyValueStore,
        *,
        clock: Callable[[], dt.datetime],
        logger: logging.Logger,
    ) -> None:
        self._schedule = schedule
        self._config = config
        self._entries = entries
        self._elections = elections
        self._clock = clock
        self._logger = logger

    async def run_once(self) -> None:
        """Apply due schedules, admit, expire."""
        now = self._clock()
        # DRAFT too: any queue closes at its closes_at, a draft included (otherwise a
        # draft past its closes_at would stay a draft that OpenQueue could still open).
        queues = await self._schedule.needing_work(now - CLOSED_QUEUE_SWEEP)
        for scheduled in queues:
            if self._transition_due(scheduled, now):
                await self._config.apply_schedule(
                    scheduled.organization_id, scheduled.mode, scheduled.queue_id
                )
        for scheduled in queues:
            if scheduled.status is QueueStatus.CLOSED and (
                scheduled.closed_at is None or now - scheduled.closed_at > CLOSED_QUEUE_SWEEP
            ):
                continue
            if scheduled.status in (QueueStatus.DRAFT, QueueStatus.SCHEDULED):
                continue  # nothing to admit or expire before opening
            try:
                queue = await self._config.get(
                    scheduled.organization_id, scheduled.mode, scheduled.queue_id
                )
            except errors.NotFound:
                continue  # deleted meanwhile
            if queue.status is QueueStatus.OPEN:
                await self._admission_tick(queue, now)
            await self._entries.expire(queue)

    @staticmethod
    def _transition_due(scheduled: ScheduledQueue, now: dt.datetime) -> bool:
        if scheduled.status is QueueStatus.CLOSED:
            return False
        if scheduled.closes_at is not None and scheduled.closes_at <= now:
            return True
        return (
            scheduled.status is QueueStatus.SCHEDULED
            and scheduled.opens_at is not None
            and scheduled.opens_at <= now
        )

    async def _admission_tick(self, queue: Queue, now: dt.datetime) -> None:
        """Admit the share of the rate that falls in this tick (and in up to
        ``CATCH_UP_TICKS`` earlier ticks nobody ran). Tick t's share is
        ``⌊rate·(t+1)/60⌋ − ⌊rate·t/60⌋``, so shares add up to the rate exactly and
        spread evenly; each tick's share is claimed once, by whichever worker sets its
        marker first, so two workers can never admit the same share twice."""
        tag = queue_ref(queue).hash_tag
        tick = math.floor(now.timestamp() / TICK_SECONDS)
        opened_at = (queue.opened_at or now).timestamp()
        rate = queue.admission_rate_per_minute
        count = 0
        for past in range(tick - CATCH_UP_TICKS, tick + 1):
            if (past + 1) * TICK_SECONDS <= opened_at:
                continue  # that tick ended before the queue opened
            share = rate * (past + 1) // 60 - rate * past // 60
            if share and await self._elections.set_if_absent(
                f"queue-admission-tick:{tag}:{past}", "1", TICK_CLAIM_TTL_SECONDS
            ):
                count += share
        if count > 0:
            await self._entries.admit(queue, count)
