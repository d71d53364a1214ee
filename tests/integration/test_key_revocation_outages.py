"""A key change whose broadcast fails is never answered OK, on both backends.

RevokeApiKey and RotateApiKey commit, then announce the change to every replica. When
the announcement cannot be published, a replica whose subscription stayed up would keep
the key cached for ``POSITIVE_TTL_SECONDS``: so the call answers UNAVAILABLE (the
change stands, repeating the call announces it again), the revoking replica refuses
the key at once, and the announcement is retried in the background. Two replicas share
the database and the cache here; only replica A's publishes fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest
from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.auth.v1 import auth_service_pb2_grpc
from fanfare.common.v1 import common_pb2
from fanfare.queue.v1 import queue_service_pb2 as queues
from fanfare.queue.v1 import queue_service_pb2_grpc
from grpc import aio
from redis.exceptions import ConnectionError as RedisConnectionError

from fanfare_grpc.app import Application
from fanfare_grpc.authentication.invalidation import CHANNEL
from fanfare_grpc.cache.factory import open_cache
from fanfare_grpc.cache.protocols import Cache, PubSub, Subscription
from fanfare_grpc.domain.access import Mode
from fanfare_grpc.domain.api_key_service import REVOKE_NOT_ANNOUNCED
from fanfare_grpc.server import RunningServer, start_server
from fanfare_grpc.storage import migrate
from tests.clock import MutableClock
from tests.conftest import BackendSettings, new_organization
from tests.grpc_helpers import bearer, expect_status
from tests.integration.test_revocation_outages import FlakyMarkerCache

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
# The documented bound once a change is announced (README, "every replica rejects the
# key within 2 s"), with a margin for a slow CI machine.
ANNOUNCED_DEADLINE_SECONDS = 2.0 + 3.0
# The background retry runs every second; generous for a loaded machine.
BACKGROUND_RETRY_DEADLINE_SECONDS = 15.0


class FlakyPublisher:
    """The cache's pub/sub, except that publishing fails while ``broken``."""

    def __init__(self, inner: PubSub) -> None:
        self.inner = inner
        self.broken = False

    async def publish(self, channel: str, message: str) -> None:
        if self.broken:
            raise RedisConnectionError("injected: Error 104 while writing to socket")
        await self.inner.publish(channel, message)

    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]:
        return self.inner.subscribe(channel)


class FlakyBroadcastCache(FlakyMarkerCache):
    """A cache whose publishes fail on demand (markers never do)."""

    def __init__(self, inner: Cache) -> None:
        super().__init__(inner)
        self.publisher = FlakyPublisher(inner.pubsub)

    @property
    def pubsub(self) -> FlakyPublisher:
        return self.publisher


@dataclasses.dataclass
class Replicas:
    a: RunningServer
    b: RunningServer
    publisher: FlakyPublisher
    admin_on_a: auth_service_pb2_grpc.AuthServiceStub
    queues_on_a: queue_service_pb2_grpc.QueueServiceStub
    queues_on_b: queue_service_pb2_grpc.QueueServiceStub
    admin_key: str
    organization_id: str

    async def operator_key(self) -> auth.CreateApiKeyResponse:
        """A new OPERATOR key, verified and cached on both replicas."""
        created: auth.CreateApiKeyResponse = await self.admin_on_a.CreateApiKey(
            auth.CreateApiKeyRequest(
                kind=common_pb2.API_KEY_KIND_SECRET, role=common_pb2.ROLE_OPERATOR, name="ci"
            ),
            metadata=bearer(self.admin_key),
        )
        await use(self.queues_on_a, created.secret)
        await use(self.queues_on_b, created.secret)
        return created

    def revoke(self, key_id: str, *extra: tuple[str, str]) -> Awaitable[Any]:
        return self.admin_on_a.RevokeApiKey(  # type: ignore[no-any-return]
            auth.RevokeApiKeyRequest(key_id=key_id),
            metadata=(*bearer(self.admin_key), *extra),
        )

    def rotate(self, key_id: str, *extra: tuple[str, str]) -> Awaitable[Any]:
        return self.admin_on_a.RotateApiKey(  # type: ignore[no-any-return]
            auth.RotateApiKeyRequest(key_id=key_id),
            metadata=(*bearer(self.admin_key), *extra),
        )


async def use(stub: queue_service_pb2_grpc.QueueServiceStub, secret: str) -> None:
    await stub.ListQueues(queues.ListQueuesRequest(), metadata=bearer(secret))


async def refused_within(
    stub: queue_service_pb2_grpc.QueueServiceStub, secret: str, seconds: float
) -> None:
    """The key is refused on that replica before ``seconds`` have passed."""
    started = time.monotonic()
    while True:
        try:
            await use(stub, secret)
        except aio.AioRpcError as error:
            assert error.code() == UNAUTHENTICATED, error.details()
            return
        assert time.monotonic() - started < seconds, "the changed key is still accepted"
        await asyncio.sleep(0.05)


async def never_retry() -> None:
    """Stands in for the background retry, to show what the call itself announces."""
    await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def two_replicas(
    backend: BackendSettings, *, background_retry: bool = True
) -> AsyncIterator[Replicas]:
    """Replicas A and B in this process: one database, one cache (the same in-process
    cache on the embedded backend, two Redis clients on the same prefix otherwise)."""
    settings = backend.settings
    await migrate.upgrade_to_head(settings.effective_owner_database_url)
    shared = open_cache(settings)
    cache_a = FlakyBroadcastCache(shared)
    cache_b = shared if not shared.shared_between_processes else open_cache(settings)
    clock = MutableClock()
    application_a = Application.build(settings, clock=clock, cache=cache_a)
    if not background_retry:
        application_a.key_invalidations.run = never_retry  # type: ignore[method-assign,assignment]
    application_b = Application.build(settings, clock=clock, cache=cache_b)
    replica_a = await start_server(application_a, run_worker=False)
    try:
        replica_b = await start_server(application_b, run_worker=False)
        try:
            organization = await new_organization(replica_a)
            async with (
                aio.insecure_channel(replica_a.address) as to_a,
                aio.insecure_channel(replica_b.address) as to_b,
            ):
                yield Replicas(
                    replica_a,
                    replica_b,
                    cache_a.publisher,
                    auth_service_pb2_grpc.AuthServiceStub(to_a),
                    queue_service_pb2_grpc.QueueServiceStub(to_a),
                    queue_service_pb2_grpc.QueueServiceStub(to_b),
                    organization.test_admin_key.plaintext,
                    organization.organization.organization_id,
                )
        finally:
            await replica_b.shutdown(grace_seconds=1.0)
    finally:
        await replica_a.shutdown(grace_seconds=1.0)


@pytest.fixture
async def replicas(backend: BackendSettings) -> AsyncIterator[Replicas]:
    async with two_replicas(backend) as both:
        yield both


@pytest.fixture
async def without_background_retry(backend: BackendSettings) -> AsyncIterator[Replicas]:
    async with two_replicas(backend, background_retry=False) as both:
        yield both


async def test_a_revoke_whose_broadcast_failed_answers_unavailable_and_is_refused_here_at_once(
    replicas: Replicas,
) -> None:
    created = await replicas.operator_key()
    replicas.publisher.broken = True
    error = await expect_status(replicas.revoke(created.api_key.key_id), UNAVAILABLE)
    assert error.details() == REVOKE_NOT_ANNOUNCED
    # The revoke stands, and the replica that could not announce it refuses it already.
    await expect_status(use(replicas.queues_on_a, created.secret), UNAUTHENTICATED)
    assert replicas.a.application.key_invalidations.pending == 1


async def test_a_retried_revoke_announces_it_to_every_replica(
    without_background_retry: Replicas,
) -> None:
    replicas = without_background_retry
    created = await replicas.operator_key()
    replicas.publisher.broken = True
    await expect_status(replicas.revoke(created.api_key.key_id), UNAVAILABLE)
    replicas.publisher.broken = False
    again = await replicas.revoke(created.api_key.key_id)  # a no-op that announces again
    assert again.api_key.HasField("revoked_at")
    assert replicas.a.application.key_invalidations.pending == 0
    await refused_within(replicas.queues_on_b, created.secret, ANNOUNCED_DEADLINE_SECONDS)


async def test_a_revoke_with_an_idempotency_key_is_announced_by_a_retry_with_that_key(
    without_background_retry: Replicas,
) -> None:
    """UNAVAILABLE here means "repeat me": a retry with the same idempotency key runs the
    revoke again, where another call that failed mid-way answers ABORTED for 24 h."""
    replicas = without_background_retry
    created = await replicas.operator_key()
    keyed = ("idempotency-key", "revoke-ci-1")
    replicas.publisher.broken = True
    await expect_status(replicas.revoke(created.api_key.key_id, keyed), UNAVAILABLE)
    # Still down: run again, and said again.
    error = await expect_status(replicas.revoke(created.api_key.key_id, keyed), UNAVAILABLE)
    assert error.details() == REVOKE_NOT_ANNOUNCED
    replicas.publisher.broken = False
    completed = await replicas.revoke(created.api_key.key_id, keyed)
    assert completed.api_key.HasField("revoked_at")
    await refused_within(replicas.queues_on_b, created.secret, ANNOUNCED_DEADLINE_SECONDS)
    # Now it has an outcome: replayed.
    assert await replicas.revoke(created.api_key.key_id, keyed) == completed


async def test_a_rotation_whose_broadcast_failed_is_announced_by_its_retry(
    without_background_retry: Replicas,
) -> None:
    """The rotation stands (its new secret is lost: shown once, never stored); repeating
    the call announces the old key's end, then answers FAILED_PRECONDITION."""
    replicas = without_background_retry
    created = await replicas.operator_key()
    replicas.publisher.broken = True
    error = await expect_status(replicas.rotate(created.api_key.key_id), UNAVAILABLE)
    assert "rotated" in (error.details() or "")
    assert created.secret not in (error.details() or "")
    await expect_status(use(replicas.queues_on_a, created.secret), UNAUTHENTICATED)
    # A retry while still down is not "already rotated": it has not been announced.
    await expect_status(replicas.rotate(created.api_key.key_id), UNAVAILABLE)
    replicas.publisher.broken = False
    await expect_status(replicas.rotate(created.api_key.key_id), FAILED_PRECONDITION)
    assert replicas.a.application.key_invalidations.pending == 0
    await refused_within(replicas.queues_on_b, created.secret, ANNOUNCED_DEADLINE_SECONDS)


async def test_an_unannounced_revoke_is_published_by_the_background_retry(
    replicas: Replicas,
) -> None:
    created = await replicas.operator_key()
    announced: list[str] = []
    async with replicas.publisher.inner.subscribe(CHANNEL) as channel:

        async def listen() -> None:
            async for message in channel:
                announced.append(message)

        listening = asyncio.create_task(listen())
        try:
            replicas.publisher.broken = True
            await expect_status(replicas.revoke(created.api_key.key_id), UNAVAILABLE)
            await asyncio.sleep(1.5)  # a retry or so while still down
            assert announced == []
            replicas.publisher.broken = False  # nobody calls again
            await refused_within(
                replicas.queues_on_b, created.secret, BACKGROUND_RETRY_DEADLINE_SECONDS
            )
        finally:
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening
    assert len(announced) == 1
    assert announced[0].endswith(f":test:{created.api_key.key_id}")
    assert replicas.a.application.key_invalidations.pending == 0


async def test_after_a_failed_broadcast_this_replica_rechecks_every_cached_key(
    replicas: Replicas,
) -> None:
    """Its own subscription may be missing messages as well: for a while every cached
    key is re-checked against the database every second, not every 5 minutes."""
    revoked = await replicas.operator_key()
    other = await replicas.operator_key()
    replicas.publisher.broken = True
    await expect_status(replicas.revoke(revoked.api_key.key_id), UNAVAILABLE)
    # Another key revoked whose announcement this replica never hears.
    application = replicas.a.application
    stored = await application.api_keys.revoke(
        replicas.organization_id, Mode.TEST, other.api_key.key_id, application.clock()
    )
    assert stored is not None
    await refused_within(replicas.queues_on_a, other.secret, ANNOUNCED_DEADLINE_SECONDS)


async def test_a_failed_broadcast_is_logged_once_without_secrets(
    replicas: Replicas, caplog: pytest.LogCaptureFixture
) -> None:
    first = await replicas.operator_key()
    second = await replicas.operator_key()
    replicas.publisher.broken = True
    with caplog.at_level(logging.INFO, logger="fanfare_grpc"):
        await expect_status(replicas.revoke(first.api_key.key_id), UNAVAILABLE)
        await expect_status(replicas.revoke(second.api_key.key_id), UNAVAILABLE)
        await asyncio.sleep(1.5)  # the background retry fails too
        replicas.publisher.broken = False
        await refused_within(replicas.queues_on_b, second.secret, BACKGROUND_RETRY_DEADLINE_SECONDS)
        deadline = time.monotonic() + BACKGROUND_RETRY_DEADLINE_SECONDS
        while replicas.a.application.key_invalidations.pending:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    lines = [r for r in caplog.records if r.getMessage().startswith("key change broadcasts")]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.INFO], [
        r.getMessage() for r in lines
    ]
    assert "unreachable" in lines[0].getMessage()
    assert "recovered" in lines[1].getMessage()
    for record in caplog.records:
        for secret in (first.secret, second.secret, replicas.admin_key):
            assert secret not in record.getMessage()
            assert secret not in str(record.__dict__)
