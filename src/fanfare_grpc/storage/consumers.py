"""SQL persistence of consumers (scoped by organization and mode on every query)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fanfare_grpc.domain.access import Mode
from fanfare_grpc.domain.consumer_sessions import RevokeReason
from fanfare_grpc.domain.consumers import Consumer, SealedEmail
from fanfare_grpc.domain.session_service import Erasure
from fanfare_grpc.storage.database import Database
from fanfare_grpc.storage.models import ConsumerRow, ConsumerSessionRow, LoginChallengeRow


def _consumer(row: ConsumerRow) -> Consumer:
    return Consumer(
        consumer_id=row.consumer_id,
        organization_id=row.org_id,
        mode=Mode(row.mode),
        guest=row.guest,
        created_at=row.created_at,
        erased_at=row.erased_at,
    )


async def _row(
    session: AsyncSession, organization_id: str, mode: Mode, consumer_id: str
) -> ConsumerRow | None:
    row: ConsumerRow | None = await session.scalar(
        select(ConsumerRow).where(
            ConsumerRow.org_id == organization_id,
            ConsumerRow.mode == mode.value,
            ConsumerRow.consumer_id == consumer_id,
        )
    )
    return row


class SqlConsumerStore:
    """``ConsumerStore`` on ``consumers`` (erasure also touches sessions, challenges)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def add_consumer(self, consumer: Consumer, email: SealedEmail | None) -> Consumer:
        row = ConsumerRow(
            org_id=consumer.organization_id,
            consumer_id=consumer.consumer_id,
            mode=consumer.mode.value,
            guest=consumer.guest,
            wrapped_key=email.wrapped_key if email else None,
            email_ciphertext=email.ciphertext if email else None,
            email_index=email.blind_index if email else None,
            created_at=consumer.created_at,
        )
        try:
            async with self._database.transaction(consumer.organization_id) as session:
                session.add(row)
        except IntegrityError:
            # Two first logins with one address raced: the other one created it.
            if email is None:
                raise
            existing = await self.find_consumer_by_email(
                consumer.organization_id, consumer.mode, email.blind_index
            )
            if existing is None:
                raise
            return existing
        return consumer

    async def find_consumer_by_email(
        self, organization_id: str, mode: Mode, blind_index: str
    ) -> Consumer | None:
        async with self._database.transaction(organization_id) as session:
            row = await session.scalar(
                select(ConsumerRow).where(
                    ConsumerRow.org_id == organization_id,
                    ConsumerRow.mode == mode.value,
                    ConsumerRow.email_index == blind_index,
                )
            )
            return None if row is None else _consumer(row)

    async def get_consumer(
        self, organization_id: str, mode: Mode, consumer_id: str
    ) -> Consumer | None:
        async with self._database.transaction(organization_id) as session:
            row = await _row(session, organization_id, mode, consumer_id)
            return None if row is None else _consumer(row)

    async def sealed_email(
        self, organization_id: str, mode: Mode, consumer_id: str
    ) -> SealedEmail | None:
        """The stored email of a consumer (None for guests and erased consumers)."""
        async with self._database.transaction(organization_id) as session:
            row = await _row(session, organization_id, mode, consumer_id)
            if row is None or row.wrapped_key is None or row.email_ciphertext is None:
                return None
            return SealedEmail(row.wrapped_key, row.email_ciphertext, row.email_index or "")

    async def erase_consumer(
        self, organization_id: str, mode: Mode, consumer_id: str, now: dt.datetime
    ) -> Erasure | None:
        async with self._database.transaction(organization_id) as session:
            row = await _row(session, organization_id, mode, consumer_id)
            if row is None:
                return None
            if row.email_index is not None:
                # Pending login challenges carry the address too.
                await session.execute(
                    delete(LoginChallengeRow).where(
                        LoginChallengeRow.org_id == organization_id,
                        LoginChallengeRow.mode == mode.value,
                        LoginChallengeRow.email_index == row.email_index,
                    )
                )
            if row.erased_at is None:
                row.erased_at = now
            row.wrapped_key = None
            row.email_ciphertext = None
            row.email_index = None
            revoked = await session.scalars(
                update(ConsumerSessionRow)
                .where(
                    ConsumerSessionRow.org_id == organization_id,
                    ConsumerSessionRow.mode == mode.value,
                    ConsumerSessionRow.consumer_id == consumer_id,
                    ConsumerSessionRow.revoked_at.is_(None),
                )
                .values(revoked_at=now, revoke_reason=RevokeReason.CONSUMER_ERASED.value)
                .returning(ConsumerSessionRow.session_id)
            )
            session_ids = tuple(revoked.all())
            ended = await session.scalars(
                select(ConsumerSessionRow.session_id).where(
                    ConsumerSessionRow.org_id == organization_id,
                    ConsumerSessionRow.mode == mode.value,
                    ConsumerSessionRow.consumer_id == consumer_id,
                    ConsumerSessionRow.revoke_reason == RevokeReason.CONSUMER_ERASED.value,
                    ConsumerSessionRow.expires_at > now,
                )
            )
            await session.flush()
            return Erasure(_consumer(row), session_ids, tuple(ended.all()))
