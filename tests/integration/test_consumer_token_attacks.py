"""Attacks on consumer access and refresh tokens, through the real gRPC server.

Every attack is presented to ``GetSession`` (pk + ``x-fanfare-session`` +
``x-fanfare-device``) on both backends and must be refused with UNAUTHENTICATED and
the one uniform message. Where a refusal could also come from a broken setup, the
test first (or afterwards) shows that the legitimate token or a correctly forged one
is accepted, so it cannot pass because everything fails.

Forgeries that need a valid signature are signed with the server's REAL current
signing key: only the one claim or header under attack is wrong.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.common.v1 import common_pb2
from fanfare.session.v1 import session_pb2, session_service_pb2

from fanfare_grpc.authentication.consumer_tokens import (
    DEVICE_REQUIRED,
    EXPIRED_SESSION_TOKEN,
    INVALID_SESSION,
    REVOKED_SESSION,
)
from fanfare_grpc.crypto.jwt_tokens import SigningKey
from fanfare_grpc.domain.session_service import INVALID_REFRESH_TOKEN
from tests.clock import MutableClock
from tests.conftest import BackendSettings, start_migrated_server
from tests.consumers import ConsumerWorld, Tenant, consumer_metadata, consumer_world
from tests.grpc_helpers import bearer, error_reasons

DEVICE = "device-1"
OTHER_DEVICE = "device-2"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
REQUIRED_CLAIMS = ("iss", "aud", "sub", "sid", "dfp", "exp", "nbf", "iat", "jti")


@pytest.fixture
async def world(backend: BackendSettings) -> AsyncIterator[ConsumerWorld]:
    clock = MutableClock()
    server = await start_migrated_server(backend.settings, clock=clock)
    try:
        async with consumer_world(server, clock) as world:
            yield world
    finally:
        await server.shutdown(grace_seconds=1.0)


# --- JWS by hand -------------------------------------------------------------------


def b64url(raw: bytes) -> str:
    """Unpadded base64url, as JWS uses."""
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def b64url_json(value: dict[str, Any]) -> str:
    """A JWS header or payload segment."""
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def decode_segment(segment: str) -> dict[str, Any]:
    """The JSON object inside one segment."""
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return decoded


@dataclasses.dataclass(frozen=True)
class Jws:
    """The three parts of a compact JWS (signature kept encoded)."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signature: str

    @classmethod
    def parse(cls, token: str) -> Jws:
        header, payload, signature = token.split(".")
        return cls(decode_segment(header), decode_segment(payload), signature)


def ed25519_signed(header: dict[str, Any], claims: dict[str, Any], key: Ed25519PrivateKey) -> str:
    """A compact JWS signed with ``key``, whatever the header says."""
    signing_input = f"{b64url_json(header)}.{b64url_json(claims)}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode()))}"


async def real_signing_key(world: ConsumerWorld) -> SigningKey:
    """The key the server signs access tokens with right now."""
    return await world.server.application.signing_keys.signing_key(world.clock())


def fresh_jti() -> str:
    """A new token id, so a forged token never shares a cache digest with another."""
    return "at_forged" + secrets.token_urlsafe(12)


async def forge(
    world: ConsumerWorld,
    token: str,
    *,
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
) -> str:
    """``token`` re-signed with the server's real key, with a fresh ``jti`` and the
    given header entries and claims replaced (or dropped)."""
    original = Jws.parse(token)
    new_header = original.header | (header or {})
    new_claims = original.claims | {"jti": fresh_jti()} | (claims or {})
    for name in drop:
        new_header.pop(name, None)
        new_claims.pop(name, None)
    return ed25519_signed(new_header, new_claims, (await real_signing_key(world)).private_key)


# --- calls -------------------------------------------------------------------------


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error ``call`` must fail with."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


async def probe(
    world: ConsumerWorld,
    token: str,
    device: str | None = DEVICE,
    publishable_key: str | None = None,
) -> session_service_pb2.GetSessionResponse:
    """GetSession with a consumer token (Acme's test pk unless told otherwise)."""
    response: session_service_pb2.GetSessionResponse = await world.sessions.GetSession(
        session_service_pb2.GetSessionRequest(),
        metadata=consumer_metadata(publishable_key or world.acme.publishable_key, token, device),
    )
    return response


async def assert_accepted(world: ConsumerWorld, token: str, **kwargs: Any) -> None:
    """The control: this token opens its own session."""
    response = await probe(world, token, **kwargs)
    assert response.session.session_id == Jws.parse(token).claims["sid"]


REFUSAL_MESSAGES = {
    "TOKEN_INVALID": INVALID_SESSION,
    "TOKEN_EXPIRED": EXPIRED_SESSION_TOKEN,
    "SESSION_REVOKED": REVOKED_SESSION,
    "DEVICE_REQUIRED": DEVICE_REQUIRED,
}


async def assert_refused(
    world: ConsumerWorld,
    token: str,
    device: str | None = DEVICE,
    reason: str = "TOKEN_INVALID",
    **kwargs: Any,
) -> None:
    """UNAUTHENTICATED with the message of its reason.

    Forgeries and misuse share TOKEN_INVALID and one message (nothing tells what was
    wrong); a genuine token that expired or whose session was revoked says so, so an
    SDK knows whether to refresh or log in again.
    """
    error = await rpc_error(probe(world, token, device, **kwargs))
    assert error.code() == UNAUTHENTICATED
    assert error.details() == REFUSAL_MESSAGES[reason]
    assert error_reasons(error) == [reason]


async def validate(
    world: ConsumerWorld,
    access_token: str,
    device_fingerprint: str | None = None,
    api_key: str | None = None,
) -> session_service_pb2.ValidateSessionResponse:
    """ValidateSession with Acme's test ADMIN sk unless told otherwise."""
    request = session_service_pb2.ValidateSessionRequest(access_token=access_token)
    if device_fingerprint is not None:
        request.device_fingerprint = device_fingerprint
    response: session_service_pb2.ValidateSessionResponse = await world.sessions.ValidateSession(
        request, metadata=bearer(api_key or world.acme.secret_key)
    )
    return response


async def secret_key(world: ConsumerWorld, tenant: Tenant, role: common_pb2.Role) -> str:
    """A new test-mode sk of ``tenant`` with ``role``."""
    response: auth.CreateApiKeyResponse = await world.auth.CreateApiKey(
        auth.CreateApiKeyRequest(kind=common_pb2.API_KEY_KIND_SECRET, role=role, name="backend"),
        metadata=bearer(tenant.secret_key),
    )
    return response.secret


async def live_guest(
    world: ConsumerWorld, tenant: Tenant
) -> session_service_pb2.CreateGuestSessionResponse:
    """A guest session created with the tenant's LIVE pk."""
    response: session_service_pb2.CreateGuestSessionResponse = (
        await world.sessions.CreateGuestSession(
            session_service_pb2.CreateGuestSessionRequest(),
            metadata=consumer_metadata(tenant.live_publishable_key, device=DEVICE),
        )
    )
    return response


def advance_past_expiry(world: ConsumerWorld, token: str, seconds: float) -> None:
    """Move the server clock to ``seconds`` after the token's ``exp``."""
    expires_at = dt.datetime.fromtimestamp(Jws.parse(token).claims["exp"], dt.UTC)
    world.clock.advance(expires_at - world.clock() + dt.timedelta(seconds=seconds))


# --- 1-6: forged or broken signatures ----------------------------------------------


async def test_forge_helper_with_correct_claims_is_accepted(world: ConsumerWorld) -> None:
    """The control for every forgery below: re-signing correct claims with the real
    key yields a working token, so the refusals are due to the attacked part."""
    token = (await world.guest()).access_token
    forged = await forge(world, token)
    assert forged != token
    await assert_accepted(world, forged)


async def test_alg_none_token_is_refused(world: ConsumerWorld) -> None:
    token = (await world.guest()).access_token
    original = Jws.parse(token)
    header = {"alg": "none", "typ": "at+jwt", "kid": original.header["kid"]}
    await assert_accepted(world, token)
    await assert_refused(world, f"{b64url_json(header)}.{b64url_json(original.claims)}.")


@pytest.mark.parametrize("secret_form", ["raw", "pem", "jwk_x"])
async def test_hs256_token_keyed_with_the_public_key_is_refused(
    world: ConsumerWorld, secret_form: str
) -> None:
    """Algorithm confusion: HMAC with the published public key as the secret."""
    token = (await world.guest()).access_token
    original = Jws.parse(token)
    public_key = (await real_signing_key(world)).public_key
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    secret = {
        "raw": raw,
        "pem": public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "jwk_x": b64url(raw).encode(),
    }[secret_form]
    header = {"alg": "HS256", "typ": "at+jwt", "kid": original.header["kid"]}
    claims = original.claims | {"jti": fresh_jti()}
    signing_input = f"{b64url_json(header)}.{b64url_json(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    await assert_accepted(world, token)
    await assert_refused(world, f"{signing_input}.{b64url(mac)}")


@pytest.mark.parametrize("tampering", ["sub_replaced", "exp_extended", "one_character_flipped"])
async def test_tampered_payload_with_original_signature_is_refused(
    world: ConsumerWorld, tampering: str
) -> None:
    token = (await world.guest()).access_token
    victim = (await world.guest()).session
    header, payload, signature = token.split(".")
    claims = decode_segment(payload)
    if tampering == "sub_replaced":
        tampered = b64url_json(claims | {"sub": victim.consumer_id})
    elif tampering == "exp_extended":
        tampered = b64url_json(claims | {"exp": claims["exp"] + 86_400})
    else:
        middle = len(payload) // 2
        flipped = "A" if payload[middle] != "A" else "B"
        tampered = payload[:middle] + flipped + payload[middle + 1 :]
    assert tampered != payload
    await assert_accepted(world, token)
    await assert_refused(world, f"{header}.{tampered}.{signature}")


@pytest.mark.parametrize("shape", ["empty_signature", "no_signature_segment"])
async def test_token_without_signature_is_refused(world: ConsumerWorld, shape: str) -> None:
    token = (await world.guest()).access_token
    header, payload, _ = token.split(".")
    stripped = f"{header}.{payload}." if shape == "empty_signature" else f"{header}.{payload}"
    await assert_accepted(world, token)
    await assert_refused(world, stripped)


@pytest.mark.parametrize("kid", ["unknown", "real"])
async def test_token_signed_by_an_attacker_key_is_refused(world: ConsumerWorld, kid: str) -> None:
    """A fresh Ed25519 key, under an unknown well-formed kid or the server's own kid."""
    token = (await world.guest()).access_token
    original = Jws.parse(token)
    header = original.header | {
        "kid": "ed_AAAAAAAAAAAAAAAA" if kid == "unknown" else original.header["kid"]
    }
    forged = ed25519_signed(
        header, original.claims | {"jti": fresh_jti()}, Ed25519PrivateKey.generate()
    )
    await assert_accepted(world, token)
    await assert_refused(world, forged)


@pytest.mark.parametrize(
    "kid",
    ["../../etc/passwd", "x' OR '1'='1", "ed_abc;DROP TABLE consumer_sessions"],
    ids=["path_traversal", "sql_or", "sql_drop"],
)
async def test_kid_with_path_or_sql_characters_is_refused(world: ConsumerWorld, kid: str) -> None:
    """Signed with the real key; only the kid is hostile. The server is unharmed."""
    token = (await world.guest()).access_token
    await assert_accepted(world, token)
    await assert_refused(world, await forge(world, token, header={"kid": kid}))
    # Still working afterwards, for a token never seen before too (new session read).
    await assert_accepted(world, token)
    await assert_accepted(world, (await world.guest()).access_token)


# --- 7-9: times and required claims ------------------------------------------------


@pytest.mark.parametrize("seen_before", [True, False], ids=["cached", "first_sight"])
async def test_token_expired_beyond_leeway_is_refused(
    world: ConsumerWorld, seen_before: bool
) -> None:
    control = (await world.guest()).access_token
    token = (await world.guest()).access_token
    await assert_accepted(world, control)
    if seen_before:
        await assert_accepted(world, token)
    advance_past_expiry(world, token, 31)
    await assert_refused(world, token, reason="TOKEN_EXPIRED")


@pytest.mark.parametrize("seen_before", [True, False], ids=["cached", "first_sight"])
async def test_token_expired_within_leeway_is_still_accepted(
    world: ConsumerWorld, seen_before: bool
) -> None:
    token = (await world.guest()).access_token
    if seen_before:
        await assert_accepted(world, token)
    advance_past_expiry(world, token, 10)
    await assert_accepted(world, token)


@pytest.mark.parametrize(
    ("claim", "ahead"),
    [("nbf", dt.timedelta(minutes=10)), ("iat", dt.timedelta(days=1))],
)
async def test_token_not_yet_valid_is_refused(
    world: ConsumerWorld, claim: str, ahead: dt.timedelta
) -> None:
    token = (await world.guest()).access_token
    future = int((world.clock() + ahead).timestamp())
    await assert_accepted(world, await forge(world, token))
    await assert_refused(world, await forge(world, token, claims={claim: future}))


@pytest.mark.parametrize("claim", REQUIRED_CLAIMS)
async def test_token_missing_a_required_claim_is_refused(world: ConsumerWorld, claim: str) -> None:
    """``exp`` is the one that matters most; every other required claim too."""
    token = (await world.guest()).access_token
    await assert_accepted(world, await forge(world, token))
    await assert_refused(world, await forge(world, token, drop=(claim,)))


# --- 10, 15: organization and mode isolation ---------------------------------------


@pytest.mark.parametrize("seen_before", [True, False], ids=["cached", "first_sight"])
async def test_token_of_another_organization_is_refused(
    world: ConsumerWorld, seen_before: bool
) -> None:
    acme_token = (await world.guest(world.acme)).access_token
    globex_token = (await world.guest(world.globex)).access_token
    if seen_before:
        await assert_accepted(world, acme_token)
    await assert_refused(world, acme_token, publishable_key=world.globex.publishable_key)
    # The reverse control: each token works with its own organization's pk.
    await assert_accepted(world, globex_token, publishable_key=world.globex.publishable_key)
    await assert_accepted(world, acme_token)


async def test_forged_audience_of_another_organization_is_refused(world: ConsumerWorld) -> None:
    """aud rewritten to Globex (real key): Acme's session is not Globex's."""
    token = (await world.guest(world.acme)).access_token
    globex_id = world.globex.organization.organization.organization_id
    forged = await forge(world, token, claims={"aud": globex_id})
    await assert_accepted(world, await forge(world, token))
    await assert_refused(world, forged, publishable_key=world.globex.publishable_key)


@pytest.mark.parametrize("seen_before", [True, False], ids=["cached", "first_sight"])
@pytest.mark.parametrize("presented_with", ["other_organization_pk", "same_organization_live_pk"])
async def test_login_token_outside_its_organization_and_mode_is_refused(
    world: ConsumerWorld, presented_with: str, seen_before: bool
) -> None:
    token = (await world.login("ann@example.com")).access_token
    publishable_key = {
        "other_organization_pk": world.globex.publishable_key,
        "same_organization_live_pk": world.acme.live_publishable_key,
    }[presented_with]
    if seen_before:
        await assert_accepted(world, token)
    await assert_refused(world, token, publishable_key=publishable_key)
    await assert_accepted(world, token)


async def test_live_token_with_the_test_pk_is_refused(world: ConsumerWorld) -> None:
    live = await live_guest(world, world.acme)
    await assert_accepted(world, live.access_token, publishable_key=world.acme.live_publishable_key)
    await assert_refused(world, live.access_token, publishable_key=world.acme.publishable_key)


# --- 11: other token kinds ---------------------------------------------------------


async def test_refresh_token_as_access_token_is_refused(world: ConsumerWorld) -> None:
    issued = await world.guest()
    assert issued.refresh_token.startswith("rt_")
    await assert_accepted(world, issued.access_token)
    await assert_refused(world, issued.refresh_token)


@pytest.mark.parametrize("typ", ["handoff+jwt", "JWT", None], ids=["handoff", "jwt", "absent"])
async def test_token_of_another_type_is_refused(world: ConsumerWorld, typ: str | None) -> None:
    """Same claims, real key, but not typed as an access token (e.g. a handoff token)."""
    token = (await world.guest()).access_token
    forged = (
        await forge(world, token, drop=("typ",))
        if typ is None
        else await forge(world, token, header={"typ": typ})
    )
    await assert_accepted(world, await forge(world, token))
    await assert_refused(world, forged)


# --- 12: device binding ------------------------------------------------------------


@pytest.mark.parametrize(
    "device", [OTHER_DEVICE, None, ""], ids=["other_device", "no_header", "empty"]
)
async def test_token_from_another_device_is_refused(
    world: ConsumerWorld, device: str | None
) -> None:
    token = (await world.guest(device=DEVICE)).access_token
    await assert_accepted(world, token, device=DEVICE)
    # A missing device is the client's slip and says so; another device is a thief's.
    reason = "TOKEN_INVALID" if device else "DEVICE_REQUIRED"
    await assert_refused(world, token, device=device, reason=reason)


async def test_unseen_token_from_another_device_is_refused(world: ConsumerWorld) -> None:
    """First sight of the token is on the wrong device (nothing cached yet)."""
    token = (await world.guest(device=DEVICE)).access_token
    await assert_refused(world, token, device=OTHER_DEVICE)
    await assert_accepted(world, token, device=DEVICE)


# --- 13-14: revocation -------------------------------------------------------------


async def test_token_refused_right_after_revoking_own_session(world: ConsumerWorld) -> None:
    issued = await world.guest()
    await assert_accepted(world, issued.access_token)  # now cached as valid
    await world.sessions.RevokeSession(
        session_service_pb2.RevokeSessionRequest(),
        metadata=consumer_metadata(world.acme.publishable_key, issued.access_token, DEVICE),
    )
    await assert_refused(world, issued.access_token, reason="SESSION_REVOKED")
    refreshed = await rpc_error(world.refresh(issued.refresh_token))
    assert refreshed.code() == UNAUTHENTICATED


async def test_token_refused_right_after_admin_revokes_the_session(world: ConsumerWorld) -> None:
    issued = await world.guest()
    await assert_accepted(world, issued.access_token)  # now cached as valid
    await world.sessions.RevokeSession(
        session_service_pb2.RevokeSessionRequest(session_id=issued.session.session_id),
        metadata=bearer(world.acme.secret_key),
    )
    await assert_refused(world, issued.access_token, reason="SESSION_REVOKED")
    refreshed = await rpc_error(world.refresh(issued.refresh_token))
    assert refreshed.code() == UNAUTHENTICATED
    verdict = await validate(world, issued.access_token)
    assert verdict.reason == session_pb2.SESSION_VALIDATION_REASON_REVOKED


async def test_refresh_token_reuse_revokes_the_whole_family(world: ConsumerWorld) -> None:
    first = await world.login("bob@example.com")
    second = await world.refresh(first.refresh_token)
    await assert_accepted(world, first.access_token)
    await assert_accepted(world, second.access_token)
    world.clock.advance(dt.timedelta(seconds=3))

    reused = await rpc_error(world.refresh(first.refresh_token))
    assert reused.code() == UNAUTHENTICATED
    assert reused.details() == INVALID_REFRESH_TOKEN

    # The newest tokens are dead too, and so is the older access token.
    await assert_refused(world, second.access_token, reason="SESSION_REVOKED")
    await assert_refused(world, first.access_token, reason="SESSION_REVOKED")
    newest = await rpc_error(world.refresh(second.refresh_token))
    assert newest.code() == UNAUTHENTICATED
    verdict = await validate(world, second.access_token)
    assert not verdict.valid
    assert verdict.reason == session_pb2.SESSION_VALIDATION_REASON_REVOKED


# --- 16-17: refresh races and reuse ------------------------------------------------


@pytest.mark.parametrize("contenders", [2, 5])
async def test_concurrent_refreshes_on_one_device_have_exactly_one_winner(
    world: ConsumerWorld, contenders: int
) -> None:
    issued = await world.guest()
    outcomes = await asyncio.gather(
        *(world.refresh(issued.refresh_token) for _ in range(contenders)),
        return_exceptions=True,
    )
    winners = [
        outcome
        for outcome in outcomes
        if isinstance(outcome, session_service_pb2.RefreshSessionResponse)
    ]
    losers = [outcome for outcome in outcomes if isinstance(outcome, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert len(losers) == contenders - 1
    assert all(loser.code() == UNAUTHENTICATED for loser in losers)
    # The same client racing itself does not lose its session.
    (winner,) = winners
    await assert_accepted(world, winner.access_token)
    again = await world.refresh(winner.refresh_token)
    await assert_accepted(world, again.access_token)


async def test_refresh_token_reuse_from_another_device_is_refused(world: ConsumerWorld) -> None:
    issued = await world.guest(device=DEVICE)
    rotated = await world.refresh(issued.refresh_token, device=DEVICE)
    await assert_accepted(world, rotated.access_token)
    reused = await rpc_error(world.refresh(issued.refresh_token, device=OTHER_DEVICE))
    assert reused.code() == UNAUTHENTICATED
    assert reused.details() == INVALID_REFRESH_TOKEN
    # Even right after the use, another device's reuse is theft, not a race: the whole
    # family is revoked, the newest tokens included.
    refused = await rpc_error(world.get_session(rotated.access_token, device=DEVICE))
    assert refused.code() == UNAUTHENTICATED
    refused = await rpc_error(world.refresh(rotated.refresh_token, device=DEVICE))
    assert refused.code() == UNAUTHENTICATED


# --- 18: ValidateSession -----------------------------------------------------------


@pytest.mark.parametrize("role", [common_pb2.ROLE_ADMIN, common_pb2.ROLE_READONLY])
async def test_validate_session_accepts_a_valid_token(
    world: ConsumerWorld, role: common_pb2.Role
) -> None:
    issued = await world.guest()
    key = await secret_key(world, world.acme, role)
    for device in (None, DEVICE):
        verdict = await validate(world, issued.access_token, device, api_key=key)
        assert verdict.valid
        assert verdict.reason == session_pb2.SESSION_VALIDATION_REASON_OK
        assert verdict.consumer_id == issued.session.consumer_id
        assert verdict.session_id == issued.session.session_id
        # The token's exp is whole seconds; the issuing response carries the instant.
        assert verdict.expires_at.seconds == issued.access_token_expires_at.seconds


async def test_validate_session_reports_device_mismatch(world: ConsumerWorld) -> None:
    issued = await world.guest(device=DEVICE)
    verdict = await validate(world, issued.access_token, OTHER_DEVICE)
    assert not verdict.valid
    assert verdict.reason == session_pb2.SESSION_VALIDATION_REASON_DEVICE_MISMATCH
    assert not verdict.consumer_id and not verdict.session_id


@pytest.mark.parametrize(
    "token", ["garbage", "a.b.c", "rt_" + "A" * 40], ids=["garbage", "three_dots", "rt_shaped"]
)
async def test_validate_session_reports_invalid_for_garbage(
    world: ConsumerWorld, token: str
) -> None:
    verdict = await validate(world, token)
    assert not verdict.valid
    assert verdict.reason == session_pb2.SESSION_VALIDATION_REASON_INVALID


async def test_validate_session_reports_invalid_for_another_organizations_token(
    world: ConsumerWorld,
) -> None:
    globex_token = (await world.guest(world.globex)).access_token
    verdict = await validate(world, globex_token)
    assert not verdict.valid
    assert verdict.reason == session_pb2.SESSION_VALIDATION_REASON_INVALID
    own = await validate(world, globex_token, api_key=world.globex.secret_key)
    assert own.valid


async def test_validate_session_reports_expired(world: ConsumerWorld) -> None:
    token = (await world.guest()).access_token
    assert (await validate(world, token)).valid
    advance_past_expiry(world, token, 31)
    verdict = await validate(world, token)
    assert not verdict.valid
    assert verdict.reason == session_pb2.SESSION_VALIDATION_REASON_EXPIRED


async def test_validate_session_with_a_publishable_key_is_permission_denied(
    world: ConsumerWorld,
) -> None:
    token = (await world.guest()).access_token
    error = await rpc_error(validate(world, token, api_key=world.acme.publishable_key))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
