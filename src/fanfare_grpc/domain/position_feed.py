"""Live positions for ``WatchPosition``: one poller per watched queue per process.

Every ``interval`` the poller of a queue reads the entries of all its watchers in
one batched cache call (``QueueStateStore.views``), so thousands of watchers cost
one round trip per queue per interval, not one each. A watcher is woken when its
status changes, when its place moved materially (by at least 1 %, or to the
front), when the queue's status changes, and at least every ``heartbeat``. The
state is shared through the cache, so an admission made by any replica's worker
reaches watchers on every replica. A watcher whose entry vanished while the queue
still exists had it lost with the queue's state (the batched read checks the state's
marker): its stream ends UNAVAILABLE ``QUEUE_STATE_LOST``, so the client enters
again instead of waiting on a silent stream. A watcher that goes away is dropped at once;
the last one of a queue stops its poller. Every stream holds a slot of its session
and of its client (``StreamSlots``) while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, Callable
from typing import Protocol

from fanfare_grpc import errors
from fanfare_grpc.domain.queue_config import QUEUE_NOT_FOUND
from fanfare_grpc.domain.queue_entries import Position, QueueEntries, queue_ref, state_lost
from fanfare_grpc.domain.queue_state import EntryStatus, QueueRef
from fanfare_grpc.domain.queues import ENTERABLE, QueueStatus
from fanfare_grpc.domain.stream_slots import StreamSlots

YIELD_EVERY = 200
TERMINAL_ENTRY_STATUSES = frozenset(
    {
        EntryStatus.ADMITTED,
        EntryStatus.COMPLETED,
        EntryStatus.DENIED,
        EntryStatus.LEFT,
        EntryStatus.EXPIRED,
    }
)


def is_final(position: Position) -> bool:
    """The stream ends after this update (admitted, out of line, or queue closed)."""
    return position.entry.status in TERMINAL_ENTRY_STATUSES or (
        position.queue.status is QueueStatus.CLOSED
    )


def _moved_materially(previous: Position, current: Position) -> bool:
    if previous.position == current.position:
        return False
    if current.position <= 10:
        return True
    return abs(previous.position - current.position) >= max(1, previous.position // 100)


@dataclasses.dataclass(frozen=True)
class StreamCaller:
    """Who opened a stream: the consumer, its session and its address (for the caps)."""

    consumer_id: str
    session_id: str
    client_host: str


# eq=False: watchers are distinct by identity (they live in sets).
@dataclasses.dataclass(eq=False)
class _Watcher:
    consumer_id: str
    last_sent: Position
    sent_at: float
    # An error ends the stream with it: NOT_FOUND (the queue was deleted) or
    # UNAVAILABLE (the queue's state was lost).
    updates: asyncio.Queue[Position | errors.FanfareError] = dataclasses.field(
        default_factory=lambda: asyncio.Queue(maxsize=1)
    )

    def offer(self, position: Position | errors.FanfareError, now: float) -> None:
        # Only the newest update matters: replace one the client has not taken yet.
        if self.updates.full():
            self.updates.get_nowait()
        self.updates.put_nowait(position)
        if isinstance(position, Position):
            self.last_sent = position
        self.sent_at = now


class RefreshFailures(Protocol):
    """Where failed refreshes are reported (throttled: they repeat every interval)."""

    def failed(self, error: Exception) -> None:
        """One refresh failed."""
        ...

    def succeeded(self) -> None:
        """One refresh succeeded."""
        ...


class PositionFeed:
    """Position streams of every queue in this process."""

    def __init__(
        self,
        entries: QueueEntries,
        slots: StreamSlots,
        refresh_failures: RefreshFailures,
        *,
        interval: float = 1.0,
        heartbeat: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries = entries
        self._slots = slots
        self._refresh_failures = refresh_failures
        self._interval = interval
        self._heartbeat = heartbeat
        self._monotonic = monotonic
        self._watchers: dict[QueueRef, set[_Watcher]] = {}
        self._pollers: dict[QueueRef, asyncio.Task[None]] = {}
        self._wakeups: dict[QueueRef, asyncio.Event] = {}
        # Admissions made in this process reach its watchers at once; other replicas'
        # admissions within one interval.
        entries.on_admitted(self._wake)

    @property
    def open_streams(self) -> int:
        """Streams of this process holding a slot (from before their first message)."""
        return self._slots.open_streams

    @property
    def watcher_count(self) -> int:
        """Streams of this process waiting for updates (past their first message)."""
        return sum(len(group) for group in self._watchers.values())

    async def watch(
        self,
        organization_id: str,
        mode: str,
        queue_id: str,
        caller: StreamCaller,
    ) -> AsyncGenerator[Position, None]:
        """The consumer's position now, then every material change, until final.

        The stream holds one of its session's and one of its client's slots from
        before the first read until it ends, however it ends.

        Raises:
            ResourceExhausted: The session or the client has too many streams open.
            NotFound: No such queue here, or the consumer never entered it.
            Unavailable: The queue's state was lost (``QUEUE_STATE_LOST``): enter again.
        """
        with self._slots.hold(organization_id, mode, caller.session_id, caller.client_host):
            first = await self._entries.position(
                organization_id, mode, queue_id, caller.consumer_id
            )
            yield first
            if is_final(first):
                return
            ref = queue_ref(first.queue)
            watcher = self._add_watcher(ref, _Watcher(caller.consumer_id, first, self._monotonic()))
            try:
                while True:
                    position = await watcher.updates.get()
                    if isinstance(position, errors.FanfareError):
                        raise position
                    yield position
                    if is_final(position):
                        return
            finally:
                self._remove_watcher(ref, watcher)

    def _add_watcher(self, ref: QueueRef, watcher: _Watcher) -> _Watcher:
        self._watchers.setdefault(ref, set()).add(watcher)
        if ref not in self._pollers:
            self._pollers[ref] = asyncio.create_task(
                self._poll(ref, ref.organization_id, ref.mode, ref.queue_id),
                name=f"positions {ref.queue_id}",
            )
        return watcher

    def _remove_watcher(self, ref: QueueRef, watcher: _Watcher) -> None:
        group = self._watchers.get(ref)
        if group is None:
            return
        group.discard(watcher)
        if not group:
            del self._watchers[ref]
            poller = self._pollers.pop(ref, None)
            if poller is not None:
                poller.cancel()

    def _wake(self, ref: QueueRef) -> None:
        wakeup = self._wakeups.get(ref)
        if wakeup is not None:
            wakeup.set()

    async def _poll(self, ref: QueueRef, organization_id: str, mode: str, queue_id: str) -> None:
        wakeup = self._wakeups.setdefault(ref, asyncio.Event())
        try:
            while ref in self._watchers:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), self._interval)
                wakeup.clear()
                await self._refresh_safely(ref, organization_id, mode, queue_id)
        finally:
            if self._wakeups.get(ref) is wakeup:
                del self._wakeups[ref]

    async def _refresh_safely(
        self, ref: QueueRef, organization_id: str, mode: str, queue_id: str
    ) -> None:
        try:
            await self._refresh(ref, organization_id, mode, queue_id)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - reported (and logged) just below
            # A cache or database hiccup: watchers keep their last position and the
            # next interval tries again (an outage is logged once, not every second).
            self._refresh_failures.failed(error)
        else:
            self._refresh_failures.succeeded()

    async def _refresh(self, ref: QueueRef, organization_id: str, mode: str, queue_id: str) -> None:
        watchers = list(self._watchers.get(ref, ()))
        if not watchers:
            return
        now = self._monotonic()
        try:
            queue = await self._entries.queue(organization_id, mode, queue_id)
        except errors.NotFound:
            for watcher in watchers:
                watcher.offer(errors.NotFound(QUEUE_NOT_FOUND), now)
            return
        views = await self._entries.state.views(
            ref, [w.consumer_id for w in watchers], check=self._entries.marker_check(queue)
        )
        if views.declared_lost and views.marker is not None:
            try:
                await self._entries.confirm_loss(queue, views.marker)
            except errors.NotFound:
                for watcher in watchers:
                    watcher.offer(errors.NotFound(QUEUE_NOT_FOUND), now)
                return
        for index, (watcher, view) in enumerate(zip(watchers, views, strict=True)):
            if index and index % YIELD_EVERY == 0:
                # Let the streams already woken send while the rest are prepared
                # (admitted ones each sign a handoff token).
                await asyncio.sleep(0)
            if view is None:
                # Its entry is gone while the queue takes entries: the state was lost
                # (entries are only dropped with a deleted, so DRAFT or CLOSED, queue;
                # nor can a CLOSED queue be entered again: NOT_FOUND then).
                gone = state_lost() if queue.status in ENTERABLE else None
                watcher.offer(gone or errors.NotFound(QUEUE_NOT_FOUND), now)
                continue
            previous = watcher.last_sent
            changed = (
                view.entry.status is not previous.entry.status
                or queue.status is not previous.queue.status
            )
            if not changed and now - watcher.sent_at < self._heartbeat:
                if view.rank is None or previous.position == 0:
                    continue
                if abs(previous.ahead - view.rank) < 1:
                    continue
            position = await self._entries.position_of(queue, view)
            if (
                changed
                or now - watcher.sent_at >= self._heartbeat
                or _moved_materially(previous, position)
            ):
                watcher.offer(position, now)

    async def close(self) -> None:
        """Stop every poller (shutdown)."""
        for poller in self._pollers.values():
            poller.cancel()
        for poller in list(self._pollers.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        self._pollers.clear()
