"""A backend outage under a stream of calls and the running worker, as the log shows it:
one traceback per dependency (its first failure), one line per 30 s while it lasts, one
"recovered after N s" line; no line, and above all no traceback, per failing call or
per retry.

The outage tracker's clock is the test's: it moves 10 s per batch of calls, so the
30 s cadence shows without waiting minutes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from fanfare.queue.v1 import queue_service_pb2 as queues
from grpc import aio

from fanfare_grpc.app import LOGGER_NAME, Application
from fanfare_grpc.outages import DependencyOutages
from fanfare_grpc.server import RunningServer, start_server
from fanfare_grpc.settings import Settings
from fanfare_grpc.storage import migrate
from tests.backends import REDIS_URL
from tests.clock import MutableClock
from tests.conftest import embedded_settings
from tests.consumers import consumer_world
from tests.log_capture import service_log_handler
from tests.queues import QueueWorld
from tests.tcp_proxy import TcpProxy, proxied

# 50 calls in 10 batches, the outage clock moving 10 s after each: a 100 s outage.
BATCHES = 10
CALLS_PER_BATCH = 5
OUTAGE_SECONDS_PER_BATCH = 10.0
# Between batches the worker ticks (every second) and the invalidation channel
# reconnects (twice a second), failing each time.
REAL_SECONDS_PER_BATCH = 0.5
# What the log may hold besides each call's access line: per dependency its first
# failure, 3 reminders (30, 60, 90 s) and its recovery (5); per retrying activity
# (worker job, invalidation channel, revocation markers, key usage) a line when it
# starts and one when it stops failing (6 here); the health status going NOT_SERVING
# and back, and once more right after the recovery when the probe meets a pooled
# connection the outage broke (4). 15 in practice.
MAX_OUTAGE_LINES = 18


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class SteppedClock:
    """A monotonic clock that only moves when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def service_logs() -> Iterator[_Records]:
    with service_log_handler(_Records()) as handler:
        yield handler


@pytest.fixture
async def redis_proxy() -> AsyncIterator[tuple[TcpProxy, str]]:
    async with proxied(REDIS_URL, 6379) as proxy_and_url:
        yield proxy_and_url


@pytest.fixture
async def database_proxy(postgres_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    async with proxied(postgres_url, 5432) as proxy_and_url:
        yield proxy_and_url


async def _start(
    settings: Settings, clock: MutableClock, outage_clock: SteppedClock
) -> RunningServer:
    await migrate.upgrade_to_head(settings.effective_owner_database_url)
    application = Application.build(
        settings,
        clock=clock,
        # Ticks are numbered by Redis's clock, as in production: the worker needs Redis.
        outages=DependencyOutages(logging.getLogger(LOGGER_NAME), clock=outage_clock),
    )
    return await start_server(application)  # with the worker


def _outage_lines(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    """Everything but the per-call access lines."""
    return [record for record in records if record.getMessage() != "rpc finished"]


async def _calls_during_outage(
    call: Callable[[], Awaitable[object]], outage_clock: SteppedClock
) -> list[grpc.StatusCode]:
    codes: list[grpc.StatusCode] = []
    for _ in range(BATCHES):
        for _ in range(CALLS_PER_BATCH):
            try:
                await call()
            except aio.AioRpcError as error:
                codes.append(error.code())
            else:
                codes.append(grpc.StatusCode.OK)
        await asyncio.sleep(REAL_SECONDS_PER_BATCH)
        outage_clock.now += OUTAGE_SECONDS_PER_BATCH
    return codes


async def _wait_for_line(logs: _Records, prefix: str) -> None:
    async with asyncio.timeout(20):
        while not any(record.getMessage().startswith(prefix) for record in logs.records):
            await asyncio.sleep(0.05)


def _assert_one_outage_story(lines: list[logging.LogRecord], dependency: str) -> None:
    messages = [record.getMessage() for record in lines]
    with_traceback = [record for record in lines if record.exc_info is not None]
    # The first failure of the dependency, with its traceback; no other traceback.
    assert [record.getMessage().split(" (")[0] for record in with_traceback] == [
        f"{dependency} unreachable"
    ]
    assert with_traceback[0].__dict__["activity"]  # which call or task noticed
    assert with_traceback[0] is next(r for r in lines if r.getMessage().startswith(dependency))
    reminders = [m for m in messages if m.startswith(f"{dependency} unreachable for ")]
    assert [m.split(":")[0] for m in reminders] == [
        f"{dependency} unreachable for 30 s",
        f"{dependency} unreachable for 60 s",
        f"{dependency} unreachable for 90 s",
    ]
    assert [m for m in messages if m.startswith(f"{dependency} recovered")] == [
        f"{dependency} recovered after 100 s"
    ]
    # Nothing per failing call: no "backend unavailable" warning, no per-call line.
    assert not [record for record in lines if "request_id" in record.__dict__]
    assert len(lines) <= MAX_OUTAGE_LINES, messages


async def test_a_redis_outage_under_calls_and_the_worker_logs_one_story(
    redis_proxy: tuple[TcpProxy, str], tmp_path: Path, redis_prefix: str, service_logs: _Records
) -> None:
    tcp_proxy, proxied_url = redis_proxy
    settings = dataclasses.replace(
        embedded_settings(tmp_path), redis_url=proxied_url, redis_key_prefix=redis_prefix
    )
    clock, outage_clock = MutableClock(), SteppedClock()
    server = await _start(settings, clock, outage_clock)
    try:
        async with consumer_world(server, clock) as world:
            qw = QueueWorld(world)
            queue_id = await qw.open_queue()
            shopper = await qw.shopper("device-1")
            await qw.enter(queue_id, shopper)
            before = len(service_logs.records)
            tcp_proxy.cut()
            codes = await _calls_during_outage(
                lambda: qw.stub.GetPosition(
                    queues.GetPositionRequest(queue_id=queue_id), metadata=shopper.metadata
                ),
                outage_clock,
            )
            assert set(codes) == {grpc.StatusCode.UNAVAILABLE}
            tcp_proxy.restore()
            await _wait_for_line(service_logs, "redis recovered after ")
            await qw.position(queue_id, shopper)  # served again
            await asyncio.sleep(1.5)  # a worker tick and more probes: nothing new to say
            _assert_one_outage_story(_outage_lines(service_logs.records[before:]), "redis")
    finally:
        await server.shutdown(grace_seconds=1.0)


async def test_a_database_outage_under_calls_and_the_worker_logs_one_story(
    database_proxy: tuple[TcpProxy, str],
    tmp_path: Path,
    redis_prefix: str,
    service_logs: _Records,
) -> None:
    tcp_proxy, proxied_url = database_proxy
    settings = dataclasses.replace(
        embedded_settings(tmp_path),
        database_url=proxied_url,
        redis_url=REDIS_URL,
        redis_key_prefix=redis_prefix,
        health_check_timeout_seconds=1.0,
    )
    clock, outage_clock = MutableClock(), SteppedClock()
    server = await _start(settings, clock, outage_clock)
    try:
        async with consumer_world(server, clock) as world:
            qw = QueueWorld(world)
            queue_id = await qw.open_queue()
            before = len(service_logs.records)
            tcp_proxy.cut()
            codes = await _calls_during_outage(
                lambda: qw.stub.GetQueue(
                    queues.GetQueueRequest(queue_id=queue_id), metadata=qw.operator()
                ),
                outage_clock,
            )
            assert set(codes) == {grpc.StatusCode.UNAVAILABLE}
            tcp_proxy.restore()
            await _wait_for_line(service_logs, "database recovered after ")
            await qw.stub.GetQueue(
                queues.GetQueueRequest(queue_id=queue_id), metadata=qw.operator()
            )
            await asyncio.sleep(1.5)
            _assert_one_outage_story(_outage_lines(service_logs.records[before:]), "database")
    finally:
        await server.shutdown(grace_seconds=1.0)
