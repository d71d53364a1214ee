"""API key lifecycle: create, list, rotate (with optional grace), revoke."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from typing import Protocol

from fanfare_grpc import errors
from fanfare_grpc.domain import ids
from fanfare_grpc.domain.access import KeyKind, Mode, Role
from fanfare_grpc.domain.api_keys import (
    MAX_GRACE_PERIOD,
    ApiKey,
    display_prefix,
    generate_api_key,
    hash_api_key,
)
from fanfare_grpc.domain.names import normalized_name
from fanfare_grpc.domain.pagination import ListCursor, decode_cursor, encode_cursor, page_size

NOT_FOUND_MESSAGE = "api key not found"
REVOKE_NOT_ANNOUNCED = (
    "api key revoked, but not yet announced to every server (cache unavailable): "
    "retry the call, repeating it is safe"
)
ROTATION_NOT_ANNOUNCED = (
    "api key rotated (replacement {replacement}), but not yet announced to every server "
    "(cache unavailable), and the replacement's secret cannot be shown again: retry the "
    "call to announce it (it then answers FAILED_PRECONDITION), revoke the replacement "
    "and create a new key"
)

Clock = Callable[[], dt.datetime]


@dataclasses.dataclass(frozen=True)
class IssuedKey:
    """A new key: its stored metadata and the plaintext, shown exactly once."""

    api_key: ApiKey
    plaintext: str = dataclasses.field(repr=False)


class ApiKeyStore(Protocol):
    """Persistence of API keys; every call names the organization and mode."""

    async def add(self, key: ApiKey) -> None:
        """Store a new key (and its lookup id)."""
        ...

    async def get(self, organization_id: str, mode: Mode, key_id: str) -> ApiKey | None:
        """One key of this organization and mode."""
        ...

    async def list(
        self,
        organization_id: str,
        mode: Mode,
        *,
        limit: int,
        after: ListCursor | None,
        include_revoked: bool,
        now: dt.datetime,
    ) -> list[ApiKey]:
        """Keys newest first, strictly after ``after``."""
        ...

    async def rotate(
        self,
        organization_id: str,
        mode: Mode,
        key_id: str,
        replacement: ApiKey,
        old_key_stops_at: dt.datetime,
        now: dt.datetime,
    ) -> ApiKey | None:
        """Atomically add ``replacement`` and retire the old key at ``old_key_stops_at``.

        Returns the updated old key; None if it does not exist or is no longer usable.
        """
        ...

    async def revoke(
        self, organization_id: str, mode: Mode, key_id: str, now: dt.datetime
    ) -> ApiKey | None:
        """Revoke now (idempotent); None if there is no such key."""
        ...


class KeyInvalidationPublisher(Protocol):
    """Tells every replica to forget what it cached about a key."""

    async def key_changed(self, organization_id: str, mode: Mode, key_id: str) -> None:
        """Broadcast that the organization's key ``key_id`` (of ``mode``) was revoked,
        rotated or otherwise changed.

        Raises:
            RepeatableUnavailable: Not announced to every replica; announcing the same
                change again is safe (and is retried in the background meanwhile).
        """
        ...


async def issue_api_key(
    organization_id: str,
    mode: Mode,
    kind: KeyKind,
    role: Role | None,
    name: str,
    *,
    now: dt.datetime,
    expires_at: dt.datetime | None = None,
    rotated_from_key_id: str | None = None,
) -> IssuedKey:
    """Generate a key and its record (bcrypt runs in a worker thread)."""
    if kind is KeyKind.SECRET and role is None:
        raise errors.InvalidArgument(
            "invalid api key", (errors.FieldViolation("role", "required for secret keys"),)
        )
    if kind is KeyKind.PUBLISHABLE and role is not None:
        raise errors.InvalidArgument(
            "invalid api key",
            (errors.FieldViolation("role", "must be unset for publishable keys"),),
        )
    if expires_at is not None and expires_at <= now:
        raise errors.InvalidArgument(
            "invalid api key", (errors.FieldViolation("expires_at", "must be in the future"),)
        )
    generated = generate_api_key(kind, mode)
    secret_hash = await asyncio.to_thread(hash_api_key, generated.plaintext)
    record = ApiKey(
        key_id=ids.new_id(ids.API_KEY),
        organization_id=organization_id,
        mode=mode,
        kind=kind,
        role=role,
        name=normalized_name(name, "api key"),
        lookup_id=generated.lookup_id,
        secret_hash=secret_hash,
        prefix=display_prefix(generated.plaintext),
        last4=generated.plaintext[-4:],
        created_at=now,
        expires_at=expires_at,
        rotated_from_key_id=rotated_from_key_id,
    )
    return IssuedKey(record, generated.plaintext)


class ApiKeyService:
    """What an ADMIN key may do with its organization's keys (in its own mode)."""

    def __init__(
        self, store: ApiKeyStore, invalidations: KeyInvalidationPublisher, clock: Clock
    ) -> None:
        self._store = store
        self._invalidations = invalidations
        self._clock = clock

    async def create(
        self,
        organization_id: str,
        mode: Mode,
        kind: KeyKind,
        role: Role | None,
        name: str,
        expires_at: dt.datetime | None,
    ) -> IssuedKey:
        """A new key in the caller's organization and mode."""
        issued = await issue_api_key(
            organization_id, mode, kind, role, name, now=self._clock(), expires_at=expires_at
        )
        await self._store.add(issued.api_key)
        return issued

    async def list(
        self,
        organization_id: str,
        mode: Mode,
        requested_page_size: int,
        page_token: str,
        include_revoked: bool,
    ) -> tuple[Sequence[ApiKey], str]:
        """One page of keys, newest first, and the token of the next page ('' if none)."""
        size = page_size(requested_page_size)
        keys = await self._store.list(
            organization_id,
            mode,
            limit=size + 1,
            after=decode_cursor(page_token, ids.API_KEY),
            include_revoked=include_revoked,
            now=self._clock(),
        )
        page = keys[:size]
        next_token = ""
        if len(keys) > size:
            last = page[-1]
            next_token = encode_cursor(ListCursor(last.created_at, last.key_id))
        return page, next_token

    async def rotate(
        self, organization_id: str, mode: Mode, key_id: str, grace_period: dt.timedelta | None
    ) -> tuple[IssuedKey, ApiKey]:
        """A new key with the same rights; the old one stops now or after the grace period.

        Raises:
            InvalidArgument: Grace period negative or longer than 7 days.
            NotFound: No such key in this organization and mode.
            FailedPrecondition: The key is already revoked, expired or rotated (its state
                is announced again first: this is how a retry of a rotation answered
                UNAVAILABLE completes its announcement).
            RepeatableUnavailable: Rotated, but not announced to every replica; the
                replacement's secret is lost (it is shown only once).
        """
        grace = grace_period or dt.timedelta(0)
        if grace < dt.timedelta(0) or grace > MAX_GRACE_PERIOD:
            raise errors.InvalidArgument(
                "invalid grace period",
                (errors.FieldViolation("grace_period", "must be between 0 and 7 days"),),
            )
        now = self._clock()
        current = await self._store.get(organization_id, mode, key_id)
        if current is None:
            raise errors.NotFound(NOT_FOUND_MESSAGE)
        if not current.usable_at(now):
            await self._invalidations.key_changed(organization_id, mode, key_id)
            raise errors.FailedPrecondition("api key is revoked or expired")
        issued = await issue_api_key(
            organization_id,
            mode,
            current.kind,
            current.role,
            current.name,
            now=now,
            expires_at=current.expires_at,
            rotated_from_key_id=current.key_id,
        )
        stops_at = now + grace
        if current.expires_at is not None:
            stops_at = min(stops_at, current.expires_at)
        retired = await self._store.rotate(
            organization_id, mode, key_id, issued.api_key, stops_at, now
        )
        if retired is None:
            # Revoked, or rotated already (possibly concurrently, in its grace period).
            await self._invalidations.key_changed(organization_id, mode, key_id)
            raise errors.FailedPrecondition("api key is revoked, expired or already rotated")
        try:
            await self._invalidations.key_changed(organization_id, mode, key_id)
        except errors.RepeatableUnavailable:
            # Answering OK would let other replicas accept the old key for minutes; the
            # new secret cannot be kept for a retry (it is never stored in plaintext).
            raise errors.RepeatableUnavailable(
                ROTATION_NOT_ANNOUNCED.format(replacement=issued.api_key.key_id)
            ) from None
        return issued, retired

    async def revoke(self, organization_id: str, mode: Mode, key_id: str) -> ApiKey:
        """Revoke at once; once this answers, every replica rejects the key within 2 s.

        Revoking a revoked key is a no-op that announces it again.

        Raises:
            NotFound: No such key in this organization and mode.
            RepeatableUnavailable: Revoked, but not announced to every replica yet (this
                one refuses it already); revoking again announces it.
        """
        revoked = await self._store.revoke(organization_id, mode, key_id, self._clock())
        if revoked is None:
            raise errors.NotFound(NOT_FOUND_MESSAGE)
        try:
            await self._invalidations.key_changed(organization_id, mode, key_id)
        except errors.RepeatableUnavailable:
            raise errors.RepeatableUnavailable(REVOKE_NOT_ANNOUNCED) from None
        return revoked
