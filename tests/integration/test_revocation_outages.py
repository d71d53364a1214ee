"""A revocation whose cache marker cannot be written or read fails closed, on both
backends: the revoking call answers UNAVAILABLE (a retry completes it), and a token
verified and cached before the revoke is refused (SESSION_REVOKED; ValidateSession
says REVOKED) — at once on the replica that revoked, within ``STALE_AFTER_SECONDS``
on a replica that cannot read the markers either."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
from fanfare.session.v1 import session_pb2
from fanfare.session.v1 import session_service_pb2 as sessions
from redis.exceptions import ConnectionError as RedisConnectionError

from fanfare_grpc.app import Application
from fanfare_grpc.authentication.consumer_tokens import ConsumerTokenVerifier, TokenVerdict
from fanfare_grpc.authentication.session_revocations import (
    MARKER_NOT_WRITTEN,
    STALE_AFTER_SECONDS,
    SessionRevocations,
    revocation_marker,
)
from fanfare_grpc.cache.factory import open_cache
from fanfare_grpc.cache.protocols import (
    Cache,
    CounterStore,
    KeyValueStore,
    PubSub,
    SortedSetStore,
)
from fanfare_grpc.crypto.jwt_tokens import LEEWAY
from fanfare_grpc.domain.access import Mode
from fanfare_grpc.domain.queue_state import QueueStateStore
from fanfare_grpc.server import start_server
from fanfare_grpc.settings import Settings
from fanfare_grpc.storage import migrate
from fanfare_grpc.storage.consumer_sessions import SqlSessionStore
from tests.backends import REDIS_URL
from tests.clock import MutableClock
from tests.conftest import BackendSettings, embedded_settings
from tests.consumers import ConsumerWorld, Tenant, consumer_metadata, consumer_world
from tests.grpc_helpers import bearer, error_reasons, expect_status
from tests.tcp_proxy import TcpProxy, proxied

DEVICE = "device-1"
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
MARKERS = ":sessions:revoked:"


class FlakyMarkers:
    """The cache's values, except that revocation markers fail while ``broken``."""

    def __init__(self, inner: KeyValueStore) -> None:
        self.inner = inner
        self.broken = False

    def _check(self, key: str) -> None:
        if self.broken and MARKERS in key:
            raise RedisConnectionError("injected: cache unreachable")

    async def set_if_absent(self, key: str, value: str, ttl_seconds: float) -> bool:
        self._check(key)
        return await self.inner.set_if_absent(key, value, ttl_seconds)

    async def set(self, key: str, value: str, ttl_seconds: float) -> None:
        self._check(key)
        await self.inner.set(key, value, ttl_seconds)

    async def get(self, key: str) -> str | None:
        self._check(key)
        return await self.inner.get(key)

    async def delete(self, key: str) -> bool:
        self._check(key)
        return await self.inner.delete(key)

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        for key in keys:
            self._check(key)
        return await self.inner.get_many(keys)

    async def get_or_set(self, key: str, value: str) -> str:
        self._check(key)
        return await self.inner.get_or_set(key, value)


class FlakyMarkerCache:
    """A cache whose ``values`` is a ``FlakyMarkers``; everything else as is."""

    def __init__(self, inner: Cache) -> None:
        self._inner = inner
        self.markers = FlakyMarkers(inner.values)

    @property
    def sorted_sets(self) -> SortedSetStore:
        return self._inner.sorted_sets

    @property
    def counters(self) -> CounterStore:
        return self._inner.counters

    @property
    def values(self) -> FlakyMarkers:
        return self.markers

    @property
    def pubsub(self) -> PubSub:
        return self._inner.pubsub

    @property
    def queue_states(self) -> QueueStateStore:
        return self._inner.queue_states

    @property
    def shared_between_processes(self) -> bool:
        return self._inner.shared_between_processes

    async def ping(self) -> bool:
        return await self._inner.ping()

    async def eviction_policy(self) -> str | None:
        return await self._inner.eviction_policy()

    async def persistence(self) -> bool | None:
        return await self._inner.persistence()

    async def shared_time(self) -> float | None:
        return await self._inner.shared_time()

    async def server_id(self) -> str | None:
        return await self._inner.server_id()

    async def close(self) -> None:
        await self._inner.close()


@dataclasses.dataclass
class FlakyWorld:
    world: ConsumerWorld
    markers: FlakyMarkers

    @property
    def application(self) -> Application:
        return self.world.server.application


@contextlib.asynccontextmanager
async def flaky_world(settings: Settings) -> AsyncIterator[FlakyWorld]:
    """A server whose revocation markers fail on demand; stopped afterwards."""
    await migrate.upgrade_to_head(settings.effective_owner_database_url)
    clock = MutableClock()
    cache = FlakyMarkerCache(open_cache(settings))
    application = Application.build(settings, clock=clock, cache=cache)
    server = await start_server(application, run_worker=False)
    try:
        async with consumer_world(server, clock) as world:
            yield FlakyWorld(world, cache.markers)
    finally:
        await server.shutdown(grace_seconds=1.0)


@pytest.fixture
async def flaky(backend: BackendSettings) -> AsyncIterator[FlakyWorld]:
    async with flaky_world(backend.settings) as world:
        yield world


async def get_session(world: ConsumerWorld, access_token: str) -> sessions.GetSessionResponse:
    response: sessions.GetSessionResponse = await world.sessions.GetSession(
        sessions.GetSessionRequest(),
        metadata=consumer_metadata(world.acme.publishable_key, access_token, DEVICE),
    )
    return response


async def assert_revoked(world: ConsumerWorld, access_token: str) -> None:
    """Refused as revoked, and ValidateSession tells a merchant so."""
    error = await expect_status(get_session(world, access_token), UNAUTHENTICATED)
    assert error_reasons(error) == ["SESSION_REVOKED"]
    verdict: sessions.ValidateSessionResponse = await world.sessions.ValidateSession(
        sessions.ValidateSessionRequest(access_token=access_token),
        metadata=bearer(world.acme.secret_key),
    )
    assert not verdict.valid
    assert verdict.reason == session_pb2.SESSION_VALIDATION_REASON_REVOKED


async def revoke_as_admin(world: ConsumerWorld, session_id: str) -> sessions.RevokeSessionResponse:
    response: sessions.RevokeSessionResponse = await world.sessions.RevokeSession(
        sessions.RevokeSessionRequest(session_id=session_id),
        metadata=bearer(world.acme.secret_key),
    )
    return response


def org_id(tenant: Tenant) -> str:
    return tenant.organization.organization.organization_id


async def marker_written(flaky: FlakyWorld, session_id: str) -> bool:
    key = revocation_marker(org_id(flaky.world.acme), Mode.TEST, session_id)
    return await flaky.markers.inner.get(key) is not None


async def test_revoke_answers_unavailable_when_the_marker_is_lost_and_a_retry_completes_it(
    flaky: FlakyWorld,
) -> None:
    world = flaky.world
    guest = await world.guest(device=DEVICE)
    await get_session(world, guest.access_token)  # verified and cached
    flaky.markers.broken = True
    error = await expect_status(revoke_as_admin(world, guest.session.session_id), UNAVAILABLE)
    assert error.details() == MARKER_NOT_WRITTEN
    # The revoke is committed, and this replica refuses the cached token already.
    await assert_revoked(world, guest.access_token)
    await expect_status(world.refresh(guest.refresh_token), UNAUTHENTICATED)
    assert not await marker_written(flaky, guest.session.session_id)

    flaky.markers.broken = False
    again = await revoke_as_admin(world, guest.session.session_id)  # idempotent
    assert again.session.HasField("revoked_at")
    assert await marker_written(flaky, guest.session.session_id)
    assert flaky.application.session_revocations.pending == 0
    await assert_revoked(world, guest.access_token)


async def test_a_revoke_with_an_idempotency_key_is_completed_by_a_retry_with_that_key(
    flaky: FlakyWorld,
) -> None:
    """UNAVAILABLE from a revoke means "repeat me", not "outcome unknown": a retry with
    the same idempotency key runs the revoke again (writing the marker), where any other
    call that failed mid-way would answer ABORTED for the key's 24 h."""
    world = flaky.world
    guest = await world.guest(device=DEVICE)
    await get_session(world, guest.access_token)
    keyed = (*bearer(world.acme.secret_key), ("idempotency-key", "revoke-guest-1"))

    async def revoke() -> sessions.RevokeSessionResponse:
        response: sessions.RevokeSessionResponse = await world.sessions.RevokeSession(
            sessions.RevokeSessionRequest(session_id=guest.session.session_id), metadata=keyed
        )
        return response

    flaky.markers.broken = True
    error = await expect_status(revoke(), UNAVAILABLE)
    assert error.details() == MARKER_NOT_WRITTEN
    # Still down: the retry runs again and says so again.
    error = await expect_status(revoke(), UNAVAILABLE)
    assert error.details() == MARKER_NOT_WRITTEN
    flaky.markers.broken = False
    completed = await revoke()
    assert completed.session.HasField("revoked_at")
    assert await marker_written(flaky, guest.session.session_id)
    # Now it has an outcome: replayed, not run again.
    assert await revoke() == completed
    await assert_revoked(world, guest.access_token)


async def test_a_repeatable_revoke_stays_repeatable_when_the_cache_lost_its_record(
    flaky: FlakyWorld,
) -> None:
    """The revoke's first transaction committed the key's database claim; the claim is
    given back when the call answers "repeat me", so a retry after the cache lost the
    record (the Redis restart that broke the marker write) still runs the revoke."""
    world = flaky.world
    guest = await world.guest(device=DEVICE)
    await get_session(world, guest.access_token)
    keyed = (*bearer(world.acme.secret_key), ("idempotency-key", "revoke-guest-2"))
    request = sessions.RevokeSessionRequest(session_id=guest.session.session_id)
    flaky.markers.broken = True
    await expect_status(world.sessions.RevokeSession(request, metadata=keyed), UNAVAILABLE)
    flaky.markers.broken = False
    digest = hashlib.sha256(b"revoke-guest-2").hexdigest()
    assert await flaky.markers.inner.delete(f"{org_id(world.acme)}:test:idempotency:{digest}")
    completed: sessions.RevokeSessionResponse = await world.sessions.RevokeSession(
        request, metadata=keyed
    )
    assert completed.session.HasField("revoked_at")
    await assert_revoked(world, guest.access_token)


async def test_a_lost_marker_is_written_by_the_background_retry(flaky: FlakyWorld) -> None:
    world = flaky.world
    guest = await world.guest(device=DEVICE)
    await get_session(world, guest.access_token)
    flaky.markers.broken = True
    # The consumer revoking its own session: the same answer.
    await expect_status(
        world.sessions.RevokeSession(
            sessions.RevokeSessionRequest(),
            metadata=consumer_metadata(world.acme.publishable_key, guest.access_token, DEVICE),
        ),
        UNAVAILABLE,
    )
    revocations = flaky.application.session_revocations
    await revocations.retry_pending()  # still down: kept
    assert revocations.pending == 1
    flaky.markers.broken = False
    await written_in_the_background(flaky)
    assert await marker_written(flaky, guest.session.session_id)


async def written_in_the_background(flaky: FlakyWorld) -> None:
    """The server's own task retries every second; wait for it (never a timed assert)."""
    revocations = flaky.application.session_revocations
    async with asyncio.timeout(15):
        while revocations.pending:
            await asyncio.sleep(0.05)


async def test_refresh_token_reuse_refuses_and_revokes_even_when_the_marker_is_lost(
    flaky: FlakyWorld,
) -> None:
    world = flaky.world
    first = await world.guest(device=DEVICE)
    second = await world.refresh(first.refresh_token, device=DEVICE)
    await get_session(world, second.access_token)  # cached
    world.clock.advance(LEEWAY)  # past the same-device race window: a reuse is theft
    flaky.markers.broken = True
    # The reused token gets nothing (the family is revoked; telling the replicas failed).
    await expect_status(world.refresh(first.refresh_token, device=DEVICE), UNAVAILABLE)
    await assert_revoked(world, second.access_token)
    await expect_status(world.refresh(second.refresh_token, device=DEVICE), UNAUTHENTICATED)
    flaky.markers.broken = False
    await written_in_the_background(flaky)
    assert await marker_written(flaky, second.session.session_id)


async def test_erase_consumer_answers_unavailable_and_its_retry_writes_every_marker(
    flaky: FlakyWorld,
) -> None:
    world = flaky.world
    phone = await world.login("eve@example.com", device=DEVICE)
    laptop = await world.login("eve@example.com", device="device-2")
    await get_session(world, phone.access_token)
    flaky.markers.broken = True
    erase = sessions.EraseConsumerRequest(consumer_id=phone.session.consumer_id)
    await expect_status(
        world.sessions.EraseConsumer(erase, metadata=bearer(world.acme.secret_key)), UNAVAILABLE
    )
    await assert_revoked(world, phone.access_token)
    # Nothing waits for a background retry: the client's retry alone must finish it.
    flaky.markers.broken = False
    # As if this replica had restarted meanwhile (its background retries gone).
    flaky.application.session_revocations._pending.clear()
    again: sessions.EraseConsumerResponse = await world.sessions.EraseConsumer(
        erase, metadata=bearer(world.acme.secret_key)
    )
    assert again.sessions_revoked == 0  # revoked by the first call
    assert await marker_written(flaky, phone.session.session_id)
    assert await marker_written(flaky, laptop.session.session_id)


async def test_a_replica_that_cannot_read_markers_refuses_a_revoked_token_within_the_bound(
    flaky: FlakyWorld,
) -> None:
    """Replica B (a second verifier with its own state, same database and cache) had
    the token cached before the revoke; the marker was never written and B cannot
    read markers either: B re-checks the database once the session's last
    confirmation is older than ``STALE_AFTER_SECONDS``."""
    world, application = flaky.world, flaky.application
    now = [1000.0]
    store = SqlSessionStore(application.database)
    replica_b = ConsumerTokenVerifier(
        application.signing_keys,
        store,
        application.envelope,
        SessionRevocations(
            flaky.markers,
            store,
            marker_lifetime=dt.timedelta(minutes=16),
            logger=application.logger,
            monotonic=lambda: now[0],
        ),
        issuer=application.settings.token_issuer,
        clock=world.clock,
        monotonic=lambda: now[0],
    )
    org = org_id(world.acme)
    guest = await world.guest(device=DEVICE)
    assert (await replica_b.check(guest.access_token, DEVICE, org, Mode.TEST)).identity

    flaky.markers.broken = True
    await expect_status(revoke_as_admin(world, guest.session.session_id), UNAVAILABLE)
    # Within the bound B may still accept it (the last confirmation is fresh enough)...
    now[0] += STALE_AFTER_SECONDS / 2
    assert (await replica_b.check(guest.access_token, DEVICE, org, Mode.TEST)).identity
    # ... and past it the database says revoked, though no marker can be read.
    now[0] += STALE_AFTER_SECONDS / 2 + 0.01
    check = await replica_b.check(guest.access_token, DEVICE, org, Mode.TEST)
    assert check.verdict is TokenVerdict.REVOKED
    check = await replica_b.check(guest.access_token, None, org, Mode.TEST)
    assert check.verdict is TokenVerdict.REVOKED


async def test_markers_are_namespaced_by_organization_and_mode(flaky: FlakyWorld) -> None:
    world = flaky.world
    guest = await world.guest(device=DEVICE)
    await get_session(world, guest.access_token)
    session_id = guest.session.session_id
    acme = org_id(world.acme)
    globex = org_id(world.globex)
    # Another organization's or mode's marker for the same id means nothing here.
    for organization_id, mode in ((globex, Mode.TEST), (acme, Mode.LIVE)):
        await flaky.markers.set(revocation_marker(organization_id, mode, session_id), "1", 60)
    assert (await get_session(world, guest.access_token)).session.session_id == session_id
    await revoke_as_admin(world, session_id)
    assert await flaky.markers.get(f"{acme}:test:sessions:revoked:{session_id}") == "1"
    await assert_revoked(world, guest.access_token)


# --- a real Redis outage (PostgreSQL + Redis through a proxy that can cut it) --------


@pytest.fixture
async def redis_proxy() -> AsyncIterator[tuple[TcpProxy, str]]:
    async with proxied(REDIS_URL, 6379) as proxy_and_url:
        yield proxy_and_url


async def test_revoking_while_redis_is_down_fails_closed_and_completes_after_recovery(
    redis_proxy: tuple[TcpProxy, str], postgres_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    tcp_proxy, proxied_url = redis_proxy
    settings = dataclasses.replace(
        embedded_settings(tmp_path),
        database_url=postgres_url,
        redis_url=proxied_url,
        redis_key_prefix=redis_prefix,
    )
    async with flaky_world(settings) as flaky:
        world = flaky.world
        guest = await world.guest(device=DEVICE)
        await get_session(world, guest.access_token)  # keys and token cached
        await assert_valid(world, guest.access_token)
        tcp_proxy.cut()
        await expect_status(revoke_as_admin(world, guest.session.session_id), UNAVAILABLE)
        await assert_revoked(world, guest.access_token)  # markers unreadable too
        tcp_proxy.restore()
        await written_in_the_background(flaky)
        assert await marker_written(flaky, guest.session.session_id)


async def assert_valid(world: ConsumerWorld, access_token: str) -> None:
    verdict: sessions.ValidateSessionResponse = await world.sessions.ValidateSession(
        sessions.ValidateSessionRequest(access_token=access_token),
        metadata=bearer(world.acme.secret_key),
    )
    assert verdict.valid
