"""WatchPosition over real sockets, on both backends: every way a stream ends,
position updates while waiting, cancellation, and the error codes."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from fanfare.queue.v1 import queue_pb2
from fanfare.queue.v1 import queue_service_pb2 as queues
from google.protobuf import duration_pb2, field_mask_pb2
from grpc import aio

from fanfare_grpc.domain.position_feed import PositionFeed
from tests.clock import MutableClock
from tests.conftest import BackendSettings, start_migrated_server
from tests.consumers import consumer_metadata, consumer_world
from tests.queues import QueueWorld, Shopper, timestamp

QUEUED = queue_pb2.ENTRY_STATUS_QUEUED
ADMITTED = queue_pb2.ENTRY_STATUS_ADMITTED
DENIED = queue_pb2.ENTRY_STATUS_DENIED
LEFT = queue_pb2.ENTRY_STATUS_LEFT
EXPIRED = queue_pb2.ENTRY_STATUS_EXPIRED
# The feed polls every second: an update is due within one interval plus the time
# the change takes to be seen (the per-process queue configuration copy lives 1 s).
UPDATE_TIMEOUT = 3.0
# The first message is sent before the stream waits for the poller.
FIRST_MESSAGE_TIMEOUT = 0.9

WatchCall = aio.UnaryStreamCall[queues.WatchPositionRequest, queues.WatchPositionResponse]


@pytest.fixture
async def qw(backend: BackendSettings) -> AsyncIterator[QueueWorld]:
    clock = MutableClock()
    # The worker is driven by the tests (run_once), never by timers.
    server = await start_migrated_server(backend.settings, clock=clock, run_worker=False)
    try:
        async with consumer_world(server, clock) as world:
            yield QueueWorld(world)
    finally:
        await server.shutdown(grace_seconds=1.0)


def feed_of(qw: QueueWorld) -> PositionFeed:
    return qw.world.server.application.position_feed


def watch(qw: QueueWorld, queue_id: str, shopper: Shopper) -> WatchCall:
    call: WatchCall = qw.stub.WatchPosition(
        queues.WatchPositionRequest(queue_id=queue_id), metadata=shopper.metadata
    )
    return call


async def next_message(
    call: WatchCall, timeout: float = UPDATE_TIMEOUT
) -> queues.WatchPositionResponse:
    async with asyncio.timeout(timeout):
        message = await call.read()
    assert message is not aio.EOF, "the stream ended early"
    assert isinstance(message, queues.WatchPositionResponse)
    return message


async def first_message(call: WatchCall) -> queues.WatchPositionResponse:
    """The update sent at once, before any poll."""
    started = time.monotonic()
    message = await next_message(call, FIRST_MESSAGE_TIMEOUT)
    assert time.monotonic() - started < FIRST_MESSAGE_TIMEOUT
    return message


async def rest_of_stream(
    call: WatchCall, timeout: float = UPDATE_TIMEOUT
) -> list[queues.WatchPositionResponse]:
    """Every further message until the stream completes, which it must do with OK."""
    messages: list[queues.WatchPositionResponse] = []
    async with asyncio.timeout(timeout):
        while (message := await call.read()) is not aio.EOF:
            assert isinstance(message, queues.WatchPositionResponse)
            messages.append(message)
        code = await call.code()
    assert code == grpc.StatusCode.OK, await call.details()
    return messages


async def ends_after(call: WatchCall) -> queues.WatchPositionResponse:
    """The final update (after which the stream completes OK)."""
    messages = await rest_of_stream(call)
    assert messages, "the stream ended without a final update"
    return messages[-1]


async def waiting_shopper(qw: QueueWorld, queue_id: str, device: str) -> Shopper:
    shopper = await qw.shopper(device)
    await qw.enter(queue_id, shopper)
    return shopper


async def watching(qw: QueueWorld, queue_id: str, shopper: Shopper, position: int = 1) -> WatchCall:
    """A stream whose first message says QUEUED at ``position``."""
    call = watch(qw, queue_id, shopper)
    first = await first_message(call)
    assert first.entry.status == QUEUED
    assert first.entry.position == position
    assert first.entry.consumer_id == shopper.consumer_id
    assert first.queue_status == queue_pb2.QUEUE_STATUS_OPEN
    assert first.entry.handoff_token == ""
    return call


async def expect_stream_error(call: WatchCall, code: grpc.StatusCode) -> None:
    async with asyncio.timeout(UPDATE_TIMEOUT):
        with pytest.raises(aio.AioRpcError) as raised:
            await call.read()
    assert raised.value.code() == code, raised.value.details()


async def test_admitted_ends_the_stream_with_a_handoff_token(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue()
    shopper = await waiting_shopper(qw, queue_id, "phone-1")
    call = await watching(qw, queue_id, shopper)

    assert await qw.admit(queue_id, 1) == 1
    final = await ends_after(call)
    assert final.entry.status == ADMITTED
    assert final.entry.handoff_token != ""
    assert final.entry.HasField("handoff_expires_at")
    validated = await qw.validate(final.entry.handoff_token, queue_id)
    assert validated.valid
    assert validated.consumer_id == shopper.consumer_id


async def test_denied_ends_the_stream(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue()
    shopper = await waiting_shopper(qw, queue_id, "phone-1")
    call = await watching(qw, queue_id, shopper)

    await qw.stub.DenyConsumer(
        queues.DenyConsumerRequest(queue_id=queue_id, consumer_id=shopper.consumer_id),
        metadata=qw.operator(),
    )
    final = await ends_after(call)
    assert final.entry.status == DENIED
    assert final.entry.handoff_token == ""


async def test_leaving_from_another_call_ends_the_stream(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue()
    shopper = await waiting_shopper(qw, queue_id, "phone-1")
    call = await watching(qw, queue_id, shopper)

    left = await qw.stub.LeaveQueue(
        queues.LeaveQueueRequest(queue_id=queue_id), metadata=shopper.metadata
    )
    assert left.entry.status == LEFT
    final = await ends_after(call)
    assert final.entry.status == LEFT
    assert final.entry.position == 0


async def test_closing_the_queue_ends_the_stream(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue()
    shopper = await waiting_shopper(qw, queue_id, "phone-1")
    call = await watching(qw, queue_id, shopper)

    await qw.stub.CloseQueue(queues.CloseQueueRequest(queue_id=queue_id), metadata=qw.operator())
    final = await ends_after(call)
    assert final.queue_status == queue_pb2.QUEUE_STATUS_CLOSED
    # A stream opened on the closed queue says so once, and ends.
    late = await rest_of_stream(watch(qw, queue_id, shopper))
    assert [m.queue_status for m in late] == [queue_pb2.QUEUE_STATUS_CLOSED]


async def test_watching_after_admission_and_after_expiry(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue(handoff_ttl=duration_pb2.Duration(seconds=60))
    shopper = await waiting_shopper(qw, queue_id, "phone-1")
    assert await qw.admit(queue_id, 1) == 1

    # Already admitted: one message (the grant) and the stream is over.
    admitted = await rest_of_stream(watch(qw, queue_id, shopper))
    assert [m.entry.status for m in admitted] == [ADMITTED]
    assert admitted[0].entry.handoff_token != ""

    qw.world.clock.advance(dt.timedelta(seconds=61))
    await qw.world.server.application.queue_worker.run_once()
    expired = await rest_of_stream(watch(qw, queue_id, shopper))
    assert [m.entry.status for m in expired] == [EXPIRED]
    assert expired[0].entry.handoff_token == ""
    validated = await qw.validate(admitted[0].entry.handoff_token, queue_id)
    assert not validated.valid
    assert validated.reason == queue_pb2.HANDOFF_TOKEN_REASON_EXPIRED


async def test_position_updates_while_waiting(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue()
    for device in ("phone-1", "phone-2"):
        await waiting_shopper(qw, queue_id, device)
    third = await waiting_shopper(qw, queue_id, "phone-3")
    call = await watching(qw, queue_id, third, position=3)
    try:
        assert await qw.admit(queue_id, 1) == 1
        moved = await next_message(call)
        assert (moved.entry.status, moved.entry.position, moved.entry.ahead) == (QUEUED, 2, 1)
        assert await qw.admit(queue_id, 1) == 1
        front = await next_message(call)
        assert (front.entry.status, front.entry.position, front.entry.ahead) == (QUEUED, 1, 0)
    finally:
        call.cancel()


async def wait_until(condition: Callable[[], bool], timeout: float = 1.0) -> None:
    """Poll ``condition()`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_cancelling_the_call_frees_the_watcher_and_the_poller(qw: QueueWorld) -> None:
    feed = feed_of(qw)
    queue_id = await qw.open_queue()
    one = await waiting_shopper(qw, queue_id, "phone-1")
    two = await waiting_shopper(qw, queue_id, "phone-2")
    first = await watching(qw, queue_id, one)
    second = await watching(qw, queue_id, two, position=2)
    await wait_until(lambda: feed.watcher_count == 2)
    # Private access: the poller tasks are the resource a lost stream must not leak.
    pollers = dict(feed._pollers)
    assert len(pollers) == 1, "one poller per watched queue"
    (poller,) = pollers.values()

    first.cancel()
    await wait_until(lambda: feed.watcher_count == 1)
    assert feed._pollers == pollers, "the queue still has a watcher"
    assert not poller.done()

    second.cancel()
    await wait_until(lambda: feed.watcher_count == 0 and not feed._pollers)
    await wait_until(poller.done)
    assert poller.cancelled()


async def test_watching_a_queue_never_entered_is_not_found(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue()
    stranger = await qw.shopper("phone-1")
    await expect_stream_error(watch(qw, queue_id, stranger), grpc.StatusCode.NOT_FOUND)
    assert feed_of(qw).watcher_count == 0


async def test_another_organizations_queue_is_not_found(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue()
    await waiting_shopper(qw, queue_id, "phone-1")
    foreign = await qw.shopper("phone-2", tenant=qw.world.globex)
    await expect_stream_error(watch(qw, queue_id, foreign), grpc.StatusCode.NOT_FOUND)


async def test_watching_without_a_consumer_token_is_unauthenticated(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue()
    shopper = await waiting_shopper(qw, queue_id, "phone-1")
    for metadata in (
        consumer_metadata(qw.world.acme.publishable_key, device="phone-1"),
        consumer_metadata(qw.world.acme.publishable_key),
        (),
    ):
        anonymous = Shopper(shopper.consumer_id, shopper.session_id, metadata)
        await expect_stream_error(watch(qw, queue_id, anonymous), grpc.StatusCode.UNAUTHENTICATED)


async def test_stream_ends_with_not_found_when_its_queue_is_deleted(qw: QueueWorld) -> None:
    now = qw.world.clock()
    queue_id = (await qw.create(opens_at=timestamp(now + dt.timedelta(hours=1)))).queue.queue_id
    shopper = await waiting_shopper(qw, queue_id, "pre-queue-device")
    call = watch(qw, queue_id, shopper)
    first = await first_message(call)
    assert first.entry.pre_queue
    # Back to DRAFT (opens_at cleared), then deleted with its pre-queue.
    await qw.stub.UpdateQueue(
        queues.UpdateQueueRequest(
            queue_id=queue_id, update_mask=field_mask_pb2.FieldMask(paths=["opens_at"])
        ),
        metadata=qw.operator(),
    )
    await qw.stub.DeleteQueue(queues.DeleteQueueRequest(queue_id=queue_id), metadata=qw.operator())
    await expect_stream_error(call, grpc.StatusCode.NOT_FOUND)
    await asyncio.sleep(0)
    assert feed_of(qw).watcher_count == 0
