"""A large admission never stalls Redis for everyone else (Redis backend only: the
in-process cache has no other clients to stall).

AdmitConsumers with the largest count (10,000) runs as Lua scripts of at most
``MAX_ADMISSIONS_PER_CALL`` consumers; another client's PINGs, sent from its own
process every 5 ms meanwhile, must keep a p99 latency within 50 ms (the bound
the issue asks for; the only timed assertion here). One script for all 10,000 held
Redis for 190-680 ms. Likewise while admissions walk a long line whose entries were
evicted: one script skipped the whole line (215 ms for 100,000).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio

from fanfare_grpc.domain.queue_entries import ADMISSION_EXTRA_CALLS, queue_ref
from fanfare_grpc.domain.queue_state import MAX_ADMISSIONS_PER_CALL
from tests.conftest import embedded_settings
from tests.consumers import serving_consumer_world
from tests.private_redis import private_redis
from tests.processes import REPO_ROOT
from tests.queues import QueueWorld, seed_waiting

CONSUMERS = 10_000
P99_BOUND_SECONDS = 0.050
# 200 PINGs a second: enough to sample every script, few enough for the probe to keep
# its schedule on a busy machine (a probe falling behind would measure itself).
PING_INTERVAL_SECONDS = 0.005


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    # A Redis of its own: other tests' traffic on the shared one (e.g. deleting a big
    # queue's keys) would show up in this test's latencies.
    async with private_redis() as url:
        yield url


@pytest.fixture
async def qw(tmp_path: Path, postgres_url: str, redis_url: str) -> AsyncIterator[QueueWorld]:
    settings = dataclasses.replace(
        embedded_settings(tmp_path / "data"), database_url=postgres_url, redis_url=redis_url
    )
    async with serving_consumer_world(settings, run_worker=False) as world:
        yield QueueWorld(world)


async def _start_probe(redis_url: str) -> asyncio.subprocess.Process:
    probe = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.redis_ping_probe",
        redis_url,
        str(PING_INTERVAL_SECONDS),
        cwd=REPO_ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert probe.stdout is not None
    assert (await asyncio.wait_for(probe.stdout.readline(), timeout=30)).strip() == b"ready"
    return probe


async def _stop_probe(probe: asyncio.subprocess.Process) -> list[tuple[float, float]]:
    stdout, _ = await asyncio.wait_for(probe.communicate(b""), timeout=30)  # EOF: stop
    return [(due, latency) for due, latency in json.loads(stdout)]


async def test_another_clients_ping_stays_fast_during_a_10k_admission(
    qw: QueueWorld, redis_url: str
) -> None:
    queue_id = await qw.open_queue()
    organization_id = qw.world.acme.organization.organization.organization_id
    await seed_waiting(qw.world.server.application, organization_id, queue_id, CONSUMERS)
    probe = await _start_probe(redis_url)
    try:
        await asyncio.sleep(0.1)  # a few undisturbed PINGs first
        started = time.monotonic()
        admitted = await qw.admit(queue_id, CONSUMERS)
        finished = time.monotonic()
        await asyncio.sleep(0.05)
    finally:
        samples = await _stop_probe(probe)
    assert admitted == CONSUMERS
    during = sorted(latency for due, latency in samples if started <= due <= finished)
    assert len(during) >= 20, "too few PINGs during the admission to measure"
    p99 = during[min(len(during) - 1, int(len(during) * 0.99))]
    assert p99 <= P99_BOUND_SECONDS, (
        f"PING p99 {p99 * 1000:.1f} ms during a {CONSUMERS} admission "
        f"({(finished - started) * 1000:.0f} ms, {len(during)} PINGs, "
        f"max {during[-1] * 1000:.1f} ms)"
    )


async def test_another_clients_ping_stays_fast_while_admissions_skip_evicted_entries(
    qw: QueueWorld, redis_url: str
) -> None:
    # 100,000 waiting consumers whose entries are all gone (the entries hash evicted).
    waiting = 100_000
    queue_id = await qw.open_queue()
    application = qw.world.server.application
    organization_id = qw.world.acme.organization.organization.organization_id
    queue = await application.queue_config.get(organization_id, "test", queue_id)
    waiting_key = application.cache.queue_states.keys(queue_ref(queue))[0]  # type: ignore[attr-defined]
    assert waiting_key.endswith(":waiting")
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        for start in range(0, waiting, 10_000):
            await client.zadd(
                waiting_key, {f"cons_{i:06d}": float(i) for i in range(start, start + 10_000)}
            )
        probe = await _start_probe(redis_url)
        try:
            await asyncio.sleep(0.1)
            started = time.monotonic()
            admitted = [await qw.admit(queue_id, 1) for _ in range(5)]
            finished = time.monotonic()
            await asyncio.sleep(0.05)
        finally:
            samples = await _stop_probe(probe)
        left = await client.zcard(waiting_key)
    finally:
        await client.aclose()
    assert admitted == [0] * 5
    during = sorted(latency for due, latency in samples if started <= due <= finished)
    assert len(during) >= 20, "too few PINGs during the admissions to measure"
    p99 = during[min(len(during) - 1, int(len(during) * 0.99))]
    assert p99 <= P99_BOUND_SECONDS, (
        f"PING p99 {p99 * 1000:.1f} ms during 5 admissions over evicted entries "
        f"({(finished - started) * 1000:.0f} ms, {len(during)} PINGs, "
        f"max {during[-1] * 1000:.1f} ms)"
    )
    # Each admission of one skipped a bounded number of them, not the whole line.
    skipped_per_admission = (1 + ADMISSION_EXTRA_CALLS) * MAX_ADMISSIONS_PER_CALL
    assert left == waiting - 5 * skipped_per_admission
