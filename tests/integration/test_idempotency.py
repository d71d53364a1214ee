"""Idempotency keys on mutating secret-key RPCs."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.auth.v1 import auth_service_pb2_grpc
from fanfare.common.v1 import common_pb2
from google.protobuf import timestamp_pb2
from grpc import aio

from fanfare_grpc.domain.organizations import NewOrganization
from fanfare_grpc.server import RunningServer
from tests.clock import MutableClock
from tests.conftest import BackendSettings, new_organization, start_migrated_server


@pytest.fixture
async def setup(
    backend: BackendSettings,
) -> AsyncIterator[tuple[RunningServer, MutableClock, NewOrganization, aio.Channel]]:
    clock = MutableClock()
    server = await start_migrated_server(backend.settings, clock=clock)
    try:
        organization = await new_organization(server)
        async with aio.insecure_channel(server.address) as channel:
            yield server, clock, organization, channel
    finally:
        await server.shutdown(grace_seconds=1.0)


def _metadata(api_key: str, idempotency_key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"), ("idempotency-key", idempotency_key))


def _create(name: str) -> auth.CreateApiKeyRequest:
    return auth.CreateApiKeyRequest(
        kind=common_pb2.API_KEY_KIND_SECRET, role=common_pb2.ROLE_OPERATOR, name=name
    )


async def test_same_key_and_request_replays_the_stored_response(
    setup: tuple[RunningServer, MutableClock, NewOrganization, aio.Channel],
) -> None:
    _, _, organization, channel = setup
    admin = organization.test_admin_key.plaintext
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)
    first = await stub.CreateApiKey(_create("ci"), metadata=_metadata(admin, "create-ci-1"))
    replay_call = stub.CreateApiKey(_create("ci"), metadata=_metadata(admin, "create-ci-1"))
    again = await replay_call
    assert again.api_key == first.api_key
    # A replay is a call like any other: it carries its own request id.
    assert dict(await replay_call.initial_metadata())["x-request-id"].startswith("req_")
    # The secret is shown exactly once: a replay carries the metadata only.
    assert first.secret and again.secret == ""
    listed = await stub.ListApiKeys(auth.ListApiKeysRequest(), metadata=_metadata(admin, "x"))
    assert [key.name for key in listed.api_keys].count("ci") == 1
    # Without the header, the same request creates another key.
    other = await stub.CreateApiKey(_create("ci"), metadata=(("authorization", f"Bearer {admin}"),))
    assert other.api_key.key_id != first.api_key.key_id


async def test_same_key_with_a_different_request_is_invalid(
    setup: tuple[RunningServer, MutableClock, NewOrganization, aio.Channel],
) -> None:
    _, _, organization, channel = setup
    admin = organization.test_admin_key.plaintext
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)
    await stub.CreateApiKey(_create("one"), metadata=_metadata(admin, "reused"))
    for request, rpc in (
        (_create("two"), stub.CreateApiKey),
        (auth.RevokeApiKeyRequest(key_id="key_abc"), stub.RevokeApiKey),
    ):
        with pytest.raises(aio.AioRpcError) as failure:
            await rpc(request, metadata=_metadata(admin, "reused"))  # type: ignore[operator]
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_same_key_while_the_first_call_runs_is_aborted(
    setup: tuple[RunningServer, MutableClock, NewOrganization, aio.Channel],
) -> None:
    _, _, organization, channel = setup
    admin = organization.test_admin_key.plaintext
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)
    # CreateApiKey spends ~70 ms in bcrypt: the other calls arrive while it runs.
    calls = [
        stub.CreateApiKey(_create("race"), metadata=_metadata(admin, "concurrent"))
        for _ in range(5)
    ]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    fresh = [o for o in outcomes if isinstance(o, auth.CreateApiKeyResponse) and o.secret]
    aborted = [
        o
        for o in outcomes
        if isinstance(o, aio.AioRpcError) and o.code() == grpc.StatusCode.ABORTED
    ]
    replays = [o for o in outcomes if isinstance(o, auth.CreateApiKeyResponse) and not o.secret]
    assert len(fresh) == 1
    assert aborted, outcomes
    assert len(fresh) + len(aborted) + len(replays) == 5
    assert all(replay.api_key == fresh[0].api_key for replay in replays)


async def test_errors_are_stored_and_replayed_too(
    setup: tuple[RunningServer, MutableClock, NewOrganization, aio.Channel],
) -> None:
    _, clock, organization, channel = setup
    admin = organization.test_admin_key.plaintext
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)
    expires = timestamp_pb2.Timestamp()
    expires.FromDatetime(clock() + dt.timedelta(hours=1))
    key = await stub.CreateApiKey(
        auth.CreateApiKeyRequest(
            kind=common_pb2.API_KEY_KIND_SECRET,
            role=common_pb2.ROLE_READONLY,
            name="short-lived",
            expires_at=expires,
        ),
        metadata=_metadata(admin, "create-short-lived"),
    )
    clock.advance(dt.timedelta(hours=2))
    rotate = auth.RotateApiKeyRequest(key_id=key.api_key.key_id)
    with pytest.raises(aio.AioRpcError) as first:
        await stub.RotateApiKey(rotate, metadata=_metadata(admin, "rotate-expired"))
    assert first.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Executed again, this would now succeed; the stored outcome is replayed instead.
    clock.advance(dt.timedelta(hours=-2))
    with pytest.raises(aio.AioRpcError) as replay:
        await stub.RotateApiKey(rotate, metadata=_metadata(admin, "rotate-expired"))
    assert replay.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert replay.value.details() == first.value.details()
    rotated = await stub.RotateApiKey(rotate, metadata=_metadata(admin, "rotate-fresh"))
    assert rotated.secret


async def test_keys_are_scoped_by_organization_and_mode(
    setup: tuple[RunningServer, MutableClock, NewOrganization, aio.Channel],
) -> None:
    server, _, organization, channel = setup
    other = await new_organization(server, "Globex")
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)
    results = [
        await stub.CreateApiKey(_create("shared"), metadata=_metadata(api_key, "same-key"))
        for api_key in (
            organization.test_admin_key.plaintext,
            organization.live_admin_key.plaintext,
            other.test_admin_key.plaintext,
        )
    ]
    assert all(result.secret for result in results)
    assert len({result.api_key.key_id for result in results}) == 3


@pytest.mark.parametrize("idempotency_key", ["x" * 256, ""])
async def test_malformed_idempotency_keys_are_invalid(
    setup: tuple[RunningServer, MutableClock, NewOrganization, aio.Channel],
    idempotency_key: str,
) -> None:
    _, _, organization, channel = setup
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as failure:
        await stub.CreateApiKey(
            _create("bad"),
            metadata=_metadata(organization.test_admin_key.plaintext, idempotency_key),
        )
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
