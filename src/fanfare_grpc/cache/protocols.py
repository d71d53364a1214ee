"""What the rest of the service may ask of the cache.

Two implementations satisfy these interfaces, ``memory`` (one process, the embedded
default) and ``redis`` (shared by every replica); one contract test-suite runs
against both. Keys are plain strings chosen by the caller (``{org}:{mode}:...``);
each backend namespaces them per deployment. TTLs are in seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from fanfare_grpc.domain.queue_state import QueueStateStore


@dataclasses.dataclass(frozen=True)
class ScoredMember:
    """One member of a sorted set with its score."""

    member: str
    score: float


class SortedSetStore(Protocol):
    """Sorted sets ordered by (score, member), as Redis orders them.

    Queue positions live here: rank lookups must be O(log n).
    """

    async def add(self, key: str, member: str, score: float) -> bool:
        """Insert ``member`` unless present; True if it was added (scores never move)."""
        ...

    async def add_many(self, key: str, members: Mapping[str, float]) -> int:
        """Insert absent members; returns how many were added."""
        ...

    async def score(self, key: str, member: str) -> float | None:
        """The member's score, or None if absent."""
        ...

    async def rank(self, key: str, member: str) -> int | None:
        """0-based position of the member (lowest score first), or None if absent."""
        ...

    async def remove(self, key: str, member: str) -> bool:
        """Remove the member; True if it was present."""
        ...

    async def pop_lowest(self, key: str, count: int) -> list[ScoredMember]:
        """Remove and return up to ``count`` members with the lowest scores."""
        ...

    async def range_by_rank(self, key: str, start: int, stop: int) -> list[ScoredMember]:
        """Members with rank in ``[start, stop]`` (inclusive, like ZRANGE)."""
        ...

    async def size(self, key: str) -> int:
        """Number of members (0 if the set does not exist)."""
        ...

    async def delete(self, key: str) -> None:
        """Drop the whole set."""
        ...


@dataclasses.dataclass(frozen=True)
class CounterValue:
    """A counter after an increment, and how long its window still lasts."""

    value: int
    ttl_seconds: float


class CounterStore(Protocol):
    """Fixed-window counters for rate limits and attempt limits."""

    async def increment(self, key: str, amount: int, ttl_seconds: float) -> CounterValue:
        """Add ``amount``; a new counter starts a window of ``ttl_seconds``.

        The window is not extended by later increments, so a counter always
        resets at most ``ttl_seconds`` after it was created.
        """
        ...

    async def get(self, key: str) -> int:
        """Current value (0 if absent or expired)."""
        ...


class KeyValueStore(Protocol):
    """Small string values with a TTL: one-time-use markers, revocations."""

    async def set_if_absent(self, key: str, value: str, ttl_seconds: float) -> bool:
        """Store ``value`` unless the key exists; True if this call stored it."""
        ...

    async def set(self, key: str, value: str, ttl_seconds: float) -> None:
        """Store ``value``, replacing any previous one."""
        ...

    async def get(self, key: str) -> str | None:
        """The value, or None if absent or expired."""
        ...

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        """The values of ``keys`` in order (None where absent), in one round trip."""
        ...

    async def get_or_set(self, key: str, value: str) -> str:
        """The key's value, storing ``value`` first, with no expiry, if it has none
        (one atomic step: concurrent callers all get the first value stored)."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove the key; True if it existed."""
        ...


class Subscription(Protocol):
    """Messages published on one channel after the subscription started."""

    def __aiter__(self) -> AsyncIterator[str]:
        """Iterate over messages as they arrive."""
        ...


class PubSub(Protocol):
    """Fire-and-forget broadcast to every replica (cache invalidation)."""

    async def publish(self, channel: str, message: str) -> None:
        """Send ``message`` to current subscribers of ``channel``."""
        ...

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[Subscription]:
        """Listen on ``channel`` for as long as the context is open."""
        ...


class Cache(Protocol):
    """Everything a backend provides, plus its lifecycle."""

    @property
    def sorted_sets(self) -> SortedSetStore:
        """Sorted sets (queue positions)."""
        ...

    @property
    def counters(self) -> CounterStore:
        """Windowed counters (rate limits)."""
        ...

    @property
    def values(self) -> KeyValueStore:
        """Values with TTL (one-time markers, revocations)."""
        ...

    @property
    def pubsub(self) -> PubSub:
        """Broadcast between replicas."""
        ...

    @property
    def queue_states(self) -> QueueStateStore:
        """Live queue state: entries, positions, admissions."""
        ...

    @property
    def shared_between_processes(self) -> bool:
        """Whether several server processes see the same data."""
        ...

    async def ping(self) -> bool:
        """True if the backend answers."""
        ...

    async def eviction_policy(self) -> str | None:
        """What the backend does when its memory is full: Redis's ``maxmemory-policy``
        (``noeviction`` refuses writes, every other policy deletes keys); always
        ``noeviction`` in process; None when Redis will not say."""
        ...

    async def persistence(self) -> bool | None:
        """Whether the backend keeps its data across a restart: Redis with an AOF
        (``appendonly yes``) or ``save`` snapshots; None when Redis will not say;
        False in process (the data is gone with the process)."""
        ...

    async def shared_time(self) -> float | None:
        """Unix time by the backend's clock, the same for every process that shares it
        (Redis ``TIME``); None for the in-process cache (one process, one clock)."""
        ...

    async def server_id(self) -> str | None:
        """An id of the running backend server, new at every start and after a failover
        (Redis ``run_id``); None for the in-process cache, or when Redis will not say."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
