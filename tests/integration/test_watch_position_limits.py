"""WatchPosition streams are bounded and leave nothing behind, on both backends.

Caps per consumer session and per client address (per replica), the HTTP/2 limit
of calls per connection, the release of every slot, watcher and poller however a
stream ends (including while the server is blocked writing to a client that went
away), and the outcome each ended stream is logged with.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import weakref
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from fanfare.queue.v1 import queue_service_pb2 as queues
from fanfare.queue.v1 import queue_service_pb2_grpc
from grpc import aio

from fanfare_grpc.domain.position_feed import PositionFeed
from fanfare_grpc.domain.stream_slots import RETRY_AFTER_SECONDS
from tests.clock import MutableClock
from tests.conftest import BackendSettings, start_migrated_server
from tests.consumers import consumer_world
from tests.grpc_helpers import metadata_dict
from tests.integration.test_watch_position import (
    WatchCall,
    first_message,
    next_message,
    rest_of_stream,
    wait_until,
    waiting_shopper,
    watch,
)
from tests.queues import QueueWorld, Shopper

WATCH_METHOD = "/fanfare.queue.v1.QueueService/WatchPosition"
# Cancellations travel through grpc and the loop before the server sees them.
RELEASE_TIMEOUT = 5.0


@contextlib.asynccontextmanager
async def queue_world(backend: BackendSettings, **overrides: int) -> AsyncIterator[QueueWorld]:
    """A server with these settings; the worker is driven by the tests."""
    settings = dataclasses.replace(backend.settings, **overrides)  # type: ignore[arg-type]
    clock = MutableClock()
    server = await start_migrated_server(settings, clock=clock, run_worker=False)
    try:
        async with consumer_world(server, clock) as world:
            yield QueueWorld(world)
    finally:
        await server.shutdown(grace_seconds=1.0)


@pytest.fixture
async def qw(backend: BackendSettings) -> AsyncIterator[QueueWorld]:
    async with queue_world(backend) as world:
        yield world


def feed_of(qw: QueueWorld) -> PositionFeed:
    return qw.world.server.application.position_feed


async def released(feed: PositionFeed) -> None:
    """Every slot, watcher and poller of the feed is gone."""
    await wait_until(
        lambda: (feed.open_streams, feed.watcher_count, len(feed._pollers)) == (0, 0, 0),
        RELEASE_TIMEOUT,
    )


async def open_streams(
    qw: QueueWorld, queue_id: str, shopper: Shopper, count: int
) -> list[WatchCall]:
    calls = [watch(qw, queue_id, shopper) for _ in range(count)]
    for call in calls:
        await first_message(call)
    return calls


async def expect_exhausted(call: WatchCall, cap: str) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await next_message(call)
    error = raised.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert cap in (error.details() or "")
    assert metadata_dict(error.trailing_metadata())["retry-after"] == str(RETRY_AFTER_SECONDS)


def outcomes(qw: QueueWorld, method: str = WATCH_METHOD) -> list[str]:
    """Codes of the ``rpc finished`` lines the server logged for ``method``."""
    return [
        getattr(record, "code")  # noqa: B009
        for record in qw.world.codes.records
        if record.getMessage() == "rpc finished" and getattr(record, "method", "") == method
    ]


async def test_a_session_holds_at_most_four_streams(qw: QueueWorld) -> None:
    feed = feed_of(qw)
    queue_id = await qw.open_queue()
    shopper = await waiting_shopper(qw, queue_id, "phone-1")
    calls = await open_streams(qw, queue_id, shopper, 4)

    await expect_exhausted(watch(qw, queue_id, shopper), "for this session (at most 4)")
    assert feed.open_streams == 4
    # Another session (of another consumer) is not affected.
    other = await waiting_shopper(qw, queue_id, "phone-2")
    other_call = watch(qw, queue_id, other)
    await first_message(other_call)

    calls[0].cancel()
    await wait_until(lambda: feed.open_streams == 4, RELEASE_TIMEOUT)
    replacement = watch(qw, queue_id, shopper)
    assert (await first_message(replacement)).entry.consumer_id == shopper.consumer_id
    for call in (*calls[1:], other_call, replacement):
        call.cancel()
    await released(feed)


async def test_a_client_address_holds_at_most_its_cap(backend: BackendSettings) -> None:
    async with queue_world(backend, watch_streams_per_client=3) as qw:
        feed = feed_of(qw)
        queue_id = await qw.open_queue()
        one = await waiting_shopper(qw, queue_id, "phone-1")
        two = await waiting_shopper(qw, queue_id, "phone-2")
        three = await waiting_shopper(qw, queue_id, "phone-3")
        calls = [
            *await open_streams(qw, queue_id, one, 2),
            *await open_streams(qw, queue_id, two, 1),
        ]
        # A fresh session from the same address: its own cap is not reached.
        await expect_exhausted(watch(qw, queue_id, three), "from this client address (at most 3)")

        calls[0].cancel()
        await wait_until(lambda: feed.open_streams == 2, RELEASE_TIMEOUT)
        replacement = watch(qw, queue_id, three)
        await first_message(replacement)
        for call in (*calls[1:], replacement):
            call.cancel()
        await released(feed)


async def test_slots_are_released_however_a_stream_ends(qw: QueueWorld) -> None:
    feed = feed_of(qw)
    queue_id = await qw.open_queue()
    shopper = await waiting_shopper(qw, queue_id, "phone-1")

    # Client cancel, waiting for updates.
    cancelled = await open_streams(qw, queue_id, shopper, 4)
    for call in cancelled:
        call.cancel()
    await released(feed)

    # Deadline.
    expiring = [
        qw.stub.WatchPosition(
            queues.WatchPositionRequest(queue_id=queue_id), metadata=shopper.metadata, timeout=1.0
        )
        for _ in range(4)
    ]
    for call in expiring:
        await first_message(call)
    for call in expiring:
        with pytest.raises(aio.AioRpcError) as raised:
            await next_message(call)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await released(feed)

    # An error before the first message (a consumer who never entered).
    stranger = await qw.shopper("phone-2")
    for _ in range(5):
        with pytest.raises(aio.AioRpcError) as raised:
            await next_message(watch(qw, queue_id, stranger))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    await released(feed)

    # The normal end: admitted.
    finishing = await open_streams(qw, queue_id, shopper, 4)
    assert await qw.admit(queue_id, 1) == 1
    for call in finishing:
        assert (await rest_of_stream(call))[-1].entry.handoff_token
    await released(feed)
    assert outcomes(qw).count("CANCELLED") == 4
    assert outcomes(qw).count("DEADLINE_EXCEEDED") == 4
    assert outcomes(qw).count("NOT_FOUND") == 5


async def test_shutdown_releases_open_streams(backend: BackendSettings) -> None:
    async with queue_world(backend) as qw:
        feed = feed_of(qw)
        queue_id = await qw.open_queue()
        shopper = await waiting_shopper(qw, queue_id, "phone-1")
        calls = await open_streams(qw, queue_id, shopper, 4)
        await qw.world.server.shutdown(grace_seconds=0.5)
        assert (feed.open_streams, feed.watcher_count, feed._pollers) == (0, 0, {})
        for call in calls:
            assert await call.code() != grpc.StatusCode.OK


@contextlib.contextmanager
def asyncio_errors() -> Iterator[list[logging.LogRecord]]:
    """Errors the event loop reports (e.g. a finalizer's exception never retrieved)."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("asyncio")
    handler = Collect(logging.ERROR)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


async def test_a_stream_cancelled_while_the_server_writes_is_released_at_once(
    qw: QueueWorld,
) -> None:
    feed = feed_of(qw)
    queue_id = await qw.open_queue()
    for device in ("phone-1", "phone-2"):
        await waiting_shopper(qw, queue_id, device)
    shopper = await waiting_shopper(qw, queue_id, "phone-3")
    # A one-byte receive window: each message waits until the client reads the
    # previous one, so the server blocks in its write to a client that stopped reading.
    options = [("grpc.http2.lookahead_bytes", 1), ("grpc.http2.bdp_probe", 0)]
    with asyncio_errors() as loop_errors:
        async with aio.insecure_channel(qw.world.server.address, options=options) as channel:
            call: WatchCall = queue_service_pb2_grpc.QueueServiceStub(channel).WatchPosition(
                queues.WatchPositionRequest(queue_id=queue_id), metadata=shopper.metadata
            )
            assert (await next_message(call)).entry.position == 3
            await wait_until(lambda: feed.watcher_count == 1, RELEASE_TIMEOUT)
            (group,) = feed._watchers.values()
            (watcher,) = group
            watcher_ref = weakref.ref(watcher)
            del group, watcher

            assert await qw.admit(queue_id, 1) == 1
            # The stream took the update and is writing it (it cannot complete).
            await wait_until(
                lambda: (
                    (ref := watcher_ref()) is not None
                    and ref.last_sent.position == 2
                    and ref.updates.empty()
                ),
                RELEASE_TIMEOUT,
            )
            await asyncio.sleep(0.2)
            call.cancel()
            await released(feed)
            await wait_until(lambda: outcomes(qw) == ["CANCELLED"], RELEASE_TIMEOUT)
    gc.collect()
    assert watcher_ref() is None, "the watcher is still referenced"
    assert feed._wakeups == {}
    assert [record.getMessage() for record in loop_errors] == []


async def test_a_connection_has_at_most_max_concurrent_streams(backend: BackendSettings) -> None:
    async with queue_world(backend, max_concurrent_streams=2) as qw:
        feed = feed_of(qw)
        queue_id = await qw.open_queue()
        shoppers = [await waiting_shopper(qw, queue_id, f"phone-{n}") for n in range(3)]
        async with aio.insecure_channel(qw.world.server.address) as channel:
            await channel.channel_ready()
            stub = queue_service_pb2_grpc.QueueServiceStub(channel)
            calls: list[WatchCall] = [
                stub.WatchPosition(
                    queues.WatchPositionRequest(queue_id=queue_id), metadata=shopper.metadata
                )
                for shopper in shoppers
            ]
            reads = [asyncio.ensure_future(call.read()) for call in calls]
            done, pending = await asyncio.wait(reads, timeout=2.0)
            # Two calls run; the third waits in the client's HTTP/2 queue, not on the server.
            assert (len(done), len(pending)) == (2, 1)
            assert feed.open_streams == 2
            (waiting,) = pending
            running = [calls[reads.index(read)] for read in done]
            running[0].cancel()
            async with asyncio.timeout(RELEASE_TIMEOUT):
                first = await waiting
            assert isinstance(first, queues.WatchPositionResponse)
            for call in calls:
                call.cancel()
            await released(feed)
