"""Consumer sessions: creation, refresh rotation with reuse detection, revocation,
listing and consumer erasure.

Refresh tokens rotate on every use. A token presented again after it was used means
two parties hold it (one of them a thief): the whole session (every access and
refresh token of the family) is revoked. The one exception is a repeat within
``CONCURRENT_REFRESH_WINDOW`` from the session's own device, which is the same client
racing itself (two tabs, a retry after a timeout): that repeat is refused and the
session lives on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from fanfare_grpc import errors
from fanfare_grpc.crypto.envelope import Envelope
from fanfare_grpc.crypto.jwt_tokens import AccessClaims, sign_access_token
from fanfare_grpc.crypto.signing_keys import SigningKeyRing
from fanfare_grpc.domain import ids
from fanfare_grpc.domain.access import Mode
from fanfare_grpc.domain.consumer_sessions import MAX_SESSION_AGE, ConsumerSession, RevokeReason
from fanfare_grpc.domain.consumers import Consumer, SealedEmail
from fanfare_grpc.domain.pagination import ListCursor, decode_cursor, encode_cursor, page_size
from fanfare_grpc.domain.refresh_tokens import (
    RefreshTokenRecord,
    generate_refresh_token,
    hash_refresh_token,
    parse_refresh_token,
    refresh_token_matches,
)

INVALID_REFRESH_TOKEN = "invalid refresh token"
SESSION_NOT_FOUND = "session not found"
CONSUMER_NOT_FOUND = "consumer not found"
CONCURRENT_REFRESH_WINDOW = dt.timedelta(seconds=2)
DEVICE_HEADER = "x-fanfare-device"
MAX_DEVICE_FINGERPRINT_LENGTH = 512

Clock = Callable[[], dt.datetime]


@dataclasses.dataclass(frozen=True)
class IssuedSession:
    """A session and a fresh token pair (the tokens are shown to the client once)."""

    session: ConsumerSession
    access_token: str = dataclasses.field(repr=False)
    access_token_expires_at: dt.datetime
    refresh_token: str = dataclasses.field(repr=False)
    refresh_token_expires_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class Erasure:
    """Outcome of erasing a consumer."""

    consumer: Consumer
    revoked_session_ids: tuple[str, ...]
    # Unexpired sessions revoked by this erasure or an earlier one of the consumer.
    ended_session_ids: tuple[str, ...] = ()


class ConsumerStore(Protocol):
    """Persistence of consumers; every call names the organization and mode."""

    async def add_consumer(self, consumer: Consumer, email: SealedEmail | None) -> Consumer:
        """Store a consumer; if its email index is taken, the existing consumer instead."""
        ...

    async def find_consumer_by_email(
        self, organization_id: str, mode: Mode, blind_index: str
    ) -> Consumer | None:
        """The consumer with this email index."""
        ...

    async def get_consumer(
        self, organization_id: str, mode: Mode, consumer_id: str
    ) -> Consumer | None:
        """One consumer."""
        ...

    async def erase_consumer(
        self, organization_id: str, mode: Mode, consumer_id: str, now: dt.datetime
    ) -> Erasure | None:
        """Destroy the email key, ciphertext and index; revoke live sessions; one transaction."""
        ...


class SessionStore(Protocol):
    """Persistence of sessions and refresh tokens, scoped by organization and mode."""

    async def add_session(self, session: ConsumerSession, refresh: RefreshTokenRecord) -> None:
        """Store a new session with its first refresh token."""
        ...

    async def get_session(
        self, organization_id: str, mode: Mode, session_id: str
    ) -> ConsumerSession | None:
        """One session."""
        ...

    async def find_refresh_token(
        self, organization_id: str, mode: Mode, lookup_id: str
    ) -> RefreshTokenRecord | None:
        """The refresh token with this lookup id."""
        ...

    async def rotate_refresh_token(
        self,
        used: RefreshTokenRecord,
        replacement: RefreshTokenRecord,
        session_expires_at: dt.datetime,
        now: dt.datetime,
    ) -> ConsumerSession | None:
        """Mark ``used`` used and store ``replacement``, only if ``used`` was unused and
        its session is live; atomically. None if another call got there first."""
        ...

    async def revoke_session(
        self,
        organization_id: str,
        mode: Mode,
        session_id: str,
        reason: RevokeReason,
        now: dt.datetime,
    ) -> ConsumerSession | None:
        """Revoke (idempotent: an already revoked session is returned unchanged)."""
        ...

    async def list_live_sessions(
        self,
        organization_id: str,
        mode: Mode,
        consumer_id: str,
        *,
        limit: int,
        after: ListCursor | None,
        now: dt.datetime,
    ) -> list[ConsumerSession]:
        """Unrevoked, unexpired sessions of one consumer, newest first."""
        ...


class SessionRevocations(Protocol):
    """Tells every replica that a session's access tokens must stop working now."""

    async def sessions_revoked(
        self, organization_id: str, mode: Mode, session_ids: Sequence[str]
    ) -> None:
        """Publish revocations already committed to the database.

        Raises:
            Unavailable: Not every replica could be told yet (retried in the
                background; revoking again is safe and publishes again).
        """
        ...


def _device_violation(description: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(
        "invalid device fingerprint", (errors.FieldViolation(DEVICE_HEADER, description),)
    )


def checked_device_fingerprint(device: str | None) -> str | None:
    """The raw fingerprint from ``x-fanfare-device`` if one was sent, checked.

    Only printable ASCII is accepted: gRPC stacks decode other header bytes in
    different ways (grpcio as latin-1), so two different byte strings could
    otherwise become one fingerprint.

    Raises:
        InvalidArgument: Present but empty, oversized or not printable ASCII.
    """
    if device is None:
        return None
    if not device.strip() or len(device) > MAX_DEVICE_FINGERPRINT_LENGTH:
        raise _device_violation(f"metadata must be 1-{MAX_DEVICE_FINGERPRINT_LENGTH} characters")
    if not (device.isascii() and device.isprintable()):
        raise _device_violation("metadata must be printable ASCII")
    return device


def device_fingerprint_required(device: str | None) -> str:
    """The raw fingerprint from ``x-fanfare-device``.

    Raises:
        InvalidArgument: Missing, empty, oversized or not printable ASCII.
    """
    checked = checked_device_fingerprint(device)
    if checked is None:
        raise errors.InvalidArgument(
            "device fingerprint required",
            (
                errors.FieldViolation(
                    DEVICE_HEADER,
                    f"metadata must be 1-{MAX_DEVICE_FINGERPRINT_LENGTH} characters",
                ),
            ),
        )
    return checked


@dataclasses.dataclass(frozen=True)
class TokenLifetimes:
    """How long issued tokens live."""

    access: dt.timedelta
    refresh: dt.timedelta


class SessionService:
    """Sessions and their tokens for every organization."""

    def __init__(
        self,
        consumers: ConsumerStore,
        sessions: SessionStore,
        signing_keys: SigningKeyRing,
        envelope: Envelope,
        revocations: SessionRevocations,
        *,
        issuer: str,
        lifetimes: TokenLifetimes,
        clock: Clock,
        logger: logging.Logger,
    ) -> None:
        self._consumers = consumers
        self._sessions = sessions
        self._signing_keys = signing_keys
        self._envelope = envelope
        self._revocations = revocations
        self._issuer = issuer
        self._lifetimes = lifetimes
        self._clock = clock
        self._logger = logger

    async def device_hash(self, organization_id: str, device: str) -> str:
        """Keyed digest of a device fingerprint (what sessions and tokens carry)."""
        digester = await self._envelope.device_digester(organization_id)
        return digester.digest(device)

    async def create_guest_session(
        self, organization_id: str, mode: Mode, device: str | None
    ) -> IssuedSession:
        """A new anonymous consumer and a session bound to ``device``.

        Raises:
            InvalidArgument: No device fingerprint.
        """
        fingerprint = device_fingerprint_required(device)
        now = self._clock()
        consumer = await self._consumers.add_consumer(
            Consumer(ids.new_id(ids.CONSUMER), organization_id, mode, guest=True, created_at=now),
            None,
        )
        return await self.start_session(
            consumer, await self.device_hash(organization_id, fingerprint)
        )

    async def start_session(self, consumer: Consumer, device_hash: str) -> IssuedSession:
        """A new session of ``consumer`` on the device with ``device_hash``."""
        now = self._clock()
        refresh_expires_at = now + self._lifetimes.refresh
        session = ConsumerSession(
            session_id=ids.new_id(ids.SESSION),
            organization_id=consumer.organization_id,
            mode=consumer.mode,
            consumer_id=consumer.consumer_id,
            guest=consumer.guest,
            device_hash=device_hash,
            created_at=now,
            expires_at=refresh_expires_at,
            last_seen_at=now,
        )
        refresh_token, record = await self._new_refresh_token(session, refresh_expires_at, now)
        await self._sessions.add_session(session, record)
        return await self._issue(session, refresh_token, refresh_expires_at, now)

    async def refresh(
        self, organization_id: str, mode: Mode, presented: str, device: str | None
    ) -> IssuedSession:
        """Rotate: a new token pair for a live session, the presented token spent.

        Raises:
            Unauthenticated: Unknown, wrong, expired, already used (family revoked
                unless a same-device race) or revoked token, or device mismatch.
            InvalidArgument: No device fingerprint.
            Unavailable: A reuse revoked the family but it could not be announced yet
                (the token is refused either way).
        """
        fingerprint = device_fingerprint_required(device)
        parsed = parse_refresh_token(presented)
        if parsed is None:
            raise errors.Unauthenticated(INVALID_REFRESH_TOKEN)
        record = await self._sessions.find_refresh_token(organization_id, mode, parsed.lookup_id)
        if record is None or not await asyncio.to_thread(
            refresh_token_matches, presented, record.secret_hash
        ):
            raise errors.Unauthenticated(INVALID_REFRESH_TOKEN)
        session = await self._sessions.get_session(organization_id, mode, record.session_id)
        now = self._clock()
        if session is None or not session.live_at(now) or record.expires_at <= now:
            raise errors.Unauthenticated(INVALID_REFRESH_TOKEN)
        same_device = session.device_hash == await self.device_hash(organization_id, fingerprint)
        if record.used_at is not None:
            # Reuse is detected whatever the device: a thief's device differs.
            await self._reused(record, now, same_device=same_device)
        if not same_device:
            raise errors.Unauthenticated(INVALID_REFRESH_TOKEN)
        refresh_expires_at = min(
            now + self._lifetimes.refresh, session.created_at + MAX_SESSION_AGE
        )
        refresh_token, replacement = await self._new_refresh_token(session, refresh_expires_at, now)
        rotated = await self._sessions.rotate_refresh_token(
            record, replacement, refresh_expires_at, now
        )
        if rotated is None:
            # Another refresh with this token won the race (or the session was revoked
            # meanwhile): this one is a reuse.
            current = await self._sessions.find_refresh_token(
                organization_id, mode, parsed.lookup_id
            )
            await self._reused(current or record, now, same_device=True)
            raise errors.Unauthenticated(INVALID_REFRESH_TOKEN)
        return await self._issue(rotated, refresh_token, refresh_expires_at, now)

    async def _reused(
        self, record: RefreshTokenRecord, now: dt.datetime, *, same_device: bool
    ) -> None:
        """Refuse a spent token; revoke its family unless the holder raced itself."""
        raced_itself = same_device and (
            record.used_at is None or now - record.used_at <= CONCURRENT_REFRESH_WINDOW
        )
        if not raced_itself:
            self._logger.warning(
                "refresh token reused: session family revoked",
                extra={
                    "event": "session.refresh_token_reused",
                    "organization_id": record.organization_id,
                    "session_id": record.session_id,
                },
            )
            await self._revoke(
                record.organization_id,
                record.mode,
                record.session_id,
                RevokeReason.REFRESH_TOKEN_REUSED,
            )
        raise errors.Unauthenticated(INVALID_REFRESH_TOKEN)

    async def get_session(
        self, organization_id: str, mode: Mode, session_id: str
    ) -> ConsumerSession:
        """One session of the organization and mode.

        Raises:
            NotFound: Unknown, or another organization's or mode's.
        """
        session = await self._sessions.get_session(organization_id, mode, session_id)
        if session is None:
            raise errors.NotFound(SESSION_NOT_FOUND)
        return session

    async def revoke_session(
        self,
        organization_id: str,
        mode: Mode,
        session_id: str,
        *,
        acting_consumer_id: str | None = None,
    ) -> ConsumerSession:
        """End a session now; with ``acting_consumer_id``, only one of that consumer's.

        Raises:
            NotFound: Unknown, or another organization's or mode's.
            PermissionDenied: Another consumer's session.
            Unavailable: Revoked, but not yet announced to every replica: retry.
        """
        session = await self.get_session(organization_id, mode, session_id)
        if acting_consumer_id is not None and session.consumer_id != acting_consumer_id:
            raise errors.PermissionDenied("not allowed to revoke another consumer's session")
        revoked = await self._revoke(organization_id, mode, session_id, RevokeReason.REVOKED)
        return revoked or session

    async def _revoke(
        self, organization_id: str, mode: Mode, session_id: str, reason: RevokeReason
    ) -> ConsumerSession | None:
        revoked = await self._sessions.revoke_session(
            organization_id, mode, session_id, reason, self._clock()
        )
        # Committed first, announced second: a failed announcement fails the call
        # (UNAVAILABLE) rather than leave cached tokens working; a retry announces again.
        await self._revocations.sessions_revoked(organization_id, mode, (session_id,))
        return revoked

    async def list_live_sessions(
        self,
        organization_id: str,
        mode: Mode,
        consumer_id: str,
        requested_page_size: int,
        page_token: str,
    ) -> tuple[list[ConsumerSession], str]:
        """One page of a consumer's live sessions, newest first, and the next page token.

        Raises:
            NotFound: Unknown consumer, or another organization's or mode's.
            InvalidArgument: Bad page token.
        """
        after = decode_cursor(page_token, ids.SESSION)
        if await self._consumers.get_consumer(organization_id, mode, consumer_id) is None:
            raise errors.NotFound(CONSUMER_NOT_FOUND)
        size = page_size(requested_page_size)
        sessions = await self._sessions.list_live_sessions(
            organization_id, mode, consumer_id, limit=size + 1, after=after, now=self._clock()
        )
        page = sessions[:size]
        next_token = ""
        if len(sessions) > size:
            next_token = encode_cursor(ListCursor(page[-1].created_at, page[-1].session_id))
        return page, next_token

    async def erase_consumer(self, organization_id: str, mode: Mode, consumer_id: str) -> Erasure:
        """Crypto-shred the consumer's email and revoke every session.

        Raises:
            NotFound: Unknown consumer, or another organization's or mode's.
            Unavailable: Erased, but the revocations not yet announced to every
                replica: retry.
        """
        erasure = await self._consumers.erase_consumer(
            organization_id, mode, consumer_id, self._clock()
        )
        if erasure is None:
            raise errors.NotFound(CONSUMER_NOT_FOUND)
        self._logger.info(
            "consumer erased",
            extra={
                "event": "consumer.erased",
                "organization_id": organization_id,
                "consumer_id": consumer_id,
                "sessions_revoked": len(erasure.revoked_session_ids),
            },
        )
        # Every session the erasure ended, by this call or an earlier one: a retry after
        # UNAVAILABLE announces them again.
        await self._revocations.sessions_revoked(organization_id, mode, erasure.ended_session_ids)
        return erasure

    async def _new_refresh_token(
        self, session: ConsumerSession, expires_at: dt.datetime, now: dt.datetime
    ) -> tuple[str, RefreshTokenRecord]:
        generated = generate_refresh_token()
        record = RefreshTokenRecord(
            lookup_id=generated.lookup_id,
            organization_id=session.organization_id,
            mode=session.mode,
            session_id=session.session_id,
            secret_hash=await asyncio.to_thread(hash_refresh_token, generated.plaintext),
            created_at=now,
            expires_at=expires_at,
        )
        return generated.plaintext, record

    async def _issue(
        self,
        session: ConsumerSession,
        refresh_token: str,
        refresh_expires_at: dt.datetime,
        now: dt.datetime,
    ) -> IssuedSession:
        # An access token never outlives its session; whole seconds, as in its `exp`.
        access_expires_at = min(now + self._lifetimes.access, session.expires_at).replace(
            microsecond=0
        )
        key = await self._signing_keys.signing_key(now)
        access_token = sign_access_token(
            key,
            AccessClaims(
                issuer=self._issuer,
                organization_id=session.organization_id,
                consumer_id=session.consumer_id,
                session_id=session.session_id,
                device_hash=session.device_hash,
                issued_at=now,
                expires_at=access_expires_at,
                token_id="at_" + ids.new_id(""),
            ),
        )
        return IssuedSession(
            session=session,
            access_token=access_token,
            access_token_expires_at=access_expires_at,
            refresh_token=refresh_token,
            refresh_token_expires_at=refresh_expires_at,
        )
