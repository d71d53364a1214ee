"""Idempotency keys on mutating secret-key RPCs."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.auth.v1 import auth_service_pb2_grpc
from fanfare.common.v1 import common_pb2
from google.protobuf import timestamp_pb2
from grpc import aio

from fanfare_grpc import errors
from fanfare_grpc.domain.api_key_service import IssuedKey
from fanfare_grpc.domain.organizations import NewOrganization
from fanfare_grpc.interceptors.idempotency import OUTCOME_UNKNOWN, RUNNING_WINDOW_SECONDS
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


# Failure after the effect: the outcome is never forgotten, the call never runs twice.


async def _key_names(stub: auth_service_pb2_grpc.AuthServiceStub, admin: str) -> list[str]:
    listed = await stub.ListApiKeys(
        auth.ListApiKeysRequest(), metadata=(("authorization", f"Bearer {admin}"),)
    )
    return [key.name for key in listed.api_keys]


async def _times_out(call: Any) -> None:
    with pytest.raises(aio.AioRpcError) as failure:
        await call
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_deadline_passing_after_the_commit_does_not_run_the_call_again(
    setup: tuple[RunningServer, MutableClock, NewOrganization, aio.Channel],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, _, organization, channel = setup
    admin = organization.test_admin_key.plaintext
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)
    keys = server.application.key_service
    create = keys.create
    committed, resume = asyncio.Event(), asyncio.Event()

    async def create_then_stall(*args: Any, **kwargs: Any) -> IssuedKey:
        issued = await create(*args, **kwargs)
        committed.set()
        await resume.wait()  # the client's deadline passes here, after the commit
        return issued

    monkeypatch.setattr(keys, "create", create_then_stall)
    request, metadata = _create("deadline"), _metadata(admin, "create-deadline")
    # The call stalls after its commit until the deadline passes (generous: the
    # commit itself must fit in it on a loaded machine).
    await _times_out(stub.CreateApiKey(request, metadata=metadata, timeout=3.0))
    assert committed.is_set()
    monkeypatch.setattr(keys, "create", create)
    # Still running: the retry is told so rather than running it a second time.
    with pytest.raises(aio.AioRpcError) as running:
        await stub.CreateApiKey(request, metadata=metadata)
    assert running.value.code() == grpc.StatusCode.ABORTED
    resume.set()
    # The first call finishes for nobody, and stores its outcome for the retry.
    replay = await _retry_until_stored(stub, request, metadata)
    assert replay.api_key.name == "deadline" and replay.secret == ""
    assert (await _key_names(stub, admin)).count("deadline") == 1


async def _retry_until_stored(
    stub: auth_service_pb2_grpc.AuthServiceStub,
    request: auth.CreateApiKeyRequest,
    metadata: tuple[tuple[str, str], ...],
) -> auth.CreateApiKeyResponse:
    """Retry as a client would while the first call still runs (ABORTED)."""
    for _ in range(200):
        try:
            response: auth.CreateApiKeyResponse = await stub.CreateApiKey(
                request, metadata=metadata
            )
        except aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ABORTED:
                raise
            await asyncio.sleep(0.02)
        else:
            return response
    raise AssertionError("the first call never stored its outcome")


async def test_unavailable_after_the_commit_answers_outcome_unknown_not_a_second_run(
    setup: tuple[RunningServer, MutableClock, NewOrganization, aio.Channel],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, _, organization, channel = setup
    admin = organization.test_admin_key.plaintext
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)
    keys = server.application.key_service
    create = keys.create

    async def create_then_fail(*args: Any, **kwargs: Any) -> IssuedKey:
        await create(*args, **kwargs)
        raise errors.Unavailable("a backend went away after the commit")

    monkeypatch.setattr(keys, "create", create_then_fail)
    request, metadata = _create("outage"), _metadata(admin, "create-outage")
    with pytest.raises(aio.AioRpcError) as first:
        await stub.CreateApiKey(request, metadata=metadata)
    assert first.value.code() == grpc.StatusCode.UNAVAILABLE
    monkeypatch.setattr(keys, "create", create)
    for _ in range(2):
        with pytest.raises(aio.AioRpcError) as retry:
            await stub.CreateApiKey(request, metadata=metadata)
        assert retry.value.code() == grpc.StatusCode.ABORTED
        assert retry.value.details() == OUTCOME_UNKNOWN
    assert (await _key_names(stub, admin)).count("outage") == 1
    # A new key is a new request: the client decided after checking the state.
    fresh = await stub.CreateApiKey(request, metadata=_metadata(admin, "create-outage-2"))
    assert fresh.secret


def _is_outcome(key: str, value: str) -> bool:
    return ":idempotency:" in key and '"running"' not in value


async def test_a_cancel_while_the_outcome_is_stored_does_not_run_the_call_again(
    setup: tuple[RunningServer, MutableClock, NewOrganization, aio.Channel],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, _, organization, channel = setup
    admin = organization.test_admin_key.plaintext
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)
    records = server.application.cache.values
    store = records.set
    storing, resume = asyncio.Event(), asyncio.Event()

    async def slow_store(key: str, value: str, ttl_seconds: float) -> None:
        if _is_outcome(key, value):
            storing.set()
            await resume.wait()  # the client cancels while the outcome is being stored
        await store(key, value, ttl_seconds)

    monkeypatch.setattr(records, "set", slow_store)
    request, metadata = _create("cancelled-store"), _metadata(admin, "create-store")
    call = stub.CreateApiKey(request, metadata=metadata)
    await storing.wait()
    call.cancel()  # the client gives up while the outcome is being stored
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.sleep(0.1)  # let the cancellation reach the server (old code: the store)
    resume.set()
    # Cancelled mid-store, the running marker would stay until it expired, and the
    # call would then run again: the store completes instead, for the retry.
    replay = await _retry_until_stored(stub, request, metadata)
    assert replay.api_key.name == "cancelled-store" and replay.secret == ""
    assert (await _key_names(stub, admin)).count("cancelled-store") == 1


async def test_an_outcome_that_could_not_be_stored_is_never_run_again(
    setup: tuple[RunningServer, MutableClock, NewOrganization, aio.Channel],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, clock, organization, channel = setup
    admin = organization.test_admin_key.plaintext
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)
    records = server.application.cache.values
    store = records.set

    async def failing_store(key: str, value: str, ttl_seconds: float) -> None:
        if _is_outcome(key, value):
            raise ConnectionError("the cache went away after the commit")
        await store(key, value, ttl_seconds)

    monkeypatch.setattr(records, "set", failing_store)
    request, metadata = _create("unstored"), _metadata(admin, "create-unstored")
    created = await stub.CreateApiKey(request, metadata=metadata)
    assert created.secret  # the call itself succeeded; only its record is missing
    monkeypatch.setattr(records, "set", store)
    with pytest.raises(aio.AioRpcError) as running:
        await stub.CreateApiKey(request, metadata=metadata)
    assert running.value.code() == grpc.StatusCode.ABORTED
    # Long after any call could still run (its server stopped, say): outcome unknown.
    clock.advance(dt.timedelta(seconds=RUNNING_WINDOW_SECONDS + 1))
    with pytest.raises(aio.AioRpcError) as unknown:
        await stub.CreateApiKey(request, metadata=metadata)
    assert unknown.value.code() == grpc.StatusCode.ABORTED
    assert unknown.value.details() == OUTCOME_UNKNOWN
    assert (await _key_names(stub, admin)).count("unstored") == 1


async def test_a_record_lost_by_the_cache_does_not_let_a_committed_call_run_again(
    setup: tuple[RunningServer, MutableClock, NewOrganization, aio.Channel],
) -> None:
    server, clock, organization, channel = setup
    admin = organization.test_admin_key.plaintext
    stub = auth_service_pb2_grpc.AuthServiceStub(channel)
    request, metadata = _create("lost-record"), _metadata(admin, "create-lost-record")
    assert (await stub.CreateApiKey(request, metadata=metadata)).secret
    # The cache loses the record (Redis failover or flush, an embedded restart); the
    # key was written in the call's own transaction, so the retry cannot commit again.
    organization_id = organization.organization.organization_id
    digest = hashlib.sha256(b"create-lost-record").hexdigest()
    assert await server.application.cache.values.delete(
        f"{organization_id}:test:idempotency:{digest}"
    )
    with pytest.raises(aio.AioRpcError) as retry:
        await stub.CreateApiKey(request, metadata=metadata)
    assert retry.value.code() == grpc.StatusCode.ABORTED
    assert retry.value.details() == OUTCOME_UNKNOWN
    assert (await _key_names(stub, admin)).count("lost-record") == 1
    # The claim holds as long as a record would; then the key is free again.
    clock.advance(dt.timedelta(hours=25))
    for key in (f"{organization_id}:test:idempotency:{digest}",):
        await server.application.cache.values.delete(key)
    assert (await stub.CreateApiKey(request, metadata=metadata)).secret
