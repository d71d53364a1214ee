"""Migrations run on SQLite and PostgreSQL alike, idempotently."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text

from fanfare_grpc.app import Application
from fanfare_grpc.domain.organizations import create_organization
from fanfare_grpc.storage import migrate
from fanfare_grpc.storage.database import Database
from fanfare_grpc.storage.models import SigningKeyRow
from tests.conftest import BackendSettings, embedded_settings

ORGANIZATION_TABLES = ("organizations", "organization_keys", "api_keys")


@pytest.fixture
async def application(backend: BackendSettings) -> AsyncIterator[Application]:
    app = Application.build(backend.settings)
    try:
        yield app
    finally:
        await app.close()


async def test_upgrade_creates_schema_and_is_idempotent(application: Application) -> None:
    url = application.settings.effective_database_url
    owner = Database.from_url(url, as_owner=True)
    try:
        assert await migrate.current_revision(owner) is None
    finally:
        await owner.dispose()
    await migrate.upgrade_to_head(url)
    await migrate.upgrade_to_head(url)
    assert await migrate.current_revision(application.database) == migrate.head_revision()
    await application.check_schema()  # raises unless reachable and up to date

    created = await create_organization(
        application.organizations, application.envelope, "  Acme Drops  ", application.clock()
    )
    loaded = await application.organizations.get(created.organization.organization_id)
    assert loaded == dataclasses.replace(created.organization, name="Acme Drops")
    assert loaded is not None and loaded.created_at.tzinfo is not None
    assert await application.organizations.get("org_doesnotexist") is None


async def test_sqlite_file_lives_in_the_data_dir(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path / "nested" / "data")
    await migrate.upgrade_to_head(settings.effective_database_url)
    assert (tmp_path / "nested" / "data" / "fanfare.sqlite3").is_file()


async def test_postgres_organization_tables_are_partitioned_and_isolated(
    postgres_url: str, tmp_path: Path
) -> None:
    await migrate.upgrade_to_head(postgres_url)
    owner = Database.from_url(postgres_url, as_owner=True)
    try:
        async with owner.engine.connect() as connection:
            for table in ORGANIZATION_TABLES:
                strategy = await connection.scalar(
                    text(
                        "SELECT partstrat FROM pg_partitioned_table "
                        f"WHERE partrelid = '{table}'::regclass"
                    )
                )
                partitions = await connection.scalar(
                    text(f"SELECT count(*) FROM pg_inherits WHERE inhparent = '{table}'::regclass")
                )
                key_columns = (
                    (
                        await connection.execute(
                            text(
                                "SELECT a.attname FROM pg_index i "
                                "JOIN pg_attribute a ON a.attrelid = i.indrelid "
                                "AND a.attnum = ANY(i.indkey) "
                                f"WHERE i.indrelid = '{table}'::regclass AND i.indisprimary"
                            )
                        )
                    )
                    .scalars()
                    .all()
                )
                security = (
                    await connection.execute(
                        text(
                            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class "
                            f"WHERE oid = '{table}'::regclass"
                        )
                    )
                ).one()
                assert strategy == "h", table
                assert partitions == 16, table
                assert "org_id" in key_columns, table
                assert tuple(security) == (True, True), table
    finally:
        await owner.dispose()

    application = Application.build(
        dataclasses.replace(embedded_settings(tmp_path), database_url=postgres_url)
    )
    try:
        for index in range(40):
            await create_organization(
                application.organizations, application.envelope, f"org {index}", application.clock()
            )
    finally:
        await application.close()
    owner = Database.from_url(postgres_url, as_owner=True)
    try:
        async with owner.engine.connect() as connection:
            used = await connection.scalar(
                text("SELECT count(DISTINCT tableoid) FROM organizations")
            )
        assert used is not None and used > 1  # rows really spread over partitions
    finally:
        await owner.dispose()


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
async def test_signing_keys_made_before_0006_stay_published_for_handoff_tokens(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        embedded_settings(tmp_path).effective_database_url
        if database == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    await migrate.upgrade_to_head(url, revision="0005_queues")
    sign_until = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)
    short = sign_until + dt.timedelta(minutes=15, seconds=30)  # the old access-token window
    owner = Database.from_url(url, as_owner=True)
    try:
        async with owner.engine.begin() as connection:
            for kid, publish_until in (
                ("ed_old", short),
                ("ed_long", short + dt.timedelta(days=2)),
            ):
                await connection.execute(
                    insert(SigningKeyRow).values(
                        kid=kid,
                        sealed_private_key=b"sealed",
                        master_key_id="mk_x",
                        created_at=sign_until - dt.timedelta(days=7),
                        sign_until=sign_until,
                        publish_until=publish_until,
                    )
                )
        await migrate.upgrade_to_head(url)
        async with owner.engine.connect() as connection:
            result = await connection.execute(
                select(SigningKeyRow.kid, SigningKeyRow.publish_until)
            )
            rows = {kid: publish_until for kid, publish_until in result}
    finally:
        await owner.dispose()
    # Extended to the longest handoff token (24 h) plus leeway; a longer window kept.
    assert rows == {
        "ed_old": sign_until + dt.timedelta(hours=24, seconds=30),
        "ed_long": short + dt.timedelta(days=2),
    }
