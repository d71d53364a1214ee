"""Writes a keyed call's idempotency claim inside its database transaction."""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from fanfare_grpc.domain.idempotency_claims import IdempotencyClaim, KeyAlreadyCommitted
from fanfare_grpc.storage.models import IdempotencyCommitRow


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
