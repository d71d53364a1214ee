"""Data keys, API keys, key lookups; row-level security and the service role.

Revision ID: 0002_api_keys
Revises: 0001_organizations
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from fanfare_grpc.storage.postgres import (
    PARTITION_BY_ORGANIZATION,
    create_organization_partitions,
    enable_organization_isolation,
    ensure_app_role,
    grant_to_app_role,
)
from fanfare_grpc.storage.types import UtcDateTime

revision: str = "0002_api_keys"
down_revision: str | None = "0001_organizations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ORGANIZATION_TABLES = ("organizations", "organization_keys", "api_keys")


def upgrade() -> None:
    op.create_table(
        "organization_keys",
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("master_key_id", sa.String(40), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "version", name="organization_keys_pkey"),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.org_id"],
            ondelete="CASCADE",
            name="organization_keys_org_fkey",
        ),
        postgresql_partition_by=PARTITION_BY_ORGANIZATION,
    )
    create_organization_partitions("organization_keys")

    op.create_table(
        "api_keys",
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("role", sa.String(16), nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("lookup_id", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(100), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("last4", sa.String(4), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("last_used_at", UtcDateTime(), nullable=True),
        sa.Column("expires_at", UtcDateTime(), nullable=True),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.Column("replaced_by_key_id", sa.String(40), nullable=True),
        sa.Column("rotated_from_key_id", sa.String(40), nullable=True),
        sa.PrimaryKeyConstraint("org_id", "key_id", name="api_keys_pkey"),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.org_id"], ondelete="CASCADE", name="api_keys_org_fkey"
        ),
        postgresql_partition_by=PARTITION_BY_ORGANIZATION,
    )
    op.create_index("api_keys_listing", "api_keys", ["org_id", "mode", "created_at", "key_id"])
    create_organization_partitions("api_keys")

    op.create_table(
        "api_key_lookups",
        sa.Column("lookup_id", sa.String(16), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.PrimaryKeyConstraint("lookup_id", name="api_key_lookups_pkey"),
    )

    ensure_app_role()
    for table in _ORGANIZATION_TABLES:
        enable_organization_isolation(table)
        grant_to_app_role(table)
    grant_to_app_role("api_key_lookups", "SELECT, INSERT")


def downgrade() -> None:
    op.drop_table("api_key_lookups")
    op.drop_table("api_keys")
    op.drop_table("organization_keys")
