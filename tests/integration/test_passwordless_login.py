"""Passwordless email login over real sockets, on SQLite+memory and PostgreSQL+Redis.

Codes arrive through the real dev channel (server log, test mode) or, end to end,
through a real SMTP server with STARTTLS (live mode).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.common.v1 import common_pb2
from sqlalchemy import select

from fanfare_grpc.crypto.aead import DecryptionError
from fanfare_grpc.crypto.consumer_emails import ConsumerEmailVault
from fanfare_grpc.domain.consumers import SealedEmail
from fanfare_grpc.domain.passwordless import CODE_LIFETIME
from fanfare_grpc.storage.models import ConsumerRow, LoginChallengeRow
from tests.clock import MutableClock
from tests.conftest import BackendSettings, start_migrated_server
from tests.consumers import ConsumerWorld, consumer_metadata, consumer_world, serving_consumer_world
from tests.grpc_helpers import bad_request_fields, bearer, expect_status
from tests.smtp_server import RecordingHandler, make_pki, server_tls, smtp_server

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture
async def world(backend: BackendSettings) -> AsyncIterator[ConsumerWorld]:
    async with serving_consumer_world(backend.settings) as world:
        yield world


def wrong(code: str) -> str:
    """A different 6-digit code."""
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def test_login_creates_the_consumer_once_and_normalizes_the_address(
    world: ConsumerWorld,
) -> None:
    first = await world.login("Alice@Example.COM")
    again = await world.login("alice@example.com", device="device-2")

    assert first.session.consumer_id.startswith("cons_")
    assert again.session.consumer_id == first.session.consumer_id
    assert again.session.session_id != first.session.session_id
    assert not first.session.guest
    assert first.refresh_token.startswith("rt_")
    now = world.clock()
    assert first.access_token_expires_at.ToDatetime(dt.UTC) <= now + dt.timedelta(minutes=15)
    assert first.refresh_token_expires_at.ToDatetime(dt.UTC) > now + dt.timedelta(days=29)
    session = await world.get_session(first.access_token)
    assert session.session.session_id == first.session.session_id


async def test_email_is_stored_only_sealed_and_blind_indexed(world: ConsumerWorld) -> None:
    address = "carol@example.com"
    logged_in = await world.login(address)
    database = world.server.application.database
    async with database.transaction(world.acme.organization.organization.organization_id) as db:
        row = await db.scalar(
            select(ConsumerRow).where(ConsumerRow.consumer_id == logged_in.session.consumer_id)
        )
        challenges = list(await db.scalars(select(LoginChallengeRow)))
    assert row is not None and row.email_ciphertext and row.wrapped_key and row.email_index
    for stored in (row.email_ciphertext, row.wrapped_key, row.email_index.encode()):
        assert address.encode() not in stored
    assert len(row.email_index) == 64  # HMAC-SHA256, hex
    # A spent challenge keeps no copy of the address.
    assert [challenge.email_ciphertext for challenge in challenges] == [None]
    vault = ConsumerEmailVault(world.server.application.envelope)
    sealed = SealedEmail(row.wrapped_key, row.email_ciphertext, row.email_index)
    assert await vault.open(row.org_id, row.consumer_id, sealed) == address
    # Bound to its row: the same ciphertext under another consumer id does not open.
    with pytest.raises(DecryptionError):
        await vault.open(row.org_id, "cons_someoneelse", sealed)


async def test_a_code_works_once(world: ConsumerWorld) -> None:
    started = await world.start_login("dave@example.com")
    code = await world.codes.code_for(started.challenge_id)
    await world.verify_login(started.challenge_id, code)
    await expect_status(world.verify_login(started.challenge_id, code), UNAUTHENTICATED)


async def test_a_code_expires_after_ten_minutes(world: ConsumerWorld) -> None:
    started = await world.start_login("erin@example.com")
    code = await world.codes.code_for(started.challenge_id)
    assert started.expires_at.ToDatetime(dt.UTC) - world.clock() <= CODE_LIFETIME
    world.clock.advance(CODE_LIFETIME + dt.timedelta(seconds=1))
    await expect_status(world.verify_login(started.challenge_id, code), UNAUTHENTICATED)


async def test_five_wrong_codes_burn_the_challenge(world: ConsumerWorld) -> None:
    started = await world.start_login("frank@example.com")
    code = await world.codes.code_for(started.challenge_id)
    for _ in range(5):
        await expect_status(world.verify_login(started.challenge_id, wrong(code)), UNAUTHENTICATED)
    await expect_status(world.verify_login(started.challenge_id, code), UNAUTHENTICATED)


async def test_four_wrong_codes_then_the_right_one_logs_in(world: ConsumerWorld) -> None:
    started = await world.start_login("grace@example.com")
    code = await world.codes.code_for(started.challenge_id)
    for _ in range(4):
        await expect_status(world.verify_login(started.challenge_id, wrong(code)), UNAUTHENTICATED)
    assert (await world.verify_login(started.challenge_id, code)).access_token


async def test_a_code_only_answers_its_own_challenge(world: ConsumerWorld) -> None:
    mine = await world.start_login("heidi@example.com")
    theirs = await world.start_login("ivan@example.com")
    my_code = await world.codes.code_for(mine.challenge_id)
    their_code = await world.codes.code_for(theirs.challenge_id)
    if my_code != their_code:
        await expect_status(world.verify_login(theirs.challenge_id, my_code), UNAUTHENTICATED)
    assert (await world.verify_login(mine.challenge_id, my_code)).access_token


async def test_a_new_challenge_voids_the_previous_code(world: ConsumerWorld) -> None:
    first = await world.start_login("judy@example.com")
    first_code = await world.codes.code_for(first.challenge_id)
    second = await world.start_login("judy@example.com")
    second_code = await world.codes.code_for(second.challenge_id)
    await expect_status(world.verify_login(first.challenge_id, first_code), UNAUTHENTICATED)
    assert (await world.verify_login(second.challenge_id, second_code)).access_token


async def test_the_code_is_bound_to_the_device_that_asked(world: ConsumerWorld) -> None:
    started = await world.start_login("mallory@example.com", device="device-1")
    code = await world.codes.code_for(started.challenge_id)
    await expect_status(
        world.verify_login(started.challenge_id, code, device="device-2"), UNAUTHENTICATED
    )
    assert (await world.verify_login(started.challenge_id, code, device="device-1")).access_token


async def test_challenges_are_scoped_to_the_organization(world: ConsumerWorld) -> None:
    started = await world.start_login("niaj@example.com")
    code = await world.codes.code_for(started.challenge_id)
    await expect_status(
        world.verify_login(started.challenge_id, code, tenant=world.globex), UNAUTHENTICATED
    )
    await expect_status(world.verify_login("chl_" + "A" * 22, code), UNAUTHENTICATED)
    assert (await world.verify_login(started.challenge_id, code)).access_token


async def test_unknown_and_known_addresses_get_the_same_answer_and_latency(
    world: ConsumerWorld,
) -> None:
    known = [f"known{index}@example.com" for index in range(9)]
    for address in known:
        await world.login(address)
    unknown = [f"unknown{index}@example.com" for index in range(9)]

    async def timed(address: str) -> tuple[float, auth.StartPasswordlessLoginResponse]:
        started = time.perf_counter()
        response = await world.start_login(address)
        return time.perf_counter() - started, response

    # Interleaved, so that load on the machine drifting over time hits both alike.
    known_runs, unknown_runs = [], []
    for known_address, unknown_address in zip(known, unknown, strict=True):
        known_runs.append(await timed(known_address))
        unknown_runs.append(await timed(unknown_address))
    for _, response in known_runs + unknown_runs:
        assert sorted(field.name for field, _ in response.ListFields()) == [
            "challenge_id",
            "expires_at",
        ]
        assert response.challenge_id.startswith("chl_")
        # Both kinds of address get a code (a first login creates the consumer).
        await world.codes.code_for(response.challenge_id)
    known_median = statistics.median(elapsed for elapsed, _ in known_runs)
    unknown_median = statistics.median(elapsed for elapsed, _ in unknown_runs)
    # Medians, not single calls; the same work is done for both (no consumer lookup
    # at all), so any systematic gap would be a leak.
    assert abs(known_median - unknown_median) < 0.5 * max(known_median, unknown_median)


async def test_wrong_codes_across_challenges_hit_the_per_address_limit(
    world: ConsumerWorld,
) -> None:
    for _ in range(2):
        started = await world.start_login("olivia@example.com")
        code = await world.codes.code_for(started.challenge_id)
        for _ in range(5):
            await expect_status(
                world.verify_login(started.challenge_id, wrong(code)), UNAUTHENTICATED
            )
    started = await world.start_login("olivia@example.com")
    code = await world.codes.code_for(started.challenge_id)
    error = await expect_status(
        world.verify_login(started.challenge_id, code), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    trailers = dict(error.trailing_metadata() or ())
    assert int(trailers["retry-after"]) > 0


async def test_too_many_codes_for_one_address(world: ConsumerWorld) -> None:
    for _ in range(5):
        await world.start_login("peggy@example.com")
    await expect_status(world.start_login("peggy@example.com"), grpc.StatusCode.RESOURCE_EXHAUSTED)
    # Other addresses are unaffected.
    assert (await world.start_login("trent@example.com")).challenge_id


async def test_too_many_codes_from_one_client(world: ConsumerWorld) -> None:
    for index in range(30):
        await world.start_login(f"sybil{index}@example.com")
    await expect_status(
        world.start_login("sybil-last@example.com"), grpc.StatusCode.RESOURCE_EXHAUSTED
    )


async def test_bad_requests(world: ConsumerWorld) -> None:
    pk = world.acme.publishable_key
    error = await expect_status(
        world.auth.StartPasswordlessLogin(
            auth.StartPasswordlessLoginRequest(email="not-an-address"),
            metadata=consumer_metadata(pk, device="d"),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "email" in bad_request_fields(error)
    error = await expect_status(
        world.auth.StartPasswordlessLogin(
            auth.StartPasswordlessLoginRequest(email="walter@example.com"),
            metadata=consumer_metadata(pk),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_request_fields(error) == ["x-fanfare-device"]
    for challenge_id, code in (("chl_1", "12345"), ("nope", "123456"), ("chl_1", "12345a")):
        await expect_status(
            world.auth.VerifyPasswordlessLogin(
                auth.VerifyPasswordlessLoginRequest(challenge_id=challenge_id, code=code),
                metadata=consumer_metadata(pk, device="d"),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    await expect_status(
        world.auth.StartPasswordlessLogin(
            auth.StartPasswordlessLoginRequest(email="walter@example.com"),
            metadata=bearer(world.acme.secret_key),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_status(
        world.auth.StartPasswordlessLogin(
            auth.StartPasswordlessLoginRequest(email="walter@example.com"),
            metadata=(("x-fanfare-device", "d"),),
        ),
        UNAUTHENTICATED,
    )


async def test_live_mode_without_smtp_never_logs_a_code(world: ConsumerWorld) -> None:
    await expect_status(
        world.auth.StartPasswordlessLogin(
            auth.StartPasswordlessLoginRequest(email="victor@example.com"),
            metadata=consumer_metadata(world.acme.live_publishable_key, device="d"),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert world.codes.codes == {}


async def test_live_login_end_to_end_through_smtp_with_starttls(
    backend: BackendSettings, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    handler = RecordingHandler()
    async with smtp_server(handler, starttls=server_tls(pki.server)) as port:
        settings = dataclasses.replace(
            backend.settings,
            smtp_url=f"smtp://127.0.0.1:{port}",
            smtp_from="login@fanfare.test",
            smtp_ca_file=pki.ca.bundle,
        )
        clock = MutableClock()
        server = await start_migrated_server(settings, clock=clock)
        try:
            async with consumer_world(server, clock) as world:
                pk = world.acme.live_publishable_key
                started = await world.auth.StartPasswordlessLogin(
                    auth.StartPasswordlessLoginRequest(email="Wendy@Example.com"),
                    metadata=consumer_metadata(pk, device="phone"),
                )
                await server.application.passwordless.drain_deliveries()
                [received] = handler.received
                assert received.rcpt_tos == ["wendy@example.com"]
                assert received.tls_version in ("TLSv1.2", "TLSv1.3")
                body = received.message.get_content()
                code = next(word for word in body.split() if word.isdigit() and len(word) == 6)
                # Delivered by email only: nothing in the server log.
                assert world.codes.codes == {}
                verified = await world.auth.VerifyPasswordlessLogin(
                    auth.VerifyPasswordlessLoginRequest(
                        challenge_id=started.challenge_id, code=code
                    ),
                    metadata=consumer_metadata(pk, device="phone"),
                )
                assert verified.session.mode == common_pb2.MODE_LIVE
        finally:
            await server.shutdown(grace_seconds=1.0)
