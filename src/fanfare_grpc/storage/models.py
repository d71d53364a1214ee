"""ORM models. Every table that holds organization data follows one pattern.

On PostgreSQL such tables are ``PARTITION BY HASH (org_id)`` and their primary key
starts with ``org_id`` (partitioned tables need the partition key in every unique
constraint); on SQLite the same models run without partitions. Migrations create
the partitions and row-level security (see ``postgres``).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKeyConstraint, Index, Integer, LargeBinary, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fanfare_grpc.storage.types import UtcDateTime

ID_LENGTH = 40
_PARTITIONED = {"postgresql_partition_by": "HASH (org_id)"}


class Base(DeclarativeBase):
    """Declarative base of every model."""


class OrganizationRow(Base):
    """A tenant. Everything else hangs off ``org_id``."""

    __tablename__ = "organizations"
    __table_args__ = (_PARTITIONED,)

    org_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class OrganizationKeyRow(Base):
    """An organization's data key, wrapped by a master key version."""

    __tablename__ = "organization_keys"
    __table_args__ = (
        ForeignKeyConstraint(["org_id"], ["organizations.org_id"], ondelete="CASCADE"),
        _PARTITIONED,
    )

    org_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    master_key_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class ApiKeyRow(Base):
    """An API key's metadata and bcrypt hash (never the key)."""

    __tablename__ = "api_keys"
    __table_args__ = (
        ForeignKeyConstraint(["org_id"], ["organizations.org_id"], ondelete="CASCADE"),
        Index("api_keys_listing", "org_id", "mode", "created_at", "key_id"),
        _PARTITIONED,
    )

    org_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    mode: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(8))
    role: Mapped[str | None] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    lookup_id: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    last4: Mapped[str] = mapped_column(String(4))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    expires_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    replaced_by_key_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    rotated_from_key_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))


class ApiKeyLookupRow(Base):
    """Non-secret lookup id → organization and key: the one query made before the
    organization is known (authentication), so this table has no row-level security
    and holds nothing secret."""

    __tablename__ = "api_key_lookups"

    lookup_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    key_id: Mapped[str] = mapped_column(String(ID_LENGTH))


class SigningKeyRow(Base):
    """A token signing key (deployment-wide): private half sealed under a master key."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(80), primary_key=True)
    sealed_private_key: Mapped[bytes] = mapped_column(LargeBinary)
    master_key_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    sign_until: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    publish_until: Mapped[dt.datetime] = mapped_column(UtcDateTime())
