"""Organizations, partitioned by organization on PostgreSQL.

Revision ID: 0001_organizations
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from fanfare_grpc.storage.postgres import (
    PARTITION_BY_ORGANIZATION,
    create_organization_partitions,
)
from fanfare_grpc.storage.types import UtcDateTime

revision: str = "0001_organizations"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", name="organizations_pkey"),
        postgresql_partition_by=PARTITION_BY_ORGANIZATION,
    )
    create_organization_partitions("organizations")


def downgrade() -> None:
    op.drop_table("organizations")
