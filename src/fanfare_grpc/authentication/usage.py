"""``last_used_at`` without a database write per call: uses are batched."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterable
from typing import Protocol

from fanfare_grpc.backends import is_backend_unavailable
from fanfare_grpc.outages import DependencyOutages, OutageLog

FLUSH_INTERVAL_SECONDS = 5.0


class LastUsedStore(Protocol):
    """Applies batches of key uses."""

    async def record_last_used(self, uses: Iterable[tuple[str, str, dt.datetime]]) -> None:
        """Store (organization, key id, time) uses, never moving a time backwards."""
        ...


class KeyUsageRecorder:
    """Collects the latest use per key in memory; ``flush`` writes them in one batch."""

    def __init__(
        self,
        store: LastUsedStore,
        logger: logging.Logger,
        *,
        outages: DependencyOutages | None = None,
    ) -> None:
        self._store = store
        self._logger = logger
        self._outage = OutageLog(
            logger, "key usage recording", meanwhile="uses kept in memory", outages=outages
        )
        self._pending: dict[tuple[str, str], dt.datetime] = {}

    def note(self, organization_id: str, key_id: str, used_at: dt.datetime) -> None:
        """Remember a use (O(1), no I/O)."""
        self._pending[(organization_id, key_id)] = used_at

    async def flush(self) -> None:
        """Write everything noted so far."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            await self._store.record_last_used(
                (organization_id, key_id, used_at)
                for (organization_id, key_id), used_at in batch.items()
            )
        except Exception as error:
            if is_backend_unavailable(error):
                self._outage.failed(error)
            else:
                self._logger.warning("could not record key usage; will retry", exc_info=True)
            for entry, used_at in batch.items():
                self._pending.setdefault(entry, used_at)
        else:
            self._outage.succeeded()

    async def run(self, interval_seconds: float = FLUSH_INTERVAL_SECONDS) -> None:
        """Flush periodically until cancelled (then flush once more)."""
        try:
            while True:
                await asyncio.sleep(interval_seconds)
                await self.flush()
        finally:
            await self.flush()
