"""Two server processes sharing PostgreSQL + Redis: a revocation reaches both in < 2 s."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from pathlib import Path

import grpc
from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.auth.v1 import auth_service_pb2_grpc
from fanfare.common.v1 import common_pb2
from google.protobuf import duration_pb2
from grpc import aio

from tests.backends import REDIS_URL
from tests.conftest import embedded_settings, new_organization, start_migrated_server
from tests.grpc_helpers import bearer
from tests.processes import ServerProcess, process_env

REVOCATION_DEADLINE_SECONDS = 2.0


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
    settings = dataclasses.replace(
        embedded_settings(tmp_path / "a"),
        database_url=postgres_url,
        redis_url=REDIS_URL,
        redis_key_prefix=redis_prefix,
    )
    replica_a = await start_migrated_server(settings)
    replica_b = await ServerProcess.start(
        ["fanfare_grpc", "serve", "--no-worker"],
        process_env(
            tmp_path / "b",
            {
                "FANFARE_DATABASE_URL": postgres_url,
                "FANFARE_REDIS_URL": REDIS_URL,
                "FANFARE_REDIS_PREFIX": redis_prefix,
                # The same deployment shares its master key.
                "FANFARE_MASTER_KEY": base64.b64encode(
                    replica_a.application.envelope.ring.current.material
                ).decode(),
            },
        ),
    )
    try:
        address_b = await replica_b.wait_listening()
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
    finally:
        await replica_b.kill()
        await replica_a.shutdown(grace_seconds=1.0)
