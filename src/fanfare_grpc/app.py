"""Composition root: builds every long-lived dependency from one ``Settings``.

Nothing else creates engines, clients or validators; everything receives them
through constructors, so tests can build as many independent instances as needed.
"""

from __future__ import annotations

import dataclasses
import logging

import protovalidate

from fanfare_grpc.cache.factory import open_cache
from fanfare_grpc.cache.protocols import Cache
from fanfare_grpc.settings import Settings
from fanfare_grpc.storage import migrate
from fanfare_grpc.storage.database import Database
from fanfare_grpc.storage.organizations import SqlOrganizationStore

LOGGER_NAME = "fanfare_grpc"


class SchemaOutOfDate(RuntimeError):
    """The database is reachable but not migrated to this version's schema."""


@dataclasses.dataclass
class Application:
    """The dependencies one process shares between its servicers and workers."""

    settings: Settings
    logger: logging.Logger
    database: Database
    cache: Cache
    validator: protovalidate.Validator
    organizations: SqlOrganizationStore

    @classmethod
    def build(cls, settings: Settings) -> Application:
        """Create (but do not yet connect) every dependency."""
        database = Database.from_url(settings.effective_database_url)
        return cls(
            settings=settings,
            logger=logging.getLogger(LOGGER_NAME),
            database=database,
            cache=open_cache(settings),
            validator=protovalidate.Validator(),
            organizations=SqlOrganizationStore(database.sessions),
        )

    async def check_schema(self) -> None:
        """Refuse to run against a database that is behind this version.

        Raises:
            SchemaOutOfDate: ``fanfare-grpc migrate`` has not been run.
        """
        if await migrate.current_revision(self.database) != migrate.head_revision():
            raise SchemaOutOfDate("database schema is not up to date: run `fanfare-grpc migrate`")

    async def close(self) -> None:
        """Release connections."""
        await self.cache.close()
        await self.database.dispose()
