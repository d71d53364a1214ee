"""One contract, two backends: the in-process cache and Redis behave the same."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from fanfare_grpc.cache.memory import MemoryCache
from fanfare_grpc.cache.protocols import Cache, ScoredMember
from fanfare_grpc.cache.redis import RedisCache
from tests.backends import REDIS_URL, throwaway_redis_prefix

SHORT_TTL = 0.3
PAST_SHORT_TTL = 0.7


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    if request.param == "memory":
        memory = MemoryCache()
        yield memory
        await memory.close()
        return
    with throwaway_redis_prefix() as prefix:
        shared = RedisCache.from_url(REDIS_URL, prefix)
        try:
            yield shared
        finally:
            await shared.close()


async def test_ping(cache: Cache) -> None:
    assert await cache.ping()


async def test_sorted_set_orders_by_score_then_member(cache: Cache) -> None:
    store = cache.sorted_sets
    assert await store.add("q", "carol", 3)
    assert await store.add_many("q", {"alice": 1, "bob": 2, "bea": 2}) == 3
    assert await store.size("q") == 4
    assert await store.rank("q", "alice") == 0
    assert await store.rank("q", "bea") == 1  # same score: member order decides
    assert await store.rank("q", "bob") == 2
    assert await store.rank("q", "carol") == 3
    assert await store.range_by_rank("q", 0, -1) == [
        ScoredMember("alice", 1),
        ScoredMember("bea", 2),
        ScoredMember("bob", 2),
        ScoredMember("carol", 3),
    ]
    assert await store.range_by_rank("q", 1, 2) == [ScoredMember("bea", 2), ScoredMember("bob", 2)]
    assert await store.range_by_rank("q", -1, -1) == [ScoredMember("carol", 3)]
    assert await store.range_by_rank("q", 10, 20) == []


async def test_sorted_set_add_never_moves_an_existing_member(cache: Cache) -> None:
    store = cache.sorted_sets
    assert await store.add("q", "alice", 5)
    assert not await store.add("q", "alice", 1)
    assert await store.add_many("q", {"alice": 0, "bob": 6}) == 1
    assert await store.score("q", "alice") == 5
    assert await store.rank("q", "alice") == 0


async def test_sorted_set_missing_members_and_sets(cache: Cache) -> None:
    store = cache.sorted_sets
    assert await store.rank("nothing", "x") is None
    assert await store.score("nothing", "x") is None
    assert await store.size("nothing") == 0
    assert await store.pop_lowest("nothing", 5) == []
    assert not await store.remove("nothing", "x")
    assert await store.add_many("nothing", {}) == 0


async def test_sorted_set_remove_and_pop_lowest(cache: Cache) -> None:
    store = cache.sorted_sets
    await store.add_many("q", {f"m{i}": i for i in range(10)})
    assert await store.remove("q", "m0")
    assert not await store.remove("q", "m0")
    assert await store.rank("q", "m1") == 0
    assert await store.pop_lowest("q", 3) == [
        ScoredMember("m1", 1),
        ScoredMember("m2", 2),
        ScoredMember("m3", 3),
    ]
    assert await store.pop_lowest("q", 0) == []
    assert await store.size("q") == 6
    assert len(await store.pop_lowest("q", 100)) == 6
    assert await store.size("q") == 0


async def test_sorted_set_delete_and_isolation_between_keys(cache: Cache) -> None:
    store = cache.sorted_sets
    await store.add("a", "x", 1)
    await store.add("b", "x", 2)
    await store.delete("a")
    assert await store.size("a") == 0
    assert await store.score("b", "x") == 2


async def test_counter_counts_within_a_window(cache: Cache) -> None:
    counters = cache.counters
    first = await counters.increment("c", 1, ttl_seconds=60)
    assert first.value == 1
    assert 59 <= first.ttl_seconds <= 60
    second = await counters.increment("c", 4, ttl_seconds=60)
    assert second.value == 5
    assert 0 < second.ttl_seconds <= 60
    assert await counters.get("c") == 5
    assert await counters.get("other") == 0


async def test_counter_window_expires_and_is_not_extended(cache: Cache) -> None:
    counters = cache.counters
    await counters.increment("c", 1, ttl_seconds=SHORT_TTL)
    await asyncio.sleep(SHORT_TTL / 2)
    # A later increment with a longer TTL must not extend the current window.
    await counters.increment("c", 1, ttl_seconds=60)
    await asyncio.sleep(PAST_SHORT_TTL)
    assert await counters.get("c") == 0
    restarted = await counters.increment("c", 1, ttl_seconds=60)
    assert restarted.value == 1


async def test_set_if_absent_is_exclusive(cache: Cache) -> None:
    values = cache.values
    results = await asyncio.gather(
        *(values.set_if_absent("once", f"caller-{i}", ttl_seconds=60) for i in range(20))
    )
    assert results.count(True) == 1
    winner = results.index(True)
    assert await values.get("once") == f"caller-{winner}"


async def test_values_expire(cache: Cache) -> None:
    values = cache.values
    assert await values.set_if_absent("k", "v", ttl_seconds=SHORT_TTL)
    assert not await values.set_if_absent("k", "w", ttl_seconds=SHORT_TTL)
    await asyncio.sleep(PAST_SHORT_TTL)
    assert await values.get("k") is None
    assert await values.set_if_absent("k", "w", ttl_seconds=60)
    assert await values.get("k") == "w"


async def test_values_set_get_delete(cache: Cache) -> None:
    values = cache.values
    assert await values.get("k") is None
    await values.set("k", "one", ttl_seconds=60)
    await values.set("k", "two", ttl_seconds=60)
    assert await values.get("k") == "two"
    assert await values.delete("k")
    assert not await values.delete("k")
    assert await values.get("k") is None


async def test_values_get_many_answers_in_order(cache: Cache) -> None:
    values = cache.values
    await values.set("a", "one", ttl_seconds=60)
    await values.set("c", "three", ttl_seconds=60)
    assert await values.get_many(["a", "b", "c"]) == ["one", None, "three"]
    assert await values.get_many([]) == []


async def test_get_or_set_keeps_the_first_value_without_expiry(cache: Cache) -> None:
    values = cache.values
    results = await asyncio.gather(*(values.get_or_set("epoch", f"caller-{i}") for i in range(20)))
    assert len(set(results)) == 1  # every caller got the value the first one stored
    assert await values.get("epoch") == results[0]
    assert await values.get_or_set("epoch", "later") == results[0]
    # No expiry: it outlives every TTL'd value written with it.
    await values.set("short", "v", ttl_seconds=SHORT_TTL)
    await asyncio.sleep(PAST_SHORT_TTL)
    assert await values.get_many(["short", "epoch"]) == [None, results[0]]


async def test_pubsub_delivers_to_every_subscriber(cache: Cache) -> None:
    pubsub = cache.pubsub
    async with pubsub.subscribe("revocations") as first, pubsub.subscribe("revocations") as second:
        await pubsub.publish("revocations", "key_1")
        await pubsub.publish("other-channel", "ignored")
        await pubsub.publish("revocations", "key_2")

        async def take(subscription: object, count: int) -> list[str]:
            received: list[str] = []
            async for message in subscription:  # type: ignore[attr-defined]
                received.append(message)
                if len(received) == count:
                    return received
            return received

        assert await asyncio.wait_for(take(first, 2), timeout=5) == ["key_1", "key_2"]
        assert await asyncio.wait_for(take(second, 2), timeout=5) == ["key_1", "key_2"]


async def test_publish_without_subscribers_is_harmless(cache: Cache) -> None:
    await cache.pubsub.publish("nobody-listens", "hello")


async def test_memory_backend_is_not_shared_and_redis_is(cache: Cache) -> None:
    assert cache.shared_between_processes is isinstance(cache, RedisCache)


async def test_redis_keys_are_namespaced_by_prefix() -> None:
    with throwaway_redis_prefix() as prefix:
        first = RedisCache.from_url(REDIS_URL, prefix + "a")
        second = RedisCache.from_url(REDIS_URL, prefix + "b")
        try:
            await first.values.set("shared-name", "first", ttl_seconds=60)
            assert await second.values.get("shared-name") is None
        finally:
            await first.values.delete("shared-name")
            await first.close()
            await second.close()


async def test_memory_ttl_follows_the_injected_clock() -> None:
    now = [1000.0]
    memory = MemoryCache(clock=lambda: now[0])
    await memory.values.set("k", "v", ttl_seconds=10)
    await memory.counters.increment("c", 1, ttl_seconds=10)
    now[0] += 9.9
    assert await memory.values.get("k") == "v"
    assert await memory.counters.get("c") == 1
    now[0] += 0.2
    assert await memory.values.get("k") is None
    assert await memory.counters.get("c") == 0
