"""Health follows the database: NOT_SERVING while it is unreachable, SERVING again after."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.auth.v1 import auth_service_pb2_grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fanfare_grpc.server import RunningServer
from fanfare_grpc.servicers import SERVICE_NAMES
from tests.backends import REDIS_URL
from tests.conftest import embedded_settings, new_organization, start_migrated_server
from tests.grpc_helpers import bearer
from tests.tcp_proxy import TcpProxy, proxied

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    async with proxied(postgres_url, 5432) as proxy_and_url:
        yield proxy_and_url


async def _statuses(address: str) -> set[int]:
    async with aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        return {
            (await health.Check(health_pb2.HealthCheckRequest(service=service))).status
            for service in ("", *SERVICE_NAMES)
        }


async def _wait_for(address: str, wanted: int, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while await _statuses(address) != {wanted}:
            await asyncio.sleep(0.05)


async def test_health_tracks_database_reachability(
    proxy: tuple[TcpProxy, str], tmp_path: Path, redis_prefix: str
) -> None:
    tcp_proxy, proxied_url = proxy
    settings = dataclasses.replace(
        embedded_settings(tmp_path),
        database_url=proxied_url,
        redis_url=REDIS_URL,
        redis_key_prefix=redis_prefix,
        health_check_interval_seconds=0.1,
        health_check_timeout_seconds=1.0,
    )
    server: RunningServer = await start_migrated_server(settings)
    try:
        await _wait_for(server.address, SERVING)
        organization = await new_organization(server)
        list_keys = auth.ListApiKeysRequest()
        metadata = bearer(organization.test_admin_key.plaintext)
        async with aio.insecure_channel(server.address) as channel:
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            await stub.ListApiKeys(list_keys, metadata=metadata)  # key verified and cached
            tcp_proxy.cut()
            await _wait_for(server.address, NOT_SERVING)
            with pytest.raises(aio.AioRpcError) as outage:
                await stub.ListApiKeys(list_keys, metadata=metadata)
            # API.md: backend unavailable → UNAVAILABLE, never INTERNAL or details.
            assert outage.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "psycopg" not in (outage.value.details() or "")
            tcp_proxy.restore()
            await _wait_for(server.address, SERVING)
            await stub.ListApiKeys(list_keys, metadata=metadata)
    finally:
        await server.shutdown(grace_seconds=1.0)


async def test_health_watch_sees_not_serving_when_draining(tmp_path: Path) -> None:
    server = await start_migrated_server(embedded_settings(tmp_path))
    async with aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        assert first.status == SERVING
        shutdown = asyncio.create_task(server.shutdown(grace_seconds=2.0))
        second = await asyncio.wait_for(watch.read(), timeout=5)
        assert second.status == NOT_SERVING
        await shutdown
