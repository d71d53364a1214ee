"""Exceptions that mean "a backend cannot be reached", whichever backend raised them.

The request-context layer answers these with UNAVAILABLE (API.md) instead of
INTERNAL: the caller may retry, and nothing about the backend leaks.
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import ReadOnlyError as RedisReadOnlyError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

BACKEND_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    RedisConnectionError,
    RedisTimeoutError,
    # Full (it must not evict, so it refuses writes) or a replica after a failover:
    # either way it cannot take this call now, and nothing of it was written.
    RedisOutOfMemoryError,
    RedisReadOnlyError,
    ConnectionError,
    TimeoutError,
)


def is_backend_unavailable(error: BaseException) -> bool:
    """Whether ``error`` means a database or cache could not be reached."""
    if isinstance(error, BACKEND_UNAVAILABLE_ERRORS):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def backend_error_reason(error: BaseException) -> str:
    """One short line saying why a backend call failed (no SQL, no parameters).

    Driver messages name hosts and ports, never passwords; the caller still
    redacts any secret it knows of before printing.
    """
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    if not lines:
        return type(cause).__name__
    # psycopg: 'connection failed: connection to server at "h", port 5432 failed: <why>'
    reason = lines[0].rpartition(" failed: ")[2].strip()
    return reason[:200] or type(cause).__name__


def unavailable_backend_name(error: BaseException) -> str:
    """``database``, ``cache`` or ``backend`` (a bare socket error), for log lines."""
    if isinstance(error, SQLAlchemyError):
        return "database"
    if isinstance(error, RedisError):
        return "cache"
    return "backend"
