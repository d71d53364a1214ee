"""SQL persistence of organizations."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fanfare_grpc.domain.organizations import Organization
from fanfare_grpc.storage.models import OrganizationRow


class SqlOrganizationStore:
    """``OrganizationStore`` on the ``organizations`` table."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def add(self, organization: Organization) -> None:
        async with self._sessions.begin() as session:
            session.add(
                OrganizationRow(
                    org_id=organization.organization_id,
                    name=organization.name,
                    created_at=organization.created_at,
                )
            )

    async def get(self, organization_id: str) -> Organization | None:
        async with self._sessions() as session:
            row = await session.get(OrganizationRow, organization_id)
            if row is None:
                return None
            return Organization(row.org_id, row.name, row.created_at)
