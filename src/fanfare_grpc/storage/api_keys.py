"""SQL persistence of API keys (scoped by organization and mode on every query)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from itertools import groupby
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fanfare_grpc.domain.access import KeyKind, Mode, Role
from fanfare_grpc.domain.api_keys import ApiKey
from fanfare_grpc.domain.pagination import ListCursor
from fanfare_grpc.storage.database import Database
from fanfare_grpc.storage.models import ApiKeyLookupRow, ApiKeyRow


def api_key_rows(key: ApiKey) -> tuple[ApiKeyRow, ApiKeyLookupRow]:
    """The key's row and its lookup row."""
    row = ApiKeyRow(
        org_id=key.organization_id,
        key_id=key.key_id,
        mode=key.mode.value,
        kind=key.kind.value,
        role=key.role.value if key.role else None,
        name=key.name,
        lookup_id=key.lookup_id,
        secret_hash=key.secret_hash,
        prefix=key.prefix,
        last4=key.last4,
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        replaced_by_key_id=key.replaced_by_key_id,
        rotated_from_key_id=key.rotated_from_key_id,
    )
    lookup = ApiKeyLookupRow(lookup_id=key.lookup_id, org_id=key.organization_id, key_id=key.key_id)
    return row, lookup


def _api_key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        key_id=row.key_id,
        organization_id=row.org_id,
        mode=Mode(row.mode),
        kind=KeyKind(row.kind),
        role=Role(row.role) if row.role else None,
        name=row.name,
        lookup_id=row.lookup_id,
        secret_hash=row.secret_hash,
        prefix=row.prefix,
        last4=row.last4,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        replaced_by_key_id=row.replaced_by_key_id,
        rotated_from_key_id=row.rotated_from_key_id,
    )


def _usable(now: dt.datetime) -> object:
    return and_(
        or_(ApiKeyRow.revoked_at.is_(None), ApiKeyRow.revoked_at > now),
        or_(ApiKeyRow.expires_at.is_(None), ApiKeyRow.expires_at > now),
    )


class SqlApiKeyStore:
    """``ApiKeyStore`` on ``api_keys`` + ``api_key_lookups``."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def add(self, key: ApiKey) -> None:
        async with self._database.transaction(key.organization_id) as session:
            session.add_all(api_key_rows(key))

    async def get(self, organization_id: str, mode: Mode, key_id: str) -> ApiKey | None:
        async with self._database.transaction(organization_id) as session:
            row = await self._row(session, organization_id, mode, key_id)
            return None if row is None else _api_key(row)

    async def find_by_lookup_id(self, lookup_id: str) -> ApiKey | None:
        """The key whose plaintext starts with this lookup id (authentication only)."""
        async with self._database.transaction(None) as session:
            lookup = await session.get(ApiKeyLookupRow, lookup_id)
        if lookup is None:
            return None
        async with self._database.transaction(lookup.org_id) as session:
            row = await session.get(ApiKeyRow, (lookup.org_id, lookup.key_id))
            return None if row is None else _api_key(row)

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
        query = select(ApiKeyRow).where(
            ApiKeyRow.org_id == organization_id, ApiKeyRow.mode == mode.value
        )
        if not include_revoked:
            query = query.where(_usable(now))  # type: ignore[arg-type]
        if after is not None:
            query = query.where(
                or_(
                    ApiKeyRow.created_at < after.created_at,
                    and_(
                        ApiKeyRow.created_at == after.created_at, ApiKeyRow.key_id < after.item_id
                    ),
                )
            )
        query = query.order_by(ApiKeyRow.created_at.desc(), ApiKeyRow.key_id.desc()).limit(limit)
        async with self._database.transaction(organization_id) as session:
            return [_api_key(row) for row in await session.scalars(query)]

    async def rotate(
        self,
        organization_id: str,
        mode: Mode,
        key_id: str,
        replacement: ApiKey,
        old_key_stops_at: dt.datetime,
        now: dt.datetime,
    ) -> ApiKey | None:
        retire: dict[str, object] = {"replaced_by_key_id": replacement.key_id}
        if old_key_stops_at <= now:
            retire["revoked_at"] = now
        else:
            retire["expires_at"] = old_key_stops_at
        async with self._database.transaction(organization_id) as session:
            # One conditional UPDATE: atomic on SQLite (no FOR UPDATE there) and
            # PostgreSQL alike; a key already revoked, expired or rotated is left alone.
            retired = await session.execute(
                update(ApiKeyRow)
                .where(
                    *self._identity(organization_id, mode, key_id),
                    _usable(now),  # type: ignore[arg-type]
                    ApiKeyRow.replaced_by_key_id.is_(None),
                )
                .values(**retire)
            )
            if retired.rowcount != 1:  # type: ignore[attr-defined]
                return None
            session.add_all(api_key_rows(replacement))
            row = await self._row(session, organization_id, mode, key_id)
            return None if row is None else _api_key(row)

    async def revoke(
        self, organization_id: str, mode: Mode, key_id: str, now: dt.datetime
    ) -> ApiKey | None:
        async with self._database.transaction(organization_id) as session:
            await session.execute(
                update(ApiKeyRow)
                .where(
                    *self._identity(organization_id, mode, key_id),
                    or_(ApiKeyRow.revoked_at.is_(None), ApiKeyRow.revoked_at > now),
                )
                .values(revoked_at=now)
            )
            row = await self._row(session, organization_id, mode, key_id)
            return None if row is None else _api_key(row)

    async def record_last_used(self, uses: Iterable[tuple[str, str, dt.datetime]]) -> None:
        """Apply a batch of (organization, key id, time) uses: one transaction per org."""
        ordered = sorted(uses)
        for organization_id, group in groupby(ordered, key=lambda use: use[0]):
            async with self._database.transaction(organization_id) as session:
                for _, key_id, used_at in group:
                    await session.execute(
                        update(ApiKeyRow)
                        .where(
                            ApiKeyRow.org_id == organization_id,
                            ApiKeyRow.key_id == key_id,
                            or_(
                                ApiKeyRow.last_used_at.is_(None),
                                ApiKeyRow.last_used_at < used_at,
                            ),
                        )
                        .values(last_used_at=used_at)
                    )

    @staticmethod
    def _identity(organization_id: str, mode: Mode, key_id: str) -> tuple[Any, ...]:
        return (
            ApiKeyRow.org_id == organization_id,
            ApiKeyRow.mode == mode.value,
            ApiKeyRow.key_id == key_id,
        )

    @classmethod
    async def _row(
        cls, session: AsyncSession, organization_id: str, mode: Mode, key_id: str
    ) -> ApiKeyRow | None:
        row: ApiKeyRow | None = await session.scalar(
            select(ApiKeyRow).where(*cls._identity(organization_id, mode, key_id))
        )
        return row
