"""SQL persistence of the master key canary (one row, deployment-wide)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from sqlalchemy import select, union, update
from sqlalchemy.exc import IntegrityError

from fanfare_grpc.crypto.canary import StoredCanary
from fanfare_grpc.storage.database import Database
from fanfare_grpc.storage.models import MasterKeyCanaryRow, OrganizationKeyRow, SigningKeyRow

_SLOT = 1


class SqlCanaryStore:
    """``CanaryStore`` on ``master_key_canary``; works as the service role or the owner."""

    def __init__(self, database: Database, clock: Callable[[], dt.datetime]) -> None:
        self._database = database
        self._clock = clock

    async def get_canary(self) -> StoredCanary | None:
        async with self._database.transaction(None) as session:
            row = await session.get(MasterKeyCanaryRow, _SLOT)
            return None if row is None else StoredCanary(row.master_key_id, row.sealed)

    async def add_canary(self, canary: StoredCanary) -> bool:
        try:
            async with self._database.transaction(None) as session:
                session.add(
                    MasterKeyCanaryRow(
                        slot=_SLOT,
                        sealed=canary.sealed,
                        master_key_id=canary.master_key_id,
                        created_at=self._clock(),
                    )
                )
        except IntegrityError:
            return False  # another process wrote it first
        return True

    async def wrapping_master_key_ids(self) -> set[str]:
        # The service role sees no organization's data keys (row-level security, no
        # organization set), only signing keys; the owner sees both.
        async with self._database.transaction(None) as session:
            rows = await session.scalars(
                union(
                    select(SigningKeyRow.master_key_id),
                    select(OrganizationKeyRow.master_key_id),
                )
            )
            return set(rows)

    async def replace_canary(self, previous: StoredCanary, canary: StoredCanary) -> bool:
        """Swap in the re-sealed canary unless someone changed it meanwhile (owner only)."""
        async with self._database.transaction(None) as session:
            result = await session.execute(
                update(MasterKeyCanaryRow)
                .where(
                    MasterKeyCanaryRow.slot == _SLOT,
                    MasterKeyCanaryRow.master_key_id == previous.master_key_id,
                )
                .values(sealed=canary.sealed, master_key_id=canary.master_key_id)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]
