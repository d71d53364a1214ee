"""Engine and session factory for one database URL, and its health probe."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from fanfare_grpc.backends import backend_error_reason
from fanfare_grpc.domain.idempotency_claims import current_claim
from fanfare_grpc.private_files import prepare_sqlite_file
from fanfare_grpc.storage.idempotency_commits import record_claim
from fanfare_grpc.storage.postgres import ORG_SETTING, SWITCH_TO_APP_ROLE_SQL

_ASYNC_DRIVERS = {"postgresql": "postgresql+psycopg", "sqlite": "sqlite+aiosqlite"}


def async_database_url(url: str) -> URL:
    """Accept ``postgresql://`` and ``sqlite:///`` too: pick the async driver we ship.

    Raises:
        ValueError: The URL names a database we do not support.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend not in _ASYNC_DRIVERS:
        raise ValueError("FANFARE_DATABASE_URL must be a postgresql or sqlite URL")
    if parsed.get_driver_name() in {"psycopg", "aiosqlite"}:
        return parsed
    return parsed.set(drivername=_ASYNC_DRIVERS[backend])


def database_location(url: str | URL) -> str:
    """Where ``url`` points, fit for messages: a SQLite file or ``host:port/db``.

    Never includes the user name or password.
    """
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or ":memory:"
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"


class DatabaseUnreachable(RuntimeError):
    """The database cannot be reached or opened; the message says where and what to check."""

    def __init__(self, url: URL, reason: str, setting: str) -> None:
        if url.password:
            reason = reason.replace(str(url.password), "***")
        location = database_location(url)
        if url.get_backend_name() == "sqlite":
            message = (
                f"cannot open the SQLite database {location} ({reason}): check that its "
                f"directory exists and this user may write there ({setting})"
            )
        else:
            message = (
                f"cannot reach the PostgreSQL database {location} ({reason}): check that "
                f"PostgreSQL is up at that address, and {setting} (host, port, user, "
                "password, database name)"
            )
        super().__init__(message)


def create_engine(url: str, *, as_owner: bool = False) -> AsyncEngine:
    """An async engine for ``url`` with settings fit for a long-running server.

    On PostgreSQL every connection switches to this database's service role (not the
    tables' owner, so row-level security applies) unless ``as_owner`` (migrations,
    key rotation). Deployments should also connect as a login role that is only a
    member of that role (``FANFARE_DATABASE_URL``), keeping the owner's credentials
    for ``FANFARE_DATABASE_OWNER_URL``.
    """
    parsed = async_database_url(url)
    # No pool_pre_ping: it costs a round trip per transaction. A connection that died
    # with the server fails its next statement, and SQLAlchemy then invalidates the
    # whole pool, so the database coming back is picked up on the next checkout.
    # Statement parameters (hashes, ciphertexts) never appear in exception texts.
    options: dict[str, Any] = {"hide_parameters": True}
    if parsed.get_backend_name() == "sqlite":
        options["connect_args"] = {"timeout": 30}
        # Each aiosqlite connection is a thread; SQLite runs one writer at a time
        # anyway, and more threads only fight over the GIL (measured in bench/).
        options["pool_size"] = 2
        options["max_overflow"] = 2
        engine = create_async_engine(parsed, **options)
        if parsed.database and parsed.database != ":memory:":
            database_file = Path(parsed.database)
            # Before each connect, not now: building an engine touches no files.
            event.listen(
                engine.sync_engine,
                "do_connect",
                lambda *_: prepare_sqlite_file(database_file),
            )
        event.listen(engine.sync_engine, "connect", _configure_sqlite_connection)
        return engine
    options["connect_args"] = {"connect_timeout": 5}
    options["pool_size"] = 10
    options["max_overflow"] = 10
    engine = create_async_engine(parsed, **options)
    if not as_owner:
        event.listen(engine.sync_engine, "connect", _switch_to_app_role)
    return engine


def _switch_to_app_role(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(SWITCH_TO_APP_ROLE_SQL)
    cursor.close()
    # SET outside a transaction leaves psycopg's implicit one open: end it.
    dbapi_connection.commit()


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the worker and the server read while the other writes; foreign
    # keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class Database:
    """Owns the engine; hands out sessions; answers health probes."""

    def __init__(self, engine: AsyncEngine, *, setting: str = "FANFARE_DATABASE_URL") -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._setting = setting

    @classmethod
    def from_url(
        cls, url: str, *, as_owner: bool = False, setting: str = "FANFARE_DATABASE_URL"
    ) -> Database:
        """Build the engine for ``url`` (no connection is made yet).

        ``setting`` names the configuration an operator should check when the
        database cannot be reached.
        """
        return cls(create_engine(url, as_owner=as_owner), setting=setting)

    @property
    def location(self) -> str:
        """The SQLite file or PostgreSQL ``host:port/db`` (no credentials)."""
        return database_location(self.engine.url)

    def unreachable(self, error: BaseException) -> DatabaseUnreachable:
        """The operator-facing error for a failed connection attempt."""
        return DatabaseUnreachable(self.engine.url, backend_error_reason(error), self._setting)

    async def require_reachable(self, timeout_seconds: float = 10.0) -> None:
        """Connect once and run a trivial query.

        Raises:
            DatabaseUnreachable: It failed or took longer than ``timeout_seconds``.
        """
        try:
            async with asyncio.timeout(timeout_seconds):
                async with self.engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
        except TimeoutError as error:
            raise DatabaseUnreachable(
                self.engine.url, f"no answer within {timeout_seconds:g} s", self._setting
            ) from error
        except (SQLAlchemyError, OSError) as error:
            raise self.unreachable(error) from error

    @asynccontextmanager
    async def transaction(self, organization_id: str | None) -> AsyncIterator[AsyncSession]:
        """A transaction that row-level security scopes to one organization.

        ``None`` scopes it to no organization: organization tables look empty (used
        only for the pre-authentication key lookup).

        In a call with an idempotency key, the first transaction that commits also
        writes the key (``idempotency_claims``): a second execution with the same key
        fails in its first transaction, before it can commit anything.

        Raises:
            KeyAlreadyCommitted: Another execution with this call's key committed.
        """
        claim = current_claim()
        if claim is not None and (claim.committed or claim.organization_id != organization_id):
            claim = None
        async with self.sessions.begin() as session:
            if self.dialect == "postgresql":
                await session.execute(
                    text(f"SELECT set_config('{ORG_SETTING}', :organization_id, true)"),
                    {"organization_id": organization_id or ""},
                )
            if claim is not None:
                await record_claim(session, self.dialect, claim)
            yield session
        if claim is not None:
            claim.committed = True

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    async def ping(self, timeout_seconds: float) -> bool:
        """True if a trivial query succeeds within ``timeout_seconds``."""
        try:
            await self.require_reachable(timeout_seconds)
        except DatabaseUnreachable:
            return False
        return True

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
