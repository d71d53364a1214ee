"""SQL persistence of wrapped organization data keys."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select, update

from fanfare_grpc.crypto.envelope import WrappedDataKey
from fanfare_grpc.storage.database import Database
from fanfare_grpc.storage.models import OrganizationKeyRow


def data_key_row(key: WrappedDataKey, created_at: dt.datetime) -> OrganizationKeyRow:
    """The row that stores ``key``."""
    return OrganizationKeyRow(
        org_id=key.organization_id,
        version=key.version,
        wrapped_key=key.wrapped,
        master_key_id=key.master_key_id,
        created_at=created_at,
    )


def _wrapped(row: OrganizationKeyRow) -> WrappedDataKey:
    return WrappedDataKey(row.org_id, row.version, row.wrapped_key, row.master_key_id)


class SqlDataKeyStore:
    """``DataKeyStore`` on ``organization_keys`` (scoped to one organization per call)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def get_data_key(self, organization_id: str, version: int) -> WrappedDataKey | None:
        async with self._database.transaction(organization_id) as session:
            row = await session.get(OrganizationKeyRow, (organization_id, version))
            return None if row is None else _wrapped(row)


class DataKeyRewrapper:
    """Re-wraps every organization's data keys; runs as the tables' owner.

    Master-key rotation is an operator command that spans organizations, which is
    what row-level security forbids the service role to do.
    """

    def __init__(self, owner_database: Database) -> None:
        self._database = owner_database

    async def wrapped_keys_not_under(self, master_key_id: str) -> list[WrappedDataKey]:
        """Keys still wrapped by another master key version."""
        async with self._database.sessions() as session:
            rows = await session.scalars(
                select(OrganizationKeyRow).where(OrganizationKeyRow.master_key_id != master_key_id)
            )
            return [_wrapped(row) for row in rows]

    async def count_by_master_key(self) -> dict[str, int]:
        """How many data keys each master key version wraps (every organization)."""
        async with self._database.sessions() as session:
            rows = await session.execute(
                select(OrganizationKeyRow.master_key_id, func.count()).group_by(
                    OrganizationKeyRow.master_key_id
                )
            )
            return {master_key_id: count for master_key_id, count in rows.tuples()}

    async def replace(self, previous: WrappedDataKey, rewrapped: WrappedDataKey) -> bool:
        """Swap in the re-wrapped key unless someone changed it meanwhile."""
        async with self._database.sessions.begin() as session:
            result = await session.execute(
                update(OrganizationKeyRow)
                .where(
                    OrganizationKeyRow.org_id == previous.organization_id,
                    OrganizationKeyRow.version == previous.version,
                    OrganizationKeyRow.master_key_id == previous.master_key_id,
                )
                .values(wrapped_key=rewrapped.wrapped, master_key_id=rewrapped.master_key_id)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]
