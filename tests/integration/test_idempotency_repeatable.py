"""Errors safe to repeat (a conflict, ``FanfareError.repeatable``) never become an
idempotency key's final outcome: a retry with the same key runs the call again, even
after the cache lost the key's record (the call's database claim is given back)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from fanfare.queue.v1 import queue_service_pb2 as queues
from google.protobuf import field_mask_pb2

from fanfare_grpc.interceptors.idempotency import OUTCOME_UNKNOWN
from tests.conftest import BackendSettings
from tests.consumers import serving_consumer_world
from tests.grpc_helpers import bearer, expect_status
from tests.queues import QueueWorld

IDEMPOTENCY_KEY = "rename-1"


@pytest.fixture
async def qw(backend: BackendSettings) -> AsyncIterator[QueueWorld]:
    async with serving_consumer_world(backend.settings, run_worker=False) as world:
        yield QueueWorld(world)


def record_key(qw: QueueWorld) -> str:
    organization_id = qw.world.acme.organization.organization.organization_id
    digest = hashlib.sha256(IDEMPOTENCY_KEY.encode()).hexdigest()
    return f"{organization_id}:test:idempotency:{digest}"


def race_the_next_update(qw: QueueWorld) -> None:
    """Another writer changes the queue between the next update's read and its write."""
    store = qw.world.server.application.queue_config._store
    real_replace = store.replace
    raced = False

    async def racing_replace(updated: Any, current: Any, **options: Any) -> bool:
        nonlocal raced
        if not raced:
            raced = True
            other = dataclasses.replace(
                current, name="renamed by another caller", updated_at=updated.updated_at
            )
            assert await real_replace(other, current)
        return bool(await real_replace(updated, current, **options))

    store.replace = racing_replace


def rename(queue_id: str) -> queues.UpdateQueueRequest:
    return queues.UpdateQueueRequest(
        queue_id=queue_id,
        name="Sneaker drop",
        update_mask=field_mask_pb2.FieldMask(paths=["name"]),
    )


@pytest.mark.parametrize("cache_lost_the_record", [False, True])
async def test_a_conflict_is_retried_with_the_same_key_not_replayed(
    qw: QueueWorld, cache_lost_the_record: bool
) -> None:
    queue_id = (await qw.create(name="drop")).queue.queue_id
    race_the_next_update(qw)
    metadata = (*bearer(qw.world.acme.secret_key), ("idempotency-key", IDEMPOTENCY_KEY))
    error = await expect_status(
        qw.stub.UpdateQueue(rename(queue_id), metadata=metadata), grpc.StatusCode.ABORTED
    )
    assert error.details() == "the queue changed meanwhile; retry"
    if cache_lost_the_record:
        # Redis failed over or was flushed: only the database claim remains, and it
        # was given back when the call ended in a conflict.
        assert await qw.world.server.application.cache.values.delete(record_key(qw))
    response = await qw.stub.UpdateQueue(rename(queue_id), metadata=metadata)
    assert response.queue.name == "Sneaker drop"
    # Now the key has an outcome: replayed, not run again.
    assert await qw.stub.UpdateQueue(rename(queue_id), metadata=metadata) == response


@pytest.mark.parametrize("record", ["{not json", "[]", '{"state": 1}', '{"state": "done"}'])
async def test_an_unreadable_record_is_an_unknown_outcome_not_internal(
    qw: QueueWorld, record: str
) -> None:
    queue_id = (await qw.create(name="drop")).queue.queue_id
    await qw.world.server.application.cache.values.set(record_key(qw), record, 60)
    metadata = (*bearer(qw.world.acme.secret_key), ("idempotency-key", IDEMPOTENCY_KEY))
    error = await expect_status(
        qw.stub.UpdateQueue(rename(queue_id), metadata=metadata), grpc.StatusCode.ABORTED
    )
    assert error.details() == OUTCOME_UNKNOWN
