"""PostgreSQL row-level security: a query that forgets its organization sees nothing."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError

from fanfare_grpc.app import Application
from fanfare_grpc.domain.access import Mode
from fanfare_grpc.domain.organizations import NewOrganization, create_organization
from fanfare_grpc.storage import migrate
from fanfare_grpc.storage.database import Database
from fanfare_grpc.storage.postgres import app_role_name
from tests.conftest import embedded_settings


@pytest.fixture
async def application(postgres_url: str, tmp_path: Path) -> AsyncIterator[Application]:
    await migrate.upgrade_to_head(postgres_url)
    app = Application.build(
        dataclasses.replace(embedded_settings(tmp_path), database_url=postgres_url)
    )
    try:
        yield app
    finally:
        await app.close()


async def _organization(application: Application, name: str) -> NewOrganization:
    return await create_organization(
        application.organizations, application.envelope, name, application.clock()
    )


async def test_service_role_is_subject_to_row_level_security(application: Application) -> None:
    await _organization(application, "Acme")
    async with application.database.engine.connect() as connection:
        role = (
            await connection.execute(
                text(
                    "SELECT current_user, r.rolsuper, r.rolbypassrls, t.tableowner "
                    "FROM pg_roles r, pg_tables t "
                    "WHERE r.rolname = current_user AND t.tablename = 'api_keys'"
                )
            )
        ).one()
    user, is_superuser, bypasses_rls, owner = role
    database = make_url(application.settings.effective_database_url).database
    assert user == app_role_name(str(database))
    assert not is_superuser and not bypasses_rls
    assert owner != user


async def test_unscoped_queries_see_no_rows(application: Application) -> None:
    await _organization(application, "Acme")
    await _organization(application, "Globex")
    async with application.database.engine.connect() as connection:
        for table in ("organizations", "organization_keys", "api_keys"):
            # Bypassing the repositories: no organization scope, so nothing at all.
            assert await connection.scalar(text(f"SELECT count(*) FROM {table}")) == 0
    # The rows are there: the owner sees them.
    owner = Database.from_url(application.settings.effective_database_url, as_owner=True)
    try:
        async with owner.engine.connect() as connection:
            assert await connection.scalar(text("SELECT count(*) FROM api_keys")) == 4
    finally:
        await owner.dispose()


async def test_a_scoped_transaction_sees_and_writes_only_its_organization(
    application: Application,
) -> None:
    acme = await _organization(application, "Acme")
    globex = await _organization(application, "Globex")
    acme_id = acme.organization.organization_id
    globex_id = globex.organization.organization_id
    async with application.database.transaction(acme_id) as session:
        visible = set((await session.execute(text("SELECT org_id FROM api_keys"))).scalars())
        assert visible == {acme_id}
        # Even naming the other organization explicitly returns nothing.
        assert (
            await session.scalar(
                text("SELECT count(*) FROM api_keys WHERE org_id = :org"), {"org": globex_id}
            )
            == 0
        )
    with pytest.raises(DBAPIError, match="row-level security"):
        async with application.database.transaction(acme_id) as session:
            await session.execute(
                text(
                    "INSERT INTO organizations (org_id, name, created_at) "
                    "VALUES (:org, 'intruder', now())"
                ),
                {"org": "org_forged"},
            )
    with pytest.raises(DBAPIError, match="permission denied"):
        async with application.database.transaction(acme_id) as session:
            # Partitions are not reachable directly, around the parent's policies.
            await session.execute(text("SELECT count(*) FROM api_keys_p00"))


async def test_the_service_connects_as_a_login_role_subject_to_rls(
    postgres_url: str, tmp_path: Path
) -> None:
    """Production shape: a login role that is only a member of the service role."""
    await migrate.upgrade_to_head(postgres_url)
    owner_url = make_url(postgres_url)
    database = str(owner_url.database)
    login = "ff_service_" + secrets.token_hex(4)
    owner_dsn = owner_url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(owner_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{login}" LOGIN')
        admin.execute(f'GRANT "{app_role_name(database)}" TO "{login}"')
    service_url = owner_url.set(username=login).render_as_string(hide_password=False)
    application = Application.build(
        dataclasses.replace(
            embedded_settings(tmp_path), database_url=service_url, database_owner_url=postgres_url
        )
    )
    try:
        await application.check_schema()  # raises unless reachable and up to date
        created = await _organization(application, "Acme")  # the service works as this role
        assert await application.organizations.get(created.organization.organization_id)
        async with application.database.engine.connect() as connection:
            users = (await connection.execute(text("SELECT session_user, current_user"))).one()
            assert tuple(users) == (login, app_role_name(database))
            # Even after RESET ROLE the login role is not the owner: RLS still applies.
            await connection.execute(text("RESET ROLE"))
            assert await connection.scalar(text("SELECT count(*) FROM api_keys")) == 0
            with pytest.raises(DBAPIError):
                await connection.execute(text("CREATE TABLE sneaky (id int)"))
    finally:
        await application.close()
        with psycopg.connect(owner_dsn, autocommit=True) as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{login}"')


async def test_every_organization_table_forces_row_level_security(
    application: Application,
) -> None:
    """Catalog check: a new table with ``org_id`` cannot forget its policy."""
    async with application.database.engine.connect() as connection:
        tables = (
            await connection.execute(
                text(
                    "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, "
                    "  (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) "
                    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'public' AND c.relkind = 'p' "
                    "  AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid "
                    "              AND a.attname = 'org_id')"
                )
            )
        ).all()
    names = {name for name, *_ in tables}
    assert {"consumers", "consumer_sessions", "refresh_tokens", "login_challenges"} <= names
    for name, enabled, forced, policies in tables:
        assert enabled and forced and policies == 1, name


async def test_consumer_tables_are_invisible_without_the_organization_scope(
    application: Application,
) -> None:
    acme = await _organization(application, "Acme")
    organization_id = acme.organization.organization_id
    await application.sessions.create_guest_session(organization_id, Mode.TEST, "device")
    await application.passwordless.start(
        organization_id, Mode.TEST, "rls@example.com", "device", "127.0.0.1"
    )
    await application.passwordless.drain_deliveries()
    tables = ("consumers", "consumer_sessions", "refresh_tokens", "login_challenges")
    async with application.database.engine.connect() as connection:
        for table in tables:
            assert await connection.scalar(text(f"SELECT count(*) FROM {table}")) == 0, table
    async with application.database.transaction("org_other") as session:
        for table in tables:
            assert await session.scalar(text(f"SELECT count(*) FROM {table}")) == 0, table
    async with application.database.transaction(organization_id) as session:
        for table in tables:
            assert await session.scalar(text(f"SELECT count(*) FROM {table}")) == 1, table
