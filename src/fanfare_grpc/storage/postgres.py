"""PostgreSQL-only schema pieces every organization table follows (used by migrations).

- ``PARTITION BY HASH (org_id)`` with ``ORGANIZATION_PARTITIONS`` partitions;
- row-level security keyed on the per-transaction ``fanfare.org_id`` setting, as a
  second wall behind the repositories' own scoping;
- privileges for the service role of this database (``app_role_name``): not the
  tables' owner, so RLS applies to it. One role per database, so that deployments
  sharing a cluster cannot switch into each other's role.

On SQLite each helper does nothing: the same models run without partitions or RLS.
"""

from __future__ import annotations

import hashlib

from alembic import op

ORGANIZATION_PARTITIONS = 16
PARTITION_BY_ORGANIZATION = "HASH (org_id)"
ORG_SETTING = "fanfare.org_id"
# SQL for the service role of the current database, computed the same way by the
# migrations and by every service connection.
APP_ROLE_SQL = "'fanfare_app_' || substr(md5(current_database()), 1, 12)"
SWITCH_TO_APP_ROLE_SQL = f"DO $$ BEGIN EXECUTE format('SET ROLE %I', {APP_ROLE_SQL}); END $$"


def app_role_name(database_name: str) -> str:
    """The service role of ``database_name`` (what ``APP_ROLE_SQL`` computes)."""
    return "fanfare_app_" + hashlib.md5(database_name.encode()).hexdigest()[:12]


def _on_postgres() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def create_organization_partitions(table: str, partitions: int = ORGANIZATION_PARTITIONS) -> None:
    """Create the hash partitions of ``table``.

    The table itself must have been created with
    ``postgresql_partition_by=PARTITION_BY_ORGANIZATION``.
    """
    if not _on_postgres():
        return
    for remainder in range(partitions):
        op.execute(
            f"CREATE TABLE {table}_p{remainder:02d} PARTITION OF {table} "
            f"FOR VALUES WITH (MODULUS {partitions}, REMAINDER {remainder})"
        )


def ensure_app_role() -> None:
    """Create this database's service role and let the migrating user switch to it."""
    if not _on_postgres():
        return
    op.execute(
        f"""
        DO $$
        DECLARE role_name text := {APP_ROLE_SQL};
        BEGIN
          BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
          EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
          END;
          EXECUTE format('GRANT %I TO CURRENT_USER', role_name);
          EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', role_name);
          EXECUTE format('GRANT SELECT ON alembic_version TO %I', role_name);
        END $$
        """
    )


def grant_to_app_role(table: str, privileges: str = "SELECT, INSERT, UPDATE, DELETE") -> None:
    """Let the service role use ``table`` (only through the parent, never partitions)."""
    if _on_postgres():
        op.execute(
            f"DO $$ BEGIN EXECUTE format('GRANT {privileges} ON {table} TO %I', "
            f"{APP_ROLE_SQL}); END $$"
        )


def enable_organization_isolation(table: str) -> None:
    """Row-level security: rows are visible and writable only inside their organization.

    A query that forgets to scope itself sees nothing: without the setting,
    ``current_setting`` is NULL or '' and matches no row.
    """
    if not _on_postgres():
        return
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    condition = f"org_id = current_setting('{ORG_SETTING}', true)"
    op.execute(
        f"CREATE POLICY {table}_organization_isolation ON {table} "
        f"USING ({condition}) WITH CHECK ({condition})"
    )
