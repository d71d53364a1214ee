"""ORM models. Every table that holds organization data follows one pattern.

On PostgreSQL such tables are ``PARTITION BY HASH (org_id)`` and their primary key
starts with ``org_id`` (partitioned tables need the partition key in every unique
constraint); on SQLite the same models run without partitions. Migrations create
the partitions (see ``partitioning``).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fanfare_grpc.storage.types import UtcDateTime

ID_LENGTH = 40


class Base(DeclarativeBase):
    """Declarative base of every model."""


class OrganizationRow(Base):
    """A tenant. Everything else hangs off ``org_id``."""

    __tablename__ = "organizations"
    __table_args__ = ({"postgresql_partition_by": "HASH (org_id)"},)

    org_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
