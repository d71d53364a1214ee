"""PostgreSQL-only schema pieces every organization table follows (used by migrations).

- ``PARTITION BY HASH (org_id)`` with ``ORGANIZATION_PARTITIONS`` partitions;
- row-level security keyed on the per-transaction ``fanfare.org_id`` setting, as a
  second wall behind the repositories' own scoping;
- privileges for ``APP_ROLE``, the role the service runs as (not the table owner,
  so RLS applies to it).

On SQLite each helper does nothing: the same models run without partitions or RLS.
"""

from __future__ import annotations

from alembic import op

ORGANIZATION_PARTITIONS = 16
PARTITION_BY_ORGANIZATION = "HASH (org_id)"
APP_ROLE = "fanfare_app"
ORG_SETTING = "fanfare.org_id"


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
    """Create ``APP_ROLE`` once per cluster and let the migrating user switch to it."""
    if not _on_postgres():
        return
    op.execute(
        f"""
        DO $$ BEGIN
          CREATE ROLE {APP_ROLE} NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END $$
        """
    )
    op.execute(f"GRANT {APP_ROLE} TO CURRENT_USER")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
    op.execute(f"GRANT SELECT ON alembic_version TO {APP_ROLE}")


def grant_to_app_role(table: str, privileges: str = "SELECT, INSERT, UPDATE, DELETE") -> None:
    """Let the service role use ``table`` (only through the parent, never partitions)."""
    if _on_postgres():
        op.execute(f"GRANT {privileges} ON {table} TO {APP_ROLE}")


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
