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
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        options["connect_args"] = {"timeout": 30}
        # Each aiosqlite connection is a thread; SQLite runs one writer at a time
        # anyway, and more threads only fight over the GIL (measured in bench/).
        options["pool_size"] = 2
        options["max_overflow"] = 2
        engine = create_async_engine(parsed, **options)
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

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str, *, as_owner: bool = False) -> Database:
        """Build the engine for ``url`` (no connection is made yet)."""
        return cls(create_engine(url, as_owner=as_owner))

    @asynccontextmanager
    async def transaction(self, organization_id: str | None) -> AsyncIterator[AsyncSession]:
        """A transaction that row-level security scopes to one organization.

        ``None`` scopes it to no organization: organization tables look empty (used
        only for the pre-authentication key lookup).
        """
        async with self.sessions.begin() as session:
            if self.dialect == "postgresql":
                await session.execute(
                    text(f"SELECT set_config('{ORG_SETTING}', :organization_id, true)"),
                    {"organization_id": organization_id or ""},
                )
            yield session

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    async def ping(self, timeout_seconds: float) -> bool:
        """True if a trivial query succeeds within ``timeout_seconds``."""
        try:
            async with asyncio.timeout(timeout_seconds):
                async with self.engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
            return True
        except (SQLAlchemyError, OSError, TimeoutError):
            return False

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
