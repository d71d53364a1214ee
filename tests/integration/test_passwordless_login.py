"""Passwordless email login over real sockets, on SQLite+memory and PostgreSQL+Redis.

Codes arrive through the real dev channel (server log, test mode) or, end to end,
through a real SMTP server with STARTTLS (live mode). Other clients call through a
relay that connects from another loopback address (``tests.client_relay``).
"""

from __future__ import annotations

import contextlib
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
from grpc import aio
from sqlalchemy import select

from fanfare_grpc.crypto.aead import DecryptionError
from fanfare_grpc.crypto.consumer_emails import ConsumerEmailVault
from fanfare_grpc.domain.consumers import SealedEmail
from fanfare_grpc.domain.passwordless import CODE_LIFETIME, LoginLimits
from fanfare_grpc.storage.models import ConsumerRow, LoginChallengeRow
from tests.client_relay import relayed_from
from tests.clock import MutableClock
from tests.conftest import BackendSettings, start_migrated_server
from tests.consumers import ConsumerWorld, consumer_metadata, consumer_world, serving_consumer_world
from tests.grpc_helpers import bad_request_fields, bearer, expect_status
from tests.smtp_server import RecordingHandler, make_pki, server_tls, smtp_server

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
LIMITS = LoginLimits()


@pytest.fixture
async def world(backend: BackendSettings) -> AsyncIterator[ConsumerWorld]:
    async with serving_consumer_world(backend.settings) as world:
        yield world


def wrong(code: str) -> str:
    """A different 6-digit code."""
    return f"{(int(code) + 1) % 1_000_000:06d}"


@contextlib.asynccontextmanager
async def from_client(world: ConsumerWorld, host: str) -> AsyncIterator[ConsumerWorld]:
    """The same world, its calls arriving from another client IP (``127.0.0.N``)."""
    async with (
        relayed_from(host, world.server.address) as address,
        aio.insecure_channel(address) as channel,
    ):
        yield dataclasses.replace(world, channel=channel)


async def mails_sent(world: ConsumerWorld) -> int:
    """Codes delivered so far (delivery runs after the answer: wait for it)."""
    await world.server.application.passwordless.drain_deliveries()
    return len(world.codes.codes)


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


async def test_wrong_codes_across_challenges_hit_the_per_address_and_device_limit(
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
    error = await expect_status(world.verify_login(started.challenge_id, code), RESOURCE_EXHAUSTED)
    trailers = dict(error.trailing_metadata() or ())
    assert int(trailers["retry-after"]) > 0
    # Counted per (address, device): the address's other devices still log in, even
    # from the same client.
    mine = await world.start_login("olivia@example.com", device="device-2")
    my_code = await world.codes.code_for(mine.challenge_id)
    assert (await world.verify_login(mine.challenge_id, my_code, device="device-2")).access_token


async def test_too_many_codes_for_one_address(world: ConsumerWorld) -> None:
    for _ in range(5):
        await world.start_login("peggy@example.com")
    await expect_status(world.start_login("peggy@example.com"), grpc.StatusCode.RESOURCE_EXHAUSTED)
    # Other addresses are unaffected.
    assert (await world.start_login("trent@example.com")).challenge_id


async def test_another_devices_start_leaves_the_first_code_verifiable(
    world: ConsumerWorld,
) -> None:
    mine = await world.start_login("uma@example.com", device="phone")
    my_code = await world.codes.code_for(mine.challenge_id)
    async with from_client(world, "127.0.0.2") as stranger:
        theirs = await stranger.start_login("uma@example.com", device="attacker")
        their_code = await world.codes.code_for(theirs.challenge_id)
        # A challenge belongs to its device: both stay open, each for its own device.
        assert (await stranger.verify_login(theirs.challenge_id, their_code, "attacker")).session
    assert (await world.verify_login(mine.challenge_id, my_code, device="phone")).access_token


async def test_starts_from_other_clients_and_devices_do_not_lock_the_address_out(
    world: ConsumerWorld,
) -> None:
    victim = "xena@example.com"
    async with from_client(world, "127.0.0.2") as stranger:
        for index in range(LIMITS.starts_per_email_and_client.count):
            await stranger.start_login(victim, device=f"attacker-{index}")
        # Per (address, client): this client may not ask for this address again...
        await expect_status(stranger.start_login(victim, device="attacker-new"), RESOURCE_EXHAUSTED)
    async with from_client(world, "127.0.0.3") as stranger:
        # ...and per (address, device): neither may this device, from anywhere.
        for _ in range(LIMITS.starts_per_email_and_device.count - 1):
            await stranger.start_login(victim, device="attacker-0")
        await expect_status(stranger.start_login(victim, device="attacker-0"), RESOURCE_EXHAUSTED)
    # The address itself is not locked: its owner's device and client still start.
    started = await world.start_login(victim, device="phone")
    code = await world.codes.code_for(started.challenge_id)
    assert (await world.verify_login(started.challenge_id, code, device="phone")).access_token


async def test_the_mailbox_ceiling_bounds_mails_and_delivered_codes_still_verify(
    world: ConsumerWorld,
) -> None:
    victim = "yara@example.com"
    ceiling = LIMITS.mails_per_email.count
    mine = await world.start_login(victim, device="phone")
    my_code = await world.codes.code_for(mine.challenge_id)
    answers: list[auth.StartPasswordlessLoginResponse] = []
    # Five clients, one device each, each within its own start limits: 25 more starts.
    for client in range(2, 7):
        async with from_client(world, f"127.0.0.{client}") as stranger:
            for _ in range(LIMITS.starts_per_email_and_device.count):
                answers.append(await stranger.start_login(victim, device=f"attacker-{client}"))
    assert len(answers) + 1 > ceiling
    assert await mails_sent(world) == ceiling
    # Every start got the usual answer, mailed or not.
    for answer in answers:
        assert sorted(field.name for field, _ in answer.ListFields()) == [
            "challenge_id",
            "expires_at",
        ]
        assert answer.challenge_id.startswith("chl_")
    # A device whose first start came past the ceiling holds a challenge no code opens.
    unmailed = answers[-1].challenge_id
    assert unmailed not in world.codes.codes
    async with from_client(world, "127.0.0.6") as stranger:
        await expect_status(
            stranger.verify_login(unmailed, my_code, device="attacker-6"), UNAUTHENTICATED
        )
    # The owner's "resend" past the ceiling keeps the challenge whose code it holds.
    again = await world.start_login(victim, device="phone")
    assert again.challenge_id == mine.challenge_id
    assert await mails_sent(world) == ceiling
    assert (await world.verify_login(mine.challenge_id, my_code, device="phone")).access_token


async def test_a_device_that_logged_in_before_is_mailed_past_the_ceiling(
    world: ConsumerWorld,
) -> None:
    victim = "uma@example.com"
    await world.login(victim, device="phone")  # the owner's phone is recognized now
    for client in range(2, 7):
        async with from_client(world, f"127.0.0.{client}") as stranger:
            for _ in range(LIMITS.starts_per_email_and_device.count):
                await stranger.start_login(victim, device=f"attacker-{client}")
    sent = await mails_sent(world)
    # The strangers filled the mailbox for new devices ...
    laptop = await world.start_login(victim, device="laptop")
    assert await mails_sent(world) == sent
    assert laptop.challenge_id not in world.codes.codes
    # ... but not for the phone that logged in before.
    again = await world.start_login(victim, device="phone")
    code = await world.codes.code_for(again.challenge_id)
    assert await mails_sent(world) == sent + 1
    assert (await world.verify_login(again.challenge_id, code, device="phone")).access_token


async def test_wrong_guesses_on_a_strangers_own_challenges_do_not_block_the_owner(
    world: ConsumerWorld,
) -> None:
    victim = "zoe@example.com"
    async with from_client(world, "127.0.0.2") as stranger:
        # Three devices, five wrong guesses each: more than any one device may make.
        for index in range(3):
            device = f"attacker-{index}"
            theirs = await stranger.start_login(victim, device=device)
            code = await world.codes.code_for(theirs.challenge_id)
            for _ in range(5):
                await expect_status(
                    stranger.verify_login(theirs.challenge_id, wrong(code), device),
                    UNAUTHENTICATED,
                )
    mine = await world.start_login(victim, device="phone")
    my_code = await world.codes.code_for(mine.challenge_id)
    assert (await world.verify_login(mine.challenge_id, my_code, device="phone")).access_token


async def test_five_wrong_codes_from_its_device_burn_a_challenge_other_devices_cannot(
    world: ConsumerWorld,
) -> None:
    mine = await world.start_login("amy@example.com", device="phone")
    my_code = await world.codes.code_for(mine.challenge_id)
    async with from_client(world, "127.0.0.2") as stranger:
        # Even knowing the challenge id, another device can neither answer nor burn it.
        for _ in range(6):
            await expect_status(
                stranger.verify_login(mine.challenge_id, wrong(my_code), device="attacker"),
                UNAUTHENTICATED,
            )
        await expect_status(
            stranger.verify_login(mine.challenge_id, my_code, device="attacker"), UNAUTHENTICATED
        )
    for _ in range(4):
        await expect_status(
            world.verify_login(mine.challenge_id, wrong(my_code), device="phone"), UNAUTHENTICATED
        )
    assert (await world.verify_login(mine.challenge_id, my_code, device="phone")).access_token
    # Its own device's five wrong guesses still burn a challenge.
    burnt = await world.start_login("amy@example.com", device="tablet")
    code = await world.codes.code_for(burnt.challenge_id)
    for _ in range(5):
        await expect_status(
            world.verify_login(burnt.challenge_id, wrong(code), device="tablet"), UNAUTHENTICATED
        )
    await expect_status(
        world.verify_login(burnt.challenge_id, code, device="tablet"), UNAUTHENTICATED
    )


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
