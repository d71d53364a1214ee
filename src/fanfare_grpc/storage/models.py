"""ORM models. Every table that holds organization data follows one pattern.

On PostgreSQL such tables are ``PARTITION BY HASH (org_id)`` and their primary key
starts with ``org_id`` (partitioned tables need the partition key in every unique
constraint); on SQLite the same models run without partitions. Migrations create
the partitions and row-level security (see ``postgres``).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, ForeignKeyConstraint, Index, Integer, LargeBinary, String
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


class ConsumerRow(Base):
    """A consumer. The email exists only sealed (per-consumer key) plus a blind index."""

    __tablename__ = "consumers"
    __table_args__ = (
        ForeignKeyConstraint(["org_id"], ["organizations.org_id"], ondelete="CASCADE"),
        Index("consumers_email_index", "org_id", "mode", "email_index", unique=True),
        _PARTITIONED,
    )

    org_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    consumer_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    mode: Mapped[str] = mapped_column(String(8))
    guest: Mapped[bool] = mapped_column(Boolean)
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    email_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    email_index: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    erased_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())


class ConsumerSessionRow(Base):
    """A consumer session bound to one device (keyed digest of its fingerprint)."""

    __tablename__ = "consumer_sessions"
    __table_args__ = (
        ForeignKeyConstraint(["org_id"], ["organizations.org_id"], ondelete="CASCADE"),
        Index("consumer_sessions_by_consumer", "org_id", "mode", "consumer_id", "created_at"),
        _PARTITIONED,
    )

    org_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    mode: Mapped[str] = mapped_column(String(8))
    consumer_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    guest: Mapped[bool] = mapped_column(Boolean)
    device_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    last_seen_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    revoke_reason: Mapped[str | None] = mapped_column(String(32))


class RefreshTokenRow(Base):
    """A refresh token: lookup id and bcrypt hash; ``used_at`` makes it single use."""

    __tablename__ = "refresh_tokens"
    __table_args__ = (
        ForeignKeyConstraint(["org_id"], ["organizations.org_id"], ondelete="CASCADE"),
        Index("refresh_tokens_by_session", "org_id", "session_id"),
        _PARTITIONED,
    )

    org_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    lookup_id: Mapped[str] = mapped_column(String(20), primary_key=True)
    mode: Mapped[str] = mapped_column(String(8))
    session_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    secret_hash: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())


class LoginChallengeRow(Base):
    """A passwordless login challenge: bcrypt hash of its code, bound to a device."""

    __tablename__ = "login_challenges"
    __table_args__ = (
        ForeignKeyConstraint(["org_id"], ["organizations.org_id"], ondelete="CASCADE"),
        Index("login_challenges_by_email", "org_id", "mode", "email_index"),
        _PARTITIONED,
    )

    org_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    challenge_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    mode: Mapped[str] = mapped_column(String(8))
    email_index: Mapped[str | None] = mapped_column(String(64))
    email_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    device_hash: Mapped[str] = mapped_column(String(64))
    code_hash: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    attempts: Mapped[int] = mapped_column(Integer)
    consumed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    voided_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())


class QueueRow(Base):
    """A queue's configuration and status (entries and positions live in the cache)."""

    __tablename__ = "queues"
    __table_args__ = (
        ForeignKeyConstraint(["org_id"], ["organizations.org_id"], ondelete="CASCADE"),
        Index("queues_listing", "org_id", "mode", "created_at", "queue_id"),
        _PARTITIONED,
    )

    org_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    queue_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    mode: Mapped[str] = mapped_column(String(8))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    admission_rate_per_minute: Mapped[int] = mapped_column(Integer)
    handoff_ttl_seconds: Mapped[int] = mapped_column(Integer)
    max_size: Mapped[int] = mapped_column(Integer)
    opens_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    closes_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    opened_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    closed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class QueueScheduleRow(Base):
    """What the background worker needs to find queues of every organization: ids,
    status and times, nothing else. Read before any organization is chosen, so it
    has no row-level security and holds nothing secret (like ``api_key_lookups``)."""

    __tablename__ = "queue_schedule"

    org_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    queue_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    mode: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    opens_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    closes_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())
    closed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime())


class IdempotencyCommitRow(Base):
    """An idempotency key whose call committed a transaction (written in that same
    transaction), so the call cannot commit twice even if the cache loses its record.
    Only digests: the key and the request are never stored."""

    __tablename__ = "idempotency_commits"
    __table_args__ = (
        ForeignKeyConstraint(["org_id"], ["organizations.org_id"], ondelete="CASCADE"),
        _PARTITIONED,
    )

    org_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    mode: Mapped[str] = mapped_column(String(8), primary_key=True)
    key_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    committed_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())


class MasterKeyCanaryRow(Base):
    """The deployment's one master key canary (``crypto.canary``); ``slot`` is always 1."""

    __tablename__ = "master_key_canary"

    slot: Mapped[int] = mapped_column(Integer, primary_key=True)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    master_key_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
