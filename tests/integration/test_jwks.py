"""GetJwks: publishable and secret keys get the public signing keys (and only those)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator

import grpc
import jwt
import pytest
from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.auth.v1 import auth_service_pb2_grpc
from fanfare.common.v1 import common_pb2
from grpc import aio

from fanfare_grpc.crypto.jwt_tokens import AccessClaims, sign_access_token, verify_access_token
from fanfare_grpc.server import RunningServer
from tests.conftest import BackendSettings, new_organization, start_migrated_server
from tests.grpc_helpers import bearer


@pytest.fixture
async def server(backend: BackendSettings) -> AsyncIterator[RunningServer]:
    running = await start_migrated_server(backend.settings)
    try:
        yield running
    finally:
        await running.shutdown(grace_seconds=1.0)


async def test_jwks_lets_anyone_with_a_key_verify_tokens_offline(server: RunningServer) -> None:
    organization = await new_organization(server)
    admin = organization.test_admin_key.plaintext
    async with aio.insecure_channel(server.address) as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        publishable = await stub.CreateApiKey(
            auth.CreateApiKeyRequest(kind=common_pb2.API_KEY_KIND_PUBLISHABLE, name="web"),
            metadata=bearer(admin),
        )
        readonly = await stub.CreateApiKey(
            auth.CreateApiKeyRequest(
                kind=common_pb2.API_KEY_KIND_SECRET, role=common_pb2.ROLE_READONLY, name="r"
            ),
            metadata=bearer(admin),
        )
        responses = [
            await stub.GetJwks(auth.GetJwksRequest(), metadata=bearer(secret))
            for secret in (publishable.secret, readonly.secret, admin)
        ]
        with pytest.raises(aio.AioRpcError) as anonymous:
            await stub.GetJwks(auth.GetJwksRequest())
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED

    first = responses[0]
    assert all(response == first for response in responses)  # one key, stable
    document = json.loads(first.jwks_json)
    (jwk,) = document["keys"]
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519" and jwk["alg"] == "EdDSA"
    assert "d" not in jwk  # never the private half
    assert [key.kid for key in first.keys] == [jwk["kid"]]
    assert first.issuer == server.application.settings.token_issuer

    # A token signed by the server's current key verifies with nothing but the JWKS.
    now = server.application.clock()
    signing_key = await server.application.signing_keys.signing_key(now)
    assert signing_key.kid == jwk["kid"]
    claims = AccessClaims(
        first.issuer,
        organization.organization.organization_id,
        "cons_x",
        "sess_x",
        "d" * 64,
        now,
        now + dt.timedelta(seconds=server.application.settings.access_token_ttl_seconds),
        "jti_x",
    )
    token = sign_access_token(signing_key, claims)
    public_keys = {jwk["kid"]: jwt.PyJWK(jwk).key}
    assert (
        verify_access_token(
            token,
            public_keys,
            issuer=first.issuer,
            organization_id=organization.organization.organization_id,
            now=now,
        ).consumer_id
        == "cons_x"
    )
