"""The background worker runs each job on its schedule and survives failures."""

from __future__ import annotations

import asyncio
import logging

from fanfare_grpc.worker import PeriodicJob, Worker


async def test_jobs_run_repeatedly_and_failures_do_not_stop_them() -> None:
    runs = {"steady": 0, "flaky": 0}
    both_ran_three_times = asyncio.Event()

    def count(name: str) -> None:
        runs[name] += 1
        if min(runs.values()) >= 3:
            both_ran_three_times.set()

    async def steady() -> None:
        count("steady")

    async def flaky() -> None:
        count("flaky")
        raise RuntimeError("boom")

    stop = asyncio.Event()
    worker = Worker(
        [PeriodicJob("steady", 0.01, steady), PeriodicJob("flaky", 0.01, flaky)],
        logging.getLogger("test.worker"),
    )
    task = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(both_ran_three_times.wait(), timeout=5)
    stop.set()
    await asyncio.wait_for(task, timeout=5)


async def test_stop_lets_a_running_iteration_finish() -> None:
    finished = asyncio.Event()
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.sleep(0.2)
        finished.set()

    stop = asyncio.Event()
    worker = Worker([PeriodicJob("slow", 60, slow)], logging.getLogger("test.worker"))
    task = asyncio.create_task(worker.run(stop))
    await started.wait()
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert finished.is_set()
