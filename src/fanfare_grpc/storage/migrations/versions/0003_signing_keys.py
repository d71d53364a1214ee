"""Token signing keys (deployment-wide, sealed under the master key).

Revision ID: 0003_signing_keys
Revises: 0002_api_keys
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from fanfare_grpc.storage.postgres import grant_to_app_role
from fanfare_grpc.storage.types import UtcDateTime

revision: str = "0003_signing_keys"
down_revision: str | None = "0002_api_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(80), nullable=False),
        sa.Column("sealed_private_key", sa.LargeBinary(), nullable=False),
        sa.Column("master_key_id", sa.String(40), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("sign_until", UtcDateTime(), nullable=False),
        sa.Column("publish_until", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("kid", name="signing_keys_pkey"),
    )
    op.create_index("signing_keys_publish_until", "signing_keys", ["publish_until"])
    # Not organization data (keys sign for every organization): no row-level security.
    grant_to_app_role("signing_keys", "SELECT, INSERT")


def downgrade() -> None:
    op.drop_table("signing_keys")
