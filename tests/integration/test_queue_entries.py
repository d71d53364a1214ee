"""Entering queues, positions, admission (automatic and manual), handoff tokens, events;
over real sockets on both backends. The worker is driven by the tests' clock."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import json
import re
from collections.abc import AsyncIterator

import grpc
import pytest
from fanfare.auth.v1 import auth_service_pb2 as auth
from fanfare.auth.v1 import auth_service_pb2_grpc
from fanfare.common.v1 import common_pb2
from fanfare.queue.v1 import queue_pb2
from fanfare.queue.v1 import queue_service_pb2 as queues
from fanfare.session.v1 import session_service_pb2 as sessions
from google.protobuf import duration_pb2

from fanfare_grpc.domain import events
from tests.conftest import BackendSettings
from tests.consumers import serving_consumer_world
from tests.grpc_helpers import bearer, expect_status
from tests.queues import QueueWorld, timestamp

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
NOT_FOUND = grpc.StatusCode.NOT_FOUND
QUEUED = queue_pb2.ENTRY_STATUS_QUEUED
ADMITTED = queue_pb2.ENTRY_STATUS_ADMITTED


@pytest.fixture
async def qw(backend: BackendSettings) -> AsyncIterator[QueueWorld]:
    async with serving_consumer_world(backend.settings, run_worker=False) as world:
        yield QueueWorld(world)


def claims_of(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return decoded


async def test_entering_is_first_come_first_served_and_idempotent(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue()
    shoppers = [await qw.shopper(f"device-{index}") for index in range(3)]
    for index, shopper in enumerate(shoppers):
        entry = (await qw.enter(queue_id, shopper)).entry
        assert (entry.status, entry.position, entry.ahead) == (QUEUED, index + 1, index)
        assert entry.consumer_id == shopper.consumer_id
        assert entry.session_id == shopper.session_id
        assert not entry.pre_queue
    again = (await qw.enter(queue_id, shoppers[0])).entry
    assert (again.position, again.entered_at) == (
        1,
        (await qw.position(queue_id, shoppers[0])).entry.entered_at,
    )
    position = await qw.position(queue_id, shoppers[2])
    assert (position.entry.position, position.entry.ahead) == (3, 2)
    assert position.queue_status == queue_pb2.QUEUE_STATUS_OPEN
    # 60/min configured, nothing measured yet: 3 ahead-or-me → about 3 s.
    assert position.entry.estimated_wait.seconds == 3
    entered = qw.world.server.application.events.of_type(events.QUEUE_CONSUMER_ENTERED)
    assert [event.data["consumer_id"] for event in entered] == [s.consumer_id for s in shoppers]


async def test_one_active_entry_per_device(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue()
    first = await qw.shopper("shared-device")
    second = await qw.shopper("shared-device")
    await qw.enter(queue_id, first)
    await expect_status(qw.enter(queue_id, second), FAILED_PRECONDITION)
    await qw.stub.LeaveQueue(queues.LeaveQueueRequest(queue_id=queue_id), metadata=first.metadata)
    assert (await qw.enter(queue_id, second)).entry.position == 1


async def test_entering_needs_an_enterable_queue(qw: QueueWorld) -> None:
    shopper = await qw.shopper("device")
    draft = (await qw.create()).queue.queue_id
    await expect_status(qw.enter(draft, shopper), FAILED_PRECONDITION)
    closed = await qw.open_queue()
    await qw.stub.CloseQueue(queues.CloseQueueRequest(queue_id=closed), metadata=qw.operator())
    await expect_status(qw.enter(closed, shopper), FAILED_PRECONDITION)
    await expect_status(qw.enter("q_" + "N" * 22, shopper), NOT_FOUND)
    await expect_status(qw.position(draft, shopper), NOT_FOUND)


async def test_a_full_queue_answers_resource_exhausted_with_retry_after(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue(max_size=2, admission_rate_per_minute=6)
    for index in range(2):
        await qw.enter(queue_id, await qw.shopper(f"device-{index}"))
    error = await expect_status(
        qw.enter(queue_id, await qw.shopper("late")), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert int(dict(error.trailing_metadata() or ())["retry-after"]) == 10


async def test_queues_are_isolated_by_organization_and_mode(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue()
    foreign = await qw.shopper("device", tenant=qw.world.globex)
    await expect_status(qw.enter(queue_id, foreign), NOT_FOUND)
    await expect_status(qw.position(queue_id, foreign), NOT_FOUND)
    insider = await qw.shopper("device-2")
    await qw.enter(queue_id, insider)
    for call, request in (
        (
            qw.stub.DenyConsumer,
            queues.DenyConsumerRequest(queue_id=queue_id, consumer_id=insider.consumer_id),
        ),
        (
            qw.stub.CompleteConsumer,
            queues.CompleteConsumerRequest(queue_id=queue_id, consumer_id=insider.consumer_id),
        ),
    ):
        await expect_status(call(request, metadata=qw.operator(qw.world.globex)), NOT_FOUND)  # type: ignore[operator]
    assert (await qw.position(queue_id, insider)).entry.status == QUEUED


async def test_a_consumer_acts_only_on_their_own_entry(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue()
    alice = await qw.shopper("alice")
    bob = await qw.shopper("bob")
    await qw.enter(queue_id, alice)
    # Bob has no entry: his calls never reach Alice's.
    await expect_status(qw.position(queue_id, bob), NOT_FOUND)
    await expect_status(
        qw.stub.LeaveQueue(queues.LeaveQueueRequest(queue_id=queue_id), metadata=bob.metadata),
        NOT_FOUND,
    )
    assert (await qw.position(queue_id, alice)).entry.status == QUEUED
    # Operator-only RPCs that name a consumer refuse publishable keys.
    await expect_status(
        qw.stub.DenyConsumer(
            queues.DenyConsumerRequest(queue_id=queue_id, consumer_id=alice.consumer_id),
            metadata=bob.metadata,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )


async def test_pre_queue_order_is_random_and_hidden_until_opening(qw: QueueWorld) -> None:
    now = qw.world.clock()
    queue_id = (await qw.create(opens_at=timestamp(now + dt.timedelta(minutes=5)))).queue.queue_id
    early = [await qw.shopper(f"early-{index}") for index in range(8)]
    for shopper in early:
        entry = (await qw.enter(queue_id, shopper)).entry
        assert entry.pre_queue and entry.position == 0
    qw.world.clock.advance(dt.timedelta(minutes=5, seconds=1))
    await qw.world.server.application.queue_worker.run_once()
    late = await qw.shopper("late")
    assert (await qw.enter(queue_id, late)).entry.position == 9
    positions = sorted([(await qw.position(queue_id, s)).entry.position for s in early])
    assert positions == list(range(1, 9))


async def test_automatic_admission_follows_the_rate_smoothly(qw: QueueWorld) -> None:
    qw.world.clock.freeze()
    queue_id = await qw.open_queue(admission_rate_per_minute=30)
    shoppers = [await qw.shopper(f"device-{index}") for index in range(40)]
    for shopper in shoppers:
        await qw.enter(queue_id, shopper)
    worker = qw.world.server.application.queue_worker
    admitted_per_tick = []
    for _ in range(61):
        before = len(qw.world.server.application.events.of_type(events.QUEUE_CONSUMER_ADMITTED))
        await worker.run_once()
        after = len(qw.world.server.application.events.of_type(events.QUEUE_CONSUMER_ADMITTED))
        admitted_per_tick.append(after - before)
        qw.world.clock.advance(dt.timedelta(seconds=1))
    # 30/min over 60 s of ticks: 30 admitted (± 1), never more than one per tick.
    assert 29 <= sum(admitted_per_tick) <= 31
    assert max(admitted_per_tick) == 1
    stats = await qw.stub.GetQueueStats(
        queues.GetQueueStatsRequest(queue_id=queue_id), metadata=qw.operator()
    )
    assert stats.waiting == 40 - sum(admitted_per_tick)
    assert stats.admitted == sum(admitted_per_tick)
    # First admitted are the first in line.
    first = await qw.position(queue_id, shoppers[0])
    assert first.entry.status == ADMITTED and first.entry.handoff_token
    # A paused queue admits nobody.
    await qw.stub.PauseQueue(queues.PauseQueueRequest(queue_id=queue_id), metadata=qw.operator())
    waiting = stats.waiting
    for _ in range(10):
        qw.world.clock.advance(dt.timedelta(seconds=1))
        await worker.run_once()
    stats = await qw.stub.GetQueueStats(
        queues.GetQueueStatsRequest(queue_id=queue_id), metadata=qw.operator()
    )
    assert stats.waiting == waiting


async def test_handoff_token_redeems_once_and_carries_its_binding(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue(handoff_ttl=duration_pb2.Duration(seconds=120))
    shopper = await qw.shopper("device")
    await qw.enter(queue_id, shopper)
    assert await qw.admit(queue_id, 5) == 1
    entry = (await qw.position(queue_id, shopper)).entry
    assert entry.status == ADMITTED
    token = entry.handoff_token
    claims = claims_of(token)
    assert claims["qid"] == queue_id and claims["sub"] == shopper.consumer_id
    assert claims["sid"] == shopper.session_id and claims["mode"] == "test"
    assert claims["aud"] == qw.world.acme.organization.organization.organization_id
    assert int(claims["exp"]) - int(claims["iat"]) == 120  # type: ignore[call-overload]
    wrong_queue = await qw.validate(token, queue_id="q_" + "W" * 22)
    assert (wrong_queue.valid, wrong_queue.reason) == (
        False,
        queue_pb2.HANDOFF_TOKEN_REASON_WRONG_QUEUE,
    )
    first = await qw.validate(token, queue_id=queue_id)
    assert first.valid and first.reason == queue_pb2.HANDOFF_TOKEN_REASON_OK
    assert (first.consumer_id, first.queue_id, first.session_id) == (
        shopper.consumer_id,
        queue_id,
        shopper.session_id,
    )
    replay = await qw.validate(token)
    assert (replay.valid, replay.reason) == (False, queue_pb2.HANDOFF_TOKEN_REASON_ALREADY_USED)
    # Once redeemed, GetPosition no longer hands the token out.
    assert (await qw.position(queue_id, shopper)).entry.handoff_token == ""
    redeemed = qw.world.server.application.events.of_type(events.HANDOFF_REDEEMED)
    assert [event.data["consumer_id"] for event in redeemed] == [shopper.consumer_id]


async def test_an_idempotency_key_replays_its_own_redemption_only(qw: QueueWorld) -> None:
    # The key is stored with the redemption: the same key hears the same OK (a retry
    # of a call whose answer was lost), any other key or no key ALREADY_USED, so the
    # token is still granted to one caller only.
    queue_id = await qw.open_queue()
    shopper = await qw.shopper("device")
    await qw.enter(queue_id, shopper)
    await qw.admit(queue_id, 1)
    token = (await qw.position(queue_id, shopper)).entry.handoff_token
    request = queues.ValidateHandoffTokenRequest(handoff_token=token, queue_id=queue_id)
    metadata = (*qw.operator(), ("idempotency-key", "cart-42"))
    first = await qw.stub.ValidateHandoffToken(request, metadata=metadata)
    assert first.valid
    for _ in range(2):
        again = await qw.stub.ValidateHandoffToken(request, metadata=metadata)
        assert again == first
    for other in ((*qw.operator(), ("idempotency-key", "cart-43")), qw.operator()):
        refused = await qw.stub.ValidateHandoffToken(request, metadata=other)
        assert (refused.valid, refused.reason) == (
            False,
            queue_pb2.HANDOFF_TOKEN_REASON_ALREADY_USED,
        )
    redeemed = qw.world.server.application.events.of_type(events.HANDOFF_REDEEMED)
    assert len(redeemed) == 1


async def test_a_redemption_whose_answer_was_lost_is_retried_with_the_same_key(
    qw: QueueWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The token is redeemed, then the merchant's deadline passes before the answer
    # (the call is held after the redemption, at its event): the retry with the same
    # idempotency key must hear OK, not ALREADY_USED for a checkout it never saw.
    queue_id = await qw.open_queue()
    shopper = await qw.shopper("device")
    await qw.enter(queue_id, shopper)
    await qw.admit(queue_id, 1)
    token = (await qw.position(queue_id, shopper)).entry.handoff_token
    publisher = qw.world.server.application.events
    publish = publisher.publish
    held, published = asyncio.Event(), asyncio.Event()

    async def publish_late(event: events.DomainEvent) -> None:
        if event.event_type == events.HANDOFF_REDEEMED:
            await held.wait()
        await publish(event)
        if event.event_type == events.HANDOFF_REDEEMED:
            published.set()

    monkeypatch.setattr(publisher, "publish", publish_late)
    request = queues.ValidateHandoffTokenRequest(handoff_token=token, queue_id=queue_id)
    metadata = (*qw.operator(), ("idempotency-key", "checkout-7"))
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await qw.stub.ValidateHandoffToken(request, metadata=metadata, timeout=2.0)
    assert lost.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    held.set()
    retried = await qw.stub.ValidateHandoffToken(request, metadata=metadata)
    assert (retried.valid, retried.reason, retried.consumer_id) == (
        True,
        queue_pb2.HANDOFF_TOKEN_REASON_OK,
        shopper.consumer_id,
    )
    other = await qw.stub.ValidateHandoffToken(
        request, metadata=(*qw.operator(), ("idempotency-key", "checkout-8"))
    )
    assert (other.valid, other.reason) == (False, queue_pb2.HANDOFF_TOKEN_REASON_ALREADY_USED)
    # The first call ran to its end although its caller left: the event went out once.
    await published.wait()
    redeemed = publisher.of_type(events.HANDOFF_REDEEMED)
    assert [event.data["consumer_id"] for event in redeemed] == [shopper.consumer_id]


async def test_fifty_concurrent_validations_redeem_once(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue()
    shopper = await qw.shopper("device")
    await qw.enter(queue_id, shopper)
    await qw.admit(queue_id, 1)
    token = (await qw.position(queue_id, shopper)).entry.handoff_token
    results = await asyncio.gather(*(qw.validate(token) for _ in range(50)))
    assert sum(result.valid for result in results) == 1
    assert {result.reason for result in results if not result.valid} == {
        queue_pb2.HANDOFF_TOKEN_REASON_ALREADY_USED
    }


async def test_garbage_forged_and_foreign_tokens_are_invalid(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue()
    shopper = await qw.shopper("device")
    await qw.enter(queue_id, shopper)
    await qw.admit(queue_id, 1)
    token = (await qw.position(queue_id, shopper)).entry.handoff_token
    header, payload, signature = token.split(".")
    forged_payload = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    forged_payload["sub"] = "cons_someoneelse"
    forged = ".".join(
        (
            header,
            base64.urlsafe_b64encode(json.dumps(forged_payload).encode()).decode().rstrip("="),
            signature,
        )
    )
    guest = await qw.world.guest()
    for bad in ("garbage", "a.b.c", forged, header + "." + payload + ".", guest.access_token):
        result = await qw.validate(bad)
        assert (result.valid, result.reason) == (False, queue_pb2.HANDOFF_TOKEN_REASON_INVALID)
        assert result.consumer_id == ""
    foreign = await qw.validate(token, tenant=qw.world.globex)
    assert foreign.reason == queue_pb2.HANDOFF_TOKEN_REASON_INVALID
    # None of that spent it.
    assert (await qw.validate(token)).valid


async def test_unredeemed_admissions_expire(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue(handoff_ttl=duration_pb2.Duration(seconds=60))
    shopper = await qw.shopper("device")
    await qw.enter(queue_id, shopper)
    await qw.admit(queue_id, 1)
    token = (await qw.position(queue_id, shopper)).entry.handoff_token
    qw.world.clock.advance(dt.timedelta(seconds=61))
    expired = await qw.validate(token)
    assert (expired.valid, expired.reason) == (False, queue_pb2.HANDOFF_TOKEN_REASON_EXPIRED)
    await qw.world.server.application.queue_worker.run_once()
    entry = (await qw.position(queue_id, shopper)).entry
    assert entry.status == queue_pb2.ENTRY_STATUS_EXPIRED and entry.handoff_token == ""
    stats = await qw.stub.GetQueueStats(
        queues.GetQueueStatsRequest(queue_id=queue_id), metadata=qw.operator()
    )
    assert (stats.admitted, stats.expired) == (0, 1)
    assert qw.world.server.application.events.of_type(events.QUEUE_CONSUMER_EXPIRED)


async def test_deny_complete_leave(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue()
    denied, completed, leaving, waiting = [await qw.shopper(f"d{i}") for i in range(4)]
    for shopper in (denied, completed, leaving, waiting):
        await qw.enter(queue_id, shopper)
    operator = qw.operator()
    await qw.admit(queue_id, 2)  # denied, completed
    token = (await qw.position(queue_id, denied)).entry.handoff_token
    deny = queues.DenyConsumerRequest(
        queue_id=queue_id, consumer_id=denied.consumer_id, reason="bot"
    )
    assert (
        await qw.stub.DenyConsumer(deny, metadata=operator)
    ).entry.status == queue_pb2.ENTRY_STATUS_DENIED
    assert (
        await qw.stub.DenyConsumer(deny, metadata=operator)
    ).entry.status == queue_pb2.ENTRY_STATUS_DENIED
    assert (await qw.validate(token)).reason == queue_pb2.HANDOFF_TOKEN_REASON_INVALID
    complete = queues.CompleteConsumerRequest(queue_id=queue_id, consumer_id=completed.consumer_id)
    for _ in range(2):
        done = await qw.stub.CompleteConsumer(complete, metadata=operator)
        assert done.entry.status == queue_pb2.ENTRY_STATUS_COMPLETED
    await expect_status(
        qw.stub.CompleteConsumer(
            queues.CompleteConsumerRequest(queue_id=queue_id, consumer_id=waiting.consumer_id),
            metadata=operator,
        ),
        FAILED_PRECONDITION,
    )
    await expect_status(
        qw.stub.DenyConsumer(
            queues.DenyConsumerRequest(queue_id=queue_id, consumer_id=completed.consumer_id),
            metadata=operator,
        ),
        FAILED_PRECONDITION,
    )
    left = await qw.stub.LeaveQueue(
        queues.LeaveQueueRequest(queue_id=queue_id), metadata=leaving.metadata
    )
    assert left.entry.status == queue_pb2.ENTRY_STATUS_LEFT
    # The leaver's place is freed: the last one moves up.
    assert (await qw.position(queue_id, waiting)).entry.position == 1
    await expect_status(
        qw.stub.DenyConsumer(
            queues.DenyConsumerRequest(queue_id=queue_id, consumer_id="cons_" + "Z" * 22),
            metadata=operator,
        ),
        NOT_FOUND,
    )
    stats = await qw.stub.GetQueueStats(
        queues.GetQueueStatsRequest(queue_id=queue_id), metadata=operator
    )
    assert (stats.waiting, stats.admitted, stats.completed, stats.denied, stats.left) == (
        1,
        0,
        1,
        1,
        1,
    )
    recorded = qw.world.server.application.events
    assert len(recorded.of_type(events.QUEUE_CONSUMER_DENIED)) == 1
    assert len(recorded.of_type(events.QUEUE_CONSUMER_COMPLETED)) == 1
    assert len(recorded.of_type(events.QUEUE_CONSUMER_LEFT)) == 1
    assert len(recorded.of_type(events.QUEUE_CONSUMER_ADMITTED)) == 2


class HeldTransitions:
    """Wraps the live state store: calls of ``method`` wait until ``parties`` of them
    have arrived, so concurrent RPCs all reach the store before any changes the entry
    (the race made deterministic)."""

    def __init__(self, inner: object, method: str, parties: int) -> None:
        self._inner = inner
        self._method = method
        self._barrier = asyncio.Barrier(parties)

    def __getattr__(self, name: str) -> object:
        attribute = getattr(self._inner, name)
        if name != self._method:
            return attribute

        async def held(*args: object, **kwargs: object) -> object:
            # Bounded only so that a broken test fails instead of hanging.
            await asyncio.wait_for(self._barrier.wait(), 30)
            return await attribute(*args, **kwargs)

        return held


@pytest.mark.parametrize(
    ("method", "event_type", "status"),
    [
        ("deny", events.QUEUE_CONSUMER_DENIED, queue_pb2.ENTRY_STATUS_DENIED),
        ("complete", events.QUEUE_CONSUMER_COMPLETED, queue_pb2.ENTRY_STATUS_COMPLETED),
        ("leave", events.QUEUE_CONSUMER_LEFT, queue_pb2.ENTRY_STATUS_LEFT),
    ],
    ids=["deny", "complete", "leave"],
)
async def test_concurrent_transitions_publish_one_event(
    qw: QueueWorld, monkeypatch: pytest.MonkeyPatch, method: str, event_type: str, status: int
) -> None:
    # Two DenyConsumer (CompleteConsumer, LeaveQueue) for one consumer at once: both
    # answer OK, only the call whose store step made the change publishes (a webhook
    # must not fire twice).
    queue_id = await qw.open_queue()
    shopper = await qw.shopper("device")
    await qw.enter(queue_id, shopper)
    await qw.admit(queue_id, 1)
    entries = qw.world.server.application.queue_entries
    monkeypatch.setattr(entries, "_state", HeldTransitions(entries.state, method, parties=2))
    operator = qw.operator()

    async def call() -> queue_pb2.Entry:
        if method == "deny":
            request = queues.DenyConsumerRequest(
                queue_id=queue_id, consumer_id=shopper.consumer_id, reason="bot"
            )
            return (await qw.stub.DenyConsumer(request, metadata=operator)).entry
        if method == "complete":
            done = queues.CompleteConsumerRequest(
                queue_id=queue_id, consumer_id=shopper.consumer_id
            )
            return (await qw.stub.CompleteConsumer(done, metadata=operator)).entry
        leave = queues.LeaveQueueRequest(queue_id=queue_id)
        return (await qw.stub.LeaveQueue(leave, metadata=shopper.metadata)).entry

    answers = await asyncio.gather(call(), call())
    assert [answer.status for answer in answers] == [status, status]
    published = qw.world.server.application.events.of_type(event_type)
    assert [event.data["consumer_id"] for event in published] == [shopper.consumer_id]


async def test_admit_consumers_needs_an_open_or_paused_queue(qw: QueueWorld) -> None:
    draft = (await qw.create()).queue.queue_id
    await expect_status(qw.admit(draft, 1), FAILED_PRECONDITION)
    await expect_status(
        qw.stub.AdmitConsumers(
            queues.AdmitConsumersRequest(queue_id=draft, count=0), metadata=qw.operator()
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    queue_id = await qw.open_queue()
    assert await qw.admit(queue_id, 10) == 0


async def test_a_handoff_token_of_a_revoked_session_does_not_redeem(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue()
    shopper = await qw.shopper("device")
    await qw.enter(queue_id, shopper)
    await qw.admit(queue_id, 1)
    token = (await qw.position(queue_id, shopper)).entry.handoff_token
    await qw.world.sessions.RevokeSession(
        sessions.RevokeSessionRequest(session_id=shopper.session_id), metadata=qw.operator()
    )
    result = await qw.validate(token)
    assert (result.valid, result.reason) == (False, queue_pb2.HANDOFF_TOKEN_REASON_INVALID)


async def test_an_admission_past_due_shows_expired_without_a_token(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue(handoff_ttl=duration_pb2.Duration(seconds=60))
    shopper = await qw.shopper("device")
    await qw.enter(queue_id, shopper)
    await qw.admit(queue_id, 1)
    qw.world.clock.advance(dt.timedelta(seconds=61))
    # The worker has not swept yet: still no token that could only be refused.
    entry = (await qw.position(queue_id, shopper)).entry
    assert (entry.status, entry.handoff_token) == (queue_pb2.ENTRY_STATUS_EXPIRED, "")


async def test_a_handoff_token_of_an_expired_session_does_not_redeem(
    backend: BackendSettings,
) -> None:
    settings = dataclasses.replace(
        backend.settings, refresh_token_ttl_seconds=120, access_token_ttl_seconds=60
    )
    async with serving_consumer_world(settings, run_worker=False) as world:
        qw = QueueWorld(world)
        queue_id = await qw.open_queue(handoff_ttl=duration_pb2.Duration(seconds=600))
        shopper = await qw.shopper("device")
        await qw.enter(queue_id, shopper)
        await qw.admit(queue_id, 1)
        token = (await qw.position(queue_id, shopper)).entry.handoff_token
        world.clock.advance(dt.timedelta(seconds=121))  # the session ended; the grant not
        result = await qw.validate(token)
        assert (result.valid, result.reason) == (False, queue_pb2.HANDOFF_TOKEN_REASON_INVALID)


async def test_an_arrival_after_opens_at_never_joins_the_pre_queue(qw: QueueWorld) -> None:
    application = qw.world.server.application
    organization_id = qw.world.acme.organization.organization.organization_id
    now = qw.world.clock()
    queue_id = (await qw.create(opens_at=timestamp(now + dt.timedelta(minutes=1)))).queue.queue_id
    early = await qw.shopper("early")
    await qw.enter(queue_id, early)
    # opens_at has passed but nothing has opened the queue yet (no worker ran):
    # its status still says SCHEDULED, yet this arrival is after the opening time.
    qw.world.clock.advance(dt.timedelta(minutes=2))
    late = await application.queue_entries.enter(
        organization_id,
        "test",
        queue_id,
        consumer_id="cons_late",
        session_id="sess_late",
        device_hash="late-device",
    )
    assert not late.entry.pre_queue
    await application.queue_worker.run_once()
    assert (await qw.position(queue_id, early)).entry.position == 1
    late_position = await application.queue_entries.position(
        organization_id, "test", queue_id, "cons_late"
    )
    assert late_position.position == 2


async def test_handoff_token_ids_are_random_not_a_count_of_admissions(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue()
    shoppers = [await qw.shopper(f"device-{i}") for i in range(4)]
    for shopper in shoppers:
        await qw.enter(queue_id, shopper)
    jtis: list[str] = []
    for shopper in shoppers:  # one admission after another
        assert await qw.admit(queue_id, 1) == 1
        token = (await qw.position(queue_id, shopper)).entry.handoff_token
        again = (await qw.position(queue_id, shopper)).entry.handoff_token
        jti = claims_of(token)["jti"]
        assert claims_of(again)["jti"] == jti  # every copy of one grant: one jti
        assert isinstance(jti, str)
        jtis.append(jti)
    assert len(set(jtis)) == len(jtis)
    values = []
    for jti in jtis:
        assert re.fullmatch(r"ht_[A-Za-z0-9_-]{22}", jti), jti
        raw = base64.urlsafe_b64decode(jti.removeprefix("ht_") + "==")
        assert len(raw) == 16  # 128 bits
        values.append(int.from_bytes(raw, "big"))
    # Unrelated: any two differ in about half their bits, never by a small step.
    for index, value in enumerate(values):
        for other in values[index + 1 :]:
            assert (value ^ other).bit_count() >= 32
            assert abs(value - other) > 2**64
    # Still redeemed once each.
    first = await qw.validate((await qw.position(queue_id, shoppers[0])).entry.handoff_token)
    assert first.valid


async def test_a_handoff_token_outlives_the_rotation_of_its_signing_key(
    backend: BackendSettings,
) -> None:
    # Keys rotate every 10 minutes here; a 1 h handoff token signed by the first key
    # must verify (server-side and offline through GetJwks) long after that key
    # stopped signing, until the token itself expires.
    settings = dataclasses.replace(backend.settings, signing_key_rotation_seconds=600)
    async with serving_consumer_world(settings, run_worker=False) as world:
        qw = QueueWorld(world)
        queue_id = await qw.open_queue(handoff_ttl=duration_pb2.Duration(seconds=3600))
        shopper = await qw.shopper("device")
        await qw.enter(queue_id, shopper)
        await qw.admit(queue_id, 1)
        token = (await qw.position(queue_id, shopper)).entry.handoff_token
        kid = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["kid"]
        world.clock.advance(dt.timedelta(minutes=50))
        # A new key signs by now (a new shopper's session is signed by it).
        newer = await qw.shopper("other-device")
        newer_kid = json.loads(base64.urlsafe_b64decode(newer.metadata[1][1].split(".")[0] + "=="))[
            "kid"
        ]
        assert newer_kid != kid
        jwks = await auth_service_pb2_grpc.AuthServiceStub(world.channel).GetJwks(
            auth.GetJwksRequest(), metadata=qw.operator()
        )
        assert kid in {key.kid for key in jwks.keys}
        redeemed = await qw.validate(token, queue_id=queue_id)
        assert (redeemed.valid, redeemed.reason) == (True, queue_pb2.HANDOFF_TOKEN_REASON_OK)


async def test_a_spent_grant_cannot_be_chained_into_a_new_one(qw: QueueWorld) -> None:
    queue_id = await qw.open_queue()
    redeemer, completer, leaver = [await qw.shopper(f"device-{i}") for i in range(3)]
    for shopper in (redeemer, completer, leaver):
        await qw.enter(queue_id, shopper)
    assert await qw.admit(queue_id, 3) == 3
    token = (await qw.position(queue_id, redeemer)).entry.handoff_token
    assert (await qw.validate(token, queue_id=queue_id)).valid
    leave = queues.LeaveQueueRequest(queue_id=queue_id)
    enter = queues.EnterQueueRequest(queue_id=queue_id)
    # Redeemed: cannot leave (to enter again at the back), cannot enter again.
    error = await expect_status(
        qw.stub.LeaveQueue(leave, metadata=redeemer.metadata), FAILED_PRECONDITION
    )
    assert "redeemed" in (error.details() or "")
    await expect_status(qw.stub.EnterQueue(enter, metadata=redeemer.metadata), FAILED_PRECONDITION)
    assert (await qw.position(queue_id, redeemer)).entry.status == ADMITTED
    # Completed: cannot enter again either.
    await qw.stub.CompleteConsumer(
        queues.CompleteConsumerRequest(queue_id=queue_id, consumer_id=completer.consumer_id),
        metadata=qw.operator(),
    )
    await expect_status(qw.stub.EnterQueue(enter, metadata=completer.metadata), FAILED_PRECONDITION)
    # Admitted but not redeemed: leaving gives the grant up, and entering again is a
    # new place at the back (the existing rule).
    await qw.stub.LeaveQueue(leave, metadata=leaver.metadata)
    back = await qw.stub.EnterQueue(enter, metadata=leaver.metadata)
    assert back.entry.status == QUEUED


async def test_checkout_keys_redeem_and_read_only_keys_cannot(qw: QueueWorld) -> None:
    async def secret_key(role: int) -> str:
        created = await qw.world.auth.CreateApiKey(
            auth.CreateApiKeyRequest(kind=common_pb2.API_KEY_KIND_SECRET, role=role, name="k"),
            metadata=qw.operator(),
        )
        assert created.api_key.role == role
        return str(created.secret)

    checkout = await secret_key(common_pb2.ROLE_CHECKOUT)
    readonly = await secret_key(common_pb2.ROLE_READONLY)
    auditor = await secret_key(common_pb2.ROLE_AUDITOR)
    queue_id = await qw.open_queue()
    shopper = await qw.shopper("device")
    await qw.enter(queue_id, shopper)
    await qw.admit(queue_id, 1)
    token = (await qw.position(queue_id, shopper)).entry.handoff_token
    redeem = queues.ValidateHandoffTokenRequest(handoff_token=token, queue_id=queue_id)
    for weak in (readonly, auditor):
        await expect_status(
            qw.stub.ValidateHandoffToken(redeem, metadata=bearer(weak)),
            grpc.StatusCode.PERMISSION_DENIED,
        )
    # The refusals burnt nothing: the checkout backend redeems it.
    redeemed = await qw.stub.ValidateHandoffToken(redeem, metadata=bearer(checkout))
    assert redeemed.valid
    # And a checkout key can do nothing beyond its three RPCs.
    await expect_status(
        qw.stub.GetQueueStats(
            queues.GetQueueStatsRequest(queue_id=queue_id), metadata=bearer(checkout)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await qw.world.auth.GetJwks(auth.GetJwksRequest(), metadata=bearer(checkout))
