"""In-process cache: the embedded default for a single server process.

Same semantics as the Redis backend (the shared contract tests prove it), with
an injectable monotonic clock so TTL behaviour can be tested without sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager

from sortedcontainers import SortedList

from fanfare_grpc.cache.protocols import CounterValue, ScoredMember, Subscription
from fanfare_grpc.cache.queue_state_memory import MemoryQueueStateStore

Clock = Callable[[], float]


class _Expiry:
    """Deadlines of TTL'd keys, purged lazily (amortised O(log n) per write)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._deadline: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def set(self, key: str, ttl_seconds: float) -> None:
        deadline = self._clock() + ttl_seconds
        self._deadline[key] = deadline
        heapq.heappush(self._heap, (deadline, key))

    def forget(self, key: str) -> None:
        self._deadline.pop(key, None)

    def remaining(self, key: str) -> float:
        deadline = self._deadline.get(key)
        return 0.0 if deadline is None else max(0.0, deadline - self._clock())

    def expired_keys(self) -> list[str]:
        """Pop and return every key whose deadline has passed."""
        now = self._clock()
        expired: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            deadline, key = heapq.heappop(self._heap)
            # A key re-set with a later deadline leaves a stale heap entry behind.
            if self._deadline.get(key) == deadline:
                del self._deadline[key]
                expired.append(key)
        return expired


class _TtlDict:
    """A dict whose entries disappear after their TTL."""

    def __init__(self, clock: Clock) -> None:
        self._items: dict[str, object] = {}
        self._expiry = _Expiry(clock)

    def purge(self) -> None:
        for key in self._expiry.expired_keys():
            self._items.pop(key, None)

    def get(self, key: str) -> object | None:
        self.purge()
        return self._items.get(key)

    def put(self, key: str, value: object, ttl_seconds: float) -> None:
        self.purge()
        self._items[key] = value
        self._expiry.set(key, ttl_seconds)

    def replace_value(self, key: str, value: object) -> None:
        """Change a live entry's value without touching its deadline."""
        self._items[key] = value

    def remaining(self, key: str) -> float:
        return self._expiry.remaining(key)

    def pop(self, key: str) -> bool:
        self.purge()
        self._expiry.forget(key)
        return self._items.pop(key, None) is not None


class MemorySortedSetStore:
    """Sorted sets on ``SortedList`` of (score, member): O(log n) rank."""

    def __init__(self) -> None:
        self._sets: dict[str, SortedList[tuple[float, str]]] = {}
        self._scores: dict[str, dict[str, float]] = {}

    async def add(self, key: str, member: str, score: float) -> bool:
        return await self.add_many(key, {member: score}) == 1

    async def add_many(self, key: str, members: Mapping[str, float]) -> int:
        ordered = self._sets.setdefault(key, SortedList())
        scores = self._scores.setdefault(key, {})
        added = 0
        for member, score in members.items():
            if member not in scores:
                scores[member] = float(score)
                ordered.add((float(score), member))
                added += 1
        return added

    async def score(self, key: str, member: str) -> float | None:
        return self._scores.get(key, {}).get(member)

    async def rank(self, key: str, member: str) -> int | None:
        score = self._scores.get(key, {}).get(member)
        if score is None:
            return None
        return self._sets[key].bisect_left((score, member))

    async def remove(self, key: str, member: str) -> bool:
        scores = self._scores.get(key)
        if scores is None or member not in scores:
            return False
        self._sets[key].remove((scores.pop(member), member))
        self._drop_if_empty(key)
        return True

    async def pop_lowest(self, key: str, count: int) -> list[ScoredMember]:
        ordered = self._sets.get(key)
        if ordered is None or count <= 0:
            return []
        popped: list[ScoredMember] = []
        for _ in range(min(count, len(ordered))):
            score, member = ordered.pop(0)
            del self._scores[key][member]
            popped.append(ScoredMember(member, score))
        self._drop_if_empty(key)
        return popped

    async def range_by_rank(self, key: str, start: int, stop: int) -> list[ScoredMember]:
        ordered = self._sets.get(key)
        if ordered is None:
            return []
        length = len(ordered)
        first = start + length if start < 0 else start
        last = stop + length if stop < 0 else stop
        first, last = max(first, 0), min(last, length - 1)
        if first > last:
            return []
        return [ScoredMember(member, score) for score, member in ordered.islice(first, last + 1)]

    async def size(self, key: str) -> int:
        return len(self._scores.get(key, {}))

    async def delete(self, key: str) -> None:
        self._sets.pop(key, None)
        self._scores.pop(key, None)

    def _drop_if_empty(self, key: str) -> None:
        if not self._scores.get(key):
            self._sets.pop(key, None)
            self._scores.pop(key, None)


class MemoryCounterStore:
    """Fixed-window counters."""

    def __init__(self, clock: Clock) -> None:
        self._counters = _TtlDict(clock)

    async def increment(self, key: str, amount: int, ttl_seconds: float) -> CounterValue:
        current = self._counters.get(key)
        if current is None:
            self._counters.put(key, amount, ttl_seconds)
            return CounterValue(amount, ttl_seconds)
        assert isinstance(current, int)
        value = current + amount
        self._counters.replace_value(key, value)
        return CounterValue(value, self._counters.remaining(key))

    async def get(self, key: str) -> int:
        current = self._counters.get(key)
        return current if isinstance(current, int) else 0


class MemoryKeyValueStore:
    """String values with TTL."""

    def __init__(self, clock: Clock) -> None:
        self._values = _TtlDict(clock)

    async def set_if_absent(self, key: str, value: str, ttl_seconds: float) -> bool:
        if self._values.get(key) is not None:
            return False
        self._values.put(key, value, ttl_seconds)
        return True

    async def set(self, key: str, value: str, ttl_seconds: float) -> None:
        self._values.put(key, value, ttl_seconds)

    async def get(self, key: str) -> str | None:
        value = self._values.get(key)
        return value if isinstance(value, str) else None

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        return [await self.get(key) for key in keys]

    async def get_or_set(self, key: str, value: str) -> str:
        current = await self.get(key)
        if current is None:
            self._values.put(key, value, math.inf)  # never expires
            return value
        return current

    async def delete(self, key: str) -> bool:
        return self._values.pop(key)


class _QueueSubscription:
    def __init__(self, queue: asyncio.Queue[str]) -> None:
        self._queue = queue

    async def __aiter__(self) -> AsyncIterator[str]:
        while True:
            yield await self._queue.get()


class MemoryPubSub:
    """Broadcast within the process: one queue per subscriber."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[str]]] = {}

    async def publish(self, channel: str, message: str) -> None:
        for queue in self._subscribers.get(channel, ()):
            queue.put_nowait(message)

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        listeners = self._subscribers.setdefault(channel, set())
        listeners.add(queue)
        try:
            yield _QueueSubscription(queue)
        finally:
            listeners.discard(queue)
            if not listeners:
                self._subscribers.pop(channel, None)


class MemoryCache:
    """The in-process backend; cannot be shared between processes."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._sorted_sets = MemorySortedSetStore()
        self._counters = MemoryCounterStore(clock)
        self._values = MemoryKeyValueStore(clock)
        self._pubsub = MemoryPubSub()
        self._queue_states = MemoryQueueStateStore()

    @property
    def sorted_sets(self) -> MemorySortedSetStore:
        return self._sorted_sets

    @property
    def counters(self) -> MemoryCounterStore:
        return self._counters

    @property
    def values(self) -> MemoryKeyValueStore:
        return self._values

    @property
    def pubsub(self) -> MemoryPubSub:
        return self._pubsub

    @property
    def queue_states(self) -> MemoryQueueStateStore:
        return self._queue_states

    @property
    def shared_between_processes(self) -> bool:
        return False

    async def ping(self) -> bool:
        return True

    async def eviction_policy(self) -> str:
        return "noeviction"  # nothing here is ever deleted to make room

    async def persistence(self) -> bool:
        return False  # the data lives and dies with this process

    async def shared_time(self) -> None:
        return None  # one process: its own clock is the shared one

    async def server_id(self) -> None:
        return None  # lives and dies with the process: it never restarts under it

    async def close(self) -> None:
        return None
