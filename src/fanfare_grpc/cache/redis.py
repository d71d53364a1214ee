"""Redis backend (redis-py asyncio): shared by every replica of a deployment.

Every key and channel is prefixed with the deployment's prefix. Each operation is a
single round trip; the counter update is one Lua script so the window's TTL is set
atomically with the first increment.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError, ResponseError

from fanfare_grpc.cache.protocols import CounterValue, ScoredMember, Subscription
from fanfare_grpc.cache.queue_state_redis import RedisQueueStateStore

_INCREMENT_IN_WINDOW = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {value, ttl}
"""


def _milliseconds(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class _Namespace:
    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    def key(self, key: str) -> str:
        return f"{self._prefix}:{key}"


class RedisSortedSetStore:
    """Sorted sets on Redis ZSETs."""

    def __init__(self, client: Redis, namespace: _Namespace) -> None:
        self._client = client
        self._ns = namespace

    async def add(self, key: str, member: str, score: float) -> bool:
        return await self.add_many(key, {member: score}) == 1

    async def add_many(self, key: str, members: Mapping[str, float]) -> int:
        if not members:
            return 0
        added = await self._client.zadd(self._ns.key(key), dict(members), nx=True)
        return int(cast(int, added))

    async def score(self, key: str, member: str) -> float | None:
        score: float | None = await self._client.zscore(self._ns.key(key), member)
        return score

    async def rank(self, key: str, member: str) -> int | None:
        rank = await self._client.zrank(self._ns.key(key), member)
        return None if rank is None else int(cast(int, rank))

    async def remove(self, key: str, member: str) -> bool:
        return bool(await self._client.zrem(self._ns.key(key), member))

    async def pop_lowest(self, key: str, count: int) -> list[ScoredMember]:
        if count <= 0:
            return []
        popped = cast(list[tuple[str, float]], await self._client.zpopmin(self._ns.key(key), count))
        return [ScoredMember(member, float(score)) for member, score in popped]

    async def range_by_rank(self, key: str, start: int, stop: int) -> list[ScoredMember]:
        rows = cast(
            list[tuple[str, float]],
            await self._client.zrange(self._ns.key(key), start, stop, withscores=True),
        )
        return [ScoredMember(member, float(score)) for member, score in rows]

    async def size(self, key: str) -> int:
        size: int = await self._client.zcard(self._ns.key(key))
        return size

    async def delete(self, key: str) -> None:
        await self._client.delete(self._ns.key(key))


class RedisCounterStore:
    """Fixed-window counters: INCRBY + PEXPIRE on first use, in one script."""

    def __init__(self, client: Redis, namespace: _Namespace) -> None:
        self._ns = namespace
        self._increment = client.register_script(_INCREMENT_IN_WINDOW)
        self._client = client

    async def increment(self, key: str, amount: int, ttl_seconds: float) -> CounterValue:
        value, ttl_ms = await self._increment(
            keys=[self._ns.key(key)], args=[amount, _milliseconds(ttl_seconds)]
        )
        return CounterValue(int(value), int(ttl_ms) / 1000)

    async def get(self, key: str) -> int:
        value = await self._client.get(self._ns.key(key))
        return int(value) if value is not None else 0


class RedisKeyValueStore:
    """Values with TTL: SET ... PX (NX)."""

    def __init__(self, client: Redis, namespace: _Namespace) -> None:
        self._client = client
        self._ns = namespace

    async def set_if_absent(self, key: str, value: str, ttl_seconds: float) -> bool:
        stored = await self._client.set(
            self._ns.key(key), value, px=_milliseconds(ttl_seconds), nx=True
        )
        return bool(stored)

    async def set(self, key: str, value: str, ttl_seconds: float) -> None:
        await self._client.set(self._ns.key(key), value, px=_milliseconds(ttl_seconds))

    async def get(self, key: str) -> str | None:
        value = await self._client.get(self._ns.key(key))
        return None if value is None else str(value)

    async def get_many(self, keys: Sequence[str]) -> list[str | None]:
        if not keys:
            return []
        values = await self._client.mget([self._ns.key(key) for key in keys])
        return [None if value is None else str(value) for value in values]

    async def get_or_set(self, key: str, value: str) -> str:
        # MULTI/EXEC: nothing runs between the two, so the GET sees what SET NX left.
        async with self._client.pipeline(transaction=True) as pipeline:
            pipeline.set(self._ns.key(key), value, nx=True)
            pipeline.get(self._ns.key(key))
            _, current = await pipeline.execute()
        return str(current)

    async def delete(self, key: str) -> bool:
        return bool(await self._client.delete(self._ns.key(key)))


class _RedisSubscription:
    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    async def __aiter__(self) -> AsyncIterator[str]:
        async for message in self._pubsub.listen():
            if message.get("type") == "message":
                yield str(message["data"])


class RedisPubSub:
    """Redis PUBLISH/SUBSCRIBE on prefixed channels."""

    def __init__(self, client: Redis, namespace: _Namespace) -> None:
        self._client = client
        self._ns = namespace

    async def publish(self, channel: str, message: str) -> None:
        await self._client.publish(self._ns.key(channel), message)

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        pubsub = self._client.pubsub()
        # SUBSCRIBE is confirmed before we return, so no later publish is missed.
        await pubsub.subscribe(self._ns.key(channel))
        await pubsub.get_message(timeout=1.0)
        try:
            yield _RedisSubscription(pubsub)
        finally:
            # A dead connection must not turn a cancellation into another error.
            with contextlib.suppress(RedisError, OSError):
                await pubsub.unsubscribe()
            await pubsub.aclose()  # type: ignore[no-untyped-call]


class RedisCache:
    """The shared backend."""

    def __init__(self, client: Redis, key_prefix: str) -> None:
        namespace = _Namespace(key_prefix)
        self._client = client
        self._sorted_sets = RedisSortedSetStore(client, namespace)
        self._counters = RedisCounterStore(client, namespace)
        self._values = RedisKeyValueStore(client, namespace)
        self._pubsub = RedisPubSub(client, namespace)
        self._queue_states = RedisQueueStateStore(client, key_prefix)

    @classmethod
    def from_url(cls, url: str, key_prefix: str) -> RedisCache:
        """Connect lazily to ``url``; nothing is sent until the first command."""
        # redis-py's default pool raises MaxConnectionsError once 100 commands are in
        # flight; a burst of calls must wait for a free connection instead.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=100,
            timeout=5.0,
            decode_responses=True,
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            health_check_interval=30,
            # Notice half-open connections (the invalidation subscription blocks on one).
            socket_keepalive=True,
        )
        return cls(Redis.from_pool(pool), key_prefix)

    @property
    def sorted_sets(self) -> RedisSortedSetStore:
        return self._sorted_sets

    @property
    def counters(self) -> RedisCounterStore:
        return self._counters

    @property
    def values(self) -> RedisKeyValueStore:
        return self._values

    @property
    def pubsub(self) -> RedisPubSub:
        return self._pubsub

    @property
    def queue_states(self) -> RedisQueueStateStore:
        return self._queue_states

    @property
    def shared_between_processes(self) -> bool:
        return True

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except (RedisError, OSError):
            return False

    async def eviction_policy(self) -> str | None:
        try:
            configured = cast(dict[str, str], await self._client.config_get("maxmemory-policy"))
            return configured.get("maxmemory-policy")
        except ResponseError:
            pass  # CONFIG disabled or renamed (managed Redis services): INFO says it too
        try:
            memory = await self._client.info("memory")
        except ResponseError:
            return None
        policy = memory.get("maxmemory_policy")
        return None if policy is None else str(policy)

    async def persistence(self) -> bool | None:
        try:
            configured = cast(dict[str, str], await self._client.config_get("appendonly"))
            configured.update(cast(dict[str, str], await self._client.config_get("save")))
            return configured.get("appendonly") == "yes" or bool(configured.get("save", "").strip())
        except ResponseError:
            pass  # CONFIG disabled or renamed (managed Redis services): INFO tells of AOF
        try:
            persistence = await self._client.info("persistence")
        except ResponseError:
            return None
        # INFO does not show the snapshot schedule: without an AOF, nobody can tell.
        return True if str(persistence.get("aof_enabled")) == "1" else None

    async def shared_time(self) -> float:
        seconds, microseconds = await self._client.time()
        return int(seconds) + int(microseconds) / 1_000_000

    async def server_id(self) -> str | None:
        try:
            server = await self._client.info("server")
        except ResponseError:
            return None  # INFO disabled or renamed (managed Redis services)
        run_id = server.get("run_id")
        return None if run_id is None else str(run_id)

    async def close(self) -> None:
        await self._client.aclose()
