"""SQL persistence of consumer sessions and refresh tokens (scoped by org and mode)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import and_, or_, select, update

from fanfare_grpc.domain.access import Mode
from fanfare_grpc.domain.consumer_sessions import ConsumerSession, RevokeReason
from fanfare_grpc.domain.pagination import ListCursor
from fanfare_grpc.domain.refresh_tokens import RefreshTokenRecord
from fanfare_grpc.storage.database import Database
from fanfare_grpc.storage.models import ConsumerSessionRow, RefreshTokenRow


def _session(row: ConsumerSessionRow) -> ConsumerSession:
    return ConsumerSession(
        session_id=row.session_id,
        organization_id=row.org_id,
        mode=Mode(row.mode),
        consumer_id=row.consumer_id,
        guest=row.guest,
        device_hash=row.device_hash,
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_seen_at=row.last_seen_at,
        revoked_at=row.revoked_at,
        revoke_reason=RevokeReason(row.revoke_reason) if row.revoke_reason else None,
    )


def _refresh_row(record: RefreshTokenRecord) -> RefreshTokenRow:
    return RefreshTokenRow(
        org_id=record.organization_id,
        lookup_id=record.lookup_id,
        mode=record.mode.value,
        session_id=record.session_id,
        secret_hash=record.secret_hash,
        created_at=record.created_at,
        expires_at=record.expires_at,
        used_at=record.used_at,
    )


def _refresh_record(row: RefreshTokenRow) -> RefreshTokenRecord:
    return RefreshTokenRecord(
        lookup_id=row.lookup_id,
        organization_id=row.org_id,
        mode=Mode(row.mode),
        session_id=row.session_id,
        secret_hash=row.secret_hash,
        created_at=row.created_at,
        expires_at=row.expires_at,
        used_at=row.used_at,
    )


def _session_identity(organization_id: str, mode: Mode, session_id: str) -> tuple[Any, ...]:
    return (
        ConsumerSessionRow.org_id == organization_id,
        ConsumerSessionRow.mode == mode.value,
        ConsumerSessionRow.session_id == session_id,
    )


class _NotRotated(Exception):
    """Raised inside the rotation transaction to roll it back."""


class SqlSessionStore:
    """``SessionStore`` on ``consumer_sessions`` + ``refresh_tokens``."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def add_session(self, session: ConsumerSession, refresh: RefreshTokenRecord) -> None:
        async with self._database.transaction(session.organization_id) as transaction:
            transaction.add(
                ConsumerSessionRow(
                    org_id=session.organization_id,
                    session_id=session.session_id,
                    mode=session.mode.value,
                    consumer_id=session.consumer_id,
                    guest=session.guest,
                    device_hash=session.device_hash,
                    created_at=session.created_at,
                    expires_at=session.expires_at,
                    last_seen_at=session.last_seen_at,
                )
            )
            transaction.add(_refresh_row(refresh))

    async def get_session(
        self, organization_id: str, mode: Mode, session_id: str
    ) -> ConsumerSession | None:
        async with self._database.transaction(organization_id) as transaction:
            row = await transaction.scalar(
                select(ConsumerSessionRow).where(
                    *_session_identity(organization_id, mode, session_id)
                )
            )
            return None if row is None else _session(row)

    async def find_refresh_token(
        self, organization_id: str, mode: Mode, lookup_id: str
    ) -> RefreshTokenRecord | None:
        async with self._database.transaction(organization_id) as transaction:
            row = await transaction.scalar(
                select(RefreshTokenRow).where(
                    RefreshTokenRow.org_id == organization_id,
                    RefreshTokenRow.mode == mode.value,
                    RefreshTokenRow.lookup_id == lookup_id,
                )
            )
            return None if row is None else _refresh_record(row)

    async def rotate_refresh_token(
        self,
        used: RefreshTokenRecord,
        replacement: RefreshTokenRecord,
        session_expires_at: dt.datetime,
        now: dt.datetime,
    ) -> ConsumerSession | None:
        try:
            return await self._rotate(used, replacement, session_expires_at, now)
        except _NotRotated:
            return None

    async def _rotate(
        self,
        used: RefreshTokenRecord,
        replacement: RefreshTokenRecord,
        session_expires_at: dt.datetime,
        now: dt.datetime,
    ) -> ConsumerSession:
        organization_id, mode = used.organization_id, used.mode
        async with self._database.transaction(organization_id) as transaction:
            # Conditional UPDATEs, not read-then-write: of two concurrent refreshes with
            # one token exactly one matches `used_at IS NULL` (PostgreSQL re-checks the
            # row after the other commits; SQLite runs one writer at a time).
            spent = await transaction.execute(
                update(RefreshTokenRow)
                .where(
                    RefreshTokenRow.org_id == organization_id,
                    RefreshTokenRow.mode == mode.value,
                    RefreshTokenRow.lookup_id == used.lookup_id,
                    RefreshTokenRow.used_at.is_(None),
                )
                .values(used_at=now)
            )
            if spent.rowcount != 1:  # type: ignore[attr-defined]
                raise _NotRotated
            extended = await transaction.scalars(
                update(ConsumerSessionRow)
                .where(
                    *_session_identity(organization_id, mode, used.session_id),
                    ConsumerSessionRow.revoked_at.is_(None),
                    ConsumerSessionRow.expires_at > now,
                )
                .values(expires_at=session_expires_at, last_seen_at=now)
                .returning(ConsumerSessionRow)
            )
            row = extended.one_or_none()
            if row is None:
                raise _NotRotated  # rolls the spending back: the session is not live
            transaction.add(_refresh_row(replacement))
            return _session(row)

    async def revoke_session(
        self,
        organization_id: str,
        mode: Mode,
        session_id: str,
        reason: RevokeReason,
        now: dt.datetime,
    ) -> ConsumerSession | None:
        async with self._database.transaction(organization_id) as transaction:
            await transaction.execute(
                update(ConsumerSessionRow)
                .where(
                    *_session_identity(organization_id, mode, session_id),
                    ConsumerSessionRow.revoked_at.is_(None),
                )
                .values(revoked_at=now, revoke_reason=reason.value)
            )
            row = await transaction.scalar(
                select(ConsumerSessionRow)
                .where(*_session_identity(organization_id, mode, session_id))
                .execution_options(populate_existing=True)
            )
            return None if row is None else _session(row)

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
        query = select(ConsumerSessionRow).where(
            ConsumerSessionRow.org_id == organization_id,
            ConsumerSessionRow.mode == mode.value,
            ConsumerSessionRow.consumer_id == consumer_id,
            ConsumerSessionRow.revoked_at.is_(None),
            ConsumerSessionRow.expires_at > now,
        )
        if after is not None:
            query = query.where(
                or_(
                    ConsumerSessionRow.created_at < after.created_at,
                    and_(
                        ConsumerSessionRow.created_at == after.created_at,
                        ConsumerSessionRow.session_id < after.item_id,
                    ),
                )
            )
        query = query.order_by(
            ConsumerSessionRow.created_at.desc(), ConsumerSessionRow.session_id.desc()
        ).limit(limit)
        async with self._database.transaction(organization_id) as transaction:
            return [_session(row) for row in await transaction.scalars(query)]
