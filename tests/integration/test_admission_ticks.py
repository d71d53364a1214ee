"""Admission ticks: numbered by one clock for every worker (Redis ``TIME``), and a
worker catching up on missed ticks admits at most one extra tick's share."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio

from fanfare_grpc.app import Application, utc_now
from fanfare_grpc.domain import events
from fanfare_grpc.domain.queue_config import NewQueue
from tests.backends import REDIS_URL
from tests.conftest import (
    BackendSettings,
    embedded_settings,
    new_organization,
    start_migrated_server,
)
from tests.consumers import serving_consumer_world
from tests.queues import QueueWorld, seed_waiting

SKEW = dt.timedelta(hours=1)


@pytest.fixture
async def qw(backend: BackendSettings) -> AsyncIterator[QueueWorld]:
    async with serving_consumer_world(backend.settings, run_worker=False) as world:
        yield QueueWorld(world)


def admitted_so_far(qw: QueueWorld) -> int:
    return len(qw.world.server.application.events.of_type(events.QUEUE_CONSUMER_ADMITTED))


async def test_catching_up_on_missed_ticks_admits_at_most_one_extra_share(
    qw: QueueWorld,
) -> None:
    qw.world.clock.freeze()
    queue_id = await qw.open_queue(admission_rate_per_minute=600)  # 10 a tick
    organization_id = qw.world.acme.organization.organization.organization_id
    await seed_waiting(qw.world.server.application, organization_id, queue_id, 100)
    worker = qw.world.server.application.queue_worker
    await worker.run_once()
    assert admitted_so_far(qw) == 10
    # Nobody ran the worker for 10 s: the two ticks before this one are made up for,
    # but together for one share at most (no burst after an outage).
    qw.world.clock.advance(dt.timedelta(seconds=10))
    await worker.run_once()
    assert admitted_so_far(qw) == 10 + 10 + 10
    # The next tick is back to one share.
    qw.world.clock.advance(dt.timedelta(seconds=1))
    await worker.run_once()
    assert admitted_so_far(qw) == 40


async def test_workers_with_skewed_clocks_number_ticks_by_the_redis_clock(
    tmp_path: Path, postgres_url: str, redis_prefix: str
) -> None:
    settings = dataclasses.replace(
        embedded_settings(tmp_path / "data"),
        database_url=postgres_url,
        redis_url=REDIS_URL,
        redis_key_prefix=redis_prefix,
    )
    # Production wiring: no injected clock, so ticks come from Redis TIME.
    server = await start_migrated_server(settings, run_worker=False)
    ahead = Application.build(settings, clock=lambda: utc_now() + SKEW)
    behind = Application.build(settings, clock=lambda: utc_now() - SKEW)
    client = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        application = server.application
        organization_id = (await new_organization(server)).organization.organization_id
        queue = await application.queue_config.create(
            organization_id, "test", NewQueue(name="drop", admission_rate_per_minute=600)
        )
        # Opened "an hour ago" by the lagging replica's clock: every worker sees it open
        # long before any tick it could number.
        await behind.queue_config.open(organization_id, "test", queue.queue_id)
        await seed_waiting(application, organization_id, queue.queue_id, 200)
        for worker in (application, ahead, behind, application, ahead, behind):
            await worker.queue_worker.run_once()
        redis_seconds, _ = await client.time()
        claimed = [
            int(key.rsplit(":", 1)[1])
            async for key in client.scan_iter(match=f"{redis_prefix}:queue-admission-tick:*")
        ]
        assert claimed
        # Each worker's own clock would have claimed ticks an hour apart (and each
        # admitted "its" second's share); Redis's clock gives them the same seconds.
        assert all(abs(tick - int(redis_seconds)) <= 30 for tick in claimed), sorted(claimed)
    finally:
        await client.aclose()
        await ahead.close()
        await behind.close()
        await server.shutdown(grace_seconds=1.0)
