"""Consumers, consumer sessions, refresh tokens, passwordless login challenges.

Revision ID: 0004_consumers
Revises: 0003_signing_keys
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

revision: str = "0004_consumers"
down_revision: str | None = "0003_signing_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("consumers", "consumer_sessions", "refresh_tokens", "login_challenges")


def _organization_table(name: str, *columns: sa.Column[object], key: str) -> None:
    op.create_table(
        name,
        sa.Column("org_id", sa.String(40), nullable=False),
        *columns,
        sa.PrimaryKeyConstraint("org_id", key, name=f"{name}_pkey"),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.org_id"], ondelete="CASCADE", name=f"{name}_org_fkey"
        ),
        postgresql_partition_by=PARTITION_BY_ORGANIZATION,
    )


def upgrade() -> None:
    _organization_table(
        "consumers",
        sa.Column("consumer_id", sa.String(40), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("guest", sa.Boolean(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=True),
        sa.Column("email_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("email_index", sa.String(64), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("erased_at", UtcDateTime(), nullable=True),
        key="consumer_id",
    )
    op.create_index(
        "consumers_email_index", "consumers", ["org_id", "mode", "email_index"], unique=True
    )

    _organization_table(
        "consumer_sessions",
        sa.Column("session_id", sa.String(40), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("consumer_id", sa.String(40), nullable=False),
        sa.Column("guest", sa.Boolean(), nullable=False),
        sa.Column("device_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.Column("last_seen_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.Column("revoke_reason", sa.String(32), nullable=True),
        key="session_id",
    )
    op.create_index(
        "consumer_sessions_by_consumer",
        "consumer_sessions",
        ["org_id", "mode", "consumer_id", "created_at"],
    )

    _organization_table(
        "refresh_tokens",
        sa.Column("lookup_id", sa.String(20), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("session_id", sa.String(40), nullable=False),
        sa.Column("secret_hash", sa.String(100), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.Column("used_at", UtcDateTime(), nullable=True),
        key="lookup_id",
    )
    op.create_index("refresh_tokens_by_session", "refresh_tokens", ["org_id", "session_id"])

    _organization_table(
        "login_challenges",
        sa.Column("challenge_id", sa.String(40), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("email_index", sa.String(64), nullable=True),
        sa.Column("email_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("device_hash", sa.String(64), nullable=False),
        sa.Column("code_hash", sa.String(100), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("consumed_at", UtcDateTime(), nullable=True),
        sa.Column("voided_at", UtcDateTime(), nullable=True),
        key="challenge_id",
    )
    op.create_index(
        "login_challenges_by_email", "login_challenges", ["org_id", "mode", "email_index"]
    )

    for table in _TABLES:
        create_organization_partitions(table)
        enable_organization_isolation(table)
        grant_to_app_role(table)


def downgrade() -> None:
    for table in reversed(_TABLES):
        op.drop_table(table)
