"""Shared fixtures: settings for throwaway backends and in-process servers on port 0."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

import grpc
import pytest

from fanfare_grpc.app import Application, Clock, utc_now
from fanfare_grpc.crypto.master_keys import load_master_key_ring
from fanfare_grpc.domain.organizations import NewOrganization, create_organization
from fanfare_grpc.domain.queue_admission import TickClock
from fanfare_grpc.permissions import PERMISSIONS, MethodPolicy
from fanfare_grpc.server import RunningServer, start_server
from fanfare_grpc.settings import Settings
from fanfare_grpc.storage import migrate
from tests.backends import REDIS_URL, throwaway_postgres_database, throwaway_redis_prefix

BACKENDS = ("embedded", "postgres+redis")


@dataclasses.dataclass(frozen=True)
class BackendSettings:
    """Settings for one backend combination, pointing at throwaway resources."""

    name: str
    settings: Settings


def embedded_settings(data_dir: Path) -> Settings:
    """SQLite file + in-process cache: what ``make run`` uses.

    The data dir gets its dev master key file now, as ``make run`` generates it:
    tests that swap in PostgreSQL keep a key of their own (none is generated for a
    shared database).
    """
    load_master_key_ring(None, (), data_dir)
    return Settings(
        listen="127.0.0.1:0",
        data_dir=data_dir,
        health_check_interval_seconds=0.1,
        shutdown_grace_seconds=5.0,
        # The test Redis servers persist nothing (fast, and never shared with a test's
        # leftovers); only tests of that refusal itself unset this.
        redis_ephemeral_ok=True,
    )


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database (dropped afterwards)."""
    with throwaway_postgres_database() as url:
        yield url


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix nobody else uses (its keys are deleted afterwards)."""
    with throwaway_redis_prefix() as prefix:
        yield prefix


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackendSettings]:
    """Each backend combination in turn: embedded, then PostgreSQL + Redis."""
    settings = embedded_settings(tmp_path / "data")
    if request.param == "embedded":
        yield BackendSettings("embedded", settings)
        return
    with throwaway_postgres_database() as url, throwaway_redis_prefix() as prefix:
        yield BackendSettings(
            "postgres+redis",
            dataclasses.replace(
                settings, database_url=url, redis_url=REDIS_URL, redis_key_prefix=prefix
            ),
        )


async def start_migrated_server(
    settings: Settings,
    *,
    extra_handlers: Sequence[grpc.GenericRpcHandler] = (),
    permissions: Mapping[str, MethodPolicy] = PERMISSIONS,
    run_worker: bool = True,
    clock: Clock = utc_now,
) -> RunningServer:
    """Migrate the database, then start an in-process server on a free port.

    An injected ``clock`` also numbers the admission ticks (tests drive the worker with
    it); with the real clock, ticks come from the cache's clock as in production.
    """
    await migrate.upgrade_to_head(settings.effective_owner_database_url)
    application = Application.build(
        settings,
        permissions=permissions,
        clock=clock,
        tick_clock=None if clock is utc_now else ticks_of(clock),
    )
    return await start_server(application, extra_handlers=extra_handlers, run_worker=run_worker)


def ticks_of(clock: Clock) -> TickClock:
    """Admission ticks numbered by ``clock`` (an injected test clock)."""

    async def now() -> float:
        return clock().timestamp()

    return now


async def new_organization(server: RunningServer, name: str = "Acme") -> NewOrganization:
    """Create an organization (and its first ADMIN keys) directly through the domain."""
    application = server.application
    return await create_organization(
        application.organizations, application.envelope, name, application.clock()
    )


@pytest.fixture
async def running_server(backend: BackendSettings) -> AsyncIterator[RunningServer]:
    """A migrated server on each backend combination; always stopped afterwards."""
    server = await start_migrated_server(backend.settings)
    try:
        yield server
    finally:
        await server.shutdown(grace_seconds=1.0)
