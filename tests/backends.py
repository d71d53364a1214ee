"""Throwaway PostgreSQL databases and Redis key prefixes for tests.

PostgreSQL and Redis are required: when they cannot be reached the tests that need
them fail with a clear message (they never skip), so CI cannot go green without
exercising the real backends.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
import redis

from fanfare_grpc.storage.postgres import app_role_name

POSTGRES_ADMIN_URL = os.environ.get(
    "FANFARE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("FANFARE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _admin_connection() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.fail(
            f"PostgreSQL is required but unreachable at {POSTGRES_ADMIN_URL} ({error}); "
            "start it or set FANFARE_TEST_POSTGRES_URL",
            pytrace=False,
        )


@contextmanager
def throwaway_postgres_database() -> Iterator[str]:
    """Create an empty database; yield its SQLAlchemy URL; drop it afterwards."""
    name = "fanfare_test_" + secrets.token_hex(6)
    with _admin_connection() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = psycopg.conninfo.conninfo_to_dict(POSTGRES_ADMIN_URL)
    user = base.get("user") or "postgres"
    host = base.get("host") or "127.0.0.1"
    port = base.get("port") or 5432
    try:
        yield f"postgresql+psycopg://{user}@{host}:{port}/{name}"
    finally:
        with _admin_connection() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            # Migrations create one service role per database: drop it with it.
            admin.execute(f'DROP ROLE IF EXISTS "{app_role_name(name)}"')


@contextmanager
def throwaway_redis_prefix() -> Iterator[str]:
    """A unique key prefix; every key under it is deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        pytest.fail(
            f"Redis is required but unreachable at {REDIS_URL} ({error}); "
            "start it or set FANFARE_TEST_REDIS_URL",
            pytrace=False,
        )
    prefix = "fftest" + secrets.token_hex(6)
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
