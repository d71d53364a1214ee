"""Bring the schema up to date with Alembic, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from fanfare_grpc.storage.database import Database

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same for every replica.
_MIGRATION_LOCK_ID = 0x46414E46  # "FANF"


def _alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    """The newest revision shipped with this version."""
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


async def upgrade_to_head(
    database_url: str, *, setting: str = "FANFARE_DATABASE_URL", revision: str = "head"
) -> None:
    """Apply every pending migration (idempotent), connected as the tables' owner.

    ``revision`` stops earlier (tests of a migration's data changes).

    On PostgreSQL an advisory lock serialises replicas that start together.

    Raises:
        DatabaseUnreachable: The database cannot be reached (``setting`` names the
            configuration to check).
    """
    owner = Database.from_url(database_url, as_owner=True, setting=setting)
    try:
        await owner.require_reachable()
        async with owner.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:lock_id)"),
                    {"lock_id": _MIGRATION_LOCK_ID},
                )
            await connection.run_sync(_upgrade, revision)
    finally:
        await owner.dispose()


def _upgrade(connection: Connection, revision: str) -> None:
    command.upgrade(_alembic_config(connection), revision)


async def current_revision(database: Database) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    async with database.engine.connect() as connection:
        return await connection.run_sync(_current_revision)


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()
