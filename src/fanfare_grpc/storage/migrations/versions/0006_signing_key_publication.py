"""Signing keys stay published as long as a handoff token they signed may live.

Keys made before this revision were published for the access-token lifetime only
(15 minutes past their last signature), but they also signed handoff tokens, which
live up to 24 hours: extend their window so those tokens keep verifying.

Revision ID: 0006_signing_key_publication
Revises: 0005_queues
Create Date: 2026-12-02
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from fanfare_grpc.storage.types import UtcDateTime

revision: str = "0006_signing_key_publication"
down_revision: str | None = "0005_queues"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The longest handoff_ttl (24 h) plus the verification leeway (30 s), as of this revision.
_LONGEST_TOKEN = dt.timedelta(hours=24, seconds=30)

_signing_keys = sa.table(
    "signing_keys",
    sa.column("kid", sa.String),
    sa.column("sign_until", UtcDateTime()),
    sa.column("publish_until", UtcDateTime()),
)


def upgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(_signing_keys.c.kid, _signing_keys.c.sign_until, _signing_keys.c.publish_until)
    ).all()
    for kid, sign_until, publish_until in rows:
        extended = sign_until + _LONGEST_TOKEN
        if publish_until < extended:
            connection.execute(
                sa.update(_signing_keys)
                .where(_signing_keys.c.kid == kid)
                .values(publish_until=extended)
            )


def downgrade() -> None:
    # Longer publication is harmless; nothing to undo.
    pass
