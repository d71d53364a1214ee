"""Backend outages under a running server: one log line when one starts, one when it ends,
never a traceback per retry (the worker ticks every second, the key invalidation
channel reconnects twice a second). The one traceback is the dependency's first
failure, logged once for the whole process (``DependencyOutages``)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.auth.v1 import auth_service_pb2_grpc
from fanfare.queue.v1 import queue_service_pb2 as queues
from grpc import aio

from fanfare_grpc.worker import QUEUE_TICK_SECONDS
from tests.backends import REDIS_URL
from tests.clock import MutableClock
from tests.conftest import embedded_settings, new_organization, start_migrated_server
from tests.consumers import consumer_world
from tests.grpc_helpers import bearer
from tests.log_capture import service_log_handler
from tests.queues import QueueWorld
from tests.tcp_proxy import TcpProxy, proxied


@pytest.fixture
async def redis_proxy() -> AsyncIterator[tuple[TcpProxy, str]]:
    async with proxied(REDIS_URL, 6379) as proxy_and_url:
        yield proxy_and_url


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    async with proxied(postgres_url, 5432) as proxy_and_url:
        yield proxy_and_url


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def service_logs() -> Iterator[_Records]:
    with service_log_handler(_Records()) as handler:
        yield handler


def _worker_lines(logs: _Records) -> list[logging.LogRecord]:
    return [
        record
        for record in logs.records
        if record.__dict__.get("job") or record.getMessage().startswith("background job")
    ]


async def test_worker_logs_a_database_outage_once_and_its_recovery_once(
    proxy: tuple[TcpProxy, str], tmp_path: Path, redis_prefix: str, service_logs: _Records
) -> None:
    tcp_proxy, proxied_url = proxy
    settings = dataclasses.replace(
        embedded_settings(tmp_path),
        database_url=proxied_url,
        redis_url=REDIS_URL,
        redis_key_prefix=redis_prefix,
        health_check_timeout_seconds=1.0,
    )
    server = await start_migrated_server(settings)
    try:
        tcp_proxy.cut()
        # Several of the worker's ticks fail meanwhile.
        await asyncio.sleep(4 * QUEUE_TICK_SECONDS)
        during = _worker_lines(service_logs)
        [outage] = during  # not one per tick
        assert outage.levelno == logging.WARNING
        # The reason depends on when the cut hit (mid-connection or at connect).
        assert outage.getMessage().startswith("background job queues: database unreachable (")
        # The process's "database unreachable for N s" lines are the reminders.
        assert outage.getMessage().endswith("; retrying until it recovers")
        assert _tracebacks(service_logs) == ["database unreachable"]
        tcp_proxy.restore()
        async with asyncio.timeout(15):
            while len(_worker_lines(service_logs)) < 2:
                await asyncio.sleep(0.05)
        recovery = _worker_lines(service_logs)[1]
        assert recovery.levelno == logging.INFO
        assert recovery.getMessage().startswith("background job queues: recovered after ")
        await asyncio.sleep(2 * QUEUE_TICK_SECONDS)
        assert len(_worker_lines(service_logs)) == 2  # nothing more once it is back
    finally:
        await server.shutdown(grace_seconds=1.0)


def _tracebacks(logs: _Records) -> list[str]:
    """What the records with a traceback say, up to the reason in parentheses."""
    return [
        record.getMessage().split(" (")[0] for record in logs.records if record.exc_info is not None
    ]


def _invalidation_lines(logs: _Records) -> list[logging.LogRecord]:
    return [record for record in logs.records if "key invalidation" in record.getMessage()]


async def test_key_invalidation_channel_logs_a_redis_outage_once_and_its_recovery_once(
    redis_proxy: tuple[TcpProxy, str], tmp_path: Path, redis_prefix: str, service_logs: _Records
) -> None:
    tcp_proxy, proxied_url = redis_proxy
    settings = dataclasses.replace(
        embedded_settings(tmp_path), redis_url=proxied_url, redis_key_prefix=redis_prefix
    )
    server = await start_migrated_server(settings, run_worker=False)
    try:
        assert server.application.key_invalidation_listener.subscribed.is_set()
        tcp_proxy.cut()
        await asyncio.sleep(3)  # six reconnection attempts
        [outage] = _invalidation_lines(service_logs)
        assert outage.levelno == logging.WARNING
        assert outage.getMessage().startswith("key invalidation channel: cache unreachable (")
        assert "cached API keys re-checked every 1 s" in outage.getMessage()
        assert _tracebacks(service_logs) == ["redis unreachable"]
        tcp_proxy.restore()
        await asyncio.wait_for(
            server.application.key_invalidation_listener.subscribed.wait(), timeout=15
        )
        recovery = _invalidation_lines(service_logs)[1:]
        assert [record.levelno for record in recovery] == [logging.INFO]
        assert recovery[0].getMessage().startswith("key invalidation channel: recovered after ")
    finally:
        await server.shutdown(grace_seconds=1.0)


async def test_key_usage_recording_logs_a_database_outage_once_and_its_recovery_once(
    proxy: tuple[TcpProxy, str], tmp_path: Path, redis_prefix: str, service_logs: _Records
) -> None:
    tcp_proxy, proxied_url = proxy
    settings = dataclasses.replace(
        embedded_settings(tmp_path),
        database_url=proxied_url,
        redis_url=REDIS_URL,
        redis_key_prefix=redis_prefix,
    )
    server = await start_migrated_server(settings, run_worker=False)
    try:
        organization = await new_organization(server)
        async with aio.insecure_channel(server.address) as channel:
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            await stub.ListApiKeys(
                auth.ListApiKeysRequest(), metadata=bearer(organization.test_admin_key.plaintext)
            )
        usage = server.application.key_usage
        tcp_proxy.cut()
        for _ in range(3):  # three flush intervals
            await usage.flush()
        [outage] = [r for r in service_logs.records if "key usage" in r.getMessage()]
        assert outage.levelno == logging.WARNING
        assert outage.getMessage().startswith("key usage recording: database unreachable (")
        assert _tracebacks(service_logs) == ["database unreachable"]
        tcp_proxy.restore()
        await usage.flush()  # the kept uses are written now
        recovery = [r for r in service_logs.records if "key usage" in r.getMessage()][1:]
        assert [record.levelno for record in recovery] == [logging.INFO]
        assert recovery[0].getMessage().startswith("key usage recording: recovered after ")
    finally:
        await server.shutdown(grace_seconds=1.0)


async def test_position_refresh_logs_a_redis_outage_once_and_its_recovery_once(
    redis_proxy: tuple[TcpProxy, str], tmp_path: Path, redis_prefix: str, service_logs: _Records
) -> None:
    # Every watched queue's poller refreshes once a second: during an outage that was
    # one warning with a traceback per queue and second.
    tcp_proxy, proxied_url = redis_proxy
    settings = dataclasses.replace(
        embedded_settings(tmp_path), redis_url=proxied_url, redis_key_prefix=redis_prefix
    )
    clock = MutableClock()
    server = await start_migrated_server(settings, clock=clock, run_worker=False)
    try:
        async with consumer_world(server, clock) as world:
            qw = QueueWorld(world)
            queue_id = await qw.open_queue()
            shopper = await qw.shopper("device-1")
            await qw.enter(queue_id, shopper)
            call = qw.stub.WatchPosition(
                queues.WatchPositionRequest(queue_id=queue_id), metadata=shopper.metadata
            )
            await call.read()
            tcp_proxy.cut()
            await asyncio.sleep(4)  # four refreshes fail
            [outage] = _refresh_lines(service_logs)
            assert outage.levelno == logging.WARNING
            assert outage.getMessage().startswith("position refresh: cache unreachable (")
            assert all(record.exc_info is None for record in _refresh_lines(service_logs))
            tcp_proxy.restore()
            async with asyncio.timeout(15):
                while len(_refresh_lines(service_logs)) < 2:
                    await asyncio.sleep(0.05)
            recovery = _refresh_lines(service_logs)[1]
            assert recovery.levelno == logging.INFO
            assert recovery.getMessage().startswith("position refresh: recovered after ")
            call.cancel()
    finally:
        await server.shutdown(grace_seconds=1.0)


def _refresh_lines(logs: _Records) -> list[logging.LogRecord]:
    return [record for record in logs.records if "position refresh" in record.getMessage()]
