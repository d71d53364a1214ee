"""Background queue work: scheduled open/close, admission at the configured rate,
expiry of unredeemed admissions.

Several workers may run at once (``serve`` processes and ``worker`` processes).
Schedules use conditional updates in the database (one worker wins each
transition). Admission is claimed per queue and per one-second tick through the cache (set if
absent), so each tick's share is admitted once whichever worker runs it; shares are
computed from the tick number, so admissions are spread evenly (e.g. 30/min: one
every 2 s), never one burst per minute. Ticks are numbered by the shared cache's
clock (Redis ``TIME``), never by each worker's own: workers whose clocks disagree
would otherwise each claim "their" second and admit its share again.

Ceilings per queue (and so per organization and mode, times its open queues): the
rate is at most 1,000,000 a minute, a tick's share at most ⌈rate/60⌉ (16,667); a
worker pass admits at most two ticks' shares (the current one plus at most one for
up to ``CATCH_UP_TICKS`` missed ones); every admission goes to the store in calls of
at most ``MAX_ADMISSIONS_PER_CALL``, at most ``ADMISSION_EXTRA_CALLS`` more than its
count needs (see ``QueueEntries.admit``).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Protocol

from fanfare_grpc import errors
from fanfare_grpc.cache.protocols import KeyValueStore
from fanfare_grpc.domain.queue_config import QueueConfigService
from fanfare_grpc.domain.queue_entries import QueueEntries, queue_ref
from fanfare_grpc.domain.queues import Queue, QueueStatus, ScheduledQueue

# Shares are computed per whole second (the rate is per minute, in integers).
TICK_SECONDS = 1
# Ticks missed (no worker ran them) are made up for at most this far back, and
# together for at most one tick's share (the rest is dropped, not carried), so an
# outage or a slow pass never ends in a burst: a pass admits at most two shares.
CATCH_UP_TICKS = 2
CATCH_UP_SHARES = 1
TICK_CLAIM_TTL_SECONDS = 120.0
# Admitted consumers of a closed queue may still redeem until their tokens expire.
CLOSED_QUEUE_SWEEP = dt.timedelta(hours=25)


# Unix time by the clock every worker of the deployment shares (Redis ``TIME``; the
# process's own clock with the in-process cache, where there is one process).
TickClock = Callable[[], Awaitable[float]]


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
        tick_clock: TickClock,
        logger: logging.Logger,
    ) -> None:
        self._schedule = schedule
        self._tick_clock = tick_clock
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
            # A loss is logged within a pass, whether or not a consumer calls.
            await self._entries.check_state(queue)
            if queue.status is QueueStatus.OPEN:
                await self._admission_tick(queue)
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

    async def _admission_tick(self, queue: Queue) -> None:
        """Admit the share of the rate that falls in this tick (and in up to
        ``CATCH_UP_TICKS`` earlier ticks nobody ran, together at most
        ``CATCH_UP_SHARES`` ticks' worth). Tick t's share is
        ``⌊rate·(t+1)/60⌋ − ⌊rate·t/60⌋``, so shares add up to the rate exactly and
        spread evenly; each tick's share is claimed once, by whichever worker sets its
        marker first, so two workers can never admit the same share twice."""
        tag = queue_ref(queue).hash_tag
        tick_time = await self._tick_clock()
        tick = math.floor(tick_time / TICK_SECONDS)
        opened_at = queue.opened_at.timestamp() if queue.opened_at else tick_time
        rate = queue.admission_rate_per_minute
        count = 0
        caught_up = 0
        catch_up_cap = CATCH_UP_SHARES * -(-rate * TICK_SECONDS // 60)  # ⌈rate/60⌉ a tick
        for past in range(tick - CATCH_UP_TICKS, tick + 1):
            if (past + 1) * TICK_SECONDS <= opened_at:
                continue  # that tick ended before the queue opened
            share = rate * (past + 1) // 60 - rate * past // 60
            if share and await self._elections.set_if_absent(
                f"queue-admission-tick:{tag}:{past}", "1", TICK_CLAIM_TTL_SECONDS
            ):
                if past < tick:
                    share = min(share, catch_up_cap - caught_up)
                    caught_up += share
                count += share
        if count > 0:
            await self._entries.admit(queue, count)
