"""Writes a keyed call's idempotency claim inside its database transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from fanfare_grpc.domain.idempotency_claims import IdempotencyClaim, KeyAlreadyCommitted
from fanfare_grpc.storage.models import IdempotencyCommitRow

if TYPE_CHECKING:
    # The database writes claims through this module: a runtime import would be a cycle.
    from fanfare_grpc.storage.database import Database


async def record_claim(session: AsyncSession, dialect: str, claim: IdempotencyClaim) -> None:
    """Write ``claim`` in the session's transaction.

    A row of the same key younger than the claim's lifetime belongs to another
    execution that committed: the transaction must not go on. An older one is
    replaced (the key is free again once its record expired).

    Raises:
        KeyAlreadyCommitted: Another execution with this key committed.
    """
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(IdempotencyCommitRow).values(
        org_id=claim.organization_id,
        mode=claim.mode,
        key_digest=claim.key_digest,
        fingerprint=claim.fingerprint,
        committed_at=claim.claimed_at,
    )
    upsert = statement.on_conflict_do_update(
        index_elements=["org_id", "mode", "key_digest"],
        set_={
            "fingerprint": statement.excluded.fingerprint,
            "committed_at": statement.excluded.committed_at,
        },
        where=IdempotencyCommitRow.committed_at < claim.claimed_at - claim.lifetime,
    ).returning(IdempotencyCommitRow.key_digest)
    # A row comes back if it was inserted or an expired one replaced; none if a live
    # claim stopped the update (rowcount is not reliable across drivers here).
    result = await session.execute(upsert)
    if result.first() is None:
        raise KeyAlreadyCommitted(claim.key_digest)


class SqlIdempotencyClaims:
    """Releases claims of calls that ended in an error safe to repeat."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def release(self, claim: IdempotencyClaim) -> None:
        """Delete ``claim``'s row (the same request's: same key and fingerprint).

        Its call took no effect a repeat would duplicate (a conflict, a revocation
        whose announcement failed), so a retry with the key must be able to claim it.
        """
        async with self._database.transaction(claim.organization_id) as session:
            await session.execute(
                delete(IdempotencyCommitRow).where(
                    IdempotencyCommitRow.org_id == claim.organization_id,
                    IdempotencyCommitRow.mode == claim.mode,
                    IdempotencyCommitRow.key_digest == claim.key_digest,
                    IdempotencyCommitRow.fingerprint == claim.fingerprint,
                )
            )
