"""Streams anyone may open without a credential are capped per client."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fanfare_grpc.server import RunningServer
from tests.conftest import embedded_settings, start_migrated_server
from tests.grpc_helpers import metadata_dict

CAP = 3


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    settings = dataclasses.replace(embedded_settings(tmp_path), public_streams_per_client=CAP)
    running = await start_migrated_server(settings, run_worker=False)
    try:
        yield running
    finally:
        await running.shutdown(grace_seconds=1.0)


async def _opened_soon(stub: health_pb2_grpc.HealthStub) -> aio.UnaryStreamCall:
    """A watch, once a slot freed by a cancelled one is released (within 5 s)."""
    async with asyncio.timeout(5):
        while True:
            try:
                return await _opened(stub)
            except aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                await asyncio.sleep(0.05)


async def _opened(stub: health_pb2_grpc.HealthStub) -> aio.UnaryStreamCall:
    call = stub.Watch(health_pb2.HealthCheckRequest())
    first = await call.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    return call


async def test_health_watches_beyond_the_cap_are_refused_until_one_closes(
    server: RunningServer,
) -> None:
    async with aio.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watches = [await _opened(stub) for _ in range(CAP)]
        refused = stub.Watch(health_pb2.HealthCheckRequest())
        with pytest.raises(aio.AioRpcError) as error:
            await refused.read()
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"at most {CAP}" in (error.value.details() or "")
        assert metadata_dict(error.value.trailing_metadata())["retry-after"] == "5"
        # Unary health checks are not streams: never refused.
        await stub.Check(health_pb2.HealthCheckRequest())
        watches.pop().cancel()
        watches.append(await _opened_soon(stub))
        # Every slot comes back when its stream ends.
        for watch in watches:
            watch.cancel()
        watches = [await _opened_soon(stub) for _ in range(CAP)]
        for watch in watches:
            watch.cancel()
