"""Serving status for ``grpc.health.v1.Health``, overall and per service.

NOT_SERVING while the database (or the shared cache) cannot be reached, once a
stored key turned out not to open with this process's master keys (until restart),
and for good once draining starts, so load balancers stop sending new calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from fanfare_grpc.cache.protocols import Cache
from fanfare_grpc.crypto.master_key_alarm import MasterKeyAlarm
from fanfare_grpc.outages import DependencyOutages
from fanfare_grpc.storage.database import Database

OVERALL = ""
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ServingStatusMonitor:
    """Probes the backends periodically and publishes the result to the health service."""

    def __init__(
        self,
        health: HealthServicer,
        service_names: Sequence[str],
        database: Database,
        cache: Cache,
        logger: logging.Logger,
        *,
        master_key_alarm: MasterKeyAlarm | None = None,
        interval_seconds: float,
        timeout_seconds: float,
        outages: DependencyOutages | None = None,
    ) -> None:
        self._health = health
        self._services = (OVERALL, *service_names)
        self._database = database
        self._cache = cache
        self._logger = logger
        self._master_key_alarm = master_key_alarm
        self._interval = interval_seconds
        self._timeout = timeout_seconds
        self._serving: bool | None = None
        self._outages = outages

    async def probe_once(self) -> bool:
        """Probe the backends now and publish the status; True if serving."""
        database_ok = await self._database.ping(self._timeout)
        cache_ok = await self._cache.ping()
        if self._outages is not None:
            # A probe that answers ends an outage even when nothing else retries
            # (failures come from the calls and jobs, which carry the exception).
            if database_ok:
                self._outages.reachable("database")
            if cache_ok and self._cache.shared_between_processes:
                self._outages.reachable("redis")
        # The alarm logged its own error line (with the key ids) when it was raised.
        master_keys_ok = self._master_key_alarm is None or not self._master_key_alarm.raised
        serving = database_ok and cache_ok and master_keys_ok
        if serving != self._serving:
            self._serving = serving
            if serving:
                self._logger.info("backends reachable: SERVING")
            elif not (database_ok and cache_ok):
                self._logger.warning(
                    "backend unreachable: NOT_SERVING",
                    extra={"database_ok": database_ok, "cache_ok": cache_ok},
                )
            status = SERVING if serving else NOT_SERVING
            for service in self._services:
                await self._health.set(service, status)
        return serving

    async def run(self) -> None:
        """Probe forever (cancel to stop)."""
        while True:
            await self.probe_once()
            await asyncio.sleep(self._interval)

    async def drain(self) -> None:
        """Report NOT_SERVING for good: the server is shutting down."""
        await self._health.enter_graceful_shutdown()
