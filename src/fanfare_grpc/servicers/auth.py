"""AuthService: organizations, API keys, passwordless login, JWKS."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from fanfare.auth.v1 import auth_pb2, auth_service_pb2, auth_service_pb2_grpc

from fanfare_grpc.crypto.envelope import Envelope
from fanfare_grpc.crypto.jwt_tokens import jwks
from fanfare_grpc.crypto.signing_keys import SigningKeyRing
from fanfare_grpc.domain.api_key_service import ApiKeyService
from fanfare_grpc.domain.api_keys import ApiKey
from fanfare_grpc.domain.organizations import OrganizationStore, create_organization
from fanfare_grpc.domain.passwordless import PasswordlessLogin
from fanfare_grpc.servicers import convert
from fanfare_grpc.servicers.principal import client_host, current_principal, device_fingerprint
from fanfare_grpc.servicers.session import issued_fields


def api_key_message(key: ApiKey) -> auth_pb2.ApiKey:
    """Metadata only: never the key or its hash."""
    return auth_pb2.ApiKey(
        key_id=key.key_id,
        name=key.name,
        kind=convert.kind_to_proto(key.kind),
        mode=convert.mode_to_proto(key.mode),
        role=convert.role_to_proto(key.role),
        prefix=key.prefix,
        last4=key.last4,
        created_at=convert.timestamp(key.created_at),
        last_used_at=convert.timestamp(key.last_used_at),
        expires_at=convert.timestamp(key.expires_at),
        revoked_at=convert.timestamp(key.revoked_at),
        replaced_by_key_id=key.replaced_by_key_id or "",
        rotated_from_key_id=key.rotated_from_key_id or "",
    )


class AuthServicer(auth_service_pb2_grpc.AuthServiceServicer):
    """Thin: proto in, domain call, proto out."""

    def __init__(
        self,
        keys: ApiKeyService,
        organizations: OrganizationStore,
        envelope: Envelope,
        clock: Callable[[], dt.datetime],
        signing_keys: SigningKeyRing,
        issuer: str,
        passwordless: PasswordlessLogin,
    ) -> None:
        self._passwordless = passwordless
        self._signing_keys = signing_keys
        self._issuer = issuer
        self._keys = keys
        self._organizations = organizations
        self._envelope = envelope
        self._clock = clock

    async def CreateOrganization(
        self, request: auth_service_pb2.CreateOrganizationRequest, context: Any
    ) -> auth_service_pb2.CreateOrganizationResponse:
        created = await create_organization(
            self._organizations, self._envelope, request.name, self._clock()
        )
        organization = created.organization
        return auth_service_pb2.CreateOrganizationResponse(
            organization=auth_pb2.Organization(
                organization_id=organization.organization_id,
                name=organization.name,
                created_at=convert.timestamp(organization.created_at),
            ),
            secret_key=created.test_admin_key.plaintext,
            live_secret_key=created.live_admin_key.plaintext,
            secret_key_metadata=api_key_message(created.test_admin_key.api_key),
            live_secret_key_metadata=api_key_message(created.live_admin_key.api_key),
        )

    async def CreateApiKey(
        self, request: auth_service_pb2.CreateApiKeyRequest, context: Any
    ) -> auth_service_pb2.CreateApiKeyResponse:
        organization_id, mode = current_principal().tenant()
        issued = await self._keys.create(
            organization_id,
            mode,
            convert.kind_from_proto(request.kind),
            convert.role_from_proto(request.role),
            request.name,
            (
                convert.from_timestamp(request.expires_at, "expires_at")
                if request.HasField("expires_at")
                else None
            ),
        )
        return auth_service_pb2.CreateApiKeyResponse(
            api_key=api_key_message(issued.api_key), secret=issued.plaintext
        )

    async def ListApiKeys(
        self, request: auth_service_pb2.ListApiKeysRequest, context: Any
    ) -> auth_service_pb2.ListApiKeysResponse:
        organization_id, mode = current_principal().tenant()
        keys, next_page_token = await self._keys.list(
            organization_id, mode, request.page_size, request.page_token, request.include_revoked
        )
        return auth_service_pb2.ListApiKeysResponse(
            api_keys=[api_key_message(key) for key in keys], next_page_token=next_page_token
        )

    async def RotateApiKey(
        self, request: auth_service_pb2.RotateApiKeyRequest, context: Any
    ) -> auth_service_pb2.RotateApiKeyResponse:
        organization_id, mode = current_principal().tenant()
        grace = (
            convert.from_duration(request.grace_period, "grace_period")
            if request.HasField("grace_period")
            else None
        )
        issued, previous = await self._keys.rotate(organization_id, mode, request.key_id, grace)
        return auth_service_pb2.RotateApiKeyResponse(
            api_key=api_key_message(issued.api_key),
            secret=issued.plaintext,
            previous_api_key=api_key_message(previous),
        )

    async def GetJwks(
        self, request: auth_service_pb2.GetJwksRequest, context: Any
    ) -> auth_service_pb2.GetJwksResponse:
        now = self._clock()
        await self._signing_keys.signing_key(now)  # the first call creates a key
        document = jwks(await self._signing_keys.published(now))
        return auth_service_pb2.GetJwksResponse(
            jwks_json=json.dumps(document, sort_keys=True),
            keys=[auth_pb2.JsonWebKey(**key) for key in document["keys"]],
            issuer=self._issuer,
        )

    async def RevokeApiKey(
        self, request: auth_service_pb2.RevokeApiKeyRequest, context: Any
    ) -> auth_service_pb2.RevokeApiKeyResponse:
        organization_id, mode = current_principal().tenant()
        revoked = await self._keys.revoke(organization_id, mode, request.key_id)
        return auth_service_pb2.RevokeApiKeyResponse(api_key=api_key_message(revoked))

    async def StartPasswordlessLogin(
        self, request: auth_service_pb2.StartPasswordlessLoginRequest, context: Any
    ) -> auth_service_pb2.StartPasswordlessLoginResponse:
        organization_id, mode = current_principal().tenant()
        started = await self._passwordless.start(
            organization_id,
            mode,
            request.email,
            device_fingerprint(),
            client_host(),
        )
        return auth_service_pb2.StartPasswordlessLoginResponse(
            challenge_id=started.challenge_id, expires_at=convert.timestamp(started.expires_at)
        )

    async def VerifyPasswordlessLogin(
        self, request: auth_service_pb2.VerifyPasswordlessLoginRequest, context: Any
    ) -> auth_service_pb2.VerifyPasswordlessLoginResponse:
        organization_id, mode = current_principal().tenant()
        issued = await self._passwordless.verify(
            organization_id,
            mode,
            request.challenge_id,
            request.code,
            device_fingerprint(),
            client_host(),
        )
        return auth_service_pb2.VerifyPasswordlessLoginResponse(**issued_fields(issued))
