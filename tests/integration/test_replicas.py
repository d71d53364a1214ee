"""Two server processes sharing PostgreSQL + Redis: a revocation reaches both in < 2 s;
queue positions, admissions and handoff redemptions are one state for both."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.auth.v1 import auth_service_pb2_grpc
from fanfare.common.v1 import common_pb2
from fanfare.queue.v1 import queue_pb2, queue_service_pb2_grpc
from fanfare.queue.v1 import queue_service_pb2 as queues
from fanfare.session.v1 import session_service_pb2 as sessions
from fanfare.session.v1 import session_service_pb2_grpc
from google.protobuf import duration_pb2
from grpc import aio

from fanfare_grpc.server import RunningServer
from tests.backends import REDIS_URL
from tests.conftest import embedded_settings, new_organization, start_migrated_server
from tests.consumers import consumer_metadata
from tests.grpc_helpers import bearer
from tests.processes import ServerProcess, process_env
from tests.queues import Shopper

REVOCATION_DEADLINE_SECONDS = 2.0


@contextlib.asynccontextmanager
async def two_replicas(
    tmp_path: Path, postgres_url: str, redis_prefix: str, *, workers: bool
) -> AsyncIterator[tuple[RunningServer, ServerProcess, str]]:
    """Replica A in this process and replica B (``fanfare-grpc serve``) in another, one
    deployment: the same PostgreSQL, Redis prefix and master key. With ``workers``
    both run their background worker, as ``serve`` does by default."""
    settings = dataclasses.replace(
        embedded_settings(tmp_path / "a"),
        database_url=postgres_url,
        redis_url=REDIS_URL,
        redis_key_prefix=redis_prefix,
    )
    replica_a = await start_migrated_server(settings, run_worker=workers)
    try:
        replica_b = await ServerProcess.start(
            ["fanfare_grpc", "serve", *(() if workers else ("--no-worker",))],
            process_env(
                tmp_path / "b",
                {
                    "FANFARE_DATABASE_URL": postgres_url,
                    "FANFARE_REDIS_URL": REDIS_URL,
                    "FANFARE_REDIS_PREFIX": redis_prefix,
                    "FANFARE_MASTER_KEY": base64.b64encode(
                        replica_a.application.envelope.ring.current.material
                    ).decode(),
                },
            ),
        )
        try:
            yield replica_a, replica_b, await replica_b.wait_listening()
        finally:
            await replica_b.kill()
    finally:
        await replica_a.shutdown(grace_seconds=1.0)


async def _refused_on_b_within_deadline(
    on_b: auth_service_pb2_grpc.AuthServiceStub, secret: str
) -> None:
    changed_at = time.monotonic()
    while True:
        try:
            await on_b.ListApiKeys(auth.ListApiKeysRequest(), metadata=bearer(secret))
        except aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            break
        elapsed = time.monotonic() - changed_at
        assert elapsed < REVOCATION_DEADLINE_SECONDS, "replica B still accepts the key"
    assert time.monotonic() - changed_at < REVOCATION_DEADLINE_SECONDS


async def test_revocation_and_rotation_reach_another_replica_within_two_seconds(
    tmp_path: Path, postgres_url: str, redis_prefix: str
) -> None:
    async with two_replicas(tmp_path, postgres_url, redis_prefix, workers=False) as (
        replica_a,
        _replica_b,
        address_b,
    ):
        organization = await new_organization(replica_a)
        admin = organization.test_admin_key.plaintext
        async with (
            aio.insecure_channel(replica_a.address) as channel_a,
            aio.insecure_channel(address_b) as channel_b,
        ):
            on_a = auth_service_pb2_grpc.AuthServiceStub(channel_a)
            on_b = auth_service_pb2_grpc.AuthServiceStub(channel_b)
            request = auth.CreateApiKeyRequest(
                kind=common_pb2.API_KEY_KIND_SECRET, role=common_pb2.ROLE_ADMIN, name="b"
            )
            created = await on_a.CreateApiKey(request, metadata=bearer(admin))
            # Warm replica B's verification cache with the key.
            await on_b.ListApiKeys(auth.ListApiKeysRequest(), metadata=bearer(created.secret))

            await on_a.RevokeApiKey(
                auth.RevokeApiKeyRequest(key_id=created.api_key.key_id), metadata=bearer(admin)
            )
            await _refused_on_b_within_deadline(on_b, created.secret)
            # Replica B still accepts the keys that were not revoked.
            await on_b.ListApiKeys(auth.ListApiKeysRequest(), metadata=bearer(admin))

            # Rotation without grace stops the old key on B just as fast.
            rotating = await on_a.CreateApiKey(request, metadata=bearer(admin))
            await on_b.ListApiKeys(auth.ListApiKeysRequest(), metadata=bearer(rotating.secret))
            rotated = await on_a.RotateApiKey(
                auth.RotateApiKeyRequest(key_id=rotating.api_key.key_id), metadata=bearer(admin)
            )
            await _refused_on_b_within_deadline(on_b, rotating.secret)
            await on_b.ListApiKeys(auth.ListApiKeysRequest(), metadata=bearer(rotated.secret))

            # With a grace period, B keeps accepting the old key (and the new one).
            graceful = await on_a.CreateApiKey(request, metadata=bearer(admin))
            await on_b.ListApiKeys(auth.ListApiKeysRequest(), metadata=bearer(graceful.secret))
            replacement = await on_a.RotateApiKey(
                auth.RotateApiKeyRequest(
                    key_id=graceful.api_key.key_id,
                    grace_period=duration_pb2.Duration(seconds=3600),
                ),
                metadata=bearer(admin),
            )
            await asyncio.sleep(REVOCATION_DEADLINE_SECONDS)
            for secret in (graceful.secret, replacement.secret):
                await on_b.ListApiKeys(auth.ListApiKeysRequest(), metadata=bearer(secret))


async def test_a_revoked_session_is_refused_by_another_replica_on_the_next_call(
    tmp_path: Path, postgres_url: str, redis_prefix: str
) -> None:
    async with two_replicas(tmp_path, postgres_url, redis_prefix, workers=False) as (
        replica_a,
        _replica_b,
        address_b,
    ):
        organization = await new_organization(replica_a)
        admin = organization.test_admin_key.plaintext
        async with (
            aio.insecure_channel(replica_a.address) as channel_a,
            aio.insecure_channel(address_b) as channel_b,
        ):
            created = await auth_service_pb2_grpc.AuthServiceStub(channel_a).CreateApiKey(
                auth.CreateApiKeyRequest(kind=common_pb2.API_KEY_KIND_PUBLISHABLE, name="web"),
                metadata=bearer(admin),
            )
            device = (("x-fanfare-device", "phone"),)
            on_a = session_service_pb2_grpc.SessionServiceStub(channel_a)
            on_b = session_service_pb2_grpc.SessionServiceStub(channel_b)
            # A session made on A, its token warm in B's cache (and B's signing keys
            # learned from the database: A created the key).
            guest = await on_a.CreateGuestSession(
                sessions.CreateGuestSessionRequest(), metadata=bearer(created.secret) + device
            )
            consumer = (
                *bearer(created.secret),
                *device,
                ("x-fanfare-session", guest.access_token),
            )
            for _ in range(3):
                await on_b.GetSession(sessions.GetSessionRequest(), metadata=consumer)
            await on_a.RevokeSession(
                sessions.RevokeSessionRequest(session_id=guest.session.session_id),
                metadata=bearer(admin),
            )
            with pytest.raises(aio.AioRpcError) as refused:
                await on_b.GetSession(sessions.GetSessionRequest(), metadata=consumer)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # Refreshing on B is refused too (the database says revoked).
            with pytest.raises(aio.AioRpcError) as refused:
                await on_b.RefreshSession(
                    sessions.RefreshSessionRequest(refresh_token=guest.refresh_token),
                    metadata=bearer(created.secret) + device,
                )
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _handoff_claims(handoff_token: str) -> dict[str, object]:
    """The JWT payload, unverified (the test only compares claims)."""
    payload = handoff_token.split(".")[1]
    claims: dict[str, object] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


async def test_queue_state_positions_and_handoffs_are_shared_by_replicas(
    tmp_path: Path, postgres_url: str, redis_prefix: str
) -> None:
    async with two_replicas(tmp_path, postgres_url, redis_prefix, workers=True) as (
        replica_a,
        replica_b,
        address_b,
    ):
        organization = await new_organization(replica_a)
        operator = bearer(organization.test_admin_key.plaintext)
        async with (
            aio.insecure_channel(replica_a.address) as channel_a,
            aio.insecure_channel(address_b) as channel_b,
        ):
            on_a = queue_service_pb2_grpc.QueueServiceStub(channel_a)
            on_b = queue_service_pb2_grpc.QueueServiceStub(channel_b)
            replicas = (on_a, on_b)
            guests = tuple(
                session_service_pb2_grpc.SessionServiceStub(c) for c in (channel_a, channel_b)
            )
            created = await auth_service_pb2_grpc.AuthServiceStub(channel_a).CreateApiKey(
                auth.CreateApiKeyRequest(kind=common_pb2.API_KEY_KIND_PUBLISHABLE, name="web"),
                metadata=operator,
            )
            publishable_key = created.secret

            async def shopper(device: str, index: int) -> Shopper:
                guest = await guests[index % 2].CreateGuestSession(
                    sessions.CreateGuestSessionRequest(),
                    metadata=consumer_metadata(publishable_key, device=device),
                )
                return Shopper(
                    guest.session.consumer_id,
                    guest.session.session_id,
                    consumer_metadata(publishable_key, guest.access_token, device),
                )

            async def open_queue(rate: int) -> str:
                queue = await on_a.CreateQueue(
                    queues.CreateQueueRequest(name="drop", admission_rate_per_minute=rate),
                    metadata=operator,
                )
                await on_a.OpenQueue(
                    queues.OpenQueueRequest(queue_id=queue.queue.queue_id), metadata=operator
                )
                return queue.queue.queue_id

            async def position(
                queue_id: str, shopper: Shopper, index: int
            ) -> queues.GetPositionResponse:
                response: queues.GetPositionResponse = await replicas[index % 2].GetPosition(
                    queues.GetPositionRequest(queue_id=queue_id), metadata=shopper.metadata
                )
                return response

            async def places(queue_id: str, line: list[Shopper]) -> list[list[tuple[int, int]]]:
                """(status, position) of each shopper, as each replica sees it."""
                seen = []
                for replica in range(2):
                    got = [await position(queue_id, s, replica) for s in line]
                    seen.append([(int(p.entry.status), p.entry.position) for p in got])
                return seen

            # Paused, the workers admit nobody during this part (even at one admission a
            # minute, a slow run crossing a minute boundary would admit one): only the
            # operators' AdmitConsumers below do.
            queue_id = await open_queue(rate=1)
            await on_a.PauseQueue(queues.PauseQueueRequest(queue_id=queue_id), metadata=operator)
            line = [await shopper(f"phone-{i}", i) for i in range(10)]
            for index, someone in enumerate(line):
                entered = await replicas[index % 2].EnterQueue(
                    queues.EnterQueueRequest(queue_id=queue_id), metadata=someone.metadata
                )
                assert entered.entry.position == index + 1
            queued = queue_pb2.ENTRY_STATUS_QUEUED
            expected = [(queued, place) for place in range(1, 11)]
            assert await places(queue_id, line) == [expected, expected]

            # B streams shopper #1's position; A's operator admits one.
            stream = on_b.WatchPosition(
                queues.WatchPositionRequest(queue_id=queue_id), metadata=line[0].metadata
            )
            async with asyncio.timeout(5):
                first = await stream.read()
                assert isinstance(first, queues.WatchPositionResponse)
                assert (first.entry.status, first.entry.position) == (queued, 1)
                admitted = await on_a.AdmitConsumers(
                    queues.AdmitConsumersRequest(queue_id=queue_id, count=1), metadata=operator
                )
                assert admitted.admitted_count == 1
                updates = []
                while (update := await stream.read()) is not aio.EOF:
                    assert isinstance(update, queues.WatchPositionResponse)
                    updates.append(update)
                assert await stream.code() == grpc.StatusCode.OK
            final = updates[-1]
            assert final.entry.status == queue_pb2.ENTRY_STATUS_ADMITTED
            assert final.entry.handoff_token

            # Redeemed once: valid on A, ALREADY_USED on B.
            def redeem(token: str) -> queues.ValidateHandoffTokenRequest:
                return queues.ValidateHandoffTokenRequest(handoff_token=token, queue_id=queue_id)

            on_first = await on_a.ValidateHandoffToken(
                redeem(final.entry.handoff_token), metadata=operator
            )
            assert (on_first.valid, on_first.consumer_id) == (True, line[0].consumer_id)
            again = await on_b.ValidateHandoffToken(
                redeem(final.entry.handoff_token), metadata=operator
            )
            assert not again.valid
            assert again.reason == queue_pb2.HANDOFF_TOKEN_REASON_ALREADY_USED

            # Twenty concurrent redemptions of one token across both replicas: one wins.
            await on_b.AdmitConsumers(
                queues.AdmitConsumersRequest(queue_id=queue_id, count=1), metadata=operator
            )
            second = await position(queue_id, line[1], 0)
            assert second.entry.status == queue_pb2.ENTRY_STATUS_ADMITTED
            token = second.entry.handoff_token
            assert token
            verdicts = await asyncio.gather(
                *(
                    replicas[i % 2].ValidateHandoffToken(redeem(token), metadata=operator)
                    for i in range(20)
                )
            )
            assert sum(v.valid for v in verdicts) == 1
            assert collections.Counter(v.reason for v in verdicts if not v.valid) == {
                queue_pb2.HANDOFF_TOKEN_REASON_ALREADY_USED: 19
            }
            # The rest moved up by two, on both replicas.
            expected = [(queued, place) for place in range(1, 9)]
            assert await places(queue_id, line[2:]) == [expected, expected]

            # Both workers admit from a 10-a-second queue: each consumer at most once.
            assert any(m.get("message") == "worker started" for m in replica_b.messages())
            burst = list(await asyncio.gather(*(shopper(f"tablet-{i}", i) for i in range(30))))
            burst_queue = await open_queue(rate=600)
            await asyncio.gather(
                *(
                    replicas[i % 2].EnterQueue(
                        queues.EnterQueueRequest(queue_id=burst_queue), metadata=s.metadata
                    )
                    for i, s in enumerate(burst)
                )
            )
            stats_request = queues.GetQueueStatsRequest(queue_id=burst_queue)
            deadline = time.monotonic() + 8
            while (await on_a.GetQueueStats(stats_request, metadata=operator)).waiting:
                assert time.monotonic() < deadline, "the workers stopped admitting"
                await asyncio.sleep(0.2)
            await asyncio.sleep(1)  # a duplicate admission would land by now
            entries = [(await position(burst_queue, s, i)).entry for i, s in enumerate(burst)]
            admitted_entries = [e for e in entries if e.status == queue_pb2.ENTRY_STATUS_ADMITTED]
            assert len(admitted_entries) == 30
            claims = [_handoff_claims(e.handoff_token) for e in admitted_entries]
            assert [c["sub"] for c in claims] == [s.consumer_id for s in burst]
            assert len({c["jti"] for c in claims}) == len(claims)
            stats = await on_b.GetQueueStats(stats_request, metadata=operator)
            assert stats.admitted == len(admitted_entries)
            assert stats.waiting == 0
            # One worker admits per queue per one-second tick: every admission of a
            # tick carries the same time, and no tick admits more than its catch-up.
            batches: dict[int, collections.Counter[int]] = collections.defaultdict(
                collections.Counter
            )
            for entry in admitted_entries:
                nanos = entry.admitted_at.ToNanoseconds()
                batches[nanos // 1_000_000_000][nanos] += 1
            assert all(len(times) == 1 for times in batches.values()), batches
            assert max(sum(times.values()) for times in batches.values()) <= 20, batches
