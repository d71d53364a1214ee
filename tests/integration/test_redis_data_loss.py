"""Redis losing its data never brings a revoked session back (PostgreSQL decides).

A private redis-server with no persistence, started by the test, is restarted empty
(or flushed) after a revoke: the revocation marker is gone, no error was raised
anywhere, and a token that the server had verified and cached before is still
refused on its very next call, by ``GetSession`` and by ``EnterQueue``. Sessions
that were never revoked keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import grpc
import pytest
import redis.asyncio
from fanfare.queue.v1 import queue_service_pb2 as queues
from fanfare.session.v1 import session_service_pb2 as sessions

from fanfare_grpc.app import Application
from fanfare_grpc.authentication.session_revocations import (
    DATA_SET_CHANGED,
    EPOCH_KEY,
    SERVER_CHANGED,
    revocation_marker,
)
from fanfare_grpc.domain.access import Mode
from fanfare_grpc.server import start_server
from fanfare_grpc.storage import migrate
from tests.clock import MutableClock
from tests.conftest import embedded_settings
from tests.consumers import ConsumerWorld, consumer_world
from tests.grpc_helpers import bearer, error_reasons, expect_status
from tests.private_redis import RestartableRedis, restartable_private_redis
from tests.queues import QueueWorld, Shopper

PREFIX = "fftestloss"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@dataclasses.dataclass
class LossyWorld:
    """A server on PostgreSQL and a private Redis that can lose its data."""

    queues: QueueWorld
    redis_server: RestartableRedis

    @property
    def world(self) -> ConsumerWorld:
        return self.queues.world

    @property
    def application(self) -> Application:
        return self.world.server.application

    async def flush(self) -> None:
        client = redis.asyncio.Redis.from_url(self.redis_server.url)
        try:
            await client.flushall()
        finally:
            await client.aclose()

    async def save(self) -> None:
        """Snapshot the data set to disk (what ``--save`` does from time to time)."""
        client = redis.asyncio.Redis.from_url(self.redis_server.url)
        try:
            await client.save()
        finally:
            await client.aclose()

    async def exists(self, key: str) -> bool:
        client = redis.asyncio.Redis.from_url(self.redis_server.url)
        try:
            return bool(await client.exists(f"{PREFIX}:{key}"))
        finally:
            await client.aclose()

    async def marker_exists(self, shopper: Shopper) -> bool:
        org = self.world.acme.organization.organization.organization_id
        return await self.exists(revocation_marker(org, Mode.TEST, shopper.session_id))


@pytest.fixture
async def lossy(postgres_url: str, tmp_path: Path) -> AsyncIterator[LossyWorld]:
    async with lossy_world(postgres_url, tmp_path) as world:
        yield world


@contextlib.asynccontextmanager
async def lossy_world(
    postgres_url: str, tmp_path: Path, redis_arguments: Sequence[str] = ()
) -> AsyncIterator[LossyWorld]:
    async with restartable_private_redis(redis_arguments) as redis_server:
        settings = dataclasses.replace(
            embedded_settings(tmp_path),
            database_url=postgres_url,
            redis_url=redis_server.url,
            redis_key_prefix=PREFIX,
        )
        await migrate.upgrade_to_head(settings.effective_owner_database_url)
        clock = MutableClock()
        application = Application.build(settings, clock=clock)
        server = await start_server(application, run_worker=False)
        try:
            async with consumer_world(server, clock) as world:
                yield LossyWorld(QueueWorld(world), redis_server)
        finally:
            await server.shutdown(grace_seconds=1.0)


async def get_session(lossy: LossyWorld, shopper: Shopper) -> sessions.GetSessionResponse:
    response: sessions.GetSessionResponse = await lossy.world.sessions.GetSession(
        sessions.GetSessionRequest(), metadata=shopper.metadata
    )
    return response


async def enter_queue(
    lossy: LossyWorld, queue_id: str, shopper: Shopper
) -> queues.EnterQueueResponse:
    return await lossy.queues.enter(queue_id, shopper)


async def revoke(lossy: LossyWorld, shopper: Shopper) -> None:
    await lossy.world.sessions.RevokeSession(
        sessions.RevokeSessionRequest(session_id=shopper.session_id),
        metadata=bearer(lossy.world.acme.secret_key),
    )


async def assert_revoked(call: Awaitable[object]) -> None:
    error = await expect_status(call, UNAUTHENTICATED)
    assert error_reasons(error) == ["SESSION_REVOKED"]


async def restart(lossy: LossyWorld) -> None:
    await lossy.redis_server.restart()


async def flush(lossy: LossyWorld) -> None:
    await lossy.flush()


@pytest.mark.parametrize("lose_data", [restart, flush], ids=["restart", "flushall"])
async def test_a_revoked_session_stays_revoked_when_redis_loses_its_data(
    lossy: LossyWorld,
    lose_data: Callable[[LossyWorld], Awaitable[None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue_id = await lossy.queues.open_queue()
    by_get_session = await lossy.queues.shopper("device-1")
    by_enter_queue = await lossy.queues.shopper("device-2")
    live = await lossy.queues.shopper("device-3")
    for shopper in (by_get_session, by_enter_queue, live):
        await get_session(lossy, shopper)  # verified once, then cached by this server
    for shopper in (by_get_session, by_enter_queue):
        await revoke(lossy, shopper)
        assert await lossy.marker_exists(shopper)

    await lose_data(lossy)
    assert not await lossy.marker_exists(by_get_session)

    # The very next call of each is refused: the database says revoked.
    await assert_revoked(get_session(lossy, by_get_session))
    await assert_revoked(enter_queue(lossy, queue_id, by_enter_queue))
    assert (await get_session(lossy, live)).session.session_id == live.session_id
    assert [r.getMessage() for r in caplog.records].count(DATA_SET_CHANGED) == 1
    # Still refused on later calls, and a live session keeps working.
    await assert_revoked(get_session(lossy, by_get_session))
    await assert_revoked(get_session(lossy, by_enter_queue))
    assert (await get_session(lossy, live)).session.session_id == live.session_id


async def test_a_session_revoked_after_the_loss_is_refused_through_its_marker(
    lossy: LossyWorld,
) -> None:
    """After the loss the markers work again: a revoke announces itself as before."""
    shopper = await lossy.queues.shopper("device-1")
    await get_session(lossy, shopper)
    await lossy.redis_server.restart()
    await get_session(lossy, shopper)  # re-checked against the database: live
    await revoke(lossy, shopper)
    assert await lossy.marker_exists(shopper)
    await assert_revoked(get_session(lossy, shopper))


async def test_a_restart_from_an_older_snapshot_is_noticed_by_the_server_id(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With snapshots, a restart keeps the epoch but loses what was written since the
    last save: the new ``run_id``, read every second, tells the servers."""
    snapshots = tmp_path / "redis"
    snapshots.mkdir()
    arguments = ["--dir", str(snapshots), "--dbfilename", "dump.rdb"]
    async with lossy_world(postgres_url, tmp_path, arguments) as lossy:
        revoked = await lossy.queues.shopper("device-1")
        live = await lossy.queues.shopper("device-2")
        for shopper in (revoked, live):
            await get_session(lossy, shopper)
        await lossy.save()  # the epoch is in the snapshot, the marker will not be
        await revoke(lossy, revoked)
        assert await lossy.marker_exists(revoked)
        await lossy.redis_server.restart()
        assert not await lossy.marker_exists(revoked)
        assert await lossy.exists(EPOCH_KEY)
        for _ in range(200):  # the background check runs every second
            if SERVER_CHANGED in [r.getMessage() for r in caplog.records]:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the new Redis server was not noticed")
        await assert_revoked(get_session(lossy, revoked))
        assert (await get_session(lossy, live)).session.session_id == live.session_id
