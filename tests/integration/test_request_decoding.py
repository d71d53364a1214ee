"""A request body that is not a valid message is INVALID_ARGUMENT, mapped like any other.

grpcio parses unary requests before any interceptor runs and, left alone, answers
UNKNOWN ("Unexpected DecodeError") without the server's headers. Raw byte calls over
a real socket send bodies no client library would produce.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from fanfare.queue.v1 import queue_service_pb2 as queues
from grpc import aio

from fanfare_grpc.interceptors.validation import UNDECODABLE_REQUEST_MESSAGE
from tests.conftest import embedded_settings
from tests.consumers import serving_consumer_world
from tests.grpc_helpers import bearer, metadata_dict
from tests.queues import QueueWorld

QUEUE_SERVICE = "/fanfare.queue.v1.QueueService/"
CORRUPT_BODIES = (
    b"\xff\xff\xff\xff\xff",  # a tag that is no valid field number or wire type
    b"\x0a\x05ab",  # queue_id says 5 bytes, 2 follow
    b"\x0a\x02\xc3\x28",  # queue_id is not UTF-8
    b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # a varint longer than 10 bytes
)


@pytest.fixture
async def qw(tmp_path: Path) -> AsyncIterator[QueueWorld]:
    async with serving_consumer_world(embedded_settings(tmp_path), run_worker=False) as world:
        yield QueueWorld(world)


async def _refused(call: aio.UnaryUnaryCall | aio.UnaryStreamCall) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as failure:
        if isinstance(call, aio.UnaryStreamCall):
            async for _ in call:
                pass
        else:
            await call
    return failure.value


async def test_a_corrupt_body_is_invalid_argument_with_a_request_id(qw: QueueWorld) -> None:
    channel = qw.world.channel
    get_queue = channel.unary_unary(QUEUE_SERVICE + "GetQueue")
    for body in CORRUPT_BODIES:
        error = await _refused(get_queue(body, metadata=qw.operator()))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, body
        assert error.details() == UNDECODABLE_REQUEST_MESSAGE
        assert metadata_dict(error.trailing_metadata())["x-request-id"].startswith("req_")
    # The same call with a valid body goes through.
    queue_id = (await qw.create()).queue.queue_id
    reply = await get_queue(
        queues.GetQueueRequest(queue_id=queue_id).SerializeToString(), metadata=qw.operator()
    )
    assert queues.GetQueueResponse.FromString(reply).queue.queue_id == queue_id  # type: ignore[arg-type]


async def test_corrupt_bodies_of_streams_and_open_rpcs_too(qw: QueueWorld) -> None:
    channel = qw.world.channel
    shopper = await qw.shopper("device")
    watch = channel.unary_stream(QUEUE_SERVICE + "WatchPosition")
    error = await _refused(watch(CORRUPT_BODIES[0], metadata=shopper.metadata))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert metadata_dict(error.trailing_metadata())["x-request-id"].startswith("req_")
    # Health needs no credentials: the body is the first thing wrong.
    health = channel.unary_unary("/grpc.health.v1.Health/Check")
    error = await _refused(health(CORRUPT_BODIES[0]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert metadata_dict(error.trailing_metadata())["x-request-id"].startswith("req_")


async def test_credentials_are_checked_before_the_body(qw: QueueWorld) -> None:
    get_queue = qw.world.channel.unary_unary(QUEUE_SERVICE + "GetQueue")
    error = await _refused(get_queue(CORRUPT_BODIES[0]))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    error = await _refused(get_queue(CORRUPT_BODIES[0], metadata=bearer("sk_test_nope")))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
