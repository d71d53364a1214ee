"""Consumers in queues: entering, positions, leaving, admission, handoff redemption.

Live state is in the cache (``QueueStateStore``); queue configuration comes from the
database through a short per-process cache, so the hot paths (EnterQueue,
GetPosition, WatchPosition) cost one cache round trip, not a database query.

The cache may lose a queue's state (see ``queue_state``): the same round trip checks
the state's marker whenever the database says the queue takes entries. The call that
finds the loss logs it (one error per queue and loss, whichever replica finds it);
from then on a consumer without an entry is told UNAVAILABLE ``QUEUE_STATE_LOST``
("re-enter") rather than NOT_FOUND, and ``GetQueueStats`` shows when it happened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from fanfare_grpc import errors
from fanfare_grpc.crypto.handoff_tokens import (
    HandoffClaims,
    handoff_token_kid,
    new_handoff_token_id,
    sign_handoff_token,
    verify_handoff_token,
)
from fanfare_grpc.crypto.jwt_tokens import InvalidToken
from fanfare_grpc.crypto.signing_keys import SigningKeyRing
from fanfare_grpc.domain import events as event_types
from fanfare_grpc.domain.access import Mode
from fanfare_grpc.domain.consumer_sessions import ConsumerSession
from fanfare_grpc.domain.events import DomainEvent, EventPublisher
from fanfare_grpc.domain.queue_config import QueueConfigService
from fanfare_grpc.domain.queue_state import (
    MAX_ADMISSIONS_PER_CALL,
    EnterOutcome,
    EntryRecord,
    EntryStatus,
    EntryView,
    MarkerCheck,
    QueueCounters,
    QueueRef,
    QueueStateStore,
    RedeemOutcome,
    StateMarker,
    Transition,
)
from fanfare_grpc.domain.queues import ENTERABLE, Queue, QueueStatus

NOT_IN_QUEUE = "not in this queue"
QUEUE_NOT_OPEN = "the queue is not open for entries"
STATE_LOST = "queue state lost; re-enter"
# ``google.rpc.ErrorInfo`` reason of STATE_LOST: entering again is the way back.
STATE_LOST_REASON = "QUEUE_STATE_LOST"
QUEUE_STATE_LOST_LOG = (
    "queue state lost: the cache holds nothing for a queue the database says takes "
    "entries (Redis restarted or flushed without persistence, or failed over?); its "
    "consumers must enter again"
)
# How stale the per-process copy of a queue's configuration and measured admission
# rate may be (status changes reach every replica within this).
CONFIG_TTL_SECONDS = 1.0
RATE_WINDOW_SECONDS = 300.0
# Admissions (and expiries) per store call: on Redis one call is one Lua script that
# blocks every other client while it runs, so a large count is admitted in several
# short calls (other clients' commands run in between) rather than one long one.
ADMISSION_BATCH = MAX_ADMISSIONS_PER_CALL
EXPIRY_BATCH = MAX_ADMISSIONS_PER_CALL
# Store calls one admission may make beyond the ⌈count / ADMISSION_BATCH⌉ its count
# needs. A call takes at most MAX_ADMISSIONS_PER_CALL consumers from the line, those
# skipped for a missing entry included, so one admission skips at most about
# 50 × 200 = 10,000 of them: a long line whose entries were all evicted is cleared by
# successive admissions (each short), never walked whole by one RPC or worker pass.
ADMISSION_EXTRA_CALLS = 50
# Expiry calls per queue per worker pass: 20,000 expiries a second, more than the
# largest tick's share of admissions (1,000,000/min ≈ 16,667 a second).
EXPIRY_CALLS_PER_PASS = 100

Clock = Callable[[], dt.datetime]


GRANT_SPENT = (
    "this consumer's admission to the queue was used (handoff token redeemed or "
    "checkout completed): one grant per consumer and queue"
)


def _grant_spent(entry: EntryRecord) -> bool:
    """Admitted and redeemed, or completed: nothing more to get from this queue."""
    return entry.status is EntryStatus.COMPLETED or (
        entry.status is EntryStatus.ADMITTED and entry.redeemed_at is not None
    )


class SessionReader(Protocol):
    """Where handoff redemption checks that the admitted session still stands."""

    async def get_session(
        self, organization_id: str, mode: Mode, session_id: str
    ) -> ConsumerSession | None:
        """One session."""
        ...


class HandoffVerdict(enum.Enum):
    """``ValidateHandoffToken``'s answer."""

    OK = "ok"
    EXPIRED = "expired"
    ALREADY_USED = "already_used"
    WRONG_QUEUE = "wrong_queue"
    INVALID = "invalid"


@dataclasses.dataclass(frozen=True)
class HandoffCheck:
    """Verdict, and who the token admitted (empty for INVALID)."""

    verdict: HandoffVerdict
    claims: HandoffClaims | None = None


@dataclasses.dataclass(frozen=True)
class Position:
    """An entry as a consumer sees it.

    Attributes:
        position: 1-based place in line (0 when not waiting, or in the pre-queue
            before opening: its order is only random until then).
        ahead: Consumers ahead.
        estimated_wait: From the measured admission rate (configured rate until
            admissions have been measured); None when unknown.
        handoff_token: The signed admission grant while ADMITTED and unredeemed.
    """

    queue: Queue
    entry: EntryRecord
    position: int
    ahead: int
    estimated_wait: dt.timedelta | None
    handoff_token: str | None

    @property
    def pre_queue(self) -> bool:
        """Waiting before the queue opened (positions not shown yet)."""
        return self.entry.pre_queue and self.queue.status is QueueStatus.SCHEDULED


@dataclasses.dataclass(frozen=True)
class QueueStats:
    """``GetQueueStats``: measured rate is admissions per minute over the last 5 min;
    ``state_lost_at``: when the cache was last found to have lost the queue's entries."""

    queue: Queue
    counters: QueueCounters
    admissions_per_minute: float
    oldest_wait: dt.timedelta | None
    state_lost_at: dt.datetime | None = None


def state_lost() -> errors.Unavailable:
    """What a consumer without an entry hears once the queue's state was lost."""
    return errors.Unavailable(STATE_LOST, reason=STATE_LOST_REASON)


def queue_ref(queue: Queue) -> QueueRef:
    """The cache address of a queue's live state."""
    return QueueRef(queue.organization_id, queue.mode, queue.queue_id)


def _timestamp(value: dt.datetime) -> float:
    return value.timestamp()


def _datetime(value: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(value, dt.UTC)


class QueueEntries:
    """Entries of every queue of every organization (one instance per process)."""

    def __init__(
        self,
        config: QueueConfigService,
        state: QueueStateStore,
        signing_keys: SigningKeyRing,
        events: EventPublisher,
        sessions: SessionReader,
        *,
        issuer: str,
        clock: Clock,
        logger: logging.Logger,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._state = state
        self._signing_keys = signing_keys
        self._events = events
        self._sessions = sessions
        self._issuer = issuer
        self._clock = clock
        self._logger = logger
        self._monotonic = monotonic
        self._queues: dict[tuple[str, str, str], tuple[Queue, float]] = {}
        self._rates: dict[QueueRef, tuple[float, float]] = {}
        self._admission_listeners: list[Callable[[QueueRef], None]] = []
        config.on_change(self.forget)

    def on_admitted(self, listener: Callable[[QueueRef], None]) -> None:
        """Call ``listener`` with the queue whenever this process admits consumers."""
        self._admission_listeners.append(listener)

    @property
    def state(self) -> QueueStateStore:
        """The live state store (position streams read it in batches)."""
        return self._state

    async def queue(self, organization_id: str, mode: str, queue_id: str) -> Queue:
        """The queue's configuration, at most ``CONFIG_TTL_SECONDS`` old.

        Raises:
            NotFound: No such queue in this organization and mode.
        """
        cache_key = (organization_id, mode, queue_id)
        cached = self._queues.get(cache_key)
        if cached is not None and self._monotonic() - cached[1] < CONFIG_TTL_SECONDS:
            return cached[0]
        queue = await self._config.get(organization_id, mode, queue_id)
        self._queues[cache_key] = (queue, self._monotonic())
        return queue

    def forget(self, queue: Queue) -> None:
        """Drop the cached configuration (this process changed the queue)."""
        self._queues.pop((queue.organization_id, queue.mode, queue.queue_id), None)

    async def enter(
        self,
        organization_id: str,
        mode: str,
        queue_id: str,
        *,
        consumer_id: str,
        session_id: str,
        device_hash: str,
    ) -> Position:
        """Join (idempotent per consumer; one active entry per device).

        Raises:
            NotFound: No such queue here.
            FailedPrecondition: DRAFT or CLOSED queue; the device is in line already
                for another consumer.
            ResourceExhausted: ``max_size`` consumers are waiting.
        """
        queue = await self.queue(organization_id, mode, queue_id)
        if queue.status not in ENTERABLE:
            raise errors.FailedPrecondition(QUEUE_NOT_OPEN)
        now = self._clock()
        # Decided by time, not only by the (up to 1 s old) cached status: an arrival
        # after opens_at must never be placed ahead of the line.
        pre_queue = (
            queue.status is QueueStatus.SCHEDULED
            and queue.opens_at is not None
            and now < queue.opens_at
        )
        # Pre-queue: a uniformly random place among everyone who came before opening
        # (CSPRNG); after opening: the queue's counter, first come first served.
        score = secrets.randbits(53) / 2**53 if pre_queue else -1.0
        result = await self._state.enter(
            queue_ref(queue),
            EntryRecord(
                consumer_id=consumer_id,
                session_id=session_id,
                device_hash=device_hash,
                status=EntryStatus.QUEUED,
                entered_at=_timestamp(now),
                pre_queue=pre_queue,
            ),
            score=score,
            max_size=queue.max_size or None,
            check=self.marker_check(queue),
        )
        if result.declared_lost and result.marker is not None:
            await self.confirm_loss(queue, result.marker)
        if result.outcome is EnterOutcome.DEVICE_TAKEN:
            raise errors.FailedPrecondition("this device is already in the queue")
        if result.outcome is EnterOutcome.FULL:
            raise errors.ResourceExhausted(
                "the queue is full", retry_after_seconds=self._seconds_per_admission(queue)
            )
        assert result.view is not None
        if result.outcome is EnterOutcome.ALREADY_ENTERED and _grant_spent(result.view.entry):
            raise errors.FailedPrecondition(GRANT_SPENT)
        if result.outcome is EnterOutcome.ENTERED:
            await self._publish(
                event_types.QUEUE_CONSUMER_ENTERED, queue, result.view.entry, pre_queue=pre_queue
            )
        return await self._position(queue, result.view)

    async def position(
        self, organization_id: str, mode: str, queue_id: str, consumer_id: str
    ) -> Position:
        """The consumer's entry, place and (once admitted) handoff token.

        Raises:
            NotFound: No such queue here, or the consumer never entered it.
            Unavailable: No entry, and the queue's state was lost (``STATE_LOST``).
        """
        queue = await self.queue(organization_id, mode, queue_id)
        views = await self._state.views(
            queue_ref(queue), [consumer_id], check=self.marker_check(queue)
        )
        if views.declared_lost and views.marker is not None:
            await self.confirm_loss(queue, views.marker)
        view = views[0]
        if view is None:
            raise self.no_entry(queue, views.marker)
        return await self._position(queue, view)

    def marker_check(self, queue: Queue) -> MarkerCheck | None:
        """A marker check when the database says the queue's state must exist."""
        if queue.status not in ENTERABLE:
            return None
        return MarkerCheck(self._now(), secrets.token_hex(8))

    def no_entry(self, queue: Queue, marker: StateMarker | None) -> errors.FanfareError:
        """Why a consumer has no entry: the state was lost (enter again), or never
        entered (a CLOSED queue cannot be entered again: NOT_FOUND then too)."""
        if queue.status in ENTERABLE and marker is not None and marker.lost_at is not None:
            return state_lost()
        return errors.NotFound(NOT_IN_QUEUE)

    async def check_state(self, queue: Queue) -> None:
        """Find (and report) a loss of the queue's state even if no consumer calls: the
        worker checks every OPEN and PAUSED queue on each pass, one round trip each."""
        check = self.marker_check(queue)
        if check is None:
            return
        marker, declared = await self._state.check_marker(queue_ref(queue), check)
        if declared:
            with contextlib.suppress(errors.NotFound):
                await self.confirm_loss(queue, marker)

    async def confirm_loss(self, queue: Queue, marker: StateMarker) -> None:
        """Log a loss this process's call declared (so once per queue and loss), once
        the database confirms the queue still exists: ``queue`` may come from the
        per-process copy, up to ``CONFIG_TTL_SECONDS`` old, and a queue another replica
        just deleted (its state dropped) is no loss. Then the marker the check wrote
        (and anything entered with it) is dropped again.

        Raises:
            NotFound: The queue was deleted meanwhile.
        """
        try:
            await self._config.get(queue.organization_id, queue.mode, queue.queue_id)
        except errors.NotFound:
            await self._state.drop(queue_ref(queue))
            self.forget(queue)
            raise
        self._logger.error(
            QUEUE_STATE_LOST_LOG,
            extra={
                "organization_id": queue.organization_id,
                "mode": queue.mode,
                "queue_id": queue.queue_id,
                "queue_status": queue.status.value,
                "epoch": marker.epoch,
            },
        )

    async def position_of(self, queue: Queue, view: EntryView) -> Position:
        """A ``Position`` from an already read view (position streams)."""
        return await self._position(queue, view)

    async def leave(
        self, organization_id: str, mode: str, queue_id: str, consumer_id: str
    ) -> Position:
        """Leave (QUEUED or ADMITTED → LEFT; the place and any token are void).

        Raises:
            NotFound: No such queue here, or never entered.
            FailedPrecondition: The handoff token was redeemed: the grant is spent, and
                leaving (then entering again at the back) would chain a new one.
        """
        queue = await self.queue(organization_id, mode, queue_id)
        entry = await self._end(
            self._state.leave, queue, consumer_id, event_types.QUEUE_CONSUMER_LEFT
        )
        if entry.status is EntryStatus.ADMITTED and entry.redeemed_at is not None:
            raise errors.FailedPrecondition(GRANT_SPENT)
        return await self._position(queue, EntryView(entry, None))

    async def admit_now(
        self, organization_id: str, mode: str, queue_id: str, count: int
    ) -> list[EntryRecord]:
        """AdmitConsumers: ``count`` more now, on top of the automatic rate.

        Raises:
            NotFound: No such queue here.
            FailedPrecondition: The queue is not OPEN or PAUSED.
        """
        queue = await self._config.get(organization_id, mode, queue_id)
        if queue.status not in (QueueStatus.OPEN, QueueStatus.PAUSED):
            raise errors.FailedPrecondition("only an OPEN or PAUSED queue admits consumers")
        return await self.admit(queue, count)

    async def admit(self, queue: Queue, count: int) -> list[EntryRecord]:
        """Admit up to ``count`` next consumers (handoff tokens are issued with them).

        In store calls of at most ``ADMISSION_BATCH``: each call is atomic, the whole
        admission is not (entries, departures and other queues' work run between two
        calls), so a large count never holds Redis for long. Every consumer is still
        admitted once, in line order within each call. Calls go on until ``count`` are
        admitted or the line is empty, at most ⌈count / ADMISSION_BATCH⌉ +
        ``ADMISSION_EXTRA_CALLS`` of them (consumers skipped for a missing entry
        use up calls too): past that, fewer than ``count`` are admitted.

        Each call's admissions are announced (events, listeners) as soon as it returns,
        so a later call failing (Redis gone midway) leaves no admitted consumer unannounced.
        """
        ref = queue_ref(queue)
        now = self._now()
        admitted: list[EntryRecord] = []
        for _ in range(-(-count // ADMISSION_BATCH) + ADMISSION_EXTRA_CALLS):
            wanted = min(count - len(admitted), ADMISSION_BATCH)
            if wanted <= 0:
                break
            token_ids = [new_handoff_token_id() for _ in range(wanted)]
            batch = await self._state.admit(ref, token_ids, now, queue.handoff_ttl.total_seconds())
            admitted.extend(batch)
            if batch:
                for listener in self._admission_listeners:
                    listener(ref)
            for entry in batch:
                await self._publish(event_types.QUEUE_CONSUMER_ADMITTED, queue, entry)
            if batch.waiting == 0 or batch.popped == 0:
                break  # nobody else is waiting
        return admitted

    async def expire(self, queue: Queue) -> list[EntryRecord]:
        """Admitted consumers whose token expired unredeemed → EXPIRED (in store calls of
        ``EXPIRY_BATCH``, at most ``EXPIRY_CALLS_PER_PASS`` of them; the rest next pass).
        Each call's expiries are announced as soon as it returns (see ``admit``)."""
        ref, now = queue_ref(queue), self._now()
        expired: list[EntryRecord] = []
        for _ in range(EXPIRY_CALLS_PER_PASS):
            batch = await self._state.expire_admissions(ref, now, EXPIRY_BATCH)
            expired.extend(batch)
            for entry in batch:
                await self._publish(event_types.QUEUE_CONSUMER_EXPIRED, queue, entry)
            if len(batch) < EXPIRY_BATCH:
                break
        return expired

    async def deny(
        self, organization_id: str, mode: str, queue_id: str, consumer_id: str, reason: str
    ) -> Position:
        """DenyConsumer: removed, any token void (idempotent).

        Raises:
            NotFound: No such queue or entry.
            FailedPrecondition: Already COMPLETED, LEFT or EXPIRED.
        """
        queue = await self._config.get(organization_id, mode, queue_id)
        entry = await self._end(
            self._state.deny, queue, consumer_id, event_types.QUEUE_CONSUMER_DENIED, reason=reason
        )
        if entry.status is not EntryStatus.DENIED:
            raise errors.FailedPrecondition(f"the consumer is already {entry.status.value}")
        return await self._position(queue, EntryView(entry, None))

    async def complete(
        self, organization_id: str, mode: str, queue_id: str, consumer_id: str
    ) -> Position:
        """CompleteConsumer: an ADMITTED consumer's checkout is done (idempotent).

        Raises:
            NotFound: No such queue or entry.
            FailedPrecondition: Not ADMITTED (or already COMPLETED: then it succeeds).
        """
        queue = await self._config.get(organization_id, mode, queue_id)
        entry = await self._end(
            self._state.complete, queue, consumer_id, event_types.QUEUE_CONSUMER_COMPLETED
        )
        if entry.status is not EntryStatus.COMPLETED:
            raise errors.FailedPrecondition(
                f"only an admitted consumer can complete (this one is {entry.status.value})"
            )
        return await self._position(queue, EntryView(entry, None))

    async def validate_handoff(
        self,
        organization_id: str,
        mode: str,
        token: str,
        expected_queue_id: str | None,
        redemption_key: str | None = None,
    ) -> HandoffCheck:
        """Redeem a handoff token (once). Never raises for a bad token: INVALID.

        ``redemption_key`` (the digest of the caller's idempotency key) is stored with
        the redemption: the same key gets OK again, so a merchant whose answer was lost
        can retry; any other call gets ALREADY_USED.
        """
        now = self._clock()
        try:
            claims = verify_handoff_token(
                token,
                await self._signing_keys.public_keys_for(handoff_token_kid(token), now),
                issuer=self._issuer,
                organization_id=organization_id,
            )
        except InvalidToken:
            return HandoffCheck(HandoffVerdict.INVALID)
        if claims.mode != mode:
            return HandoffCheck(HandoffVerdict.INVALID)
        if expected_queue_id is not None and expected_queue_id != claims.queue_id:
            return HandoffCheck(HandoffVerdict.WRONG_QUEUE, claims)
        session = await self._sessions.get_session(organization_id, Mode(mode), claims.session_id)
        if session is None or not session.live_at(now):
            # The grant is bound to the session: a revoked (logout, refresh token
            # reuse, erasure) or expired session cannot be turned into a checkout.
            return HandoffCheck(HandoffVerdict.INVALID)
        ref = QueueRef(organization_id, mode, claims.queue_id)
        redeemed = await self._state.redeem(
            ref, claims.consumer_id, claims.token_id, _timestamp(now), redemption_key
        )
        verdict = {
            RedeemOutcome.OK: HandoffVerdict.OK,
            RedeemOutcome.ALREADY_USED: HandoffVerdict.ALREADY_USED,
            RedeemOutcome.EXPIRED: HandoffVerdict.EXPIRED,
            RedeemOutcome.INVALID: HandoffVerdict.INVALID,
        }[redeemed.outcome]
        if verdict is HandoffVerdict.OK and not redeemed.replayed:
            await self._events.publish(
                DomainEvent(
                    event_types.HANDOFF_REDEEMED,
                    organization_id,
                    mode,
                    now,
                    {
                        "queue_id": claims.queue_id,
                        "consumer_id": claims.consumer_id,
                        "session_id": claims.session_id,
                    },
                )
            )
        return HandoffCheck(verdict, claims if verdict is not HandoffVerdict.INVALID else None)

    async def stats(self, organization_id: str, mode: str, queue_id: str) -> QueueStats:
        """Configuration, counters, measured admission rate and the longest wait."""
        queue = await self._config.get(organization_id, mode, queue_id)
        now = self._now()
        counters = await self._state.counters(
            queue_ref(queue), now, RATE_WINDOW_SECONDS, check=self.marker_check(queue)
        )
        if counters.declared_lost and counters.marker is not None:
            await self.confirm_loss(queue, counters.marker)
        oldest_wait = None
        if counters.head_entered_at is not None:
            oldest_wait = dt.timedelta(seconds=max(0.0, now - counters.head_entered_at))
        lost_at = None if counters.marker is None else counters.marker.lost_at
        return QueueStats(
            queue,
            counters,
            counters.admitted_recently * 60.0 / RATE_WINDOW_SECONDS,
            oldest_wait,
            None if lost_at is None else _datetime(lost_at),
        )

    async def _position(self, queue: Queue, view: EntryView) -> Position:
        entry = view.entry
        now = self._now()
        if (
            entry.status is EntryStatus.ADMITTED
            and entry.redeemed_at is None
            and entry.handoff_expires_at is not None
            and entry.handoff_expires_at <= now
        ):
            # Past due but not yet swept by the worker: it is expired, and its token
            # would only be refused.
            entry = dataclasses.replace(entry, status=EntryStatus.EXPIRED)
        waiting = entry.status is EntryStatus.QUEUED and view.rank is not None
        hidden = entry.pre_queue and queue.status is QueueStatus.SCHEDULED
        ahead = view.rank if waiting and view.rank is not None and not hidden else 0
        position = ahead + 1 if waiting and not hidden else 0
        estimated_wait = None
        if waiting and not hidden:
            rate = await self._admissions_per_minute(queue)
            if rate > 0:
                estimated_wait = dt.timedelta(minutes=position / rate)
        return Position(
            queue=queue,
            entry=entry,
            position=position,
            ahead=ahead,
            estimated_wait=estimated_wait,
            handoff_token=await self._handoff_token(queue, entry),
        )

    async def _admissions_per_minute(self, queue: Queue) -> float:
        """Measured over the last few minutes; the configured rate until measured."""
        ref = queue_ref(queue)
        cached = self._rates.get(ref)
        if cached is not None and self._monotonic() - cached[1] < CONFIG_TTL_SECONDS:
            measured = cached[0]
        else:
            counters = await self._state.counters(ref, self._now(), RATE_WINDOW_SECONDS)
            measured = counters.admitted_recently * 60.0 / RATE_WINDOW_SECONDS
            self._rates[ref] = (measured, self._monotonic())
        if measured > 0:
            return measured
        return float(queue.admission_rate_per_minute) if queue.status is QueueStatus.OPEN else 0.0

    async def _handoff_token(self, queue: Queue, entry: EntryRecord) -> str | None:
        if (
            entry.status is not EntryStatus.ADMITTED
            or entry.redeemed_at is not None
            or entry.handoff_token_id is None
            or entry.admitted_at is None
            or entry.handoff_expires_at is None
        ):
            return None
        # Signed on demand from what the admission stored: every copy carries the
        # same jti, so however often it is fetched it redeems once.
        now = self._clock()
        return sign_handoff_token(
            await self._signing_keys.signing_key(now),
            HandoffClaims(
                issuer=self._issuer,
                organization_id=queue.organization_id,
                mode=queue.mode,
                queue_id=queue.queue_id,
                consumer_id=entry.consumer_id,
                session_id=entry.session_id,
                token_id=entry.handoff_token_id,
                issued_at=_datetime(entry.admitted_at),
                expires_at=_datetime(entry.handoff_expires_at),
            ),
        )

    def _seconds_per_admission(self, queue: Queue) -> int:
        return max(1, int(60 / max(queue.admission_rate_per_minute, 1)))

    def _now(self) -> float:
        return _timestamp(self._clock())

    async def _end(
        self,
        transition: Callable[[QueueRef, str, float], Awaitable[Transition | None]],
        queue: Queue,
        consumer_id: str,
        event_type: str,
        **extra: Any,
    ) -> EntryRecord:
        """One status change and its event: published only by the call whose atomic
        store step made the change, so concurrent or repeated calls (DenyConsumer twice,
        a retry) publish it once. The one place the webhook outbox hooks in.

        Raises:
            NotFound: The consumer never entered the queue.
        """
        moved = await transition(queue_ref(queue), consumer_id, self._now())
        if moved is None:
            raise errors.NotFound(NOT_IN_QUEUE)
        if moved.changed:
            await self._publish(event_type, queue, moved.entry, **extra)
        return moved.entry

    async def _publish(
        self, event_type: str, queue: Queue, entry: EntryRecord, **extra: Any
    ) -> None:
        data: Mapping[str, Any] = {
            "queue_id": queue.queue_id,
            "consumer_id": entry.consumer_id,
            "session_id": entry.session_id,
            "status": entry.status.value,
            **extra,
        }
        try:
            await self._events.publish(
                DomainEvent(event_type, queue.organization_id, queue.mode, self._clock(), data)
            )
        except Exception:
            self._logger.exception("event publication failed", extra={"event": event_type})


class QueueStateDropper:
    """Starts and drops queues' live state (the ``QueueStateCleaner`` of queue config)."""

    def __init__(self, state: QueueStateStore) -> None:
        self._state = state

    async def start_queue(self, queue: Queue) -> None:
        marker = StateMarker(secrets.token_hex(8), _timestamp(queue.updated_at))
        await self._state.start(queue_ref(queue), marker)

    async def forget_queue(self, queue: Queue) -> None:
        await self._state.drop(queue_ref(queue))
