"""Bulk-loading waiting consumers into a queue's live state in Redis (benchmarks only).

A million consumers cannot enter through ``EnterQueue`` in a benchmark's time (each
needs a guest session, ≈ 125 per second here), so the crowd around the measured
consumers is written straight into the Redis keys of ``RedisQueueStateStore``: the
key names come from ``RedisQueueStateStore.keys`` and each entry is encoded by the
store's own encoder, so the crowd is exactly what ``enter`` would have written
(entries HASH, waiting ZSET, devices HASH; the ``seq`` counter is set by the
caller). Batches are pipelined (``batch`` consumers, three commands, per round
trip) so a shared Redis is never blocked for long. ``check_filled`` reads a few
of them back through the store (``views``) and fails if the layout has drifted.

Crowd consumers are ``cons_crowd<tag><index>``: they never call the service.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from fanfare_grpc.cache.queue_state_redis import RedisQueueStateStore, _encode_new
from fanfare_grpc.domain.queue_state import EntryRecord, EntryStatus, QueueRef

DEFAULT_BATCH = 5_000


def crowd_consumer(tag: str, index: int) -> str:
    """The id of crowd consumer ``index`` (letters and digits, like real ids)."""
    return f"cons_crowd{tag}{index:08d}"


def _parts(store: RedisQueueStateStore, queue: QueueRef) -> dict[str, str]:
    """The queue's keys by part name (``waiting``, ``entries``, ``devices``, ``seq``…)."""
    return {key.rsplit(":", 1)[1]: key for key in store.keys(queue)}


async def fill_waiting(
    client: Redis,
    store: RedisQueueStateStore,
    queue: QueueRef,
    *,
    tag: str,
    first_index: int,
    count: int,
    first_score: int,
    batch: int = DEFAULT_BATCH,
) -> None:
    """Add ``count`` QUEUED crowd consumers with scores ``first_score``, ``+1``, ….

    Scores at or above 1 are the after-opening order (``1 + n`` of the counter);
    the caller keeps them clear of the scores real entrants will get.
    """
    keys = _parts(store, queue)
    entered_at = time.time()
    for start in range(0, count, batch):
        size = min(batch, count - start)
        scores: dict[str, float] = {}
        entries: dict[str, str] = {}
        devices: dict[str, str] = {}
        for offset in range(start, start + size):
            index = first_index + offset
            consumer = crowd_consumer(tag, index)
            device_hash = f"crowd-device-{tag}-{index}"
            scores[consumer] = first_score + offset
            entries[consumer] = _encode_new(
                EntryRecord(
                    consumer_id=consumer,
                    session_id=f"sess_crowd{tag}{index:08d}",
                    device_hash=device_hash,
                    status=EntryStatus.QUEUED,
                    entered_at=entered_at,
                )
            )
            devices[device_hash] = consumer
        async with client.pipeline(transaction=False) as pipe:
            pipe.zadd(keys["waiting"], scores)
            pipe.hset(keys["entries"], mapping=entries)
            pipe.hset(keys["devices"], mapping=devices)
            await pipe.execute()


async def set_counter(
    client: Redis, store: RedisQueueStateStore, queue: QueueRef, value: int
) -> None:
    """Set the queue's counter: the next entrant after opening gets score ``value + 2``."""
    await client.set(_parts(store, queue)["seq"], str(value))


async def check_filled(
    store: RedisQueueStateStore,
    queue: QueueRef,
    expected: dict[str, int],
) -> None:
    """Read consumers back through the store; ``expected`` maps consumer → rank.

    Raises:
        RuntimeError: An entry is missing, not QUEUED, or not at its rank.
    """
    consumers = list(expected)
    views = await store.views(queue, consumers)
    for consumer, view in zip(consumers, views, strict=True):
        if view is None or view.entry.status is not EntryStatus.QUEUED:
            raise RuntimeError(f"bulk-loaded {consumer} reads back as {view!r}")
        if view.rank != expected[consumer]:
            raise RuntimeError(
                f"bulk-loaded {consumer} has rank {view.rank}, expected {expected[consumer]}"
            )


async def used_memory(client: Redis) -> int:
    """Redis ``used_memory`` in bytes (the whole server: other users included)."""
    info = await client.info("memory")
    return int(info["used_memory"])


async def redis_pid(client: Redis) -> int | None:
    """The Redis server's process id if it runs on this machine (for its CPU time)."""
    info = await client.info("server")
    pid = info.get("process_id")
    return int(pid) if pid is not None else None
