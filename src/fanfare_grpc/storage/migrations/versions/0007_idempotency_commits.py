"""Idempotency keys written in the transaction of the call they guard.

Revision ID: 0007_idempotency_commits
Revises: 0006_signing_key_publication
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from fanfare_grpc.storage.postgres import (
    PARTITION_BY_ORGANIZATION,
    create_organization_partitions,
    enable_organization_isolation,
    grant_to_app_role,
)
from fanfare_grpc.storage.types import UtcDateTime

revision: str = "0007_idempotency_commits"
down_revision: str | None = "0006_signing_key_publication"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "idempotency_commits",
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("key_digest", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("committed_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "mode", "key_digest", name="idempotency_commits_pkey"),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.org_id"],
            ondelete="CASCADE",
            name="idempotency_commits_org_fkey",
        ),
        postgresql_partition_by=PARTITION_BY_ORGANIZATION,
    )
    create_organization_partitions("idempotency_commits")
    enable_organization_isolation("idempotency_commits")
    grant_to_app_role("idempotency_commits")


def downgrade() -> None:
    op.drop_table("idempotency_commits")
