"""SQL persistence of queues, plus the worker's cross-organization schedule."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from fanfare_grpc.domain.pagination import ListCursor
from fanfare_grpc.domain.queues import (
    RATE_COUNTED,
    AdmissionRateCeilingExceeded,
    Queue,
    QueueStatus,
    ScheduledQueue,
)
from fanfare_grpc.storage.database import Database
from fanfare_grpc.storage.models import QueueRow, QueueScheduleRow


def _queue(row: QueueRow) -> Queue:
    return Queue(
        queue_id=row.queue_id,
        organization_id=row.org_id,
        mode=row.mode,
        name=row.name,
        status=QueueStatus(row.status),
        admission_rate_per_minute=row.admission_rate_per_minute,
        handoff_ttl=dt.timedelta(seconds=row.handoff_ttl_seconds),
        max_size=row.max_size,
        created_at=row.created_at,
        updated_at=row.updated_at,
        opens_at=row.opens_at,
        closes_at=row.closes_at,
        opened_at=row.opened_at,
        closed_at=row.closed_at,
    )


def _values(queue: Queue) -> dict[str, Any]:
    return {
        "name": queue.name,
        "status": queue.status.value,
        "admission_rate_per_minute": queue.admission_rate_per_minute,
        "handoff_ttl_seconds": int(queue.handoff_ttl.total_seconds()),
        "max_size": queue.max_size,
        "opens_at": queue.opens_at,
        "closes_at": queue.closes_at,
        "opened_at": queue.opened_at,
        "closed_at": queue.closed_at,
        "updated_at": queue.updated_at,
    }


def _schedule_values(queue: Queue) -> dict[str, Any]:
    return {
        "status": queue.status.value,
        "opens_at": queue.opens_at,
        "closes_at": queue.closes_at,
        "closed_at": queue.closed_at,
    }


def _identity(organization_id: str, mode: str, queue_id: str) -> tuple[Any, ...]:
    return (
        QueueRow.org_id == organization_id,
        QueueRow.mode == mode,
        QueueRow.queue_id == queue_id,
    )


class SqlQueueStore:
    """Queues on ``queues`` (row-level security) and ``queue_schedule`` (worker index)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def add(self, queue: Queue, *, rate_ceiling: int | None = None) -> None:
        async with self._database.transaction(queue.organization_id) as session:
            if rate_ceiling is not None:
                await self._lock_rates(session, queue)
            session.add(
                QueueRow(
                    org_id=queue.organization_id,
                    queue_id=queue.queue_id,
                    mode=queue.mode,
                    created_at=queue.created_at,
                    **_values(queue),
                )
            )
            session.add(
                QueueScheduleRow(
                    org_id=queue.organization_id,
                    queue_id=queue.queue_id,
                    mode=queue.mode,
                    **_schedule_values(queue),
                )
            )
            if rate_ceiling is not None:
                await session.flush()
                await self._check_rates(session, queue, rate_ceiling)

    async def get(self, organization_id: str, mode: str, queue_id: str) -> Queue | None:
        async with self._database.transaction(organization_id) as session:
            row = await session.scalar(
                select(QueueRow).where(*_identity(organization_id, mode, queue_id))
            )
            return None if row is None else _queue(row)

    async def list_queues(
        self,
        organization_id: str,
        mode: str,
        *,
        status: QueueStatus | None,
        limit: int,
        after: ListCursor | None,
    ) -> list[Queue]:
        query = select(QueueRow).where(QueueRow.org_id == organization_id, QueueRow.mode == mode)
        if status is not None:
            query = query.where(QueueRow.status == status.value)
        if after is not None:
            query = query.where(
                or_(
                    QueueRow.created_at < after.created_at,
                    and_(
                        QueueRow.created_at == after.created_at,
                        QueueRow.queue_id < after.item_id,
                    ),
                )
            )
        query = query.order_by(QueueRow.created_at.desc(), QueueRow.queue_id.desc()).limit(limit)
        async with self._database.transaction(organization_id) as session:
            return [_queue(row) for row in await session.scalars(query)]

    async def replace(
        self, queue: Queue, expected: Queue, *, rate_ceiling: int | None = None
    ) -> bool:
        """Store ``queue`` if the stored one is still ``expected`` (same status and
        ``updated_at``): one conditional UPDATE, so concurrent changes cannot both win."""
        async with self._database.transaction(queue.organization_id) as session:
            if rate_ceiling is not None:
                await self._lock_rates(session, queue)
            changed = await session.execute(
                update(QueueRow)
                .where(
                    *_identity(queue.organization_id, queue.mode, queue.queue_id),
                    QueueRow.status == expected.status.value,
                    QueueRow.updated_at == expected.updated_at,
                )
                .values(**_values(queue))
            )
            if changed.rowcount != 1:  # type: ignore[attr-defined]
                return False
            if rate_ceiling is not None:
                await self._check_rates(session, queue, rate_ceiling)
            await self._schedule(session, queue)
            return True

    async def delete(self, queue: Queue, statuses: Collection[QueueStatus]) -> bool:
        """Delete the queue if its status is one of ``statuses``."""
        async with self._database.transaction(queue.organization_id) as session:
            deleted = await session.execute(
                delete(QueueRow).where(
                    *_identity(queue.organization_id, queue.mode, queue.queue_id),
                    QueueRow.status.in_([status.value for status in statuses]),
                )
            )
            if deleted.rowcount != 1:  # type: ignore[attr-defined]
                return False
            await session.execute(
                delete(QueueScheduleRow).where(
                    QueueScheduleRow.org_id == queue.organization_id,
                    QueueScheduleRow.queue_id == queue.queue_id,
                )
            )
            return True

    async def needing_work(self, closed_since: dt.datetime) -> list[ScheduledQueue]:
        """Queues of every organization the worker has work for (worker only)."""
        live = (QueueStatus.SCHEDULED, QueueStatus.OPEN, QueueStatus.PAUSED)
        async with self._database.transaction(None) as session:
            rows = await session.scalars(
                select(QueueScheduleRow).where(
                    or_(
                        QueueScheduleRow.status.in_([status.value for status in live]),
                        and_(
                            QueueScheduleRow.status == QueueStatus.DRAFT.value,
                            QueueScheduleRow.closes_at.is_not(None),
                        ),
                        and_(
                            QueueScheduleRow.status == QueueStatus.CLOSED.value,
                            or_(
                                QueueScheduleRow.closed_at.is_(None),
                                QueueScheduleRow.closed_at >= closed_since,
                            ),
                        ),
                    )
                )
            )
            return [
                ScheduledQueue(
                    organization_id=row.org_id,
                    mode=row.mode,
                    queue_id=row.queue_id,
                    status=QueueStatus(row.status),
                    opens_at=row.opens_at,
                    closes_at=row.closes_at,
                    closed_at=row.closed_at,
                )
                for row in rows
            ]

    # The ceiling check is race-free because the sum is read after this transaction
    # wrote the queue, while no other check of the same organization and mode can
    # write: on PostgreSQL the advisory lock below serialises them (held to commit;
    # READ COMMITTED lets each statement after it see what the previous holder
    # committed); on SQLite the write itself takes the database's single write lock
    # (held to commit), and a transaction holding it reads the newest data. So of
    # two concurrent stores the second sums with the first's queue already counted.

    async def _lock_rates(self, session: AsyncSession, queue: Queue) -> None:
        if self._database.dialect == "postgresql":
            await session.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                {"key": f"fanfare:queue-rates:{queue.organization_id}:{queue.mode}"},
            )

    @staticmethod
    async def _check_rates(session: AsyncSession, queue: Queue, rate_ceiling: int) -> None:
        """Raise (rolling the transaction back) if the counted rates, ``queue``'s as
        just written included, exceed ``rate_ceiling``."""
        others = await session.scalar(
            select(func.coalesce(func.sum(QueueRow.admission_rate_per_minute), 0)).where(
                QueueRow.org_id == queue.organization_id,
                QueueRow.mode == queue.mode,
                QueueRow.queue_id != queue.queue_id,
                QueueRow.status.in_([status.value for status in RATE_COUNTED]),
            )
        )
        if int(others or 0) + queue.admission_rate_per_minute > rate_ceiling:
            raise AdmissionRateCeilingExceeded(rate_ceiling, int(others or 0))

    @staticmethod
    async def _schedule(session: AsyncSession, queue: Queue) -> None:
        await session.execute(
            update(QueueScheduleRow)
            .where(
                QueueScheduleRow.org_id == queue.organization_id,
                QueueScheduleRow.queue_id == queue.queue_id,
            )
            .values(**_schedule_values(queue))
        )
