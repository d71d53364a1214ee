"""Queues (configuration and status) and the worker's cross-organization schedule.

Revision ID: 0005_queues
Revises: 0004_consumers
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
    grant_to_app_role,
)
from fanfare_grpc.storage.types import UtcDateTime

revision: str = "0005_queues"
down_revision: str | None = "0004_consumers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "queues",
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("queue_id", sa.String(40), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("admission_rate_per_minute", sa.Integer(), nullable=False),
        sa.Column("handoff_ttl_seconds", sa.Integer(), nullable=False),
        sa.Column("max_size", sa.Integer(), nullable=False),
        sa.Column("opens_at", UtcDateTime(), nullable=True),
        sa.Column("closes_at", UtcDateTime(), nullable=True),
        sa.Column("opened_at", UtcDateTime(), nullable=True),
        sa.Column("closed_at", UtcDateTime(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "queue_id", name="queues_pkey"),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.org_id"], ondelete="CASCADE", name="queues_org_fkey"
        ),
        postgresql_partition_by=PARTITION_BY_ORGANIZATION,
    )
    op.create_index("queues_listing", "queues", ["org_id", "mode", "created_at", "queue_id"])
    create_organization_partitions("queues")
    enable_organization_isolation("queues")
    grant_to_app_role("queues")

    op.create_table(
        "queue_schedule",
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("queue_id", sa.String(40), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("opens_at", UtcDateTime(), nullable=True),
        sa.Column("closes_at", UtcDateTime(), nullable=True),
        sa.Column("closed_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("org_id", "queue_id", name="queue_schedule_pkey"),
    )
    op.create_index("queue_schedule_status", "queue_schedule", ["status"])
    grant_to_app_role("queue_schedule")


def downgrade() -> None:
    op.drop_table("queue_schedule")
    op.drop_table("queues")
