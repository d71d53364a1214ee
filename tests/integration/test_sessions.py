"""SessionService over real sockets, on SQLite+memory and PostgreSQL+Redis: guest
sessions, refresh rotation, revocation, listing, erasure, and failure paths."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.common.v1 import common_pb2
from fanfare.session.v1 import session_pb2
from fanfare.session.v1 import session_service_pb2 as sessions
from sqlalchemy import select

from fanfare_grpc.storage.models import ConsumerRow
from tests.conftest import BackendSettings
from tests.consumers import ConsumerWorld, consumer_metadata, serving_consumer_world
from tests.grpc_helpers import bad_request_fields, bearer, expect_status

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture
async def world(backend: BackendSettings) -> AsyncIterator[ConsumerWorld]:
    async with serving_consumer_world(backend.settings) as world:
        yield world


async def secret_key(world: ConsumerWorld, role: int) -> str:
    created: auth.CreateApiKeyResponse = await world.auth.CreateApiKey(
        auth.CreateApiKeyRequest(kind=common_pb2.API_KEY_KIND_SECRET, role=role, name="k"),
        metadata=bearer(world.acme.secret_key),
    )
    return created.secret


async def revoke_as_consumer(
    world: ConsumerWorld, access_token: str, session_id: str = "", device: str = "device-1"
) -> sessions.RevokeSessionResponse:
    response: sessions.RevokeSessionResponse = await world.sessions.RevokeSession(
        sessions.RevokeSessionRequest(session_id=session_id),
        metadata=consumer_metadata(world.acme.publishable_key, access_token, device),
    )
    return response


async def test_guest_session_is_bound_to_the_device(world: ConsumerWorld) -> None:
    guest = await world.guest(device="kiosk")
    assert guest.session.guest
    assert guest.session.consumer_id.startswith("cons_")
    assert guest.session.session_id.startswith("sess_")
    assert guest.session.mode == common_pb2.MODE_TEST
    got = await world.get_session(guest.access_token, device="kiosk")
    assert got.session == guest.session
    await expect_status(world.get_session(guest.access_token, device="other"), UNAUTHENTICATED)


async def test_guest_session_failure_paths(world: ConsumerWorld) -> None:
    error = await expect_status(
        world.sessions.CreateGuestSession(
            sessions.CreateGuestSessionRequest(),
            metadata=consumer_metadata(world.acme.publishable_key),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_request_fields(error) == ["x-fanfare-device"]
    await expect_status(
        world.sessions.CreateGuestSession(
            sessions.CreateGuestSessionRequest(),
            metadata=consumer_metadata(world.acme.publishable_key, device="x" * 513),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_status(
        world.sessions.CreateGuestSession(
            sessions.CreateGuestSessionRequest(), metadata=bearer(world.acme.secret_key)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_status(
        world.sessions.CreateGuestSession(
            sessions.CreateGuestSessionRequest(), metadata=(("x-fanfare-device", "d"),)
        ),
        UNAUTHENTICATED,
    )


async def test_get_session_needs_a_consumer_token(world: ConsumerWorld) -> None:
    await expect_status(
        world.sessions.GetSession(
            sessions.GetSessionRequest(),
            metadata=consumer_metadata(world.acme.publishable_key, device="device-1"),
        ),
        UNAUTHENTICATED,
    )


async def test_refresh_rotates_the_pair_and_extends_the_session(world: ConsumerWorld) -> None:
    guest = await world.guest()
    world.clock.advance(dt.timedelta(hours=1))
    refreshed = await world.refresh(guest.refresh_token)
    assert refreshed.refresh_token != guest.refresh_token
    assert refreshed.access_token != guest.access_token
    assert refreshed.session.session_id == guest.session.session_id
    assert refreshed.session.expires_at.ToDatetime() > guest.session.expires_at.ToDatetime()
    assert refreshed.session.last_seen_at.ToDatetime() > guest.session.last_seen_at.ToDatetime()
    assert (await world.get_session(refreshed.access_token)).session.session_id
    again = await world.refresh(refreshed.refresh_token)
    assert again.refresh_token not in (guest.refresh_token, refreshed.refresh_token)


async def test_refresh_failure_paths(world: ConsumerWorld) -> None:
    guest = await world.guest()
    # Another device, another organization, the other mode: refused, token not spent.
    await expect_status(world.refresh(guest.refresh_token, device="device-2"), UNAUTHENTICATED)
    await expect_status(world.refresh(guest.refresh_token, tenant=world.globex), UNAUTHENTICATED)
    await expect_status(
        world.sessions.RefreshSession(
            sessions.RefreshSessionRequest(refresh_token=guest.refresh_token),
            metadata=consumer_metadata(world.acme.live_publishable_key, device="device-1"),
        ),
        UNAUTHENTICATED,
    )
    # Right shape, wrong secret; wrong shape; not a token at all.
    forged = guest.refresh_token[:-4] + ("AAAA" if guest.refresh_token[-4:] != "AAAA" else "BBBB")
    await expect_status(world.refresh(forged), UNAUTHENTICATED)
    await expect_status(world.refresh("rt_short"), UNAUTHENTICATED)
    await expect_status(world.refresh("sk_test_nope"), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_status(world.refresh(""), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_status(
        world.sessions.RefreshSession(
            sessions.RefreshSessionRequest(refresh_token=guest.refresh_token),
            metadata=consumer_metadata(world.acme.publishable_key),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    # None of the refusals spent it.
    assert (await world.refresh(guest.refresh_token)).access_token


async def test_refresh_token_expires(world: ConsumerWorld) -> None:
    guest = await world.guest()
    world.clock.advance(dt.timedelta(days=30, seconds=1))
    await expect_status(world.refresh(guest.refresh_token), UNAUTHENTICATED)


async def test_consumer_revokes_own_session(world: ConsumerWorld) -> None:
    guest = await world.guest()
    revoked = await revoke_as_consumer(world, guest.access_token)
    assert revoked.session.session_id == guest.session.session_id
    assert revoked.session.HasField("revoked_at")
    await expect_status(world.get_session(guest.access_token), UNAUTHENTICATED)
    await expect_status(world.refresh(guest.refresh_token), UNAUTHENTICATED)


async def test_consumer_may_revoke_own_other_session_but_not_anothers(
    world: ConsumerWorld,
) -> None:
    phone = await world.login("uma@example.com", device="phone")
    laptop = await world.login("uma@example.com", device="laptop")
    stranger = await world.guest(device="stranger")
    await expect_status(
        revoke_as_consumer(world, stranger.access_token, phone.session.session_id, "stranger"),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert (await world.get_session(phone.access_token, device="phone")).session.session_id
    revoked = await revoke_as_consumer(
        world, laptop.access_token, phone.session.session_id, "laptop"
    )
    assert revoked.session.HasField("revoked_at")
    await expect_status(world.get_session(phone.access_token, device="phone"), UNAUTHENTICATED)
    assert (await world.get_session(laptop.access_token, device="laptop")).session.session_id


async def test_operator_revokes_any_session_idempotently(world: ConsumerWorld) -> None:
    guest = await world.guest()
    operator = await secret_key(world, common_pb2.ROLE_OPERATOR)
    request = sessions.RevokeSessionRequest(session_id=guest.session.session_id)
    first: sessions.RevokeSessionResponse = await world.sessions.RevokeSession(
        request, metadata=bearer(operator)
    )
    second: sessions.RevokeSessionResponse = await world.sessions.RevokeSession(
        request, metadata=bearer(operator)
    )
    assert first.session.revoked_at == second.session.revoked_at
    await expect_status(world.get_session(guest.access_token), UNAUTHENTICATED)


async def test_revoke_session_failure_paths(world: ConsumerWorld) -> None:
    guest = await world.guest()
    foreign = await world.guest(tenant=world.globex)
    auditor = await secret_key(world, common_pb2.ROLE_AUDITOR)
    admin = world.acme.secret_key
    await expect_status(
        world.sessions.RevokeSession(
            sessions.RevokeSessionRequest(session_id=guest.session.session_id),
            metadata=bearer(auditor),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_status(
        world.sessions.RevokeSession(sessions.RevokeSessionRequest(), metadata=bearer(admin)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    for session_id in (foreign.session.session_id, "sess_" + "Z" * 22):
        await expect_status(
            world.sessions.RevokeSession(
                sessions.RevokeSessionRequest(session_id=session_id), metadata=bearer(admin)
            ),
            grpc.StatusCode.NOT_FOUND,
        )
        await expect_status(
            revoke_as_consumer(world, guest.access_token, session_id), grpc.StatusCode.NOT_FOUND
        )
    await expect_status(
        world.sessions.RevokeSession(
            sessions.RevokeSessionRequest(session_id="sess_bad!"), metadata=bearer(admin)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    # The foreign session is untouched.
    assert (await world.get_session(foreign.access_token, tenant=world.globex)).session.session_id


async def test_list_sessions_shows_live_sessions_newest_first(world: ConsumerWorld) -> None:
    logins = []
    for device in ("a", "b", "c"):
        logins.append(await world.login("victor@example.com", device=device))
        world.clock.advance(dt.timedelta(seconds=1))
    await revoke_as_consumer(world, logins[1].access_token, device="b")
    operator = await secret_key(world, common_pb2.ROLE_OPERATOR)
    consumer_id = logins[0].session.consumer_id
    listed: sessions.ListSessionsResponse = await world.sessions.ListSessions(
        sessions.ListSessionsRequest(consumer_id=consumer_id), metadata=bearer(operator)
    )
    assert [session.session_id for session in listed.sessions] == [
        logins[2].session.session_id,
        logins[0].session.session_id,
    ]
    assert listed.next_page_token == ""
    first_page: sessions.ListSessionsResponse = await world.sessions.ListSessions(
        sessions.ListSessionsRequest(consumer_id=consumer_id, page_size=1),
        metadata=bearer(operator),
    )
    second_page: sessions.ListSessionsResponse = await world.sessions.ListSessions(
        sessions.ListSessionsRequest(
            consumer_id=consumer_id, page_size=1, page_token=first_page.next_page_token
        ),
        metadata=bearer(operator),
    )
    assert [session.session_id for session in (*first_page.sessions, *second_page.sessions)] == [
        session.session_id for session in listed.sessions
    ]
    assert second_page.next_page_token == ""


async def test_list_sessions_failure_paths(world: ConsumerWorld) -> None:
    foreign = await world.guest(tenant=world.globex)
    admin = bearer(world.acme.secret_key)
    for consumer_id in (foreign.session.consumer_id, "cons_" + "Q" * 22):
        await expect_status(
            world.sessions.ListSessions(
                sessions.ListSessionsRequest(consumer_id=consumer_id), metadata=admin
            ),
            grpc.StatusCode.NOT_FOUND,
        )
    guest = await world.guest()
    await expect_status(
        world.sessions.ListSessions(
            sessions.ListSessionsRequest(consumer_id=guest.session.consumer_id, page_token="%%"),
            metadata=admin,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_status(
        world.sessions.ListSessions(
            sessions.ListSessionsRequest(consumer_id="nope"), metadata=admin
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_status(
        world.sessions.ListSessions(
            sessions.ListSessionsRequest(consumer_id=guest.session.consumer_id),
            metadata=consumer_metadata(world.acme.publishable_key, guest.access_token, "device-1"),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    readonly = await secret_key(world, common_pb2.ROLE_READONLY)
    await expect_status(
        world.sessions.ListSessions(
            sessions.ListSessionsRequest(consumer_id=guest.session.consumer_id),
            metadata=bearer(readonly),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )


async def test_erasing_a_consumer_shreds_the_email_and_ends_every_session(
    world: ConsumerWorld,
) -> None:
    phone = await world.login("wanda@example.com", device="phone")
    laptop = await world.login("wanda@example.com", device="laptop")
    consumer_id = phone.session.consumer_id
    erased: sessions.EraseConsumerResponse = await world.sessions.EraseConsumer(
        sessions.EraseConsumerRequest(consumer_id=consumer_id),
        metadata=bearer(world.acme.secret_key),
    )
    assert erased.consumer_id == consumer_id
    assert erased.sessions_revoked == 2
    for login, device in ((phone, "phone"), (laptop, "laptop")):
        await expect_status(world.get_session(login.access_token, device=device), UNAUTHENTICATED)
        await expect_status(world.refresh(login.refresh_token, device=device), UNAUTHENTICATED)
    async with world.server.application.database.transaction(
        world.acme.organization.organization.organization_id
    ) as db:
        row = await db.scalar(select(ConsumerRow).where(ConsumerRow.consumer_id == consumer_id))
    assert row is not None and row.erased_at is not None
    assert (row.wrapped_key, row.email_ciphertext, row.email_index) == (None, None, None)
    again: sessions.EraseConsumerResponse = await world.sessions.EraseConsumer(
        sessions.EraseConsumerRequest(consumer_id=consumer_id),
        metadata=bearer(world.acme.secret_key),
    )
    assert (again.erased_at, again.sessions_revoked) == (erased.erased_at, 0)
    # The address now belongs to nobody: logging in again makes a new consumer.
    fresh = await world.login("wanda@example.com", device="phone")
    assert fresh.session.consumer_id != consumer_id


async def test_erase_consumer_failure_paths(world: ConsumerWorld) -> None:
    guest = await world.guest()
    foreign = await world.guest(tenant=world.globex)
    operator = await secret_key(world, common_pb2.ROLE_OPERATOR)
    await expect_status(
        world.sessions.EraseConsumer(
            sessions.EraseConsumerRequest(consumer_id=guest.session.consumer_id),
            metadata=bearer(operator),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_status(
        world.sessions.EraseConsumer(
            sessions.EraseConsumerRequest(consumer_id=foreign.session.consumer_id),
            metadata=bearer(world.acme.secret_key),
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_status(
        world.sessions.EraseConsumer(
            sessions.EraseConsumerRequest(consumer_id="cons_!"),
            metadata=bearer(world.acme.secret_key),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert (await world.get_session(foreign.access_token, tenant=world.globex)).session.session_id


async def test_validate_session_reports_instead_of_failing(world: ConsumerWorld) -> None:
    guest = await world.guest()
    readonly = await secret_key(world, common_pb2.ROLE_READONLY)
    valid: sessions.ValidateSessionResponse = await world.sessions.ValidateSession(
        sessions.ValidateSessionRequest(
            access_token=guest.access_token, device_fingerprint="device-1"
        ),
        metadata=bearer(readonly),
    )
    assert valid.valid and valid.reason == session_pb2.SESSION_VALIDATION_REASON_OK
    assert valid.consumer_id == guest.session.consumer_id
    assert valid.session_id == guest.session.session_id
    assert valid.HasField("expires_at")
    foreign: sessions.ValidateSessionResponse = await world.sessions.ValidateSession(
        sessions.ValidateSessionRequest(access_token=guest.access_token),
        metadata=bearer(world.globex.secret_key),
    )
    assert not foreign.valid
    assert foreign.reason == session_pb2.SESSION_VALIDATION_REASON_INVALID
    assert foreign.consumer_id == "" and not foreign.HasField("expires_at")
    await expect_status(
        world.sessions.ValidateSession(
            sessions.ValidateSessionRequest(access_token=""), metadata=bearer(readonly)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_the_signature_is_checked_once_per_token_but_revocation_every_call(
    world: ConsumerWorld,
) -> None:
    verifier = world.server.application.consumer_tokens
    guest = await world.guest()
    before = verifier.signature_checks
    for _ in range(10):
        await world.get_session(guest.access_token)
    assert verifier.signature_checks == before + 1
    await revoke_as_consumer(world, guest.access_token)
    # Still cached as verified, yet refused on the very next call.
    await expect_status(world.get_session(guest.access_token), UNAUTHENTICATED)
    # Replaying the dead token is refused from memory: one more look (signature and
    # session), then none, however often it comes back.
    refused_before = verifier.signature_checks
    for _ in range(5):
        await expect_status(world.get_session(guest.access_token), UNAUTHENTICATED)
    assert verifier.signature_checks == refused_before + 1


async def test_a_stale_access_token_does_not_block_the_refresh_that_renews_it(
    world: ConsumerWorld,
) -> None:
    guest = await world.guest()
    world.clock.advance(dt.timedelta(minutes=20))
    await expect_status(world.get_session(guest.access_token), UNAUTHENTICATED)
    # SDKs send x-fanfare-session on every call; RefreshSession does not act as a
    # consumer, so the expired token is ignored there.
    refreshed: sessions.RefreshSessionResponse = await world.sessions.RefreshSession(
        sessions.RefreshSessionRequest(refresh_token=guest.refresh_token),
        metadata=consumer_metadata(world.acme.publishable_key, guest.access_token, "device-1"),
    )
    assert (await world.get_session(refreshed.access_token)).session.session_id
