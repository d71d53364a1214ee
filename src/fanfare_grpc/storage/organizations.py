"""SQL persistence of organizations."""

from __future__ import annotations

from collections.abc import Sequence

from fanfare_grpc.crypto.envelope import WrappedDataKey
from fanfare_grpc.domain.api_keys import ApiKey
from fanfare_grpc.domain.organizations import Organization
from fanfare_grpc.storage.api_keys import api_key_rows
from fanfare_grpc.storage.data_keys import data_key_row
from fanfare_grpc.storage.database import Database
from fanfare_grpc.storage.models import OrganizationRow


class SqlOrganizationStore:
    """``OrganizationStore`` on the ``organizations`` table."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def add(
        self, organization: Organization, data_key: WrappedDataKey, first_keys: Sequence[ApiKey]
    ) -> None:
        async with self._database.transaction(organization.organization_id) as session:
            session.add(
                OrganizationRow(
                    org_id=organization.organization_id,
                    name=organization.name,
                    created_at=organization.created_at,
                )
            )
            # The organization row must exist before rows that reference it.
            await session.flush()
            session.add(data_key_row(data_key, organization.created_at))
            for key in first_keys:
                session.add_all(api_key_rows(key))

    async def get(self, organization_id: str) -> Organization | None:
        async with self._database.transaction(organization_id) as session:
            row = await session.get(OrganizationRow, organization_id)
            if row is None:
                return None
            return Organization(row.org_id, row.name, row.created_at)
