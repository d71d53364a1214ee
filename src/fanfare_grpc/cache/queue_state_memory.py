"""In-process live queue state: the embedded default for a single server process.

Same semantics as ``queue_state_redis`` (the shared contract tests prove it). No
method awaits anything, so each call runs to completion on the event loop without
interleaving: one call is one atomic step, as one Lua script is on Redis.

Per queue: a ``SortedList`` of (score, consumer id) for the waiting line (rank by
bisection, O(log n)), a dict of entries, a dict device → consumer for the devices
held by active entries, a ``SortedList`` of (handoff_expires_at, consumer id) for
the admitted entries (+inf once redeemed: such entries never expire, yet are still
admitted), the queue's counter (scores of arrivals after opening), the completed count,
the recent admission times and the state's marker (gone with the process: a restarted
embedded server finds the state of its open queues lost, as Redis does after a restart
without persistence). Nothing here evicts an entry, yet every operation
tolerates a missing one as the Redis scripts do (one contract for both).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Sequence

from sortedcontainers import SortedList

from fanfare_grpc.domain.queue_state import (
    MAX_ADMISSIONS_PER_CALL,
    AdmissionBatch,
    EnterOutcome,
    EnterResult,
    EntryRecord,
    EntryStatus,
    EntryView,
    MarkerCheck,
    QueueCounters,
    QueueRef,
    RedeemOutcome,
    RedeemResult,
    StateMarker,
    Transition,
    Views,
)

# Admission times are kept this long (the Redis backend trims its history likewise),
# so ``counters`` measures rates over windows of at most an hour.
ADMISSION_HISTORY_SECONDS = 3600.0

_QUEUED = EntryStatus.QUEUED
_ADMITTED = EntryStatus.ADMITTED
_LEFT = EntryStatus.LEFT


class _Entry:
    """The mutable internal form of an ``EntryRecord``: slots keep 1 M entries small.

    ``score`` is the entry's place in the waiting line (meaningful while QUEUED).
    """

    __slots__ = (
        "admitted_at",
        "consumer_id",
        "device_hash",
        "ended_at",
        "entered_at",
        "handoff_expires_at",
        "handoff_token_id",
        "pre_queue",
        "redeemed_at",
        "redeemed_with",
        "score",
        "session_id",
        "status",
    )

    def __init__(self, entry: EntryRecord, score: float) -> None:
        # A new entry starts QUEUED whatever the caller filled in.
        self.consumer_id = entry.consumer_id
        self.session_id = entry.session_id
        self.device_hash = entry.device_hash
        self.status = _QUEUED
        self.entered_at = float(entry.entered_at)
        self.pre_queue = bool(entry.pre_queue)
        self.admitted_at: float | None = None
        self.handoff_token_id: str | None = None
        self.handoff_expires_at: float | None = None
        self.redeemed_at: float | None = None
        # The redemption key that redeemed the token (its retries get OK again).
        self.redeemed_with: str | None = None
        self.ended_at: float | None = None
        self.score = score

    def record(self) -> EntryRecord:
        return EntryRecord(
            consumer_id=self.consumer_id,
            session_id=self.session_id,
            device_hash=self.device_hash,
            status=self.status,
            entered_at=self.entered_at,
            pre_queue=self.pre_queue,
            admitted_at=self.admitted_at,
            handoff_token_id=self.handoff_token_id,
            handoff_expires_at=self.handoff_expires_at,
            redeemed_at=self.redeemed_at,
            ended_at=self.ended_at,
        )

    def admitted_key(self) -> tuple[float, str]:
        """Its key in the admitted list: redeemed tokens sort last and never expire."""
        expires = math.inf if self.redeemed_at is not None else self.handoff_expires_at
        assert expires is not None
        return (expires, self.consumer_id)


class _Queue:
    """Everything one queue holds."""

    __slots__ = (
        "admissions",
        "admitted",
        "devices",
        "ended",
        "entries",
        "marker",
        "missing",
        "sequence",
        "waiting",
    )

    def __init__(self) -> None:
        self.waiting: SortedList[tuple[float, str]] = SortedList()
        self.entries: dict[str, _Entry] = {}
        self.devices: dict[str, str] = {}
        self.admitted: SortedList[tuple[float, str]] = SortedList()
        self.sequence = 0
        self.ended: collections.Counter[EntryStatus] = collections.Counter()
        self.admissions: SortedList[float] = SortedList()
        # consumers skipped because their entry was gone
        self.missing = 0
        self.marker: StateMarker | None = None

    def holds_state(self) -> bool:
        """Anything besides the marker (what a Redis key of the queue would hold)."""
        return bool(
            self.waiting
            or self.entries
            or self.devices
            or self.admitted
            or self.sequence
            or self.ended
            or self.admissions
            or self.missing
        )

    def next_number(self) -> int:
        self.sequence += 1
        return self.sequence

    def view(self, entry: _Entry) -> EntryView:
        rank = None
        if entry.status is _QUEUED:
            rank = self.waiting.bisect_left((entry.score, entry.consumer_id))
        return EntryView(entry.record(), rank)

    def finish(self, entry: _Entry, status: EntryStatus, now: float) -> None:
        """QUEUED or ADMITTED → ``status`` (terminal): out of line, device released."""
        if entry.status is _QUEUED:
            self.waiting.remove((entry.score, entry.consumer_id))
        else:
            self.admitted.remove(entry.admitted_key())
        if self.devices.get(entry.device_hash) == entry.consumer_id:
            del self.devices[entry.device_hash]
        self.ended[status] += 1
        entry.status = status
        entry.ended_at = now


def _check_score(score: float) -> float:
    if not math.isfinite(score):
        raise ValueError(f"queue scores must be finite, not {score!r}")
    return float(score)


class MemoryQueueStateStore:
    """``QueueStateStore`` in this process's memory."""

    def __init__(self) -> None:
        self._queues: dict[QueueRef, _Queue] = {}

    def _queue(self, queue: QueueRef) -> _Queue:
        state = self._queues.get(queue)
        if state is None:
            state = self._queues[queue] = _Queue()
        return state

    def _check(self, queue: QueueRef, check: MarkerCheck | None) -> tuple[StateMarker | None, bool]:
        """The marker, written first if ``check`` asks and there is none (see the
        protocol's ``check_marker``); and whether this call declared the state lost."""
        state = self._queues.get(queue)
        if state is not None and state.marker is not None:
            return state.marker, False
        if check is None:
            return None, False
        lost = state is None or not state.holds_state()
        state = self._queue(queue)
        state.marker = StateMarker(check.epoch, check.now, check.now if lost else None)
        return state.marker, lost

    async def start(self, queue: QueueRef, marker: StateMarker) -> StateMarker:
        state = self._queue(queue)
        if state.marker is None:
            state.marker = marker
        return state.marker

    async def check_marker(self, queue: QueueRef, check: MarkerCheck) -> tuple[StateMarker, bool]:
        marker, lost = self._check(queue, check)
        assert marker is not None
        return marker, lost

    async def enter(
        self,
        queue: QueueRef,
        entry: EntryRecord,
        *,
        score: float,
        max_size: int | None,
        check: MarkerCheck | None = None,
    ) -> EnterResult:
        score = _check_score(score)
        marker, lost = self._check(queue, check)
        result = self._enter(queue, entry, score, max_size)
        return dataclasses.replace(result, marker=marker, declared_lost=lost)

    def _enter(
        self, queue: QueueRef, entry: EntryRecord, score: float, max_size: int | None
    ) -> EnterResult:
        state = self._queue(queue)
        consumer_id = entry.consumer_id
        existing = state.entries.get(consumer_id)
        if existing is not None and existing.status is not _LEFT:
            return EnterResult(EnterOutcome.ALREADY_ENTERED, state.view(existing))
        holder_id = state.devices.get(entry.device_hash)
        if holder_id is not None and holder_id != consumer_id:
            holder = state.entries.get(holder_id)
            if holder is not None and holder.status in (_QUEUED, _ADMITTED):
                return EnterResult(EnterOutcome.DEVICE_TAKEN)
        if max_size is not None and len(state.waiting) >= max_size:
            return EnterResult(EnterOutcome.FULL)
        # A returning (LEFT) consumer goes to the back: re-entering must never be a
        # way to draw a new random pre-queue position.
        if existing is not None or score < 0:
            score = float(1 + state.next_number())
        created = _Entry(entry, score)
        state.entries[consumer_id] = created
        state.devices[created.device_hash] = consumer_id
        state.waiting.add((score, consumer_id))
        return EnterResult(EnterOutcome.ENTERED, state.view(created))

    async def view(self, queue: QueueRef, consumer_id: str) -> EntryView | None:
        state = self._queues.get(queue)
        entry = None if state is None else state.entries.get(consumer_id)
        return None if state is None or entry is None else state.view(entry)

    async def views(
        self,
        queue: QueueRef,
        consumer_ids: Sequence[str],
        *,
        check: MarkerCheck | None = None,
    ) -> Views:
        marker, lost = self._check(queue, check)
        state = self._queues.get(queue)
        views = Views(marker=marker, declared_lost=lost)
        for consumer_id in consumer_ids:
            entry = None if state is None else state.entries.get(consumer_id)
            views.append(None if state is None or entry is None else state.view(entry))
        return views

    async def leave(self, queue: QueueRef, consumer_id: str, now: float) -> Transition | None:
        return self._transition(
            queue, consumer_id, EntryStatus.LEFT, (_QUEUED, _ADMITTED), now, unredeemed_only=True
        )

    async def deny(self, queue: QueueRef, consumer_id: str, now: float) -> Transition | None:
        return self._transition(queue, consumer_id, EntryStatus.DENIED, (_QUEUED, _ADMITTED), now)

    async def complete(self, queue: QueueRef, consumer_id: str, now: float) -> Transition | None:
        return self._transition(queue, consumer_id, EntryStatus.COMPLETED, (_ADMITTED,), now)

    def _transition(
        self,
        queue: QueueRef,
        consumer_id: str,
        status: EntryStatus,
        allowed_from: tuple[EntryStatus, ...],
        now: float,
        *,
        unredeemed_only: bool = False,
    ) -> Transition | None:
        state = self._queues.get(queue)
        entry = None if state is None else state.entries.get(consumer_id)
        if state is None or entry is None:
            return None
        if unredeemed_only and entry.redeemed_at is not None:
            return Transition(entry.record(), changed=False)
        if entry.status not in allowed_from:
            return Transition(entry.record(), changed=False)
        state.finish(entry, status, float(now))
        return Transition(entry.record(), changed=True)

    async def admit(
        self,
        queue: QueueRef,
        token_ids: Sequence[str],
        now: float,
        handoff_ttl_seconds: float,
    ) -> AdmissionBatch:
        if len(token_ids) > MAX_ADMISSIONS_PER_CALL:
            raise ValueError(
                f"at most {MAX_ADMISSIONS_PER_CALL} admissions per call, not {len(token_ids)}"
            )
        state = self._queues.get(queue)
        if state is None or not token_ids or not state.waiting:
            return AdmissionBatch(waiting=0 if state is None else len(state.waiting))
        now = float(now)
        expires_at = now + handoff_ttl_seconds
        admitted: list[EntryRecord] = []
        unused = iter(token_ids)
        skipped = 0
        # Skipped consumers count against the limit too, as on Redis (one contract).
        while (
            len(admitted) < len(token_ids)
            and len(admitted) + skipped < MAX_ADMISSIONS_PER_CALL
            and state.waiting
        ):
            _, consumer_id = state.waiting.pop(0)
            entry = state.entries.get(consumer_id)
            if entry is None:
                state.missing += 1
                skipped += 1
                continue
            token_id = next(unused)
            entry.status = _ADMITTED
            entry.admitted_at = now
            entry.handoff_token_id = token_id
            entry.handoff_expires_at = expires_at
            state.admitted.add(entry.admitted_key())
            state.admissions.add(now)
            admitted.append(entry.record())
        history = state.admissions
        del history[: history.bisect_right(now - ADMISSION_HISTORY_SECONDS)]
        return AdmissionBatch(admitted, skipped=skipped, waiting=len(state.waiting))

    async def expire_admissions(self, queue: QueueRef, now: float, limit: int) -> list[EntryRecord]:
        state = self._queues.get(queue)
        if state is None or limit <= 0:
            return []
        due: list[tuple[float, str]] = []
        for key in state.admitted.islice(0, limit):
            if key[0] > now:
                break
            due.append(key)
        expired: list[EntryRecord] = []
        for key in due:
            entry = state.entries.get(key[1])
            if entry is None:
                # its entry is gone: drop it (it would stay due forever) and count it
                state.admitted.remove(key)
                state.missing += 1
                continue
            state.finish(entry, EntryStatus.EXPIRED, float(now))
            expired.append(entry.record())
        return expired

    async def redeem(
        self,
        queue: QueueRef,
        consumer_id: str,
        token_id: str,
        now: float,
        redemption_key: str | None = None,
    ) -> RedeemResult:
        state = self._queues.get(queue)
        entry = None if state is None else state.entries.get(consumer_id)
        if state is None or entry is None:
            return RedeemResult(RedeemOutcome.INVALID)
        status = entry.status
        if entry.handoff_token_id != token_id or status in (EntryStatus.DENIED, _LEFT):
            return RedeemResult(RedeemOutcome.INVALID, entry.record())
        if entry.redeemed_at is not None:
            if redemption_key and entry.redeemed_with == redemption_key:
                return RedeemResult(RedeemOutcome.OK, entry.record(), replayed=True)
            return RedeemResult(RedeemOutcome.ALREADY_USED, entry.record())
        if status is EntryStatus.EXPIRED:
            return RedeemResult(RedeemOutcome.EXPIRED, entry.record())
        if status is not _ADMITTED:
            return RedeemResult(RedeemOutcome.INVALID, entry.record())
        assert entry.handoff_expires_at is not None
        if entry.handoff_expires_at <= now:
            # Left ADMITTED: expire_admissions reports the expiry (and releases the device).
            return RedeemResult(RedeemOutcome.EXPIRED, entry.record())
        state.admitted.remove(entry.admitted_key())
        entry.redeemed_at = float(now)
        entry.redeemed_with = redemption_key or None
        state.admitted.add(entry.admitted_key())
        return RedeemResult(RedeemOutcome.OK, entry.record())

    async def counters(
        self,
        queue: QueueRef,
        now: float,
        window_seconds: float,
        *,
        check: MarkerCheck | None = None,
    ) -> QueueCounters:
        marker, lost = self._check(queue, check)
        state = self._queues.get(queue)
        if state is None:
            return QueueCounters(0, 0, 0, 0, None, marker=marker, declared_lost=lost)
        history = state.admissions
        recent = len(history) - history.bisect_right(now - window_seconds)
        head_entered_at = None
        head = state.entries.get(state.waiting[0][1]) if state.waiting else None
        if head is not None:
            head_entered_at = head.entered_at
        return QueueCounters(
            waiting=len(state.waiting),
            admitted=len(state.admitted),
            completed=state.ended[EntryStatus.COMPLETED],
            admitted_recently=recent,
            head_entered_at=head_entered_at,
            denied=state.ended[EntryStatus.DENIED],
            left=state.ended[EntryStatus.LEFT],
            expired=state.ended[EntryStatus.EXPIRED],
            missing=state.missing,
            marker=marker,
            declared_lost=lost,
        )

    async def drop(self, queue: QueueRef) -> None:
        self._queues.pop(queue, None)
