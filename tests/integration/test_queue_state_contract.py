"""One contract, two backends: live queue state in process and on Redis behaves the same.

Every rule in the ``QueueStateStore`` docstrings has a test here, run against both
backends; the concurrency tests hold both to "one call is one atomic step".
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio
from redis.crc import key_slot

from fanfare_grpc.cache.memory import MemoryCache
from fanfare_grpc.cache.redis import RedisCache
from fanfare_grpc.crypto.handoff_tokens import new_handoff_token_id
from fanfare_grpc.domain.queue_state import (
    MAX_ADMISSIONS_PER_CALL,
    EnterOutcome,
    EnterResult,
    EntryRecord,
    EntryStatus,
    MarkerCheck,
    QueueCounters,
    QueueRef,
    QueueStateStore,
    RedeemOutcome,
    StateMarker,
    Transition,
)
from tests.backends import REDIS_URL, throwaway_redis_prefix

QUEUE = QueueRef("org_1", "live", "queue_1")
OTHER_QUEUE = QueueRef("org_1", "live", "queue_2")
# Sub-microsecond digits: times must come back bit for bit (cjson would round them).
T0 = 1_700_000_000.1234567
TTL = 30.0
NEXT = -1.0  # "next in line"


def token_ids(count: int) -> list[str]:
    """Fresh handoff token ids, as the domain draws them for ``count`` admissions."""
    return [new_handoff_token_id() for _ in range(count)]


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[QueueStateStore]:
    if request.param == "memory":
        memory = MemoryCache()
        yield memory.queue_states
        await memory.close()
        return
    with throwaway_redis_prefix() as prefix:
        shared = RedisCache.from_url(REDIS_URL, prefix)
        try:
            yield shared.queue_states
        finally:
            await shared.close()


@dataclasses.dataclass(frozen=True)
class Evicting:
    """A store and a way to lose its entries behind its back, as an evicting Redis
    (or an operator's ``HDEL``) would."""

    store: QueueStateStore
    forget: Callable[[str], Awaitable[object]]  # one consumer's entry
    forget_all: Callable[[], Awaitable[object]]  # every entry of QUEUE (the hash evicted)


@pytest.fixture(params=["memory", "redis"])
async def evicting(request: pytest.FixtureRequest) -> AsyncIterator[Evicting]:
    if request.param == "memory":
        memory = MemoryCache()
        states = memory.queue_states

        async def forget(consumer: str) -> None:
            del states._queues[QUEUE].entries[consumer]

        async def forget_all() -> None:
            states._queues[QUEUE].entries.clear()

        yield Evicting(states, forget, forget_all)
        await memory.close()
        return
    with throwaway_redis_prefix() as prefix:
        shared = RedisCache.from_url(REDIS_URL, prefix)
        client = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
        entries_key = shared.queue_states.keys(QUEUE)[1]
        assert entries_key.endswith(":entries")
        try:
            yield Evicting(
                shared.queue_states,
                lambda consumer: client.hdel(entries_key, consumer),
                lambda: client.delete(entries_key),
            )
        finally:
            await client.aclose()
            await shared.close()


def record(
    consumer: str,
    *,
    device: str | None = None,
    at: float = T0,
    pre_queue: bool = False,
    session: str | None = None,
) -> EntryRecord:
    return EntryRecord(
        consumer_id=consumer,
        session_id=session or f"session-{consumer}",
        device_hash=device or f"device-{consumer}",
        status=EntryStatus.QUEUED,
        entered_at=at,
        pre_queue=pre_queue,
    )


async def enter(
    store: QueueStateStore,
    consumer: str,
    *,
    score: float = NEXT,
    device: str | None = None,
    max_size: int | None = None,
    at: float = T0,
    queue: QueueRef = QUEUE,
) -> EnterResult:
    return await store.enter(
        queue, record(consumer, device=device, at=at), score=score, max_size=max_size
    )


async def enter_all(store: QueueStateStore, *consumers: str) -> None:
    for consumer in consumers:
        assert (await enter(store, consumer)).outcome is EnterOutcome.ENTERED


async def ranks(store: QueueStateStore, *consumers: str) -> list[int | None]:
    return [None if v is None else v.rank for v in await store.views(QUEUE, consumers)]


async def status_of(store: QueueStateStore, consumer: str) -> EntryStatus | None:
    view = await store.view(QUEUE, consumer)
    return None if view is None else view.entry.status


async def admit_one(store: QueueStateStore, consumer: str, now: float = T0) -> EntryRecord:
    """Enter ``consumer`` and admit it (the queue must be otherwise empty)."""
    await enter_all(store, consumer)
    (admitted,) = await store.admit(QUEUE, token_ids(1), now, TTL)
    assert admitted.consumer_id == consumer
    return admitted


# enter


async def test_enter_queues_the_entry_and_keeps_its_fields(store: QueueStateStore) -> None:
    entry = record("alice", at=T0, pre_queue=True, session="session-x", device="device-x")
    result = await store.enter(QUEUE, entry, score=0.25, max_size=None)
    assert result.outcome is EnterOutcome.ENTERED
    assert result.view is not None
    assert result.view.rank == 0
    assert result.view.entry == entry
    assert await store.view(QUEUE, "alice") == result.view


async def test_enter_stores_a_fresh_queued_entry_whatever_the_caller_filled_in(
    store: QueueStateStore,
) -> None:
    stale = dataclasses.replace(
        record("alice"),
        status=EntryStatus.ADMITTED,
        admitted_at=T0,
        handoff_token_id="forged",
        handoff_expires_at=T0 + TTL,
        redeemed_at=T0,
        ended_at=T0,
    )
    result = await store.enter(QUEUE, stale, score=NEXT, max_size=None)
    assert result.view is not None
    assert result.view.entry == record("alice")
    assert (await store.redeem(QUEUE, "alice", "forged", T0)).outcome is RedeemOutcome.INVALID


async def test_entering_again_returns_the_existing_entry(store: QueueStateStore) -> None:
    await enter_all(store, "alice", "bob")
    again = await store.enter(
        QUEUE, record("bob", session="other", device="other", at=T0 + 5), score=0.1, max_size=1
    )
    assert again.outcome is EnterOutcome.ALREADY_ENTERED
    assert again.view is not None
    assert again.view.entry == record("bob")
    assert again.view.rank == 1
    assert await ranks(store, "alice", "bob") == [0, 1]
    assert (await store.counters(QUEUE, T0, 60)).waiting == 2


@pytest.mark.parametrize("status", ["admitted", "completed", "denied", "expired"])
async def test_entering_again_after_anything_but_leaving_returns_that_entry(
    store: QueueStateStore, status: str
) -> None:
    admitted = await admit_one(store, "alice")
    if status == "completed":
        await store.complete(QUEUE, "alice", T0 + 1)
    elif status == "denied":
        await store.deny(QUEUE, "alice", T0 + 1)
    elif status == "expired":
        assert len(await store.expire_admissions(QUEUE, T0 + TTL, 10)) == 1
    before = await store.view(QUEUE, "alice")
    assert before is not None
    assert before.entry.status == status

    again = await enter(store, "alice")
    assert again.outcome is EnterOutcome.ALREADY_ENTERED
    assert again.view == before
    assert again.view.rank is None
    assert again.view.entry.handoff_token_id == admitted.handoff_token_id


async def test_a_consumer_who_left_enters_again_at_the_back(store: QueueStateStore) -> None:
    await enter(store, "alice", score=0.1)
    await enter(store, "bob", score=0.2)
    await enter(store, "carol", score=0.3)
    left = await store.leave(QUEUE, "alice", T0 + 1)
    assert left is not None
    assert left.entry.status is EntryStatus.LEFT

    # Even with a pre-queue score: leaving must not be a way to redraw one's position.
    again = await store.enter(
        QUEUE, record("alice", session="session-2", at=T0 + 2), score=0.0, max_size=None
    )
    assert again.outcome is EnterOutcome.ENTERED
    assert again.view is not None
    assert again.view.rank == 2
    assert again.view.entry == record("alice", session="session-2", at=T0 + 2)
    assert await ranks(store, "bob", "carol", "alice") == [0, 1, 2]


async def test_a_returning_consumer_gets_a_new_token(store: QueueStateStore) -> None:
    first = await admit_one(store, "alice")
    await store.leave(QUEUE, "alice", T0 + 1)
    assert first.handoff_token_id is not None
    assert (
        await store.redeem(QUEUE, "alice", first.handoff_token_id, T0 + 1)
    ).outcome is RedeemOutcome.INVALID
    await enter(store, "alice")
    (second,) = await store.admit(QUEUE, token_ids(1), T0 + 2, TTL)
    assert second.handoff_token_id not in (None, first.handoff_token_id)
    assert (
        await store.redeem(QUEUE, "alice", first.handoff_token_id, T0 + 3)
    ).outcome is RedeemOutcome.INVALID
    redeemed = await store.redeem(QUEUE, "alice", str(second.handoff_token_id), T0 + 3)
    assert redeemed.outcome is RedeemOutcome.OK


async def test_a_device_is_taken_while_another_consumer_is_queued_or_admitted(
    store: QueueStateStore,
) -> None:
    await enter(store, "alice", device="shared")
    taken = await enter(store, "bob", device="shared")
    assert taken == EnterResult(EnterOutcome.DEVICE_TAKEN)
    assert await store.view(QUEUE, "bob") is None

    await store.admit(QUEUE, token_ids(1), T0, TTL)
    assert (await enter(store, "bob", device="shared")).outcome is EnterOutcome.DEVICE_TAKEN

    await store.complete(QUEUE, "alice", T0 + 1)
    assert (await enter(store, "bob", device="shared")).outcome is EnterOutcome.ENTERED
    assert (await enter(store, "carol", device="shared")).outcome is EnterOutcome.DEVICE_TAKEN


@pytest.mark.parametrize(
    "ending",
    ["leave_queued", "leave_admitted", "deny_queued", "deny_admitted", "complete", "expire"],
)
async def test_ending_an_entry_releases_its_device(store: QueueStateStore, ending: str) -> None:
    await enter(store, "alice", device="shared")
    if not ending.endswith("_queued"):
        await store.admit(QUEUE, token_ids(1), T0, TTL)
    assert (await enter(store, "bob", device="shared")).outcome is EnterOutcome.DEVICE_TAKEN

    if ending.startswith("leave"):
        await store.leave(QUEUE, "alice", T0 + 1)
    elif ending.startswith("deny"):
        await store.deny(QUEUE, "alice", T0 + 1)
    elif ending == "complete":
        await store.complete(QUEUE, "alice", T0 + 1)
    else:
        assert len(await store.expire_admissions(QUEUE, T0 + TTL, 10)) == 1

    assert (await enter(store, "bob", device="shared")).outcome is EnterOutcome.ENTERED


async def test_a_consumer_who_left_finds_the_device_taken_by_another(
    store: QueueStateStore,
) -> None:
    await enter(store, "alice", device="shared")
    await store.leave(QUEUE, "alice", T0 + 1)
    await enter(store, "bob", device="shared")
    assert (await enter(store, "alice", device="shared")).outcome is EnterOutcome.DEVICE_TAKEN
    assert await status_of(store, "alice") is EntryStatus.LEFT


async def test_full_when_max_size_consumers_are_waiting(store: QueueStateStore) -> None:
    assert (await enter(store, "a", max_size=2)).outcome is EnterOutcome.ENTERED
    assert (await enter(store, "b", max_size=2)).outcome is EnterOutcome.ENTERED
    assert await enter(store, "c", max_size=2) == EnterResult(EnterOutcome.FULL)
    assert await store.view(QUEUE, "c") is None
    # An unlimited call still enters; the same consumer gets its entry even when full.
    assert (await enter(store, "a", max_size=2)).outcome is EnterOutcome.ALREADY_ENTERED
    assert (await enter(store, "d", max_size=None)).outcome is EnterOutcome.ENTERED
    assert (await enter(store, "c", max_size=3)).outcome is EnterOutcome.FULL
    # Admitted consumers are no longer waiting.
    await store.admit(QUEUE, token_ids(2), T0, TTL)
    assert (await enter(store, "c", max_size=3)).outcome is EnterOutcome.ENTERED
    assert (await enter(store, "e", max_size=0)).outcome is EnterOutcome.FULL


async def test_next_in_line_comes_after_pre_queue_entrants_first_in_first_out(
    store: QueueStateStore,
) -> None:
    await enter(store, "late-1", score=NEXT)
    await enter(store, "pre-high", score=0.9, at=T0 - 100)
    await enter(store, "late-2", score=-5.0)
    await enter(store, "pre-low", score=0.0, at=T0 - 50)
    await enter(store, "pre-mid", score=0.5, at=T0 - 75)
    await enter(store, "late-3", score=NEXT)
    order = ["pre-low", "pre-mid", "pre-high", "late-1", "late-2", "late-3"]
    assert await ranks(store, *order) == [0, 1, 2, 3, 4, 5]
    admitted = await store.admit(QUEUE, token_ids(10), T0, TTL)
    assert [entry.consumer_id for entry in admitted] == order


async def test_equal_scores_are_ordered_by_consumer_id(store: QueueStateStore) -> None:
    await enter(store, "bob", score=0.5)
    await enter(store, "alice", score=0.5)
    assert await ranks(store, "alice", "bob") == [0, 1]
    assert [e.consumer_id for e in await store.admit(QUEUE, token_ids(2), T0, TTL)] == [
        "alice",
        "bob",
    ]


async def test_text_of_any_kind_round_trips(store: QueueStateStore) -> None:
    entry = record('zoë/\u2603"x', session='s\\/"é', device="dév ☃\n")
    result = await store.enter(QUEUE, entry, score=NEXT, max_size=None)
    assert result.view is not None
    assert result.view.entry == entry
    (admitted,) = await store.admit(QUEUE, token_ids(1), T0, TTL)
    assert (
        dataclasses.replace(
            admitted,
            status=EntryStatus.QUEUED,
            admitted_at=None,
            handoff_token_id=None,
            handoff_expires_at=None,
        )
        == entry
    )
    assert (await enter(store, "other", device="dév ☃\n")).outcome is EnterOutcome.DEVICE_TAKEN


async def test_ranks_follow_admissions_and_departures(store: QueueStateStore) -> None:
    await enter_all(store, "a", "b", "c", "d", "e")
    assert await ranks(store, "a", "b", "c", "d", "e") == [0, 1, 2, 3, 4]
    await store.leave(QUEUE, "c", T0)
    assert await ranks(store, "a", "b", "c", "d", "e") == [0, 1, None, 2, 3]
    await store.admit(QUEUE, token_ids(1), T0, TTL)
    assert await ranks(store, "a", "b", "c", "d", "e") == [None, 0, None, 1, 2]
    await store.deny(QUEUE, "d", T0)
    assert await ranks(store, "b", "e") == [0, 1]
    await enter_all(store, "f")
    assert await ranks(store, "b", "e", "f") == [0, 1, 2]


# view / views


async def test_view_of_a_consumer_who_never_entered_is_none(store: QueueStateStore) -> None:
    assert await store.view(QUEUE, "nobody") is None
    await enter_all(store, "alice")
    assert await store.view(QUEUE, "nobody") is None
    assert await store.view(OTHER_QUEUE, "alice") is None


async def test_views_answers_for_many_consumers_in_order(store: QueueStateStore) -> None:
    assert await store.views(QUEUE, []) == []
    assert await store.views(QUEUE, ["x", "y"]) == [None, None]
    await enter_all(store, "a", "b", "c")
    await store.admit(QUEUE, token_ids(1), T0, TTL)
    views = await store.views(QUEUE, ["c", "unknown", "a", "b", "c"])
    assert [None if v is None else (v.entry.consumer_id, v.rank) for v in views] == [
        ("c", 1),
        None,
        ("a", None),
        ("b", 0),
        ("c", 1),
    ]
    assert views[0] == await store.view(QUEUE, "c")
    assert views[2] == await store.view(QUEUE, "a")


# admit


async def test_admit_takes_the_lowest_scores_and_fills_in_the_handoff(
    store: QueueStateStore,
) -> None:
    await enter(store, "b", score=0.2)
    await enter(store, "a", score=0.1)
    await enter(store, "c", score=NEXT)
    now = T0 + 10.5
    admitted = await store.admit(QUEUE, token_ids(2), now, TTL)
    assert [entry.consumer_id for entry in admitted] == ["a", "b"]
    for entry in admitted:
        assert entry.status is EntryStatus.ADMITTED
        assert entry.admitted_at == now
        assert entry.handoff_expires_at == now + TTL
        assert entry.handoff_token_id
        assert entry.redeemed_at is None
        assert entry.ended_at is None
        assert entry.session_id == f"session-{entry.consumer_id}"
        assert entry.entered_at == T0
        view = await store.view(QUEUE, entry.consumer_id)
        assert view is not None
        assert view.entry == entry
        assert view.rank is None
    assert admitted[0].handoff_token_id != admitted[1].handoff_token_id

    assert [e.consumer_id for e in await store.admit(QUEUE, token_ids(5), now, TTL)] == ["c"]
    assert await store.admit(QUEUE, token_ids(5), now, TTL) == []
    assert await store.admit(OTHER_QUEUE, token_ids(5), now, TTL) == []


async def test_admit_nothing_for_a_count_of_zero(store: QueueStateStore) -> None:
    await enter_all(store, "a")
    assert await store.admit(QUEUE, token_ids(0), T0, TTL) == []
    assert await ranks(store, "a") == [0]


async def test_token_ids_are_unique_per_admission(store: QueueStateStore) -> None:
    await enter_all(store, *(f"c{i}" for i in range(20)))
    tokens = [e.handoff_token_id for e in await store.admit(QUEUE, token_ids(20), T0, TTL)]
    for i in range(5):
        await store.leave(QUEUE, f"c{i}", T0)
        await enter_all(store, f"c{i}")
    tokens += [e.handoff_token_id for e in await store.admit(QUEUE, token_ids(20), T0 + 1, TTL)]
    assert len(tokens) == 25
    assert None not in tokens
    assert len(set(tokens)) == 25


async def test_admit_takes_at_most_the_per_call_maximum(store: QueueStateStore) -> None:
    # One call is one Lua script on Redis, which serves nobody else while it runs.
    await enter_all(store, *(f"c{i:04d}" for i in range(MAX_ADMISSIONS_PER_CALL + 1)))
    with pytest.raises(ValueError, match="admissions per call"):
        await store.admit(QUEUE, token_ids(MAX_ADMISSIONS_PER_CALL + 1), T0, TTL)
    assert (await store.counters(QUEUE, T0, 60)).waiting == MAX_ADMISSIONS_PER_CALL + 1
    admitted = await store.admit(QUEUE, token_ids(MAX_ADMISSIONS_PER_CALL), T0, TTL)
    assert len(admitted) == MAX_ADMISSIONS_PER_CALL
    assert await ranks(store, f"c{MAX_ADMISSIONS_PER_CALL:04d}") == [0]


async def test_admission_takes_the_callers_token_ids_in_order(store: QueueStateStore) -> None:
    # The ids are the caller's random draws, never a counter of the store's: a
    # sequential jti would tell each token holder how many were admitted before.
    await enter_all(store, "a", "b", "c")
    given = ["ht_first", "ht_second", "ht_third", "ht_unused"]
    admitted = await store.admit(QUEUE, given, T0, TTL)
    assert [(e.consumer_id, e.handoff_token_id) for e in admitted] == [
        ("a", "ht_first"),
        ("b", "ht_second"),
        ("c", "ht_third"),
    ]
    view = await store.view(QUEUE, "b")
    assert view is not None and view.entry.handoff_token_id == "ht_second"
    assert (await store.redeem(QUEUE, "b", "ht_second", T0 + 1)).outcome is RedeemOutcome.OK
    assert (await store.redeem(QUEUE, "c", "ht_first", T0 + 1)).outcome is RedeemOutcome.INVALID
    # More ids than waiting consumers: only as many admissions as there were waiting.
    assert (await store.counters(QUEUE, T0 + 1, 60)).admitted_recently == 3


# expire_admissions


async def test_expire_admissions_ends_unredeemed_tokens_oldest_first(
    store: QueueStateStore,
) -> None:
    await enter_all(store, "a", "b", "c", "d", "e")
    await store.admit(QUEUE, token_ids(1), T0, TTL)  # a
    await store.admit(QUEUE, token_ids(2), T0 + 1, TTL)  # b, c
    await store.admit(QUEUE, token_ids(1), T0 + 100, TTL)  # d (expires much later)
    b = await store.view(QUEUE, "b")
    assert b is not None
    assert (
        await store.redeem(QUEUE, "b", str(b.entry.handoff_token_id), T0 + 2)
    ).outcome is RedeemOutcome.OK

    assert await store.expire_admissions(QUEUE, T0 + TTL - 0.001, 10) == []
    now = T0 + 1 + TTL  # exactly b's and c's expiry: due
    first = await store.expire_admissions(QUEUE, now, 1)
    assert [e.consumer_id for e in first] == ["a"]
    assert first[0].status is EntryStatus.EXPIRED
    assert first[0].ended_at == now
    assert first[0].admitted_at == T0
    assert first[0] == (await store.view(QUEUE, "a")).entry  # type: ignore[union-attr]
    assert [e.consumer_id for e in await store.expire_admissions(QUEUE, now, 10)] == ["c"]
    assert await store.expire_admissions(QUEUE, now, 10) == []
    assert await store.expire_admissions(QUEUE, T0 + 10_000, 0) == []

    assert await status_of(store, "b") is EntryStatus.ADMITTED  # redeemed: never expires
    assert await status_of(store, "d") is EntryStatus.ADMITTED
    assert await status_of(store, "e") is EntryStatus.QUEUED
    later = await store.expire_admissions(QUEUE, T0 + 10_000, 10)
    assert [e.consumer_id for e in later] == ["d"]
    assert await status_of(store, "b") is EntryStatus.ADMITTED
    counters = await store.counters(QUEUE, T0 + 10_000, 60)
    assert (counters.waiting, counters.admitted) == (1, 1)


# redeem


async def test_redeem_succeeds_once(store: QueueStateStore) -> None:
    admitted = await admit_one(store, "alice")
    token = str(admitted.handoff_token_id)
    ok = await store.redeem(QUEUE, "alice", token, T0 + 1.5)
    assert ok.outcome is RedeemOutcome.OK
    assert ok.entry == dataclasses.replace(admitted, redeemed_at=T0 + 1.5)
    assert (await store.view(QUEUE, "alice")).entry == ok.entry  # type: ignore[union-attr]

    again = await store.redeem(QUEUE, "alice", token, T0 + 2)
    assert again.outcome is RedeemOutcome.ALREADY_USED
    assert again.entry == ok.entry
    # Still ALREADY_USED past the token's expiry and after completion.
    assert (await store.redeem(QUEUE, "alice", token, T0 + 1000)).outcome is (
        RedeemOutcome.ALREADY_USED
    )
    await store.complete(QUEUE, "alice", T0 + 3)
    assert (await store.redeem(QUEUE, "alice", token, T0 + 4)).outcome is (
        RedeemOutcome.ALREADY_USED
    )


async def test_a_redemption_key_is_stored_with_the_redemption(store: QueueStateStore) -> None:
    admitted = await admit_one(store, "alice")
    token = str(admitted.handoff_token_id)
    ok = await store.redeem(QUEUE, "alice", token, T0 + 1.5, "key-a")
    assert (ok.outcome, ok.replayed) == (RedeemOutcome.OK, False)
    # The same key, even past the token's expiry or after completion: OK, replayed.
    for now in (T0 + 2, T0 + 1000):
        again = await store.redeem(QUEUE, "alice", token, now, "key-a")
        assert (again.outcome, again.replayed, again.entry) == (RedeemOutcome.OK, True, ok.entry)
    # Another key or none: the grant is spent.
    for other in ("key-b", None):
        refused = await store.redeem(QUEUE, "alice", token, T0 + 2, other)
        assert (refused.outcome, refused.replayed) == (RedeemOutcome.ALREADY_USED, False)
    await store.complete(QUEUE, "alice", T0 + 3)
    assert (await store.redeem(QUEUE, "alice", token, T0 + 4, "key-a")).outcome is (
        RedeemOutcome.OK
    )
    # A redemption without a key leaves nothing any key could replay.
    bob = await admit_one(store, "bob")
    bob_token = str(bob.handoff_token_id)
    assert (await store.redeem(QUEUE, "bob", bob_token, T0 + 2)).outcome is RedeemOutcome.OK
    assert (await store.redeem(QUEUE, "bob", bob_token, T0 + 3, "")).outcome is (
        RedeemOutcome.ALREADY_USED
    )


async def test_redeem_after_the_token_expired(store: QueueStateStore) -> None:
    admitted = await admit_one(store, "alice")
    token = str(admitted.handoff_token_id)
    assert (await store.redeem(QUEUE, "bob", token, T0 + TTL)).outcome is RedeemOutcome.INVALID
    late = await store.redeem(QUEUE, "alice", token, T0 + TTL)  # at the expiry instant
    assert late.outcome is RedeemOutcome.EXPIRED
    assert late.entry == admitted  # unchanged: expire_admissions reports the expiry
    await store.expire_admissions(QUEUE, T0 + TTL, 10)
    expired = await store.redeem(QUEUE, "alice", token, T0 + 1)
    assert expired.outcome is RedeemOutcome.EXPIRED
    assert expired.entry is not None
    assert expired.entry.status is EntryStatus.EXPIRED


async def test_redeem_just_before_expiry_succeeds(store: QueueStateStore) -> None:
    admitted = await admit_one(store, "alice")
    result = await store.redeem(
        QUEUE, "alice", str(admitted.handoff_token_id), T0 + TTL - 0.000_001
    )
    assert result.outcome is RedeemOutcome.OK
    assert await store.expire_admissions(QUEUE, T0 + 10 * TTL, 10) == []


@pytest.mark.parametrize("case", ["unknown", "wrong_token", "queued", "denied", "left"])
async def test_redeem_is_invalid(store: QueueStateStore, case: str) -> None:
    admitted = await admit_one(store, "alice")
    token = str(admitted.handoff_token_id)
    await enter_all(store, "bob")
    consumer = "alice"
    if case == "unknown":
        consumer = "nobody"
    elif case == "wrong_token":
        token = token + "0"
    elif case == "queued":
        consumer = "bob"
    elif case == "denied":
        await store.deny(QUEUE, "alice", T0 + 1)
    elif case == "left":
        await store.leave(QUEUE, "alice", T0 + 1)
    before = await store.view(QUEUE, consumer)

    result = await store.redeem(QUEUE, consumer, token, T0 + 2)
    assert result.outcome is RedeemOutcome.INVALID
    assert result.entry == (None if before is None else before.entry)
    assert await store.view(QUEUE, consumer) == before
    assert (await store.redeem(OTHER_QUEUE, "alice", token, T0 + 2)).outcome is (
        RedeemOutcome.INVALID
    )


async def test_redeem_of_a_completed_but_unredeemed_entry_is_invalid(
    store: QueueStateStore,
) -> None:
    admitted = await admit_one(store, "alice")
    await store.complete(QUEUE, "alice", T0 + 1)
    result = await store.redeem(QUEUE, "alice", str(admitted.handoff_token_id), T0 + 2)
    assert result.outcome is RedeemOutcome.INVALID
    assert result.entry is not None
    assert result.entry.status is EntryStatus.COMPLETED


# leave / deny / complete


async def test_leave_deny_and_complete_of_unknown_consumers_are_none(
    store: QueueStateStore,
) -> None:
    assert await store.leave(QUEUE, "nobody", T0) is None
    assert await store.deny(QUEUE, "nobody", T0) is None
    assert await store.complete(QUEUE, "nobody", T0) is None


@pytest.mark.parametrize("admitted", [False, True], ids=["queued", "admitted"])
@pytest.mark.parametrize("status", [EntryStatus.LEFT, EntryStatus.DENIED])
async def test_leave_and_deny_end_queued_and_admitted_entries(
    store: QueueStateStore, admitted: bool, status: EntryStatus
) -> None:
    await enter_all(store, "alice", "bob")
    token = None
    if admitted:
        (entry,) = await store.admit(QUEUE, token_ids(1), T0, TTL)
        token = entry.handoff_token_id
    end = store.leave if status is EntryStatus.LEFT else store.deny
    moved = await end(QUEUE, "alice", T0 + 7)
    assert moved is not None and moved.changed
    ended = moved.entry
    assert ended.status is status
    assert ended.ended_at == T0 + 7
    assert ended.handoff_token_id == token
    assert (await store.view(QUEUE, "alice")).entry == ended  # type: ignore[union-attr]
    assert await ranks(store, "alice", "bob") == [None, 0]
    counters = await store.counters(QUEUE, T0 + 7, 60)
    assert (counters.waiting, counters.admitted) == (1, 0)
    if token is not None:
        assert (await store.redeem(QUEUE, "alice", token, T0 + 8)).outcome is (
            RedeemOutcome.INVALID
        )
        assert await store.expire_admissions(QUEUE, T0 + 10 * TTL, 10) == []


async def test_a_redeemed_admission_cannot_leave(store: QueueStateStore) -> None:
    # Leaving would free the consumer to enter again at the back and be admitted
    # with a fresh token: grants could be chained.
    await enter_all(store, "alice", "bob")
    (entry,) = await store.admit(QUEUE, token_ids(1), T0, TTL)
    assert entry.handoff_token_id is not None
    redeemed = await store.redeem(QUEUE, "alice", entry.handoff_token_id, T0 + 1)
    assert redeemed.outcome is RedeemOutcome.OK
    unchanged = await store.leave(QUEUE, "alice", T0 + 2)
    assert unchanged is not None and not unchanged.changed
    assert (unchanged.entry.status, unchanged.entry.redeemed_at) == (EntryStatus.ADMITTED, T0 + 1)
    assert (await enter(store, "alice")).outcome is EnterOutcome.ALREADY_ENTERED
    # Denial still ends it (an operator's decision).
    denied = await store.deny(QUEUE, "alice", T0 + 3)
    assert denied is not None and denied.changed
    assert denied.entry.status is EntryStatus.DENIED


async def test_complete_ends_admitted_entries_only(store: QueueStateStore) -> None:
    await enter_all(store, "alice", "bob")
    await store.admit(QUEUE, token_ids(1), T0, TTL)
    queued = await store.complete(QUEUE, "bob", T0 + 1)
    assert queued is not None and not queued.changed
    assert queued.entry.status is EntryStatus.QUEUED
    assert await ranks(store, "bob") == [0]

    done = await store.complete(QUEUE, "alice", T0 + 2)
    assert done is not None and done.changed
    assert done.entry.status is EntryStatus.COMPLETED
    assert done.entry.ended_at == T0 + 2
    assert done.entry.admitted_at == T0
    counters = await store.counters(QUEUE, T0 + 2, 60)
    assert (counters.waiting, counters.admitted, counters.completed) == (1, 0, 1)
    assert await store.expire_admissions(QUEUE, T0 + 10 * TTL, 10) == []


@pytest.mark.parametrize(
    "status",
    [EntryStatus.LEFT, EntryStatus.DENIED, EntryStatus.COMPLETED, EntryStatus.EXPIRED],
)
async def test_ended_entries_are_returned_unchanged(
    store: QueueStateStore, status: EntryStatus
) -> None:
    await admit_one(store, "alice")
    if status is EntryStatus.LEFT:
        await store.leave(QUEUE, "alice", T0 + 1)
    elif status is EntryStatus.DENIED:
        await store.deny(QUEUE, "alice", T0 + 1)
    elif status is EntryStatus.COMPLETED:
        await store.complete(QUEUE, "alice", T0 + 1)
    else:
        await store.expire_admissions(QUEUE, T0 + TTL, 10)
    view = await store.view(QUEUE, "alice")
    assert view is not None
    ended = view.entry
    assert ended.status is status
    before = await store.counters(QUEUE, T0 + 50, 60)

    unchanged = Transition(ended, changed=False)
    assert await store.leave(QUEUE, "alice", T0 + 50) == unchanged
    assert await store.deny(QUEUE, "alice", T0 + 50) == unchanged
    assert await store.complete(QUEUE, "alice", T0 + 50) == unchanged
    assert await store.expire_admissions(QUEUE, T0 + 50, 10) == []
    assert await store.view(QUEUE, "alice") == view
    assert await store.counters(QUEUE, T0 + 50, 60) == before


# counters


async def test_counters_of_an_empty_queue(store: QueueStateStore) -> None:
    counters = await store.counters(QUEUE, T0, 60)
    assert (counters.waiting, counters.admitted, counters.completed) == (0, 0, 0)
    assert counters.admitted_recently == 0
    assert counters.head_entered_at is None


async def test_counters_count_what_the_queue_holds(store: QueueStateStore) -> None:
    await enter(store, "a", at=T0 + 1)
    await enter(store, "b", at=T0 + 2)
    await enter(store, "c", at=T0 + 3)
    await enter(store, "d", at=T0 + 4)
    await enter(store, "early", score=0.5, at=T0 + 9)
    counters = await store.counters(QUEUE, T0 + 10, 60)
    assert counters.waiting == 5
    assert counters.head_entered_at == T0 + 9  # the head of the line, not the earliest

    await store.admit(QUEUE, token_ids(3), T0 + 10, TTL)  # early, a, b
    (b,) = [e for e in await store.views(QUEUE, ["b"]) if e is not None]
    await store.redeem(QUEUE, "b", str(b.entry.handoff_token_id), T0 + 11)
    await store.complete(QUEUE, "a", T0 + 12)
    counters = await store.counters(QUEUE, T0 + 12, 60)
    assert counters.waiting == 2
    assert counters.admitted == 2  # early (unredeemed) and b (redeemed)
    assert counters.completed == 1
    assert counters.admitted_recently == 3
    assert counters.head_entered_at == T0 + 3

    await store.leave(QUEUE, "c", T0 + 13)
    await store.deny(QUEUE, "d", T0 + 13)
    counters = await store.counters(QUEUE, T0 + 13, 60)
    assert (counters.waiting, counters.head_entered_at) == (0, None)
    assert (counters.denied, counters.left, counters.expired) == (1, 1, 0)
    # early's token expires unredeemed; denying or leaving twice counts once.
    await store.expire_admissions(QUEUE, T0 + 10 + TTL, 10)
    await store.deny(QUEUE, "d", T0 + 14)
    await store.leave(QUEUE, "c", T0 + 14)
    counters = await store.counters(QUEUE, T0 + 10 + TTL, 60)
    assert (counters.admitted, counters.completed) == (1, 1)
    assert (counters.denied, counters.left, counters.expired) == (1, 1, 1)


async def test_admitted_recently_counts_admissions_after_the_window_start(
    store: QueueStateStore,
) -> None:
    await enter_all(store, *(f"c{i}" for i in range(6)))
    await store.admit(QUEUE, token_ids(2), T0 + 100, TTL)
    await store.admit(QUEUE, token_ids(3), T0 + 200, TTL)
    now = T0 + 250
    assert (await store.counters(QUEUE, now, 1000)).admitted_recently == 5
    assert (await store.counters(QUEUE, now, 150)).admitted_recently == 3  # after T0 + 100
    assert (await store.counters(QUEUE, now, 100)).admitted_recently == 3
    assert (await store.counters(QUEUE, now, 50)).admitted_recently == 0  # after T0 + 200
    assert (await store.counters(QUEUE, now, 50.001)).admitted_recently == 3


async def test_admission_history_is_kept_for_an_hour(store: QueueStateStore) -> None:
    await enter_all(store, "a", "b", "c")
    await store.admit(QUEUE, token_ids(2), T0, TTL)
    await store.admit(QUEUE, token_ids(1), T0 + 3600, TTL)  # trims admissions at or before T0
    assert (await store.counters(QUEUE, T0 + 3600, 7200)).admitted_recently == 1
    completed = await store.counters(QUEUE, T0 + 3600, 60)
    assert completed.admitted == 3  # only the rate history is trimmed


# missing entries (eviction, an operator's HDEL): skipped and counted, never an error


async def test_admit_skips_consumers_whose_entry_is_missing(evicting: Evicting) -> None:
    store = evicting.store
    await enter_all(store, "a", "b", "c", "d", "e")
    await evicting.forget("b")
    await evicting.forget("d")
    admitted = await store.admit(QUEUE, ["ht_1", "ht_2", "ht_3"], T0, TTL)
    # b and d are skipped and use no token id: still three admitted, in line order.
    assert [(e.consumer_id, e.handoff_token_id) for e in admitted] == [
        ("a", "ht_1"),
        ("c", "ht_2"),
        ("e", "ht_3"),
    ]
    counters = await store.counters(QUEUE, T0, 60)
    assert (counters.waiting, counters.admitted, counters.missing) == (0, 3, 2)
    assert counters.admitted_recently == 3
    assert await store.views(QUEUE, ["b", "d"]) == [None, None]
    # b's device is free for someone else, and b (out of line now) may enter again.
    assert (await enter(store, "x", device="device-b")).outcome is EnterOutcome.ENTERED
    assert (await enter(store, "b", device="device-b2")).outcome is EnterOutcome.ENTERED
    assert await ranks(store, "x", "b") == [0, 1]


async def test_admit_when_every_entry_is_missing_admits_nobody(evicting: Evicting) -> None:
    store = evicting.store
    await enter_all(store, "a", "b", "c")
    await evicting.forget_all()
    assert await store.admit(QUEUE, token_ids(5), T0, TTL) == []
    counters = await store.counters(QUEUE, T0, 60)
    assert (counters.waiting, counters.admitted, counters.missing) == (0, 0, 3)
    assert counters.head_entered_at is None
    assert (await enter(store, "a")).outcome is EnterOutcome.ENTERED
    (admitted,) = await store.admit(QUEUE, token_ids(5), T0, TTL)
    assert admitted.consumer_id == "a"


async def test_one_admit_call_takes_at_most_the_per_call_maximum_missing_ones_included(
    evicting: Evicting,
) -> None:
    # A whole line whose entries were evicted: one admission of one consumer must not
    # walk it in one call (one Lua script, Redis serving nobody else meanwhile).
    store = evicting.store
    line = 2 * MAX_ADMISSIONS_PER_CALL + 10
    await enter_all(store, *(f"c{i:04d}" for i in range(line)))
    await evicting.forget_all()
    await enter(store, "present")
    first = await store.admit(QUEUE, token_ids(1), T0, TTL)
    assert first == []
    assert (first.skipped, first.popped, first.waiting) == (
        MAX_ADMISSIONS_PER_CALL,
        MAX_ADMISSIONS_PER_CALL,
        line + 1 - MAX_ADMISSIONS_PER_CALL,
    )
    assert (await store.counters(QUEUE, T0, 60)).waiting == first.waiting
    second = await store.admit(QUEUE, token_ids(1), T0, TTL)
    assert (second, second.skipped, second.waiting) == ([], MAX_ADMISSIONS_PER_CALL, 11)
    (admitted,) = third = await store.admit(QUEUE, token_ids(1), T0, TTL)
    assert admitted.consumer_id == "present"
    assert (third.skipped, third.popped, third.waiting) == (10, 11, 0)
    counters = await store.counters(QUEUE, T0, 60)
    assert (counters.waiting, counters.admitted, counters.missing) == (0, 1, line)


async def test_admit_says_how_many_are_still_waiting(store: QueueStateStore) -> None:
    await enter_all(store, "a", "b", "c", "d", "e")
    two = await store.admit(QUEUE, token_ids(2), T0, TTL)
    assert ([e.consumer_id for e in two], two.skipped, two.popped, two.waiting) == (
        ["a", "b"],
        0,
        2,
        3,
    )
    rest = await store.admit(QUEUE, token_ids(5), T0, TTL)
    assert ([e.consumer_id for e in rest], rest.popped, rest.waiting) == (["c", "d", "e"], 3, 0)
    none = await store.admit(QUEUE, token_ids(5), T0, TTL)
    assert (none, none.popped, none.waiting) == ([], 0, 0)
    await enter(store, "f")
    assert (await store.admit(QUEUE, token_ids(0), T0, TTL)).waiting == 1


async def test_expiry_drops_admissions_whose_entry_is_missing(evicting: Evicting) -> None:
    store = evicting.store
    await enter_all(store, "a", "b", "c")
    await store.admit(QUEUE, token_ids(3), T0, TTL)
    await evicting.forget("a")
    await evicting.forget("c")
    expired = await store.expire_admissions(QUEUE, T0 + TTL, 10)
    assert [e.consumer_id for e in expired] == ["b"]
    counters = await store.counters(QUEUE, T0 + TTL, 60)
    assert (counters.admitted, counters.expired, counters.missing) == (0, 1, 2)
    assert await store.expire_admissions(QUEUE, T0 + TTL, 10) == []
    assert (await enter(store, "x", device="device-a")).outcome is EnterOutcome.ENTERED


async def test_every_other_operation_treats_a_missing_entry_as_never_entered(
    evicting: Evicting,
) -> None:
    store = evicting.store
    await enter_all(store, "head", "next")
    await evicting.forget("head")
    counters = await store.counters(QUEUE, T0, 60)
    # The head of the line has no entry: no wait estimate from it, nothing fails.
    assert (counters.waiting, counters.head_entered_at) == (2, None)
    assert await store.view(QUEUE, "head") is None
    assert await store.leave(QUEUE, "head", T0) is None
    assert await store.deny(QUEUE, "head", T0) is None
    assert await store.complete(QUEUE, "head", T0) is None
    assert (await store.redeem(QUEUE, "head", "ht_any", T0)).outcome is RedeemOutcome.INVALID
    (admitted,) = await store.admit(QUEUE, token_ids(1), T0, TTL)
    assert admitted.consumer_id == "next"
    assert (await store.counters(QUEUE, T0, 60)).missing == 1


# drop and isolation


async def test_queues_are_independent(store: QueueStateStore) -> None:
    await enter(store, "alice", device="shared")
    other = await enter(store, "bob", device="shared", queue=OTHER_QUEUE)
    assert other.outcome is EnterOutcome.ENTERED
    assert (await enter(store, "alice", queue=OTHER_QUEUE)).outcome is EnterOutcome.ENTERED
    assert await ranks(store, "alice", "bob") == [0, None]
    await store.admit(OTHER_QUEUE, token_ids(2), T0, TTL)
    assert await ranks(store, "alice") == [0]
    assert (await store.counters(QUEUE, T0, 60)).admitted == 0


async def test_drop_forgets_the_queue(store: QueueStateStore) -> None:
    await enter_all(store, "a", "b", "c")
    await store.enter(OTHER_QUEUE, record("a"), score=NEXT, max_size=None)
    await store.admit(QUEUE, token_ids(2), T0, TTL)
    await store.complete(QUEUE, "a", T0 + 1)
    await store.drop(QUEUE)
    assert await store.views(QUEUE, ["a", "b", "c"]) == [None, None, None]
    assert await store.counters(QUEUE, T0 + 1, 60) == QueueCounters(0, 0, 0, 0, None)
    assert await store.admit(QUEUE, token_ids(5), T0 + 1, TTL) == []
    assert await store.view(OTHER_QUEUE, "a") is not None
    assert (await enter(store, "b")).outcome is EnterOutcome.ENTERED
    assert await ranks(store, "b") == [0]
    await store.drop(QUEUE)
    await store.drop(QUEUE)


# concurrency


async def test_concurrent_redeems_of_one_token_succeed_once(store: QueueStateStore) -> None:
    admitted = await admit_one(store, "alice")
    token = str(admitted.handoff_token_id)
    results = await asyncio.gather(
        *(store.redeem(QUEUE, "alice", token, T0 + 1) for _ in range(50))
    )
    outcomes = [result.outcome for result in results]
    assert outcomes.count(RedeemOutcome.OK) == 1
    assert outcomes.count(RedeemOutcome.ALREADY_USED) == 49


async def test_concurrent_entries_never_exceed_max_size(store: QueueStateStore) -> None:
    results = await asyncio.gather(*(enter(store, f"c{i}", max_size=100) for i in range(200)))
    outcomes = [result.outcome for result in results]
    assert outcomes.count(EnterOutcome.ENTERED) == 100
    assert outcomes.count(EnterOutcome.FULL) == 100
    assert (await store.counters(QUEUE, T0, 60)).waiting == 100
    ranks_given = sorted(r.view.rank for r in results if r.view is not None)
    assert len(set(ranks_given)) == 100


async def test_concurrent_admissions_never_admit_a_consumer_twice(
    store: QueueStateStore,
) -> None:
    await enter_all(store, *(f"c{i}" for i in range(50)))
    batches = await asyncio.gather(*(store.admit(QUEUE, token_ids(7), T0, TTL) for _ in range(10)))
    admitted = [entry for batch in batches for entry in batch]
    assert sorted(entry.consumer_id for entry in admitted) == sorted(f"c{i}" for i in range(50))
    assert len({entry.handoff_token_id for entry in admitted}) == 50
    counters = await store.counters(QUEUE, T0, 60)
    assert (counters.waiting, counters.admitted) == (0, 50)


@pytest.mark.parametrize("status", [EntryStatus.LEFT, EntryStatus.DENIED, EntryStatus.COMPLETED])
async def test_concurrent_transitions_change_an_entry_once(
    store: QueueStateStore, status: EntryStatus
) -> None:
    # Exactly one caller learns it made the change: the one that publishes the event.
    await admit_one(store, "alice")
    move = {
        EntryStatus.LEFT: store.leave,
        EntryStatus.DENIED: store.deny,
        EntryStatus.COMPLETED: store.complete,
    }[status]
    results = await asyncio.gather(*(move(QUEUE, "alice", T0 + 1) for _ in range(20)))
    assert all(result is not None and result.entry.status is status for result in results)
    assert [result.changed for result in results if result is not None].count(True) == 1
    assert len({result.entry for result in results if result is not None}) == 1


async def test_concurrent_entries_on_one_device_enter_once(store: QueueStateStore) -> None:
    results = await asyncio.gather(*(enter(store, f"c{i}", device="shared") for i in range(30)))
    outcomes = [result.outcome for result in results]
    assert outcomes.count(EnterOutcome.ENTERED) == 1
    assert outcomes.count(EnterOutcome.DEVICE_TAKEN) == 29


# Redis layout


async def test_redis_keys_of_a_queue_share_one_cluster_slot() -> None:
    with throwaway_redis_prefix() as prefix:
        cache = RedisCache.from_url(REDIS_URL, prefix)
        client = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            store = cache.queue_states
            await enter_all(store, "a", "b", "c", "d", "e")
            await enter(store, "f", score=0.5)
            await store.views(QUEUE, ["a", "z"])
            admitted = await store.admit(QUEUE, token_ids(4), T0, TTL)
            await store.redeem(QUEUE, "b", str(admitted[1].handoff_token_id), T0 + 1)
            await store.complete(QUEUE, "b", T0 + 2)
            await store.leave(QUEUE, "c", T0 + 2)
            await store.deny(QUEUE, "d", T0 + 2)
            await store.expire_admissions(QUEUE, T0 + TTL, 10)
            await store.counters(QUEUE, T0 + TTL, 60)
            await store.admit(QUEUE, token_ids(1), T0 + TTL, TTL)
            await enter_all(store, "g")
            await store.start(QUEUE, StateMarker("e1", T0))
            await store.views(QUEUE, ["a"], check=MarkerCheck(T0, "e2"))

            keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
            assert {key.rsplit(":", 1)[1] for key in keys} == {
                "waiting",
                "entries",
                "devices",
                "admitted",
                "seq",
                "counts",
                "admissions",
                "meta",
            }
            assert all(key.startswith(f"{prefix}:q:{QUEUE.hash_tag}:") for key in keys)
            slot = key_slot(b"org_1:live:queue_1")
            assert {key_slot(key.encode()) for key in keys} == {slot}

            await store.drop(QUEUE)
            assert [key async for key in client.scan_iter(match=f"{prefix}:*")] == []
        finally:
            await client.aclose()
            await cache.close()


# Lost state (see ``queue_state``'s module doc): the marker tells a queue whose state
# vanished from one that never had any.


@dataclasses.dataclass(frozen=True)
class Losing:
    """A store and a way to lose QUEUE's whole state behind its back, as a Redis
    restarted without persistence (or flushed) would."""

    store: QueueStateStore
    lose: Callable[[], Awaitable[object]]


@pytest.fixture(params=["memory", "redis"])
async def losing(request: pytest.FixtureRequest) -> AsyncIterator[Losing]:
    if request.param == "memory":
        memory = MemoryCache()
        states = memory.queue_states

        async def lose() -> None:
            states._queues.clear()

        yield Losing(states, lose)
        await memory.close()
        return
    with throwaway_redis_prefix() as prefix:
        shared = RedisCache.from_url(REDIS_URL, prefix)
        client = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            # Only this test's own keys (a throwaway prefix): the shared Redis is never
            # flushed.
            yield Losing(
                shared.queue_states, lambda: client.delete(*shared.queue_states.keys(QUEUE))
            )
        finally:
            await client.aclose()
            await shared.close()


def check(at: float = T0, epoch: str = "epoch-2") -> MarkerCheck:
    return MarkerCheck(at, epoch)


async def test_start_writes_the_marker_once(store: QueueStateStore) -> None:
    assert (await store.views(QUEUE, ["a"])).marker is None
    first = await store.start(QUEUE, StateMarker("epoch-1", T0))
    assert first == StateMarker("epoch-1", T0)
    # A second start (DRAFT again, then SCHEDULED again) keeps the first marker.
    assert await store.start(QUEUE, StateMarker("epoch-9", T0 + 5)) == first
    views = await store.views(QUEUE, ["a"], check=check())
    assert views == [None]
    assert views.marker == first and not views.declared_lost
    assert (await store.views(OTHER_QUEUE, ["a"])).marker is None


async def test_a_started_queue_whose_state_vanished_is_declared_lost_once(
    losing: Losing,
) -> None:
    store = losing.store
    await store.start(QUEUE, StateMarker("epoch-1", T0))
    await enter_all(store, "a", "b")
    await losing.lose()

    # Without a check (the caller does not know the queue must have state) nothing is
    # written and nothing declared.
    unchecked = await store.views(QUEUE, ["a"])
    assert unchecked == [None] and unchecked.marker is None and not unchecked.declared_lost

    views = await store.views(QUEUE, ["a", "b"], check=check(T0 + 10))
    assert views == [None, None]
    assert views.marker == StateMarker("epoch-2", T0 + 10, lost_at=T0 + 10)
    assert views.declared_lost
    # Declared by that call only: later checks (any method) see the same marker.
    again = await store.views(QUEUE, ["a"], check=check(T0 + 20, "epoch-3"))
    assert again.marker == views.marker and not again.declared_lost
    assert await store.check_marker(QUEUE, check(T0 + 30, "epoch-4")) == (views.marker, False)
    counters = await store.counters(QUEUE, T0 + 30, 60, check=check(T0 + 30, "epoch-5"))
    assert counters.marker == views.marker and not counters.declared_lost
    assert (counters.waiting, counters.admitted) == (0, 0)

    # Entering again works, and the marker (with its lost_at) stays.
    entered = await store.enter(
        QUEUE, record("a"), score=NEXT, max_size=None, check=check(T0 + 40, "epoch-6")
    )
    assert entered.outcome is EnterOutcome.ENTERED
    assert entered.marker == views.marker and not entered.declared_lost
    after = await store.views(QUEUE, ["a", "b"], check=check(T0 + 50, "epoch-7"))
    assert after[0] is not None and after[0].rank == 0
    assert after[1] is None and after.marker == views.marker


async def test_each_checking_method_can_declare_the_loss(losing: Losing) -> None:
    store = losing.store
    await store.start(QUEUE, StateMarker("epoch-1", T0))
    await losing.lose()
    entered = await store.enter(
        QUEUE, record("a"), score=NEXT, max_size=None, check=check(T0 + 1, "by-enter")
    )
    assert entered.outcome is EnterOutcome.ENTERED and entered.declared_lost
    assert entered.marker == StateMarker("by-enter", T0 + 1, lost_at=T0 + 1)

    await losing.lose()
    counters = await store.counters(QUEUE, T0 + 2, 60, check=check(T0 + 2, "by-counters"))
    assert counters.declared_lost
    assert counters.marker == StateMarker("by-counters", T0 + 2, lost_at=T0 + 2)

    await losing.lose()
    marker, declared = await store.check_marker(QUEUE, check(T0 + 3, "by-check"))
    assert declared and marker == StateMarker("by-check", T0 + 3, lost_at=T0 + 3)


async def test_state_without_a_marker_is_adopted_not_lost(store: QueueStateStore) -> None:
    # Written by a release before markers (or by ``enter`` without a check).
    await enter_all(store, "a")
    views = await store.views(QUEUE, ["a"], check=check(T0 + 5, "adopted"))
    assert views[0] is not None
    assert views.marker == StateMarker("adopted", T0 + 5) and not views.declared_lost


async def test_concurrent_checks_declare_a_loss_once(store: QueueStateStore) -> None:
    results = await asyncio.gather(
        *(store.check_marker(QUEUE, check(T0, f"epoch-{index}")) for index in range(20)),
        *(store.views(QUEUE, ["a"], check=check(T0, f"view-{index}")) for index in range(20)),
    )
    declared = [r[1] if isinstance(r, tuple) else r.declared_lost for r in results]
    assert declared.count(True) == 1
    markers = {r[0] if isinstance(r, tuple) else r.marker for r in results}
    assert len(markers) == 1


async def test_drop_forgets_the_marker(store: QueueStateStore) -> None:
    await store.start(QUEUE, StateMarker("epoch-1", T0))
    await store.drop(QUEUE)
    assert (await store.views(QUEUE, [])).marker is None
