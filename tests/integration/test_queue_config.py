"""Queue configuration and lifecycle over real sockets, on both backends."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.common.v1 import common_pb2
from fanfare.queue.v1 import queue_pb2
from fanfare.queue.v1 import queue_service_pb2 as queues
from google.protobuf import duration_pb2, field_mask_pb2

from fanfare_grpc.domain import events
from fanfare_grpc.domain.queue_admission import CLOSED_QUEUE_SWEEP
from fanfare_grpc.domain.queues import QueueChanges
from fanfare_grpc.errors import InvalidArgument
from tests.conftest import BackendSettings
from tests.consumers import consumer_metadata, serving_consumer_world
from tests.display_names import SAFE_NAMES, UNSAFE_NAMES
from tests.grpc_helpers import bad_request_fields, bearer, expect_status
from tests.queues import QueueWorld, timestamp

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
NOT_FOUND = grpc.StatusCode.NOT_FOUND


@pytest.fixture
async def qw(backend: BackendSettings) -> AsyncIterator[QueueWorld]:
    async with serving_consumer_world(backend.settings, run_worker=False) as world:
        yield QueueWorld(world)


async def test_create_get_list(qw: QueueWorld) -> None:
    created = await qw.create(
        name="Sneaker drop",
        admission_rate_per_minute=120,
        handoff_ttl=duration_pb2.Duration(seconds=300),
        max_size=1000,
    )
    queue = created.queue
    assert queue.queue_id.startswith("q_")
    assert queue.status == queue_pb2.QUEUE_STATUS_DRAFT
    assert (queue.admission_rate_per_minute, queue.handoff_ttl.seconds, queue.max_size) == (
        120,
        300,
        1000,
    )
    default_ttl = (await qw.create(name="second")).queue.handoff_ttl
    assert default_ttl.seconds == 600
    got = await qw.stub.GetQueue(
        queues.GetQueueRequest(queue_id=queue.queue_id), metadata=qw.operator()
    )
    assert got.queue == queue
    # A publishable key sees the public fields only.
    public = await qw.stub.GetQueue(
        queues.GetQueueRequest(queue_id=queue.queue_id),
        metadata=bearer(qw.world.acme.publishable_key),
    )
    assert public.queue.name == "Sneaker drop"
    assert public.queue.admission_rate_per_minute == 0 and public.queue.max_size == 0
    assert not public.queue.HasField("handoff_ttl")
    page_one = await qw.stub.ListQueues(
        queues.ListQueuesRequest(page_size=1), metadata=qw.operator()
    )
    page_two = await qw.stub.ListQueues(
        queues.ListQueuesRequest(page_size=1, page_token=page_one.next_page_token),
        metadata=qw.operator(),
    )
    assert [q.name for q in (*page_one.queues, *page_two.queues)] == ["second", "Sneaker drop"]
    assert page_two.next_page_token == ""
    drafts = await qw.stub.ListQueues(
        queues.ListQueuesRequest(status=queue_pb2.QUEUE_STATUS_OPEN), metadata=qw.operator()
    )
    assert list(drafts.queues) == []


async def test_lifecycle_and_illegal_transitions(qw: QueueWorld) -> None:
    queue_id = (await qw.create()).queue.queue_id
    operator = qw.operator()
    await expect_status(
        qw.stub.PauseQueue(queues.PauseQueueRequest(queue_id=queue_id), metadata=operator),
        FAILED_PRECONDITION,
    )
    opened = await qw.stub.OpenQueue(queues.OpenQueueRequest(queue_id=queue_id), metadata=operator)
    assert opened.queue.status == queue_pb2.QUEUE_STATUS_OPEN
    await expect_status(
        qw.stub.OpenQueue(queues.OpenQueueRequest(queue_id=queue_id), metadata=operator),
        FAILED_PRECONDITION,
    )
    await expect_status(
        qw.stub.DeleteQueue(queues.DeleteQueueRequest(queue_id=queue_id), metadata=operator),
        FAILED_PRECONDITION,
    )
    paused = await qw.stub.PauseQueue(
        queues.PauseQueueRequest(queue_id=queue_id), metadata=operator
    )
    assert paused.queue.status == queue_pb2.QUEUE_STATUS_PAUSED
    reopened = await qw.stub.OpenQueue(
        queues.OpenQueueRequest(queue_id=queue_id), metadata=operator
    )
    assert reopened.queue.status == queue_pb2.QUEUE_STATUS_OPEN
    closed = await qw.stub.CloseQueue(
        queues.CloseQueueRequest(queue_id=queue_id), metadata=operator
    )
    assert closed.queue.status == queue_pb2.QUEUE_STATUS_CLOSED
    stub = qw.stub
    for call, request in (
        (stub.OpenQueue, queues.OpenQueueRequest(queue_id=queue_id)),
        (stub.PauseQueue, queues.PauseQueueRequest(queue_id=queue_id)),
        (stub.CloseQueue, queues.CloseQueueRequest(queue_id=queue_id)),
    ):
        await expect_status(call(request, metadata=operator), FAILED_PRECONDITION)  # type: ignore[operator]
    await expect_status(
        qw.stub.UpdateQueue(
            queues.UpdateQueueRequest(
                queue_id=queue_id, name="x", update_mask=field_mask_pb2.FieldMask(paths=["name"])
            ),
            metadata=operator,
        ),
        FAILED_PRECONDITION,
    )
    await qw.stub.DeleteQueue(queues.DeleteQueueRequest(queue_id=queue_id), metadata=operator)
    await expect_status(
        qw.stub.GetQueue(queues.GetQueueRequest(queue_id=queue_id), metadata=operator), NOT_FOUND
    )
    recorded = qw.world.server.application.events
    assert [e.data["queue_id"] for e in recorded.of_type(events.QUEUE_OPENED)] == [queue_id]
    assert [e.data["queue_id"] for e in recorded.of_type(events.QUEUE_CLOSED)] == [queue_id]


async def test_scheduled_queue_opens_and_closes_by_itself(qw: QueueWorld) -> None:
    clock = qw.world.clock
    now = clock()
    created = await qw.create(
        opens_at=timestamp(now + dt.timedelta(minutes=10)),
        closes_at=timestamp(now + dt.timedelta(minutes=70)),
    )
    queue_id = created.queue.queue_id
    assert created.queue.status == queue_pb2.QUEUE_STATUS_SCHEDULED
    worker = qw.world.server.application.queue_worker

    async def status() -> int:
        got = await qw.stub.GetQueue(
            queues.GetQueueRequest(queue_id=queue_id), metadata=qw.operator()
        )
        return got.queue.status

    await worker.run_once()
    assert await status() == queue_pb2.QUEUE_STATUS_SCHEDULED
    clock.advance(dt.timedelta(minutes=10, seconds=1))
    # Two workers in the same tick: exactly one transition, one event.
    await worker.run_once()
    await worker.run_once()
    assert await status() == queue_pb2.QUEUE_STATUS_OPEN
    assert len(qw.world.server.application.events.of_type(events.QUEUE_OPENED)) == 1
    clock.advance(dt.timedelta(hours=1))
    await worker.run_once()
    assert await status() == queue_pb2.QUEUE_STATUS_CLOSED
    assert len(qw.world.server.application.events.of_type(events.QUEUE_CLOSED)) == 1


async def test_update_queue_with_a_field_mask(qw: QueueWorld) -> None:
    queue = (await qw.create(name="before", max_size=5)).queue
    now = qw.world.clock()
    updated = await qw.stub.UpdateQueue(
        queues.UpdateQueueRequest(
            queue_id=queue.queue_id,
            name="after",
            max_size=0,
            admission_rate_per_minute=999,  # not in the mask: ignored
            opens_at=timestamp(now + dt.timedelta(hours=1)),
            update_mask=field_mask_pb2.FieldMask(paths=["name", "max_size", "opens_at"]),
        ),
        metadata=qw.operator(),
    )
    assert updated.queue.name == "after"
    assert updated.queue.max_size == 0
    assert updated.queue.admission_rate_per_minute == 60
    assert updated.queue.status == queue_pb2.QUEUE_STATUS_SCHEDULED
    # Clearing opens_at makes it a DRAFT again.
    cleared = await qw.stub.UpdateQueue(
        queues.UpdateQueueRequest(
            queue_id=queue.queue_id, update_mask=field_mask_pb2.FieldMask(paths=["opens_at"])
        ),
        metadata=qw.operator(),
    )
    assert cleared.queue.status == queue_pb2.QUEUE_STATUS_DRAFT
    await qw.stub.OpenQueue(
        queues.OpenQueueRequest(queue_id=queue.queue_id), metadata=qw.operator()
    )
    await expect_status(
        qw.stub.UpdateQueue(
            queues.UpdateQueueRequest(
                queue_id=queue.queue_id,
                opens_at=timestamp(now + dt.timedelta(hours=2)),
                update_mask=field_mask_pb2.FieldMask(paths=["opens_at"]),
            ),
            metadata=qw.operator(),
        ),
        FAILED_PRECONDITION,
    )
    rate = await qw.stub.UpdateQueue(
        queues.UpdateQueueRequest(
            queue_id=queue.queue_id,
            admission_rate_per_minute=30,
            update_mask=field_mask_pb2.FieldMask(paths=["admission_rate_per_minute"]),
        ),
        metadata=qw.operator(),
    )
    assert rate.queue.admission_rate_per_minute == 30


async def test_bad_queue_requests(qw: QueueWorld) -> None:
    now = qw.world.clock()
    operator = qw.operator()
    cases: list[tuple[queues.CreateQueueRequest, str]] = [
        (queues.CreateQueueRequest(admission_rate_per_minute=1), "name"),
        (queues.CreateQueueRequest(name="x"), "admission_rate_per_minute"),
        (
            queues.CreateQueueRequest(
                name="x", admission_rate_per_minute=1, handoff_ttl=duration_pb2.Duration(seconds=5)
            ),
            "handoff_ttl",
        ),
        (
            queues.CreateQueueRequest(
                name="x",
                admission_rate_per_minute=1,
                opens_at=timestamp(now - dt.timedelta(minutes=1)),
            ),
            "opens_at",
        ),
        (
            queues.CreateQueueRequest(
                name="x",
                admission_rate_per_minute=1,
                closes_at=timestamp(now - dt.timedelta(minutes=1)),
            ),
            "closes_at",
        ),
        (queues.CreateQueueRequest(name="x", admission_rate_per_minute=1, max_size=-1), "max_size"),
    ]
    for request, field in cases:
        error = await expect_status(
            qw.stub.CreateQueue(request, metadata=operator), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert field in bad_request_fields(error), (field, bad_request_fields(error))
    await expect_status(
        qw.stub.CreateQueue(
            queues.CreateQueueRequest(
                name="x",
                admission_rate_per_minute=1,
                opens_at=timestamp(now + dt.timedelta(hours=2)),
                closes_at=timestamp(now + dt.timedelta(hours=1)),
            ),
            metadata=operator,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    queue_id = (await qw.create()).queue.queue_id
    await expect_status(
        qw.stub.UpdateQueue(
            queues.UpdateQueueRequest(queue_id=queue_id, name="x"), metadata=operator
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_status(
        qw.stub.UpdateQueue(
            queues.UpdateQueueRequest(
                queue_id=queue_id, update_mask=field_mask_pb2.FieldMask(paths=["status"])
            ),
            metadata=operator,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_status(
        qw.stub.GetQueue(queues.GetQueueRequest(queue_id="nope"), metadata=operator),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_status(
        qw.stub.ListQueues(queues.ListQueuesRequest(page_token="!!"), metadata=operator),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_queues_are_isolated_by_organization_and_mode(qw: QueueWorld) -> None:
    queue_id = (await qw.create()).queue.queue_id
    live_admin = bearer(qw.world.acme.organization.live_admin_key.plaintext)
    for metadata in (qw.operator(qw.world.globex), live_admin):
        for call, request in (
            (qw.stub.GetQueue, queues.GetQueueRequest(queue_id=queue_id)),
            (qw.stub.OpenQueue, queues.OpenQueueRequest(queue_id=queue_id)),
            (qw.stub.DeleteQueue, queues.DeleteQueueRequest(queue_id=queue_id)),
            (qw.stub.GetQueueStats, queues.GetQueueStatsRequest(queue_id=queue_id)),
            (qw.stub.AdmitConsumers, queues.AdmitConsumersRequest(queue_id=queue_id, count=1)),
        ):
            await expect_status(call(request, metadata=metadata), NOT_FOUND)  # type: ignore[operator]
        listed = await qw.stub.ListQueues(queues.ListQueuesRequest(), metadata=metadata)
        assert list(listed.queues) == []
    await expect_status(
        qw.stub.GetQueue(
            queues.GetQueueRequest(queue_id=queue_id),
            metadata=bearer(qw.world.globex.publishable_key),
        ),
        NOT_FOUND,
    )


async def test_roles(qw: QueueWorld) -> None:
    created: auth.CreateApiKeyResponse = await qw.world.auth.CreateApiKey(
        auth.CreateApiKeyRequest(
            kind=common_pb2.API_KEY_KIND_SECRET, role=common_pb2.ROLE_AUDITOR, name="a"
        ),
        metadata=qw.operator(),
    )
    auditor = bearer(created.secret)
    await expect_status(
        qw.stub.CreateQueue(
            queues.CreateQueueRequest(name="x", admission_rate_per_minute=1), metadata=auditor
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_status(
        qw.stub.CreateQueue(
            queues.CreateQueueRequest(name="x", admission_rate_per_minute=1),
            metadata=bearer(qw.world.acme.publishable_key),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    queue_id = (await qw.create()).queue.queue_id
    stats = await qw.stub.GetQueueStats(
        queues.GetQueueStatsRequest(queue_id=queue_id), metadata=auditor
    )
    assert stats.status == queue_pb2.QUEUE_STATUS_DRAFT
    guest = await qw.shopper("device-x")
    await expect_status(
        qw.stub.AdmitConsumers(
            queues.AdmitConsumersRequest(queue_id=queue_id, count=1), metadata=guest.metadata
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_status(
        qw.stub.EnterQueue(
            queues.EnterQueueRequest(queue_id=queue_id),
            metadata=consumer_metadata(qw.world.acme.publishable_key, device="d"),
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )


async def test_concurrent_transitions_have_one_winner(qw: QueueWorld) -> None:
    queue_id = (await qw.create()).queue.queue_id
    results = await asyncio.gather(
        *(
            qw.stub.OpenQueue(queues.OpenQueueRequest(queue_id=queue_id), metadata=qw.operator())
            for _ in range(10)
        ),
        return_exceptions=True,
    )
    opened = [result for result in results if not isinstance(result, BaseException)]
    refused = [result for result in results if isinstance(result, grpc.aio.AioRpcError)]
    assert len(opened) == 1 and len(refused) == 9
    # Lost races: the queue moved on (FAILED_PRECONDITION) or changed under the
    # call (ABORTED, retry); never a second opening.
    assert {error.code() for error in refused} <= {FAILED_PRECONDITION, grpc.StatusCode.ABORTED}
    assert len(qw.world.server.application.events.of_type(events.QUEUE_OPENED)) == 1


async def test_update_mask_sub_paths_are_invalid(qw: QueueWorld) -> None:
    queue = (await qw.create(name="before")).queue
    for path in (
        "name.x",
        "max_size.value",
        "admission_rate_per_minute.x",
        "opens_at.seconds",
        "handoff_ttl.nanos",
    ):
        error = await expect_status(
            qw.stub.UpdateQueue(
                queues.UpdateQueueRequest(
                    queue_id=queue.queue_id,
                    name="after",
                    max_size=5,
                    update_mask=field_mask_pb2.FieldMask(paths=[path]),
                ),
                metadata=qw.operator(),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert bad_request_fields(error) == ["update_mask"], path
        # The service refuses it too, whoever calls it (not only through protovalidate).
        with pytest.raises(InvalidArgument) as refused:
            await qw.world.server.application.queue_config.update(
                qw.world.acme.organization.organization.organization_id,
                "test",
                queue.queue_id,
                QueueChanges(fields=frozenset({path}), name="after", max_size=5),
            )
        assert [v.field for v in refused.value.violations] == ["update_mask"]
    got = await qw.stub.GetQueue(
        queues.GetQueueRequest(queue_id=queue.queue_id), metadata=qw.operator()
    )
    assert got.queue == queue


async def test_a_draft_queue_closes_at_its_closes_at(qw: QueueWorld) -> None:
    clock = qw.world.clock
    created = await qw.create(closes_at=timestamp(clock() + dt.timedelta(minutes=10)))
    queue_id = created.queue.queue_id
    assert created.queue.status == queue_pb2.QUEUE_STATUS_DRAFT
    worker = qw.world.server.application.queue_worker
    recorded = qw.world.server.application.events
    await worker.run_once()
    clock.advance(dt.timedelta(minutes=10, seconds=1))
    # Past its closes_at a draft cannot be opened any more ...
    await expect_status(
        qw.stub.OpenQueue(queues.OpenQueueRequest(queue_id=queue_id), metadata=qw.operator()),
        FAILED_PRECONDITION,
    )
    # ... nor given a closes_at in the past ...
    error = await expect_status(
        qw.stub.UpdateQueue(
            queues.UpdateQueueRequest(
                queue_id=queue_id,
                closes_at=timestamp(clock() - dt.timedelta(seconds=1)),
                update_mask=field_mask_pb2.FieldMask(paths=["closes_at"]),
            ),
            metadata=qw.operator(),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_request_fields(error) == ["closes_at"]
    # ... and the worker closes it, once, however many workers pass.
    await worker.run_once()
    await worker.run_once()
    got = await qw.stub.GetQueue(queues.GetQueueRequest(queue_id=queue_id), metadata=qw.operator())
    assert got.queue.status == queue_pb2.QUEUE_STATUS_CLOSED
    assert [e.data["queue_id"] for e in recorded.of_type(events.QUEUE_CLOSED)] == [queue_id]
    assert recorded.of_type(events.QUEUE_OPENED) == []
    # A draft without closes_at is left alone.
    draft = (await qw.create()).queue.queue_id
    clock.advance(dt.timedelta(days=30))
    await worker.run_once()
    got = await qw.stub.GetQueue(queues.GetQueueRequest(queue_id=draft), metadata=qw.operator())
    assert got.queue.status == queue_pb2.QUEUE_STATUS_DRAFT


async def test_the_worker_reads_only_queues_it_has_work_for(qw: QueueWorld) -> None:
    # It runs every second: every draft and every queue ever closed would make each
    # pass grow with the deployment's history.
    clock = qw.world.clock
    application = qw.world.server.application
    plain_draft = (await qw.create()).queue.queue_id
    closing_draft = (
        await qw.create(closes_at=timestamp(clock() + dt.timedelta(hours=1)))
    ).queue.queue_id
    scheduled = (
        await qw.create(opens_at=timestamp(clock() + dt.timedelta(hours=1)))
    ).queue.queue_id
    open_queue = await qw.open_queue()
    closed = await qw.open_queue()
    await qw.stub.CloseQueue(queues.CloseQueueRequest(queue_id=closed), metadata=qw.operator())
    store = application.queue_worker._schedule

    recently = {queue.queue_id for queue in await store.needing_work(clock() - CLOSED_QUEUE_SWEEP)}
    assert recently == {closing_draft, scheduled, open_queue, closed}
    assert plain_draft not in recently
    later = clock() + CLOSED_QUEUE_SWEEP + dt.timedelta(minutes=1)
    long_after = {queue.queue_id for queue in await store.needing_work(later - CLOSED_QUEUE_SWEEP)}
    assert long_after == {closing_draft, scheduled, open_queue}


async def test_queue_names_refuse_control_and_bidi_characters(qw: QueueWorld) -> None:
    queue_id = (await qw.create(name="plain")).queue.queue_id
    rename = field_mask_pb2.FieldMask(paths=["name"])
    for name in UNSAFE_NAMES:
        created = await expect_status(
            qw.stub.CreateQueue(
                queues.CreateQueueRequest(name=name, admission_rate_per_minute=1),
                metadata=qw.operator(),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert bad_request_fields(created) == ["name"], repr(name)
        updated = await expect_status(
            qw.stub.UpdateQueue(
                queues.UpdateQueueRequest(queue_id=queue_id, name=name, update_mask=rename),
                metadata=qw.operator(),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert bad_request_fields(updated) == ["name"], repr(name)
    for name in SAFE_NAMES:
        assert (await qw.create(name=name)).queue.name == name
        renamed = await qw.stub.UpdateQueue(
            queues.UpdateQueueRequest(queue_id=queue_id, name=name, update_mask=rename),
            metadata=qw.operator(),
        )
        assert renamed.queue.name == name
    # Shoppers see the name as it was stored.
    public = await qw.stub.GetQueue(
        queues.GetQueueRequest(queue_id=queue_id),
        metadata=bearer(qw.world.acme.publishable_key),
    )
    assert public.queue.name == SAFE_NAMES[-1]
