"""Background work: periodic jobs run as asyncio tasks (in ``serve`` or ``worker``).

Later issues add jobs (admission ticks, schedules, webhook delivery, retention).
Several workers may run at once; jobs coordinate through the database and Redis,
never through this process's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from fanfare_grpc.backends import is_backend_unavailable
from fanfare_grpc.outages import DependencyOutages, OutageLog


@dataclasses.dataclass(frozen=True)
class PeriodicJob:
    """A coroutine function run every ``interval_seconds``."""

    name: str
    interval_seconds: float
    run: Callable[[], Awaitable[None]]


class Worker:
    """Runs each job on its own schedule until stopped; one failure never stops it."""

    def __init__(
        self,
        jobs: Sequence[PeriodicJob],
        logger: logging.Logger,
        *,
        stop_grace_seconds: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
        outages: DependencyOutages | None = None,
    ) -> None:
        self._jobs = tuple(jobs)
        self._outages = outages
        self._logger = logger
        self._stop_grace = stop_grace_seconds
        self._monotonic = monotonic

    async def run(self, stop: asyncio.Event) -> None:
        """Run every job until ``stop`` is set.

        A running iteration may finish within the stop grace period; past it, it is
        cancelled (jobs must be safe to interrupt: their state is transactional).
        """
        self._logger.info("worker started", extra={"jobs": [job.name for job in self._jobs]})
        tasks = [asyncio.create_task(self._loop(job, stop), name=job.name) for job in self._jobs]
        try:
            await stop.wait()
            if tasks:
                await asyncio.wait(tasks, timeout=self._stop_grace)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._logger.info("worker stopped")

    async def _loop(self, job: PeriodicJob, stop: asyncio.Event) -> None:
        outage = OutageLog(
            self._logger,
            f"background job {job.name}",
            clock=self._monotonic,
            outages=self._outages,
        )
        while not stop.is_set():
            try:
                await job.run()
            except Exception as error:
                if is_backend_unavailable(error):
                    outage.failed(error)
                else:
                    self._logger.exception("background job failed", extra={"job": job.name})
            else:
                outage.succeeded()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=job.interval_seconds)


class QueueJobs(Protocol):
    """The queue worker (schedules, admission, expiry)."""

    async def run_once(self) -> None:
        """One pass over every live queue."""
        ...


QUEUE_TICK_SECONDS = 1.0


def background_jobs(queues: QueueJobs) -> list[PeriodicJob]:
    """The jobs this version runs (the webhook and audit issues add theirs)."""
    return [PeriodicJob("queues", QUEUE_TICK_SECONDS, queues.run_once)]
