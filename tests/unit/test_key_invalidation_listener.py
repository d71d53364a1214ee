"""The invalidation listener stops when cancelled, even if cleanup fails."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from fanfare_grpc.authentication.invalidation import KeyInvalidationListener
from fanfare_grpc.authentication.key_verifier import KeyVerifier
from fanfare_grpc.cache.memory import MemoryCache


class _Forever:
    async def __aiter__(self) -> AsyncIterator[str]:
        await asyncio.Event().wait()
        yield ""


class CleanupFailsPubSub:
    """Subscribes fine; its cleanup raises, as a dropped Redis connection does."""

    async def publish(self, channel: str, message: str) -> None:
        return None

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[_Forever]:
        try:
            yield _Forever()
        finally:
            raise ConnectionError("connection lost during unsubscribe")


# A listener that swallows its cancellation never ends: fail fast instead of hanging.
@pytest.mark.timeout(10)
async def test_cancellation_wins_over_a_failing_cleanup() -> None:
    cache = MemoryCache()
    verifier = KeyVerifier(_NoRecords(), cache.counters, wall_clock=lambda: dt.datetime.now(dt.UTC))
    listener = KeyInvalidationListener(
        CleanupFailsPubSub(), verifier, logging.getLogger("test.listener")
    )
    task = asyncio.create_task(listener.run())
    await asyncio.wait_for(listener.subscribed.wait(), timeout=2)
    assert verifier.invalidations_connected
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=2)
    assert not verifier.invalidations_connected


class _NoRecords:
    async def find_by_lookup_id(self, lookup_id: str) -> None:
        return None

    async def get(self, organization_id: str, mode: object, key_id: str) -> None:
        return None
