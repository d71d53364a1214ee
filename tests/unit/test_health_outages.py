"""A health probe that gets an answer ends the dependency's outage in the log, even when
no call or task retries (the failures came from them, with the exception)."""

from __future__ import annotations

import logging
from typing import cast

import pytest
from grpc_health.v1._async import HealthServicer
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from fanfare_grpc.cache.protocols import Cache
from fanfare_grpc.health import ServingStatusMonitor
from fanfare_grpc.outages import DependencyOutages
from fanfare_grpc.storage.database import Database

LOGGER = "test.health_outages"


class _Backend:
    """Answers the monitor's pings as told (a database and a shared cache in one)."""

    shared_between_processes = True

    def __init__(self) -> None:
        self.database_up = True
        self.cache_up = True

    async def ping(self, timeout_seconds: float | None = None) -> bool:
        return self.database_up if timeout_seconds is not None else self.cache_up


async def test_a_probe_that_answers_ends_the_outage(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger(LOGGER)
    outages = DependencyOutages(logger)
    backend = _Backend()
    monitor = ServingStatusMonitor(
        HealthServicer(),
        [],
        cast(Database, backend),
        cast(Cache, backend),
        logger,
        interval_seconds=1.0,
        timeout_seconds=1.0,
        outages=outages,
    )
    with caplog.at_level(logging.INFO, logger=LOGGER):
        outages.failed("/q.v1.Q/GetQueue", OperationalError("SELECT 1", {}, OSError("refused")))
        outages.failed("/q.v1.Q/GetPosition", RedisConnectionError("Connection refused."))
        backend.database_up = backend.cache_up = False
        await monitor.probe_once()
        assert outages.in_outage("database")
        assert outages.in_outage("redis")
        backend.database_up = True
        await monitor.probe_once()
        assert not outages.in_outage("database")
        assert outages.in_outage("redis")
        backend.cache_up = True
        await monitor.probe_once()
        assert not outages.in_outage("redis")
    recoveries = [r.getMessage() for r in caplog.records if "recovered after" in r.getMessage()]
    assert recoveries == ["database recovered after 0 s", "redis recovered after 0 s"]
