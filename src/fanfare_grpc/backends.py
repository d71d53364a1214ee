"""Exceptions that mean "a backend cannot be reached", whichever backend raised them.

The request-context layer answers these with UNAVAILABLE (API.md) instead of
INTERNAL: the caller may retry, and nothing about the backend leaks.
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError

BACKEND_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
)


def is_backend_unavailable(error: BaseException) -> bool:
    """Whether ``error`` means a database or cache could not be reached."""
    if isinstance(error, BACKEND_UNAVAILABLE_ERRORS):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)
