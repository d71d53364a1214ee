"""SQL persistence of token signing keys."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select, update

from fanfare_grpc.crypto.signing_keys import StoredSigningKey
from fanfare_grpc.storage.database import Database
from fanfare_grpc.storage.models import SigningKeyRow


def _stored(row: SigningKeyRow) -> StoredSigningKey:
    return StoredSigningKey(
        kid=row.kid,
        sealed_private_key=row.sealed_private_key,
        master_key_id=row.master_key_id,
        created_at=row.created_at,
        sign_until=row.sign_until,
        publish_until=row.publish_until,
    )


class SqlSigningKeyStore:
    """``SigningKeyStore`` on ``signing_keys``."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def published_signing_keys(self, now: dt.datetime) -> list[StoredSigningKey]:
        async with self._database.transaction(None) as session:
            rows = await session.scalars(
                select(SigningKeyRow)
                .where(SigningKeyRow.publish_until > now)
                .order_by(SigningKeyRow.created_at.desc(), SigningKeyRow.kid)
            )
            return [_stored(row) for row in rows]

    async def add_signing_key(self, key: StoredSigningKey) -> None:
        async with self._database.transaction(None) as session:
            session.add(
                SigningKeyRow(
                    kid=key.kid,
                    sealed_private_key=key.sealed_private_key,
                    master_key_id=key.master_key_id,
                    created_at=key.created_at,
                    sign_until=key.sign_until,
                    publish_until=key.publish_until,
                )
            )


class SigningKeyRewrapper:
    """Re-seals signing keys under a new master key (operator access, as owner)."""

    def __init__(self, owner_database: Database) -> None:
        self._database = owner_database

    async def signing_keys_not_under(self, master_key_id: str) -> list[StoredSigningKey]:
        async with self._database.sessions() as session:
            rows = await session.scalars(
                select(SigningKeyRow).where(SigningKeyRow.master_key_id != master_key_id)
            )
            return [_stored(row) for row in rows]

    async def count_by_master_key(self) -> dict[str, int]:
        """How many signing keys (expired ones too) each master key version seals."""
        async with self._database.sessions() as session:
            rows = await session.execute(
                select(SigningKeyRow.master_key_id, func.count()).group_by(
                    SigningKeyRow.master_key_id
                )
            )
            return {master_key_id: count for master_key_id, count in rows.tuples()}

    async def replace_signing_key(
        self, previous: StoredSigningKey, sealed_private_key: bytes, master_key_id: str
    ) -> bool:
        async with self._database.sessions.begin() as session:
            result = await session.execute(
                update(SigningKeyRow)
                .where(
                    SigningKeyRow.kid == previous.kid,
                    SigningKeyRow.master_key_id == previous.master_key_id,
                )
                .values(sealed_private_key=sealed_private_key, master_key_id=master_key_id)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]
