"""The PostgreSQL partitioning every organization table follows (used by migrations)."""

from __future__ import annotations

from alembic import op

ORGANIZATION_PARTITIONS = 16
PARTITION_BY_ORGANIZATION = "HASH (org_id)"


def create_organization_partitions(table: str, partitions: int = ORGANIZATION_PARTITIONS) -> None:
    """Create the hash partitions of ``table`` on PostgreSQL; nothing on SQLite.

    The table itself must have been created with
    ``postgresql_partition_by=PARTITION_BY_ORGANIZATION``.
    """
    if op.get_bind().dialect.name != "postgresql":
        return
    for remainder in range(partitions):
        op.execute(
            f"CREATE TABLE {table}_p{remainder:02d} PARTITION OF {table} "
            f"FOR VALUES WITH (MODULUS {partitions}, REMAINDER {remainder})"
        )
