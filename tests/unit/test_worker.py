"""The background worker runs each job on its schedule and survives failures."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy.exc import OperationalError

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


async def test_a_backend_outage_is_logged_once_and_its_end_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = {"now": 0.0}
    attempts = 0
    recovered = asyncio.Event()

    async def queues() -> None:
        nonlocal attempts
        attempts += 1
        clock["now"] += 1.0  # a one-second tick
        if attempts <= 30:
            raise OperationalError("SELECT 1", {}, OSError("Connection refused"))
        recovered.set()

    stop = asyncio.Event()
    worker = Worker(
        [PeriodicJob("queues", 0.001, queues)],
        logging.getLogger("test.worker"),
        monotonic=lambda: clock["now"],
    )
    with caplog.at_level(logging.INFO, logger="test.worker"):
        task = asyncio.create_task(worker.run(stop))
        await asyncio.wait_for(recovered.wait(), timeout=5)
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    outage_lines = [
        (record.levelname, record.getMessage())
        for record in caplog.records
        if record.getMessage().startswith("background job")
    ]
    assert outage_lines == [
        (
            "WARNING",
            (
                "background job queues: database unreachable (Connection refused); "
                "retrying, reported again every 60 s until it recovers"
            ),
        ),
        ("INFO", "background job queues: recovered after 30 s"),
    ]
    assert all(record.exc_info is None for record in caplog.records)


async def test_a_bug_in_a_job_is_still_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failed = asyncio.Event()

    async def buggy() -> None:
        failed.set()
        raise KeyError("not an outage")

    stop = asyncio.Event()
    worker = Worker([PeriodicJob("buggy", 60, buggy)], logging.getLogger("test.worker"))
    with caplog.at_level(logging.INFO, logger="test.worker"):
        task = asyncio.create_task(worker.run(stop))
        await asyncio.wait_for(failed.wait(), timeout=5)
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    [failure] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert failure.getMessage() == "background job failed"
    assert failure.exc_info is not None
