"""Consumer access token checks: signature once, server state on every call.

A token's signature and claims are verified once per process and cached by the
SHA-256 digest of the token until it expires. The first sight of a token on a
replica also reads its session from the database (live, same consumer). Every call
then checks, without the signature: the organization and mode of the calling key,
expiry, the device fingerprint's keyed digest against ``dfp``, and the session's
standing through ``SessionRevocations`` (the shared revocation marker, one cache
read; the database when markers cannot be trusted, or may have been lost with the
cache's data), so a revoked session stops working at once on every replica, and
within seconds when the cache fails.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import enum
import hmac
import time
from collections.abc import Callable

import jwt

from fanfare_grpc import errors
from fanfare_grpc.authentication.session_revocations import SessionReader, SessionRevocations
from fanfare_grpc.crypto.digests import sha256_hex
from fanfare_grpc.crypto.envelope import Envelope
from fanfare_grpc.crypto.jwt_tokens import LEEWAY, InvalidToken, verify_access_token
from fanfare_grpc.crypto.signing_keys import SigningKeyRing
from fanfare_grpc.domain.access import Mode

INVALID_SESSION = "missing or invalid consumer session"
EXPIRED_SESSION_TOKEN = "session token expired: refresh it"
REVOKED_SESSION = "session revoked: log in again"
DEVICE_REQUIRED = "x-fanfare-device header missing: a consumer session is bound to its device"
MAX_TOKEN_LENGTH = 4096
MAX_CACHED_TOKENS = 100_000
# A genuine token refused by server state (revoked, expired or unknown session) is
# refused again from memory for this long: replaying it cannot drive database reads.
SETTLED_REFUSAL_SECONDS = 10.0


class TokenVerdict(enum.Enum):
    """Outcome of a token check (``ValidateSession`` reports it as ``reason``)."""

    OK = "ok"
    EXPIRED = "expired"
    REVOKED = "revoked"
    INVALID = "invalid"
    DEVICE_MISMATCH = "device_mismatch"


# What an SDK should do next, as a google.rpc.ErrorInfo reason. Device mismatches
# and forgeries share TOKEN_INVALID: telling them apart would help a token thief.
_REFUSALS: dict[TokenVerdict, tuple[str, str]] = {
    TokenVerdict.EXPIRED: (EXPIRED_SESSION_TOKEN, "TOKEN_EXPIRED"),
    TokenVerdict.REVOKED: (REVOKED_SESSION, "SESSION_REVOKED"),
    TokenVerdict.INVALID: (INVALID_SESSION, "TOKEN_INVALID"),
    TokenVerdict.DEVICE_MISMATCH: (INVALID_SESSION, "TOKEN_INVALID"),
}


def refusal(verdict: TokenVerdict) -> errors.Unauthenticated:
    """The UNAUTHENTICATED error for a token refused with ``verdict``."""
    message, reason = _REFUSALS[verdict]
    return errors.Unauthenticated(message, reason=reason)


@dataclasses.dataclass(frozen=True)
class ConsumerIdentity:
    """Who a valid access token speaks for."""

    consumer_id: str
    session_id: str
    expires_at: dt.datetime
    device_hash: str = dataclasses.field(repr=False, default="")


@dataclasses.dataclass(frozen=True)
class TokenCheck:
    """A verdict, and the identity when the token is valid."""

    verdict: TokenVerdict
    identity: ConsumerIdentity | None = None


@dataclasses.dataclass(frozen=True)
class _Verified:
    organization_id: str
    mode: Mode
    identity: ConsumerIdentity
    device_hash: str
    session_expires_at: dt.datetime
    # Monotonic time the database last said the session was live.
    confirmed_at: float


@dataclasses.dataclass(frozen=True)
class _Settled:
    verdict: TokenVerdict


class ConsumerTokenVerifier:
    """Checks consumer access tokens; one instance per process."""

    def __init__(
        self,
        signing_keys: SigningKeyRing,
        sessions: SessionReader,
        envelope: Envelope,
        revocations: SessionRevocations,
        *,
        issuer: str,
        clock: Callable[[], dt.datetime],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._monotonic = monotonic
        self._settled: collections.OrderedDict[
            tuple[str, str, Mode], tuple[TokenVerdict, float]
        ] = collections.OrderedDict()
        self._signing_keys = signing_keys
        self._sessions = sessions
        self._envelope = envelope
        self._revocations = revocations
        self._issuer = issuer
        self._clock = clock
        self._verified: collections.OrderedDict[str, _Verified] = collections.OrderedDict()
        self.signature_checks = 0

    async def verify(
        self, token: str, device: str | None, organization_id: str, mode: Mode
    ) -> ConsumerIdentity:
        """The identity behind a token presented with a key of ``organization_id``/``mode``.

        Raises:
            Unauthenticated: No device, or the token is refused; the reason says
                whether to refresh (TOKEN_EXPIRED) or log in again (SESSION_REVOKED,
                TOKEN_INVALID), never which check a bad token failed.
        """
        if device is None:
            raise errors.Unauthenticated(DEVICE_REQUIRED, reason="DEVICE_REQUIRED")
        check = await self.check(token, device, organization_id, mode)
        if check.identity is None:
            raise refusal(check.verdict)
        return check.identity

    async def check(
        self, token: str, device: str | None, organization_id: str, mode: Mode
    ) -> TokenCheck:
        """Verdict on a token; ``device`` None skips the device check (ValidateSession)."""
        if (
            not token
            or len(token) > MAX_TOKEN_LENGTH
            or not (token.isascii() and token.isprintable())
        ):
            return TokenCheck(TokenVerdict.INVALID)
        now = self._clock()
        digest = sha256_hex(token)
        verified = self._verified.get(digest)
        if verified is None:
            settled = self._settled.get((digest, organization_id, mode))
            if settled is not None and settled[1] > self._monotonic():
                return TokenCheck(settled[0])
            first_sight = await self._first_sight(token, organization_id, mode, now)
            if isinstance(first_sight, _Settled):
                self._settle((digest, organization_id, mode), first_sight.verdict)
                return TokenCheck(first_sight.verdict)
            if isinstance(first_sight, TokenVerdict):
                return TokenCheck(first_sight)
            verified = first_sight
            self._remember(digest, verified)
        if verified.organization_id != organization_id or verified.mode != mode:
            return TokenCheck(TokenVerdict.INVALID)
        if verified.identity.expires_at <= now - LEEWAY or verified.session_expires_at <= now:
            self._verified.pop(digest, None)
            return TokenCheck(TokenVerdict.EXPIRED)
        if device is not None:
            digester = await self._envelope.device_digester(organization_id)
            if not hmac.compare_digest(digester.digest(device), verified.device_hash):
                return TokenCheck(TokenVerdict.DEVICE_MISMATCH)
        standing = await self._revocations.standing(
            organization_id, mode, verified.identity.session_id, verified.confirmed_at
        )
        if standing.revoked:
            self._verified.pop(digest, None)
            return TokenCheck(TokenVerdict.REVOKED)
        if digest in self._verified:  # another call may have dropped it meanwhile
            if standing.confirmed_at != verified.confirmed_at:
                self._verified[digest] = dataclasses.replace(
                    verified, confirmed_at=standing.confirmed_at
                )
            self._verified.move_to_end(digest)
        return TokenCheck(TokenVerdict.OK, verified.identity)

    async def _first_sight(
        self, token: str, organization_id: str, mode: Mode, now: dt.datetime
    ) -> _Verified | _Settled | TokenVerdict:
        """Signature and claims, then the session (a refusal after a genuine signature
        is ``_Settled``: server state decided it)."""
        self.signature_checks += 1
        # Taken before the session is read: the confirmation is never newer than it.
        confirmed_at = self._monotonic()
        try:
            claims = verify_access_token(
                token,
                await self._signing_keys.public_keys_for(token_kid(token), now),
                issuer=self._issuer,
                organization_id=organization_id,
                now=now,
            )
        except InvalidToken as invalid:
            return TokenVerdict.EXPIRED if invalid.reason == "expired" else TokenVerdict.INVALID
        session = await self._sessions.get_session(organization_id, mode, claims.session_id)
        if session is None or session.consumer_id != claims.consumer_id:
            return _Settled(TokenVerdict.INVALID)
        if session.revoked_at is not None:
            return _Settled(TokenVerdict.REVOKED)
        if session.expires_at <= now:
            return _Settled(TokenVerdict.EXPIRED)
        if not hmac.compare_digest(session.device_hash, claims.device_hash):
            return _Settled(TokenVerdict.INVALID)
        return _Verified(
            organization_id=organization_id,
            mode=mode,
            identity=ConsumerIdentity(
                claims.consumer_id, claims.session_id, claims.expires_at, claims.device_hash
            ),
            device_hash=claims.device_hash,
            session_expires_at=session.expires_at,
            confirmed_at=confirmed_at,
        )

    def _settle(self, key: tuple[str, str, Mode], verdict: TokenVerdict) -> None:
        self._settled[key] = (verdict, self._monotonic() + SETTLED_REFUSAL_SECONDS)
        self._settled.move_to_end(key)
        while len(self._settled) > MAX_CACHED_TOKENS:
            self._settled.popitem(last=False)

    def _remember(self, digest: str, verified: _Verified) -> None:
        self._verified[digest] = verified
        while len(self._verified) > MAX_CACHED_TOKENS:
            self._verified.popitem(last=False)


def token_kid(token: str) -> str | None:
    """The ``kid`` header of a compact JWS, unverified (None if unreadable)."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.InvalidTokenError:
        return None
    return kid if isinstance(kid, str) else None
