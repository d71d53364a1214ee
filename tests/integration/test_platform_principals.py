"""mTLS: an allow-listed client certificate is a platform principal (CreateOrganization)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.auth.v1 import auth_service_pb2_grpc
from grpc import aio

from fanfare_grpc.server import RunningServer
from tests.conftest import embedded_settings, new_organization, start_migrated_server
from tests.display_names import SAFE_NAMES, UNSAFE_NAMES
from tests.grpc_helpers import bad_request_fields, bearer
from tests.tls_certs import CertificateAuthority, Issued

PLATFORM_IDENTITY = "spiffe://fanfare.internal/provisioning"


@dataclasses.dataclass
class Pki:
    ca: CertificateAuthority
    platform_client: Issued
    other_client: Issued
    rogue_client: Issued


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = CertificateAuthority(tmp_path / "pki")
    rogue_ca = CertificateAuthority(tmp_path / "rogue", "Rogue CA")
    return Pki(
        ca=ca,
        platform_client=ca.issue("platform", "provisioning", uris=(PLATFORM_IDENTITY,)),
        other_client=ca.issue("other", "checkout-backend", dns=("checkout.internal",)),
        # Same identity, signed by a CA the server does not trust.
        rogue_client=rogue_ca.issue("rogue", "provisioning", uris=(PLATFORM_IDENTITY,)),
    )


@pytest.fixture
async def mtls_server(tmp_path: Path, pki: Pki) -> AsyncIterator[RunningServer]:
    server_cert = pki.ca.issue(
        "server", "localhost", dns=("localhost",), ips=("127.0.0.1",), server=True
    )
    settings = dataclasses.replace(
        embedded_settings(tmp_path / "data"),
        tls_cert=server_cert.cert,
        tls_key=server_cert.key,
        tls_client_ca=pki.ca.bundle,
        platform_principals=(PLATFORM_IDENTITY,),
    )
    server = await start_migrated_server(settings)
    try:
        yield server
    finally:
        await server.shutdown(grace_seconds=1.0)


def _channel(server: RunningServer, pki: Pki, client: Issued | None) -> aio.Channel:
    private_key, chain = client.pair() if client else (None, None)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.bundle.read_bytes(),
        private_key=private_key,
        certificate_chain=chain,
    )
    return aio.secure_channel(f"localhost:{server.port}", credentials)


async def test_platform_principal_creates_an_organization(
    mtls_server: RunningServer, pki: Pki
) -> None:
    async with _channel(mtls_server, pki, pki.platform_client) as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        created = await stub.CreateOrganization(auth.CreateOrganizationRequest(name="Initech"))
        assert created.organization.organization_id.startswith("org_")
        assert created.organization.name == "Initech"
        assert created.secret_key.startswith("sk_test_")
        assert created.live_secret_key.startswith("sk_live_")
        assert created.secret_key_metadata.key_id != created.live_secret_key_metadata.key_id
        listed = await stub.ListApiKeys(
            auth.ListApiKeysRequest(), metadata=bearer(created.secret_key)
        )
        assert [key.key_id for key in listed.api_keys] == [created.secret_key_metadata.key_id]


async def test_other_callers_cannot_create_organizations(
    mtls_server: RunningServer, pki: Pki
) -> None:
    organization = await new_organization(mtls_server)
    request = auth.CreateOrganizationRequest(name="Nope")
    async with _channel(mtls_server, pki, pki.other_client) as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as anonymous:
            await stub.CreateOrganization(request)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(aio.AioRpcError) as admin:
            await stub.CreateOrganization(
                request, metadata=bearer(organization.test_admin_key.plaintext)
            )
        assert admin.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("client", ["none", "rogue"])
async def test_clients_without_a_trusted_certificate_cannot_connect(
    mtls_server: RunningServer, pki: Pki, client: str
) -> None:
    issued = None if client == "none" else pki.rogue_client
    async with _channel(mtls_server, pki, issued) as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as failure:
            await stub.CreateOrganization(auth.CreateOrganizationRequest(name="x"), timeout=5)
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_create_organization_validates_the_name(mtls_server: RunningServer, pki: Pki) -> None:
    async with _channel(mtls_server, pki, pki.platform_client) as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as failure:
            await stub.CreateOrganization(auth.CreateOrganizationRequest(name=""))
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_organization_names_refuse_control_and_bidi_characters(
    mtls_server: RunningServer, pki: Pki
) -> None:
    async with _channel(mtls_server, pki, pki.platform_client) as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        for name in UNSAFE_NAMES:
            with pytest.raises(aio.AioRpcError) as failure:
                await stub.CreateOrganization(auth.CreateOrganizationRequest(name=name))
            assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, repr(name)
            assert bad_request_fields(failure.value) == ["name"], repr(name)
        for name in SAFE_NAMES:
            created = await stub.CreateOrganization(auth.CreateOrganizationRequest(name=name))
            assert created.organization.name == name
