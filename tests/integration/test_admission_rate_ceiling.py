"""The per-organization admission rate ceiling (FANFARE_MAX_ADMISSION_RATE_PER_ORGANIZATION),
over real sockets on both backends."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
from fanfare.queue.v1 import queue_pb2
from fanfare.queue.v1 import queue_service_pb2 as queues
from google.protobuf import field_mask_pb2

from tests.conftest import BackendSettings
from tests.consumers import serving_consumer_world
from tests.grpc_helpers import bearer, expect_status, metadata_dict
from tests.queues import QueueWorld, timestamp

CEILING_REACHED = grpc.StatusCode.FAILED_PRECONDITION
CEILING = 100


@pytest.fixture
async def qw(backend: BackendSettings) -> AsyncIterator[QueueWorld]:
    settings = dataclasses.replace(backend.settings, max_admission_rate_per_organization=CEILING)
    async with serving_consumer_world(settings, run_worker=False) as world:
        yield QueueWorld(world)


def _update(queue_id: str, **fields: object) -> queues.UpdateQueueRequest:
    return queues.UpdateQueueRequest(
        queue_id=queue_id,
        update_mask=field_mask_pb2.FieldMask(paths=list(fields)),
        **fields,  # type: ignore[arg-type]
    )


async def _refused(call: object, others: int) -> None:
    error = await expect_status(call, CEILING_REACHED)
    message = error.details() or ""
    assert f"at most {CEILING} per minute" in message, message
    assert f"the others take {others}" in message, message
    # A quota, not a rate limit: waiting would not help.
    assert "retry-after" not in metadata_dict(error.trailing_metadata())


async def _status(qw: QueueWorld, queue_id: str) -> int:
    got = await qw.stub.GetQueue(queues.GetQueueRequest(queue_id=queue_id), metadata=qw.operator())
    return got.queue.status


async def test_counted_queues_stay_within_the_ceiling(qw: QueueWorld) -> None:
    stub, operator = qw.stub, qw.operator()
    first = await qw.open_queue(admission_rate_per_minute=60)
    # A DRAFT does not count: it may be created at any rate.
    second = (await qw.create(admission_rate_per_minute=60)).queue.queue_id
    await _refused(stub.OpenQueue(queues.OpenQueueRequest(queue_id=second), metadata=operator), 60)
    assert await _status(qw, second) == queue_pb2.QUEUE_STATUS_DRAFT
    # Becoming SCHEDULED counts as much as opening: by CreateQueue or UpdateQueue.
    later = timestamp(qw.world.clock() + dt.timedelta(hours=1))
    await _refused(qw.create(admission_rate_per_minute=60, opens_at=later), 60)
    await _refused(stub.UpdateQueue(_update(second, opens_at=later), metadata=operator), 60)
    assert await _status(qw, second) == queue_pb2.QUEUE_STATUS_DRAFT
    # Exactly at the ceiling is allowed.
    await stub.UpdateQueue(_update(second, admission_rate_per_minute=40), metadata=operator)
    await stub.OpenQueue(queues.OpenQueueRequest(queue_id=second), metadata=operator)
    # Raising a counted queue's rate past it is refused; lowering is not.
    await _refused(
        stub.UpdateQueue(_update(first, admission_rate_per_minute=61), metadata=operator), 40
    )
    lowered = await stub.UpdateQueue(
        _update(first, admission_rate_per_minute=50), metadata=operator
    )
    assert lowered.queue.admission_rate_per_minute == 50
    # A PAUSED queue keeps its share (it may reopen any time), and reopens unchecked.
    await stub.PauseQueue(queues.PauseQueueRequest(queue_id=first), metadata=operator)
    third = (await qw.create(admission_rate_per_minute=20)).queue.queue_id
    await _refused(stub.OpenQueue(queues.OpenQueueRequest(queue_id=third), metadata=operator), 90)
    await stub.OpenQueue(queues.OpenQueueRequest(queue_id=first), metadata=operator)
    # Closing one frees its share.
    await stub.CloseQueue(queues.CloseQueueRequest(queue_id=first), metadata=operator)
    opened = await stub.OpenQueue(queues.OpenQueueRequest(queue_id=third), metadata=operator)
    assert opened.queue.status == queue_pb2.QUEUE_STATUS_OPEN


async def test_the_ceiling_is_per_organization_and_mode(qw: QueueWorld) -> None:
    acme, globex = qw.world.acme, qw.world.globex
    await qw.open_queue(admission_rate_per_minute=CEILING)
    await _refused(qw.open_queue(admission_rate_per_minute=1), CEILING)
    # The same organization's live mode has a ceiling of its own.
    live = bearer(acme.organization.live_admin_key.plaintext)
    created = await qw.stub.CreateQueue(
        queues.CreateQueueRequest(name="live", admission_rate_per_minute=CEILING), metadata=live
    )
    opened = await qw.stub.OpenQueue(
        queues.OpenQueueRequest(queue_id=created.queue.queue_id), metadata=live
    )
    assert opened.queue.status == queue_pb2.QUEUE_STATUS_OPEN
    # And so has another organization.
    await qw.open_queue(globex, admission_rate_per_minute=CEILING)
    await _refused(qw.open_queue(globex, admission_rate_per_minute=1), CEILING)


async def test_concurrent_opens_cannot_both_pass(qw: QueueWorld) -> None:
    stub, operator = qw.stub, qw.operator()
    for _ in range(5):
        drafts = [(await qw.create(admission_rate_per_minute=60)).queue.queue_id for _ in "ab"]
        outcomes = await asyncio.gather(
            *(
                stub.OpenQueue(queues.OpenQueueRequest(queue_id=queue_id), metadata=operator)
                for queue_id in drafts
            ),
            return_exceptions=True,
        )
        opened = [o for o in outcomes if isinstance(o, queues.OpenQueueResponse)]
        refused = [
            o
            for o in outcomes
            if isinstance(o, grpc.aio.AioRpcError) and o.code() == CEILING_REACHED
        ]
        assert (len(opened), len(refused)) == (1, 1), outcomes
        await stub.CloseQueue(
            queues.CloseQueueRequest(queue_id=opened[0].queue.queue_id), metadata=operator
        )


async def test_concurrent_create_open_and_raise_cannot_both_pass(qw: QueueWorld) -> None:
    stub, operator = qw.stub, qw.operator()
    for _ in range(3):
        draft = (await qw.create(admission_rate_per_minute=60)).queue.queue_id
        slow = await qw.open_queue(admission_rate_per_minute=1)
        later = timestamp(qw.world.clock() + dt.timedelta(hours=1))
        # Any two of these take 121 > 100 together (with the slow queue's 1).
        outcomes = await asyncio.gather(
            stub.OpenQueue(queues.OpenQueueRequest(queue_id=draft), metadata=operator),
            qw.create(admission_rate_per_minute=60, opens_at=later),
            stub.UpdateQueue(_update(slow, admission_rate_per_minute=60), metadata=operator),
            return_exceptions=True,
        )
        refused = [
            o
            for o in outcomes
            if isinstance(o, grpc.aio.AioRpcError) and o.code() == CEILING_REACHED
        ]
        assert len(refused) == 2 and len(outcomes) == 3, outcomes
        live = await stub.ListQueues(queues.ListQueuesRequest(page_size=100), metadata=operator)
        for queue in live.queues:
            if queue.status != queue_pb2.QUEUE_STATUS_CLOSED:
                await stub.CloseQueue(
                    queues.CloseQueueRequest(queue_id=queue.queue_id), metadata=operator
                )
