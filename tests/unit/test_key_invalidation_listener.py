"""The invalidation listener: stops when cancelled, even if cleanup fails; key changes
travel as ``{organization}:{mode}:{key id}`` on one channel."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from fanfare_grpc.authentication.invalidation import (
    CHANNEL,
    KeyInvalidationListener,
    PubSubKeyInvalidations,
    parse_key_change,
)
from fanfare_grpc.authentication.key_verifier import KeyVerifier
from fanfare_grpc.cache.memory import MemoryCache
from fanfare_grpc.domain.access import Mode


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


class ObservedVerifier(KeyVerifier):
    """Reports each invalidation it receives."""

    def __init__(self) -> None:
        super().__init__(
            _NoRecords(), MemoryCache().counters, wall_clock=lambda: dt.datetime.now(dt.UTC)
        )
        self.received: asyncio.Queue[tuple[str, ...]] = asyncio.Queue()

    def key_changed(self, organization_id: str, mode: Mode, key_id: str) -> None:
        super().key_changed(organization_id, mode, key_id)
        self.received.put_nowait((organization_id, mode.value, key_id))

    def everything_changed(self) -> None:
        super().everything_changed()
        self.received.put_nowait(("everything",))


@pytest.mark.timeout(10)
async def test_key_changes_are_broadcast_with_organization_and_mode() -> None:
    cache = MemoryCache()
    logger = logging.getLogger("test.listener")
    verifier = ObservedVerifier()
    listener = KeyInvalidationListener(cache.pubsub, verifier, logger)
    task = asyncio.create_task(listener.run())
    try:
        await listener.subscribed.wait()
        assert await verifier.received.get() == ("everything",)  # on (re)subscribing
        async with cache.pubsub.subscribe(CHANNEL) as raw:
            await PubSubKeyInvalidations(cache.pubsub, logger, verifier).key_changed(
                "org_a", Mode.LIVE, "key_a"
            )
            assert await anext(aiter(raw)) == "org_a:live:key_a"
        assert await verifier.received.get() == ("org_a", "live", "key_a")
        # A bare key id (a replica of an older version mid-upgrade) may be a revocation
        # we cannot place: every cached key is re-checked.
        await cache.pubsub.publish(CHANNEL, "key_b")
        assert await verifier.received.get() == ("everything",)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_key_change_messages_parse_strictly() -> None:
    assert parse_key_change("org_a:test:key_a") == ("org_a", Mode.TEST, "key_a")
    for message in ("key_a", "org_a:key_a", "org_a:prod:key_a", "a:test:b:c", "org_a::key_a"):
        assert parse_key_change(message) is None
