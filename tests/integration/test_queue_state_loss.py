"""Queue state loss is detected, reported once and answered distinctly (issue 11, item 2).

Entries live only in the cache. When it loses them (Redis restarted without
persistence or flushed; an embedded server restarted) while the database says the
queue takes entries, consumers hear UNAVAILABLE ``QUEUE_STATE_LOST`` ("re-enter")
instead of NOT_FOUND, one error is logged per queue, ``GetQueueStats`` shows when, and
entering again works. Both backends lose state behind the server's back here (the
Redis one only its own throwaway prefix); a real restart runs on a private
redis-server, and ``serve`` refuses a Redis without persistence unless told it is fine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import shutil
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
import redis.asyncio
from fanfare.queue.v1 import queue_pb2, queue_service_pb2_grpc
from fanfare.queue.v1 import queue_service_pb2 as queues
from grpc import aio

from fanfare_grpc.cache.queue_state_memory import MemoryQueueStateStore
from fanfare_grpc.cache.queue_state_redis import RedisQueueStateStore
from fanfare_grpc.domain.queue_entries import QUEUE_STATE_LOST_LOG, queue_ref
from fanfare_grpc.domain.queues import QueueStatus
from fanfare_grpc.server import RunningServer
from tests.backends import throwaway_postgres_database
from tests.clock import MutableClock
from tests.conftest import BackendSettings, embedded_settings, start_migrated_server
from tests.consumers import consumer_world
from tests.grpc_helpers import bearer, error_reasons, expect_status
from tests.private_redis import private_redis
from tests.processes import ServerProcess, process_env, run_cli
from tests.queues import QueueWorld, Shopper

LOST_MESSAGE = "queue state lost; re-enter"
LOST_REASON = "QUEUE_STATE_LOST"
# WatchPosition polls every second; the loss is seen within one interval or two.
UPDATE_TIMEOUT = 5.0


@pytest.fixture
async def qw(backend: BackendSettings) -> AsyncIterator[QueueWorld]:
    clock = MutableClock()
    server = await start_migrated_server(backend.settings, clock=clock, run_worker=False)
    try:
        async with consumer_world(server, clock) as world:
            yield QueueWorld(world)
    finally:
        await server.shutdown(grace_seconds=1.0)


async def lose_state(server: RunningServer, queue_id: str, organization_id: str) -> None:
    """What a Redis restart without persistence does to the queue's live state."""
    application = server.application
    store = application.cache.queue_states
    queue = await application.queue_config.get(organization_id, "test", queue_id)
    if isinstance(store, MemoryQueueStateStore):
        store._queues.pop(queue_ref(queue))
        return
    assert isinstance(store, RedisQueueStateStore)
    url = application.settings.redis_url
    assert url is not None
    client = redis.asyncio.Redis.from_url(url)
    try:
        # Only this test's keys (its throwaway prefix), never the shared Redis's others.
        assert await client.delete(*store.keys(queue_ref(queue))) > 0
    finally:
        await client.aclose()


def loss_lines(qw: QueueWorld) -> list[logging.LogRecord]:
    return [r for r in qw.world.codes.records if r.getMessage() == QUEUE_STATE_LOST_LOG]


async def stats(qw: QueueWorld, queue_id: str) -> queues.GetQueueStatsResponse:
    response: queues.GetQueueStatsResponse = await qw.stub.GetQueueStats(
        queues.GetQueueStatsRequest(queue_id=queue_id), metadata=qw.operator()
    )
    return response


async def expect_lost(call: object) -> None:
    error = await expect_status(call, grpc.StatusCode.UNAVAILABLE)
    assert error.details() == LOST_MESSAGE
    assert error_reasons(error) == [LOST_REASON]


async def test_lost_state_is_unavailable_logged_once_shown_in_stats_and_reentered(
    qw: QueueWorld,
) -> None:
    queue_id = await qw.open_queue()
    untouched = await qw.open_queue(name="other drop")
    first, second = await qw.shopper("device-1"), await qw.shopper("device-2")
    never = await qw.shopper("device-3")
    await qw.enter(queue_id, first)
    await qw.enter(queue_id, second)
    # Before any loss: no entry is NOT_FOUND, and stats show nothing lost.
    await expect_status(qw.position(queue_id, never), grpc.StatusCode.NOT_FOUND)
    before = await stats(qw, queue_id)
    assert before.waiting == 2 and not before.HasField("state_lost_at")

    organization_id = qw.world.acme.organization.organization.organization_id
    await lose_state(qw.world.server, queue_id, organization_id)
    qw.world.clock.freeze()  # the time of the loss is when it is found: now

    # The queue is still OPEN by the database ...
    queue = await qw.stub.GetQueue(
        queues.GetQueueRequest(queue_id=queue_id), metadata=qw.operator()
    )
    assert queue.queue.status == queue_pb2.QUEUE_STATUS_OPEN
    # ... and its consumers are told to enter again, not that they never did.
    await expect_lost(qw.position(queue_id, first))
    await expect_lost(qw.position(queue_id, second))
    await expect_lost(qw.position(queue_id, first))
    lost = await stats(qw, queue_id)
    assert lost.HasField("state_lost_at")
    found_at = lost.state_lost_at.ToDatetime(dt.UTC)
    assert abs(found_at - qw.world.clock()) <= dt.timedelta(microseconds=1)
    assert (lost.waiting, lost.admitted) == (0, 0)
    lines = loss_lines(qw)
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].levelno == logging.ERROR
    assert getattr(lines[0], "queue_id") == queue_id  # noqa: B009
    assert getattr(lines[0], "organization_id") == organization_id  # noqa: B009

    # Entering again works (at the back of a new line); the others still hear it.
    entered = await qw.enter(queue_id, second)
    assert entered.entry.status == queue_pb2.ENTRY_STATUS_QUEUED
    assert (await qw.position(queue_id, second)).entry.position == 1
    await expect_lost(qw.position(queue_id, first))
    assert (await qw.enter(queue_id, first)).entry.position == 2
    again = await stats(qw, queue_id)
    assert again.waiting == 2 and again.state_lost_at == lost.state_lost_at
    assert len(loss_lines(qw)) == 1

    # Another queue of the same organization lost nothing.
    assert not (await stats(qw, untouched)).HasField("state_lost_at")
    await expect_status(qw.position(untouched, never), grpc.StatusCode.NOT_FOUND)


async def test_watch_position_ends_unavailable_when_the_state_is_lost(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue()
    shopper = await qw.shopper("device-1")
    await qw.enter(queue_id, shopper)
    call = qw.stub.WatchPosition(
        queues.WatchPositionRequest(queue_id=queue_id), metadata=shopper.metadata
    )
    try:
        first = await call.read()
        assert isinstance(first, queues.WatchPositionResponse)
        assert first.entry.position == 1
        organization_id = qw.world.acme.organization.organization.organization_id
        await lose_state(qw.world.server, queue_id, organization_id)
        with pytest.raises(aio.AioRpcError) as raised:
            async with asyncio.timeout(UPDATE_TIMEOUT):
                while True:  # heartbeats may come first; the stream must end with it
                    message = await call.read()
                    assert message is not aio.EOF
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert raised.value.details() == LOST_MESSAGE
        assert error_reasons(raised.value) == [LOST_REASON]
    finally:
        call.cancel()
    assert len(loss_lines(qw)) == 1


async def test_the_worker_reports_a_loss_nobody_asks_about(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue()
    shopper = await qw.shopper("device-1")
    await qw.enter(queue_id, shopper)
    organization_id = qw.world.acme.organization.organization.organization_id
    await lose_state(qw.world.server, queue_id, organization_id)
    worker = qw.world.server.application.queue_worker
    await worker.run_once()
    [line] = loss_lines(qw)
    assert getattr(line, "queue_id") == queue_id  # noqa: B009
    await worker.run_once()
    await expect_lost(qw.position(queue_id, shopper))
    assert len(loss_lines(qw)) == 1


async def test_a_queue_deleted_meanwhile_is_not_reported_lost(qw: QueueWorld) -> None:
    """Another replica deletes a queue (dropping its state) while this one still holds
    it as OPEN in its per-process copy (up to 1 s): no loss, no leftover marker."""
    application = qw.world.server.application
    application.queue_entries._monotonic = lambda: 0.0  # its copy stays fresh
    queue_id = await qw.open_queue()
    shopper = await qw.shopper("device-1")
    await qw.enter(queue_id, shopper)
    organization_id = qw.world.acme.organization.organization.organization_id
    queue = await application.queue_config.get(organization_id, "test", queue_id)
    # What the other replica's DeleteQueue does, unseen by this process.
    assert await application.queue_config._store.delete(queue, frozenset(QueueStatus))
    await application.cache.queue_states.drop(queue_ref(queue))

    error = await expect_status(qw.position(queue_id, shopper), grpc.StatusCode.NOT_FOUND)
    assert error.details() == "queue not found"
    assert loss_lines(qw) == []
    assert (await application.cache.queue_states.views(queue_ref(queue), [])).marker is None


async def test_a_restarted_embedded_server_reports_its_open_queues_lost(tmp_path: Path) -> None:
    # The embedded backend keeps entries in the process: a restart loses them too.
    settings = embedded_settings(tmp_path / "data")
    clock = MutableClock()
    server = await start_migrated_server(settings, clock=clock, run_worker=False)
    try:
        async with consumer_world(server, clock) as world:
            qw = QueueWorld(world)
            queue_id = await qw.open_queue()
            shopper = await qw.shopper("device-1")
            await qw.enter(queue_id, shopper)
            tenant = world.acme
    finally:
        await server.shutdown(grace_seconds=1.0)
    server = await start_migrated_server(settings, clock=clock, run_worker=False)
    try:
        async with aio.insecure_channel(server.address) as channel:
            stub = queue_service_pb2_grpc.QueueServiceStub(channel)
            await expect_lost(
                stub.GetPosition(
                    queues.GetPositionRequest(queue_id=queue_id), metadata=shopper.metadata
                )
            )
            entered = await stub.EnterQueue(
                queues.EnterQueueRequest(queue_id=queue_id), metadata=shopper.metadata
            )
            assert entered.entry.position == 1
            response = await stub.GetQueueStats(
                queues.GetQueueStatsRequest(queue_id=queue_id),
                metadata=bearer(tenant.secret_key),
            )
            assert response.HasField("state_lost_at") and response.waiting == 1
    finally:
        await server.shutdown(grace_seconds=1.0)


# A real restart of a private redis-server without persistence, two replicas.


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclasses.dataclass
class RestartableRedis:
    """A private redis-server without persistence that the test restarts (empty)."""

    port: int
    directory: Path
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is required on PATH for this test", pytrace=False)
        self.process = await asyncio.create_subprocess_exec(
            executable,
            *("--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory)),
            *("--save", "", "--appendonly", "no"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = redis.asyncio.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            for _ in range(100):
                with contextlib.suppress(redis.exceptions.ConnectionError):
                    if await client.ping():
                        return
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        pytest.fail("the private redis-server did not answer", pytrace=False)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)  # a crash: nothing saved
            await self.process.wait()


@contextlib.asynccontextmanager
async def restartable_redis(directory: Path) -> AsyncIterator[RestartableRedis]:
    server = RestartableRedis(_free_port(), directory)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _settled(call: Callable[[], Awaitable[object]]) -> grpc.aio.AioRpcError:
    """The error of a call once the replica's Redis connections are back (the first
    call after the restart may meet a dropped connection: plain UNAVAILABLE)."""
    for _ in range(20):
        with pytest.raises(aio.AioRpcError) as raised:
            await call()
        error = raised.value
        if error.code() != grpc.StatusCode.UNAVAILABLE or error_reasons(error):
            return error
        await asyncio.sleep(0.1)
    return error


def _position_call(
    stub: queue_service_pb2_grpc.QueueServiceStub, queue_id: str, shopper: Shopper
) -> Callable[[], Awaitable[object]]:
    async def call() -> object:
        return await stub.GetPosition(
            queues.GetPositionRequest(queue_id=queue_id), metadata=shopper.metadata
        )

    return call


async def test_a_redis_restart_is_detected_once_across_replicas(tmp_path: Path) -> None:
    async with restartable_redis(tmp_path) as cache:
        with throwaway_postgres_database() as database_url:
            settings = dataclasses.replace(
                embedded_settings(tmp_path / "data"),
                database_url=database_url,
                redis_url=cache.url,
                redis_key_prefix="lost",
            )
            clock = MutableClock()
            first = await start_migrated_server(settings, clock=clock, run_worker=False)
            second = await start_migrated_server(settings, clock=clock, run_worker=False)
            try:
                async with (
                    consumer_world(first, clock) as world,
                    aio.insecure_channel(second.address) as channel,
                ):
                    qw = QueueWorld(world)
                    queue_id = await qw.open_queue()
                    shoppers = [await qw.shopper(f"device-{n}") for n in range(3)]
                    for shopper in shoppers:
                        await qw.enter(queue_id, shopper)

                    await cache.stop()
                    await cache.start()

                    stubs = [qw.stub, queue_service_pb2_grpc.QueueServiceStub(channel)]
                    for stub in stubs:
                        for shopper in shoppers:
                            error = await _settled(_position_call(stub, queue_id, shopper))
                            assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
                            assert error.details() == LOST_MESSAGE
                            assert error_reasons(error) == [LOST_REASON]
                    # One line for the queue, whichever replica found the loss first.
                    assert len(loss_lines(qw)) == 1
                    assert (await stats(qw, queue_id)).HasField("state_lost_at")
                    assert (await qw.enter(queue_id, shoppers[2])).entry.position == 1
                    assert (await qw.position(queue_id, shoppers[2])).entry.position == 1
            finally:
                await second.shutdown(grace_seconds=1.0)
                await first.shutdown(grace_seconds=1.0)


# Startup: a Redis that persists nothing is refused unless FANFARE_REDIS_EPHEMERAL_OK.


def _location(url: str) -> str:
    return f"{urlsplit(url).netloc}/0"


def _strict_env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    env = process_env(tmp_path, {"FANFARE_REDIS_URL": url, **extra})
    if "FANFARE_REDIS_EPHEMERAL_OK" not in extra:
        del env["FANFARE_REDIS_EPHEMERAL_OK"]  # the test default; this is what it checks
    return env


async def _starts(env: dict[str, str]) -> ServerProcess:
    server = await ServerProcess.start(["fanfare_grpc", "serve", "--no-worker"], env)
    try:
        await server.wait_listening()
        server.process.send_signal(signal.SIGINT)
        assert await server.wait_exit() == 0
    finally:
        await server.kill()
    return server


def _ephemeral_warnings(server: ServerProcess) -> list[dict[str, object]]:
    return [
        entry
        for entry in server.messages()
        if str(entry.get("message", "")).startswith("Redis does not persist its data")
    ]


async def test_serve_and_worker_refuse_a_redis_without_persistence(tmp_path: Path) -> None:
    async with private_redis(["--dir", str(tmp_path)]) as url:
        env = _strict_env(tmp_path, url)
        assert (await run_cli("migrate", env=env))[0] == 0
        for command in ("serve", "worker"):
            code, _, stderr = await run_cli(command, env=env)
            assert code == 1
            assert stderr.splitlines() == [
                (
                    f"fanfare-grpc: Redis at {_location(url)} does not persist its data "
                    "(appendonly no, no save snapshots): a restart would lose every queue's "
                    "entries; set appendonly yes (or save snapshots) there, or "
                    "FANFARE_REDIS_EPHEMERAL_OK=true to start anyway (development)"
                )
            ]


async def test_with_the_override_it_starts_and_says_so(tmp_path: Path) -> None:
    async with private_redis(["--dir", str(tmp_path)]) as url:
        env = _strict_env(tmp_path, url, FANFARE_REDIS_EPHEMERAL_OK="true")
        assert (await run_cli("migrate", env=env))[0] == 0
        warnings = _ephemeral_warnings(await _starts(env))
        assert len(warnings) == 1
        assert warnings[0]["persistence"] == "none"


@pytest.mark.parametrize(
    "persistence",
    [["--appendonly", "yes"], ["--save", "3600 1"]],
    ids=["appendonly", "snapshots"],
)
async def test_a_persistent_redis_starts_without_the_override(
    tmp_path: Path, persistence: list[str]
) -> None:
    async with private_redis(["--dir", str(tmp_path), *persistence]) as url:
        env = _strict_env(tmp_path, url)
        assert (await run_cli("migrate", env=env))[0] == 0
        assert _ephemeral_warnings(await _starts(env)) == []


async def test_without_config_an_aof_is_read_from_info(tmp_path: Path) -> None:
    arguments = ["--dir", str(tmp_path), "--rename-command", "CONFIG", ""]
    async with private_redis([*arguments, "--appendonly", "yes"]) as url:
        env = _strict_env(tmp_path, url)
        assert (await run_cli("migrate", env=env))[0] == 0
        assert _ephemeral_warnings(await _starts(env)) == []
    async with private_redis(arguments) as url:
        env = _strict_env(tmp_path, url)
        code, _, stderr = await run_cli("serve", env=env)
        assert code == 1
        assert stderr.splitlines() == [
            (
                f"fanfare-grpc: cannot tell whether Redis at {_location(url)} persists its data "
                "(CONFIG GET refused and INFO shows no appendonly): make sure it keeps an AOF "
                "or snapshots, then set FANFARE_REDIS_EPHEMERAL_OK=true"
            )
        ]
