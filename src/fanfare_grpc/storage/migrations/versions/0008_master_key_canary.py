"""The master key canary: one value sealed under the deployment's master key.

Revision ID: 0008_master_key_canary
Revises: 0007_idempotency_commits
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from fanfare_grpc.storage.postgres import grant_to_app_role
from fanfare_grpc.storage.types import UtcDateTime

revision: str = "0008_master_key_canary"
down_revision: str | None = "0007_idempotency_commits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Written by `migrate` when it has the master key, else by the first server to
    # start (so the service role may insert it); re-sealed by `master-key rotate`.
    op.create_table(
        "master_key_canary",
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("master_key_id", sa.String(40), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("slot", name="master_key_canary_pkey"),
        sa.CheckConstraint("slot = 1", name="master_key_canary_one_row"),
    )
    # Deployment-wide, not organization data: no row-level security.
    grant_to_app_role("master_key_canary", "SELECT, INSERT")


def downgrade() -> None:
    op.drop_table("master_key_canary")
