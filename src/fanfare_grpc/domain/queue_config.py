"""Queue configuration and lifecycle rules (CreateQueue … CloseQueue, schedules)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Collection
from typing import Protocol

from fanfare_grpc import errors
from fanfare_grpc.domain import ids
from fanfare_grpc.domain.events import (
    QUEUE_CLOSED,
    QUEUE_OPENED,
    DomainEvent,
    EventPublisher,
)
from fanfare_grpc.domain.names import normalized_name
from fanfare_grpc.domain.pagination import ListCursor, decode_cursor, encode_cursor, page_size
from fanfare_grpc.domain.queues import (
    CLOSABLE,
    DEFAULT_HANDOFF_TTL,
    DELETABLE,
    ENTERABLE,
    MAX_ADMISSION_RATE_PER_MINUTE,
    OPENABLE,
    PAUSABLE,
    QUEUE_PREFIX,
    RATE_COUNTED,
    UPDATABLE_FIELDS,
    AdmissionRateCeilingExceeded,
    Queue,
    QueueChanges,
    QueueStatus,
)

QUEUE_NOT_FOUND = "queue not found"
Clock = Callable[[], dt.datetime]


class QueueStore(Protocol):
    """Persistence of queue configuration, scoped by organization and mode."""

    async def add(self, queue: Queue, *, rate_ceiling: int | None = None) -> None:
        """Store a new queue.

        With ``rate_ceiling``, atomically with the insert (no concurrent store of the
        same organization and mode can interleave): the admission rates of the
        organization's ``RATE_COUNTED`` queues in that mode, this one included, must
        sum to at most ``rate_ceiling``.

        Raises:
            AdmissionRateCeilingExceeded: They would not; nothing was stored.
        """
        ...

    async def get(self, organization_id: str, mode: str, queue_id: str) -> Queue | None:
        """One queue."""
        ...

    async def list_queues(
        self,
        organization_id: str,
        mode: str,
        *,
        status: QueueStatus | None,
        limit: int,
        after: ListCursor | None,
    ) -> list[Queue]:
        """Queues newest first."""
        ...

    async def replace(
        self, queue: Queue, expected: Queue, *, rate_ceiling: int | None = None
    ) -> bool:
        """Store ``queue`` if the stored one is unchanged since ``expected`` was read.

        ``rate_ceiling`` as for ``add``.

        Raises:
            AdmissionRateCeilingExceeded: The ceiling would be exceeded; nothing changed.
        """
        ...

    async def delete(self, queue: Queue, statuses: Collection[QueueStatus]) -> bool:
        """Delete if the status is one of ``statuses``."""
        ...


class QueueStateCleaner(Protocol):
    """Starts a queue's live state (entries, positions) in the cache, and drops a
    deleted queue's."""

    async def start_queue(self, queue: Queue) -> None:
        """Mark the queue's state as started (it takes entries from now on): called
        before the database says so, so that any replica that reads SCHEDULED, OPEN or
        PAUSED and finds no marker knows the state was lost."""
        ...

    async def forget_queue(self, queue: Queue) -> None:
        """Forget everything the cache holds about ``queue``."""
        ...


@dataclasses.dataclass(frozen=True)
class NewQueue:
    """CreateQueue's fields."""

    name: str
    admission_rate_per_minute: int
    opens_at: dt.datetime | None = None
    closes_at: dt.datetime | None = None
    handoff_ttl: dt.timedelta | None = None
    max_size: int = 0


def _invalid(field: str, description: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"invalid {field}", (errors.FieldViolation(field, description),))


def _ceiling_reached(
    queue: Queue, exceeded: AdmissionRateCeilingExceeded
) -> errors.FailedPrecondition:
    room = max(exceeded.ceiling - exceeded.others, 0)
    # The organization's other queues are in the way: waiting does not help (API.md's
    # RESOURCE_EXHAUSTED always carries a retry-after), changing them does.
    return errors.FailedPrecondition(
        f"admission rate ceiling reached: this organization's SCHEDULED, OPEN and PAUSED "
        f"queues in {queue.mode} mode may admit at most {exceeded.ceiling} per minute "
        f"together; the others take {exceeded.others}, so this queue may have at most "
        f"{room}, not {queue.admission_rate_per_minute} (close a queue or lower a rate "
        "first)"
    )


def _check_times(
    opens_at: dt.datetime | None, closes_at: dt.datetime | None, now: dt.datetime
) -> None:
    if opens_at is not None and closes_at is not None and closes_at <= opens_at:
        raise _invalid("closes_at", "must be after opens_at")
    if closes_at is not None and closes_at <= now:
        raise _invalid("closes_at", "must be in the future")


class QueueConfigService:
    """Queue configuration for every organization."""

    def __init__(
        self,
        store: QueueStore,
        cleaner: QueueStateCleaner,
        events: EventPublisher,
        *,
        clock: Clock,
        logger: logging.Logger,
        max_admission_rate_per_organization: int = MAX_ADMISSION_RATE_PER_MINUTE,
    ) -> None:
        """``max_admission_rate_per_organization`` caps the summed admission rates of
        one organization's SCHEDULED, OPEN and PAUSED queues in one mode."""
        self._store = store
        self._rate_ceiling = max_admission_rate_per_organization
        self._cleaner = cleaner
        self._events = events
        self._clock = clock
        self._logger = logger
        self._listeners: list[Callable[[Queue], None]] = []

    def on_change(self, listener: Callable[[Queue], None]) -> None:
        """Call ``listener`` with every queue this process changes or deletes."""
        self._listeners.append(listener)

    def _changed(self, queue: Queue) -> None:
        for listener in self._listeners:
            listener(queue)

    async def create(self, organization_id: str, mode: str, new: NewQueue) -> Queue:
        """A DRAFT queue, or SCHEDULED when ``opens_at`` is given (in the future).

        Raises:
            InvalidArgument: Bad name, a past ``opens_at``/``closes_at``, or closes
                before it opens.
            FailedPrecondition: SCHEDULED would take the organization past its admission
                rate ceiling.
        """
        now = self._clock()
        if new.opens_at is not None and new.opens_at <= now:
            raise _invalid("opens_at", "must be in the future (OpenQueue opens now)")
        _check_times(new.opens_at, new.closes_at, now)
        queue = Queue(
            queue_id=ids.new_id(QUEUE_PREFIX),
            organization_id=organization_id,
            mode=mode,
            name=normalized_name(new.name, "queue"),
            status=QueueStatus.SCHEDULED if new.opens_at else QueueStatus.DRAFT,
            admission_rate_per_minute=new.admission_rate_per_minute,
            handoff_ttl=new.handoff_ttl or DEFAULT_HANDOFF_TTL,
            max_size=new.max_size,
            created_at=now,
            updated_at=now,
            opens_at=new.opens_at,
            closes_at=new.closes_at,
        )
        await self._start_if_new(queue, None)
        try:
            await self._store.add(queue, rate_ceiling=self._ceiling_for(queue, None))
        except AdmissionRateCeilingExceeded as exceeded:
            await self._cleaner.forget_queue(queue)  # its marker: the queue never existed
            raise _ceiling_reached(queue, exceeded) from None
        return queue

    async def get(self, organization_id: str, mode: str, queue_id: str) -> Queue:
        """One queue.

        Raises:
            NotFound: Unknown, or another organization's or mode's.
        """
        queue = await self._store.get(organization_id, mode, queue_id)
        if queue is None:
            raise errors.NotFound(QUEUE_NOT_FOUND)
        return queue

    async def list(
        self,
        organization_id: str,
        mode: str,
        status: QueueStatus | None,
        requested_page_size: int,
        page_token: str,
    ) -> tuple[list[Queue], str]:
        """One page of queues, newest first, and the next page token ('' on the last)."""
        size = page_size(requested_page_size)
        queues = await self._store.list_queues(
            organization_id,
            mode,
            status=status,
            limit=size + 1,
            after=decode_cursor(page_token, QUEUE_PREFIX),
        )
        page = queues[:size]
        next_token = ""
        if len(queues) > size:
            next_token = encode_cursor(ListCursor(page[-1].created_at, page[-1].queue_id))
        return page, next_token

    async def update(
        self, organization_id: str, mode: str, queue_id: str, changes: QueueChanges
    ) -> Queue:
        """Apply the masked fields.

        Raises:
            NotFound: No such queue here.
            FailedPrecondition: A CLOSED queue, or ``opens_at`` of a queue that opened.
            InvalidArgument: A mask path that is not a whole updatable field (such as
                ``name.x``, which would change nothing), times in the past or out of
                order.
            Aborted: The queue changed meanwhile (retry).
            FailedPrecondition: A higher rate, or becoming SCHEDULED, would take the
                organization past its admission rate ceiling.
        """
        if not changes.fields or not changes.fields <= UPDATABLE_FIELDS:
            raise _invalid(
                "update_mask", f"must name whole fields among {', '.join(sorted(UPDATABLE_FIELDS))}"
            )
        current = await self.get(organization_id, mode, queue_id)
        if current.status is QueueStatus.CLOSED:
            raise errors.FailedPrecondition("a closed queue cannot be changed")
        now = self._clock()
        updated = current
        fields = changes.fields
        if "opens_at" in fields:
            if current.status not in (QueueStatus.DRAFT, QueueStatus.SCHEDULED):
                raise errors.FailedPrecondition("opens_at cannot change once a queue has opened")
            if changes.opens_at is not None and changes.opens_at <= now:
                raise _invalid("opens_at", "must be in the future (OpenQueue opens now)")
            updated = dataclasses.replace(
                updated,
                opens_at=changes.opens_at,
                status=QueueStatus.SCHEDULED if changes.opens_at else QueueStatus.DRAFT,
            )
        if "closes_at" in fields:
            updated = dataclasses.replace(updated, closes_at=changes.closes_at)
        if "name" in fields:
            updated = dataclasses.replace(updated, name=normalized_name(changes.name, "queue"))
        if "admission_rate_per_minute" in fields:
            updated = dataclasses.replace(
                updated, admission_rate_per_minute=changes.admission_rate_per_minute
            )
        if "handoff_ttl" in fields:
            updated = dataclasses.replace(
                updated, handoff_ttl=changes.handoff_ttl or DEFAULT_HANDOFF_TTL
            )
        if "max_size" in fields:
            updated = dataclasses.replace(updated, max_size=changes.max_size)
        if "closes_at" in fields and changes.closes_at is not None and changes.closes_at <= now:
            raise _invalid("closes_at", "must be in the future")
        if (
            updated.status in (QueueStatus.DRAFT, QueueStatus.SCHEDULED)
            and updated.opens_at is not None
            and updated.closes_at is not None
            and updated.closes_at <= updated.opens_at
        ):
            raise _invalid("closes_at", "must be after opens_at")
        updated = dataclasses.replace(updated, updated_at=max(now, current.updated_at))
        if updated.updated_at == current.updated_at:
            updated = dataclasses.replace(
                updated, updated_at=current.updated_at + dt.timedelta(microseconds=1)
            )
        await self._start_if_new(updated, current)
        if not await self._replace(updated, current):
            raise errors.Aborted("the queue changed meanwhile; retry")
        self._changed(updated)
        return updated

    async def delete(self, organization_id: str, mode: str, queue_id: str) -> None:
        """Delete a DRAFT or CLOSED queue and its live state.

        Raises:
            NotFound: No such queue here.
            FailedPrecondition: SCHEDULED, OPEN or PAUSED.
        """
        queue = await self.get(organization_id, mode, queue_id)
        if queue.status not in DELETABLE or not await self._store.delete(queue, DELETABLE):
            raise errors.FailedPrecondition("only a DRAFT or CLOSED queue can be deleted")
        self._changed(queue)
        await self._cleaner.forget_queue(queue)

    async def open(self, organization_id: str, mode: str, queue_id: str) -> Queue:
        """Open now (DRAFT, SCHEDULED or PAUSED).

        Raises:
            NotFound, FailedPrecondition (OPEN, CLOSED, or its ``closes_at`` passed),
            Aborted, FailedPrecondition (a DRAFT's rate would take the organization past
            its admission rate ceiling).
        """
        queue = await self.get(organization_id, mode, queue_id)
        if queue.closes_at is not None and queue.closes_at <= self._clock():
            # The worker closes it within a second; opening it meanwhile would only
            # announce an opening and a closing back to back.
            raise errors.FailedPrecondition("the queue's closes_at has passed")
        return await self._transition(queue, OPENABLE, QueueStatus.OPEN)

    async def pause(self, organization_id: str, mode: str, queue_id: str) -> Queue:
        """Pause an OPEN queue (entries kept, admissions stop)."""
        return await self._transition(
            await self.get(organization_id, mode, queue_id), PAUSABLE, QueueStatus.PAUSED
        )

    async def close(self, organization_id: str, mode: str, queue_id: str) -> Queue:
        """Close for good."""
        return await self._transition(
            await self.get(organization_id, mode, queue_id), CLOSABLE, QueueStatus.CLOSED
        )

    async def apply_schedule(self, organization_id: str, mode: str, queue_id: str) -> None:
        """Open a SCHEDULED queue whose ``opens_at`` passed; close one whose
        ``closes_at`` passed. Safe to run on several workers at once: the conditional
        update lets exactly one of them make (and announce) each transition."""
        queue = await self._store.get(organization_id, mode, queue_id)
        if queue is None:
            return
        now = self._clock()
        try:
            if queue.closes_at is not None and queue.closes_at <= now and queue.status in CLOSABLE:
                await self._transition(queue, CLOSABLE, QueueStatus.CLOSED)
            elif (
                queue.status is QueueStatus.SCHEDULED
                and queue.opens_at is not None
                and queue.opens_at <= now
            ):
                await self._transition(queue, frozenset({QueueStatus.SCHEDULED}), QueueStatus.OPEN)
        except (errors.FailedPrecondition, errors.Aborted):
            pass  # another worker (or an operator) got there first

    async def _transition(
        self, queue: Queue, allowed: frozenset[QueueStatus], target: QueueStatus
    ) -> Queue:
        if queue.status not in allowed:
            raise errors.FailedPrecondition(
                f"a {queue.status.value.upper()} queue cannot become {target.value.upper()}"
            )
        now = max(self._clock(), queue.updated_at + dt.timedelta(microseconds=1))
        changed = dataclasses.replace(queue, status=target, updated_at=now)
        if target is QueueStatus.OPEN and queue.opened_at is None:
            changed = dataclasses.replace(changed, opened_at=now)
        if target is QueueStatus.CLOSED:
            changed = dataclasses.replace(changed, closed_at=now)
        await self._start_if_new(changed, queue)
        if not await self._replace(changed, queue):
            raise errors.Aborted("the queue changed meanwhile; retry")
        self._changed(changed)
        event_type = {QueueStatus.OPEN: QUEUE_OPENED, QueueStatus.CLOSED: QUEUE_CLOSED}.get(target)
        if event_type is not None and not (
            target is QueueStatus.OPEN and queue.status is QueueStatus.PAUSED
        ):
            await self._publish(event_type, changed)
        return changed

    async def _start_if_new(self, queue: Queue, previous: Queue | None) -> None:
        """Mark the live state started when ``queue`` starts taking entries (DRAFT or
        new → SCHEDULED or OPEN), before it is stored: if the cache cannot be written
        the call fails and the database is unchanged. A marker left by a store that
        then fails (a conflict) is harmless: it is kept by the next start."""
        if queue.status in ENTERABLE and (previous is None or previous.status not in ENTERABLE):
            await self._cleaner.start_queue(queue)

    def _ceiling_for(self, queue: Queue, previous: Queue | None) -> int | None:
        """The ceiling to check when storing ``queue`` over ``previous``, or None.

        Only a queue that starts to count or counts for more is checked: one already
        counted keeps its share (pausing, reopening, the worker opening a SCHEDULED
        queue), and lowering a rate is always allowed, even above a ceiling that an
        operator has since lowered.
        """
        if queue.status not in RATE_COUNTED:
            return None
        if (
            previous is not None
            and previous.status in RATE_COUNTED
            and queue.admission_rate_per_minute <= previous.admission_rate_per_minute
        ):
            return None
        return self._rate_ceiling

    async def _replace(self, queue: Queue, expected: Queue) -> bool:
        try:
            return await self._store.replace(
                queue, expected, rate_ceiling=self._ceiling_for(queue, expected)
            )
        except AdmissionRateCeilingExceeded as exceeded:
            raise _ceiling_reached(queue, exceeded) from None

    async def _publish(self, event_type: str, queue: Queue) -> None:
        try:
            await self._events.publish(
                DomainEvent(
                    event_type,
                    queue.organization_id,
                    queue.mode,
                    self._clock(),
                    {"queue_id": queue.queue_id, "status": queue.status.value},
                )
            )
        except Exception:
            self._logger.exception("event publication failed", extra={"event": event_type})
