"""Admission and expiry in several store calls, on both backends: each call's consumers
are announced as soon as it returns (a later call failing leaves nobody admitted or
expired unannounced), and consumers whose entry is missing neither stop an admission
early nor make one admission walk a whole line."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import pytest
from fanfare.queue.v1 import queue_service_pb2 as queues
from google.protobuf import duration_pb2
from grpc import aio
from redis.exceptions import ConnectionError as RedisConnectionError

from fanfare_grpc.app import Application
from fanfare_grpc.cache.queue_state_memory import MemoryQueueStateStore
from fanfare_grpc.cache.queue_state_redis import RedisQueueStateStore
from fanfare_grpc.domain import events as event_types
from fanfare_grpc.domain import queue_entries
from fanfare_grpc.domain.queue_entries import queue_ref
from fanfare_grpc.domain.queue_state import MAX_ADMISSIONS_PER_CALL, QueueCounters
from tests.conftest import BackendSettings
from tests.consumers import serving_consumer_world
from tests.grpc_helpers import bearer
from tests.queues import QueueWorld, seed_waiting

MODE = "test"  # seed_waiting's mode, the one of the tenant's secret key


@pytest.fixture
async def qw(backend: BackendSettings) -> AsyncIterator[QueueWorld]:
    async with serving_consumer_world(backend.settings, run_worker=False) as world:
        yield QueueWorld(world)


async def waiting_line(application: Application, organization_id: str, queue_id: str) -> list[str]:
    """The waiting consumers in line order (``seed_waiting`` enters them concurrently)."""
    queue = await application.queue_config.get(organization_id, MODE, queue_id)
    store, ref = application.cache.queue_states, queue_ref(queue)
    if isinstance(store, RedisQueueStateStore):
        return list(await store._client.zrange(store.keys(ref)[0], 0, -1))
    assert isinstance(store, MemoryQueueStateStore)
    return [consumer for _, consumer in store._queues[ref].waiting]


def text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def forget_entries(
    application: Application, organization_id: str, queue_id: str, consumers: Iterable[str]
) -> None:
    """Lose these consumers' entries behind the store's back (as an evicting Redis or an
    operator's ``HDEL`` would); they stay in the waiting line."""
    queue = await application.queue_config.get(organization_id, MODE, queue_id)
    store, ref = application.cache.queue_states, queue_ref(queue)
    if isinstance(store, RedisQueueStateStore):
        await store._client.hdel(store.keys(ref)[1], *consumers)
    else:
        assert isinstance(store, MemoryQueueStateStore)
        entries = store._queues[ref].entries
        for consumer in consumers:
            del entries[consumer]


async def counters(qw: QueueWorld, queue_id: str) -> QueueCounters:
    """The store's counters (``missing`` is not in the API's stats)."""
    organization_id = qw.world.acme.organization.organization.organization_id
    return (
        await qw.world.server.application.queue_entries.stats(organization_id, MODE, queue_id)
    ).counters


async def stats(qw: QueueWorld, queue_id: str) -> queues.GetQueueStatsResponse:
    response: queues.GetQueueStatsResponse = await qw.stub.GetQueueStats(
        queues.GetQueueStatsRequest(queue_id=queue_id), metadata=qw.operator()
    )
    return response


async def test_an_admission_failing_between_store_calls_announces_who_it_admitted(
    qw: QueueWorld,
) -> None:
    # AdmitConsumers(300) is two store calls (two scripts on Redis). The second fails:
    # the first call's 200 stay ADMITTED, and each of them is announced.
    queue_id = await qw.open_queue(name="drop")
    application = qw.world.server.application
    organization_id = qw.world.acme.organization.organization.organization_id
    await seed_waiting(application, organization_id, queue_id, 300)
    line = [text(c) for c in await waiting_line(application, organization_id, queue_id)]
    states = application.cache.queue_states
    real_admit = states.admit
    calls = 0

    async def failing_second_call(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RedisConnectionError("connection reset by peer")
        return await real_admit(*args, **kwargs)

    woken: list[object] = []
    application.queue_entries.on_admitted(woken.append)
    states.admit = failing_second_call  # type: ignore[method-assign]
    with pytest.raises(aio.AioRpcError) as failure:
        await qw.stub.AdmitConsumers(
            queues.AdmitConsumersRequest(queue_id=queue_id, count=300),
            metadata=bearer(qw.world.acme.secret_key),
        )
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    states.admit = real_admit  # type: ignore[method-assign]
    assert (await stats(qw, queue_id)).admitted == MAX_ADMISSIONS_PER_CALL
    announced = application.events.of_type(event_types.QUEUE_CONSUMER_ADMITTED)
    assert [event.data["consumer_id"] for event in announced] == line[:MAX_ADMISSIONS_PER_CALL]
    assert len(woken) == 1  # position streams were told too


async def test_an_expiry_failing_between_store_calls_announces_who_it_expired(
    qw: QueueWorld,
) -> None:
    queue_id = await qw.open_queue(name="drop", handoff_ttl=duration_pb2.Duration(seconds=60))
    application = qw.world.server.application
    organization_id = qw.world.acme.organization.organization.organization_id
    await seed_waiting(application, organization_id, queue_id, 300)
    assert await qw.admit(queue_id, 300) == 300
    qw.world.clock.advance(dt.timedelta(seconds=61))
    states = application.cache.queue_states
    real_expire = states.expire_admissions
    calls = 0

    async def failing_second_call(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RedisConnectionError("connection reset by peer")
        return await real_expire(*args, **kwargs)

    states.expire_admissions = failing_second_call  # type: ignore[method-assign]
    with pytest.raises(RedisConnectionError):
        await application.queue_worker.run_once()
    states.expire_admissions = real_expire  # type: ignore[method-assign]
    counted = await stats(qw, queue_id)
    assert (counted.expired, counted.admitted) == (MAX_ADMISSIONS_PER_CALL, 100)
    announced = application.events.of_type(event_types.QUEUE_CONSUMER_EXPIRED)
    assert len(announced) == MAX_ADMISSIONS_PER_CALL
    # The next pass expires (and announces) the rest.
    await application.queue_worker.run_once()
    assert len(application.events.of_type(event_types.QUEUE_CONSUMER_EXPIRED)) == 300


async def test_missing_entries_do_not_stop_an_admission_early(qw: QueueWorld) -> None:
    # 450 consumers at the head have no entry: one store call skips at most
    # MAX_ADMISSIONS_PER_CALL of them, and the admission goes on to the first present.
    queue_id = await qw.open_queue(name="drop")
    application = qw.world.server.application
    organization_id = qw.world.acme.organization.organization.organization_id
    await seed_waiting(application, organization_id, queue_id, 500)
    line = [text(c) for c in await waiting_line(application, organization_id, queue_id)]
    await forget_entries(application, organization_id, queue_id, line[:450])
    assert await qw.admit(queue_id, 1) == 1
    (announced,) = application.events.of_type(event_types.QUEUE_CONSUMER_ADMITTED)
    assert announced.data["consumer_id"] == line[450]
    counted = await counters(qw, queue_id)
    assert (counted.waiting, counted.admitted, counted.missing) == (49, 1, 450)


async def test_one_admission_over_missing_entries_makes_a_bounded_number_of_store_calls(
    qw: QueueWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every entry of a long line is gone: one admission of one consumer makes at most
    # 1 + ADMISSION_EXTRA_CALLS store calls, each skipping at most
    # MAX_ADMISSIONS_PER_CALL consumers, and admits nobody; later admissions go on.
    monkeypatch.setattr(queue_entries, "ADMISSION_EXTRA_CALLS", 2)
    queue_id = await qw.open_queue(name="drop")
    application = qw.world.server.application
    organization_id = qw.world.acme.organization.organization.organization_id
    await seed_waiting(application, organization_id, queue_id, 1000)
    line = [text(c) for c in await waiting_line(application, organization_id, queue_id)]
    await forget_entries(application, organization_id, queue_id, line)
    states = application.cache.queue_states
    real_admit = states.admit
    calls = 0

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await real_admit(*args, **kwargs)

    states.admit = counting  # type: ignore[method-assign]
    try:
        assert await qw.admit(queue_id, 1) == 0
        assert calls == 3
        counted = await counters(qw, queue_id)
        assert (counted.waiting, counted.missing) == (400, 600)
        assert await qw.admit(queue_id, 1) == 0  # the last 400: the line empties
        assert calls == 5
        counted = await counters(qw, queue_id)
        assert (counted.waiting, counted.missing) == (0, 1000)
    finally:
        states.admit = real_admit  # type: ignore[method-assign]
