"""Migrations run on SQLite and PostgreSQL alike, idempotently."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sqlalchemy import text

from fanfare_grpc.domain.organizations import create_organization
from fanfare_grpc.storage import migrate
from fanfare_grpc.storage.database import Database
from fanfare_grpc.storage.organizations import SqlOrganizationStore
from tests.conftest import BackendSettings


async def test_upgrade_creates_schema_and_is_idempotent(backend: BackendSettings) -> None:
    database = Database.from_url(backend.settings.effective_database_url)
    try:
        assert await migrate.current_revision(database) is None
        await migrate.upgrade_to_head(database)
        await migrate.upgrade_to_head(database)
        assert await migrate.current_revision(database) == migrate.head_revision()

        store = SqlOrganizationStore(database.sessions)
        created = await create_organization(store, "  Acme Drops  ")
        loaded = await store.get(created.organization_id)
        assert loaded == dataclasses.replace(created, name="Acme Drops")
        assert loaded is not None and loaded.created_at.tzinfo is not None
        assert await store.get("org_doesnotexist") is None
    finally:
        await database.dispose()


async def test_sqlite_file_lives_in_the_data_dir(tmp_path: Path) -> None:
    from tests.conftest import embedded_settings

    settings = embedded_settings(tmp_path / "nested" / "data")
    database = Database.from_url(settings.effective_database_url)
    try:
        await migrate.upgrade_to_head(database)
    finally:
        await database.dispose()
    assert (tmp_path / "nested" / "data" / "fanfare.sqlite3").is_file()


async def test_postgres_organization_tables_are_hash_partitioned(postgres_url: str) -> None:
    database = Database.from_url(postgres_url)
    try:
        await migrate.upgrade_to_head(database)
        async with database.engine.connect() as connection:
            strategy = await connection.scalar(
                text(
                    "SELECT partstrat FROM pg_partitioned_table "
                    "WHERE partrelid = 'organizations'::regclass"
                )
            )
            partitions = await connection.scalar(
                text("SELECT count(*) FROM pg_inherits WHERE inhparent = 'organizations'::regclass")
            )
            key_columns = (
                (
                    await connection.execute(
                        text(
                            "SELECT a.attname FROM pg_index i "
                            "JOIN pg_attribute a ON a.attrelid = i.indrelid "
                            "AND a.attnum = ANY(i.indkey) "
                            "WHERE i.indrelid = 'organizations'::regclass AND i.indisprimary"
                        )
                    )
                )
                .scalars()
                .all()
            )
        assert strategy == "h"
        assert partitions == 16
        assert "org_id" in key_columns

        store = SqlOrganizationStore(database.sessions)
        for index in range(40):
            await create_organization(store, f"org {index}")
        async with database.engine.connect() as connection:
            used = await connection.scalar(
                text("SELECT count(DISTINCT tableoid) FROM organizations")
            )
        assert used is not None and used > 1  # rows really spread over partitions
    finally:
        await database.dispose()
