"""Live queue state (entries, positions, admissions): cache only, never the database.

One ``QueueStateStore`` call is one atomic step (a Lua script on Redis, one critical
section in process) and, on Redis, one round trip. All of a queue's keys share one
Redis Cluster hash tag, ``{<org>:<mode>:<queue id>}``. Times are Unix seconds
(floats) passed in by the caller, so tests drive them with an injectable clock.

Order: pre-queue entrants (before the queue opens) get a uniformly random score in
[0, 1) drawn by the caller from the OS CSPRNG, which places them in a uniformly
random order, ahead of everyone who enters after opening; those get ``1 + n`` from
a per-queue counter (first come, first served). Arrival time before opening
therefore confers no advantage, and no reshuffle step is needed at opening (their
positions are not shown until then).

Missing entries: a consumer may be in the waiting line (or among the admitted) while
its entry is gone (a Redis that evicts keys despite the startup check's advice, an
operator's ``HDEL``). Every operation tolerates it: such a consumer is skipped and
dropped from the line, counted in ``QueueCounters.missing``, never admitted or
expired; the device it held counts as free (``enter`` only honours a holder whose
entry is QUEUED or ADMITTED), and once dropped the consumer may enter again.

Lost state: the store is a cache, so a queue's whole state can vanish (Redis restarted
without persistence, flushed, failed over to an empty replica; a restarted process).
Each queue's state therefore carries a marker (``StateMarker``), written when the queue
starts taking entries (``start``), before the database says so. A queue the database
says is SCHEDULED, OPEN or PAUSED whose marker is missing has lost its state: the
first call that checks (``MarkerCheck``) finds it in its atomic step, writes a new
marker with ``lost_at`` (a new epoch) and says so (``declared_lost``), so exactly one
call in the deployment sees the loss declared. State without a marker (written by a
release before markers) is adopted: marked, kept, not lost.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Sequence
from typing import Protocol


class EntryStatus(enum.StrEnum):
    """Where a consumer stands in a queue."""

    QUEUED = "queued"
    ADMITTED = "admitted"
    COMPLETED = "completed"
    DENIED = "denied"
    LEFT = "left"
    EXPIRED = "expired"


ACTIVE_STATUSES = frozenset({EntryStatus.QUEUED, EntryStatus.ADMITTED})

# Admissions per ``admit`` call at most, and consumers taken from the line per call
# at most (those skipped for a missing entry included: without that bound one call
# of one admission could walk a whole line whose entries were evicted). On Redis one
# call is one Lua script, and Redis runs nothing else meanwhile (rate limits,
# revocations, every other queue): 200 admissions take about 2-3 ms of Redis time
# (500 about 6 ms, measured on a developer machine); larger counts are several calls.
MAX_ADMISSIONS_PER_CALL = 200


@dataclasses.dataclass(frozen=True)
class QueueRef:
    """Which queue: organization, mode and queue id (together they name its keys)."""

    organization_id: str
    mode: str
    queue_id: str

    @property
    def hash_tag(self) -> str:
        """``{org:mode:queue}``: every key of the queue lives in one cluster slot."""
        return "{" + f"{self.organization_id}:{self.mode}:{self.queue_id}" + "}"


@dataclasses.dataclass(frozen=True)
class StateMarker:
    """The marker of one incarnation of a queue's live state.

    Attributes:
        epoch: Random id of this incarnation (a new one after a loss).
        started_at: When it was written.
        lost_at: When the state before it was found lost (None: nothing was lost).
    """

    epoch: str
    started_at: float
    lost_at: float | None = None


@dataclasses.dataclass(frozen=True)
class MarkerCheck:
    """Passed by a caller that knows (from the database) that the queue's state must
    exist: a missing marker is then a loss (or adopted, if state is there).

    Attributes:
        now: The time written as ``lost_at`` / ``started_at``.
        epoch: The epoch of the marker written if there is none (fresh, random).
    """

    now: float
    epoch: str


@dataclasses.dataclass(frozen=True)
class EntryRecord:
    """One consumer's entry in one queue.

    Attributes:
        consumer_id: The consumer (one entry per consumer per queue).
        session_id: The session that entered (handoff tokens are bound to it).
        device_hash: Keyed digest of the device fingerprint (one active entry per device).
        status: Current status.
        entered_at: When the entry was made.
        pre_queue: Entered before the queue opened.
        admitted_at: When it was admitted (ADMITTED and later).
        handoff_token_id: ``jti`` of the handoff token issued at admission: one per
            admission, random (drawn by the caller), not secret (the token is signed).
        handoff_expires_at: When the handoff token expires.
        redeemed_at: When ``ValidateHandoffToken`` redeemed the token.
        ended_at: When it reached COMPLETED, DENIED, LEFT or EXPIRED.
    """

    consumer_id: str
    session_id: str
    device_hash: str
    status: EntryStatus
    entered_at: float
    pre_queue: bool = False
    admitted_at: float | None = None
    handoff_token_id: str | None = None
    handoff_expires_at: float | None = None
    redeemed_at: float | None = None
    ended_at: float | None = None


@dataclasses.dataclass(frozen=True)
class EntryView:
    """An entry with its 0-based rank among waiting consumers (None unless QUEUED)."""

    entry: EntryRecord
    rank: int | None


class Views(list[EntryView | None]):
    """What ``views`` found (one item per consumer asked; it is that list), with the
    queue's marker.

    Attributes:
        marker: The queue's marker after the call (None: there is none, which only
            happens without a check).
        declared_lost: This very call found the state lost and wrote the new marker.
    """

    def __init__(
        self,
        found: Iterable[EntryView | None] = (),
        *,
        marker: StateMarker | None = None,
        declared_lost: bool = False,
    ) -> None:
        super().__init__(found)
        self.marker = marker
        self.declared_lost = declared_lost


@dataclasses.dataclass(frozen=True)
class Transition:
    """A status change asked of the store: the entry as it is afterwards, and whether
    this very call changed it.

    ``changed`` is decided inside the store's atomic step, so of several concurrent
    calls exactly one sees it: the one that publishes the event (and, with the webhook
    outbox, writes it).
    """

    entry: EntryRecord
    changed: bool


class EnterOutcome(enum.Enum):
    """Result of ``enter``."""

    ENTERED = "entered"
    ALREADY_ENTERED = "already_entered"  # the existing entry is returned
    DEVICE_TAKEN = "device_taken"  # another consumer holds an active entry on this device
    FULL = "full"  # max_size consumers are waiting


@dataclasses.dataclass(frozen=True)
class EnterResult:
    """``enter`` outcome and the consumer's entry (new or existing; None otherwise);
    with a ``MarkerCheck``, the queue's marker and whether this call declared the loss."""

    outcome: EnterOutcome
    view: EntryView | None = None
    marker: StateMarker | None = None
    declared_lost: bool = False


class AdmissionBatch(list[EntryRecord]):
    """What one ``admit`` call admitted (in admission order; it is that list), and
    what the caller needs to decide whether to call again.

    Attributes:
        skipped: Consumers taken from the line because their entry was missing.
        waiting: Consumers still waiting when the call ended (0: the line is empty).
    """

    def __init__(
        self, admitted: Iterable[EntryRecord] = (), *, skipped: int = 0, waiting: int = 0
    ) -> None:
        super().__init__(admitted)
        self.skipped = skipped
        self.waiting = waiting

    @property
    def popped(self) -> int:
        """Consumers this call took from the line (admitted or skipped)."""
        return len(self) + self.skipped


class RedeemOutcome(enum.Enum):
    """Result of ``redeem``."""

    OK = "ok"
    ALREADY_USED = "already_used"
    EXPIRED = "expired"
    INVALID = "invalid"  # no such entry, another token id, or not admitted (denied, left)


@dataclasses.dataclass(frozen=True)
class RedeemResult:
    """``redeem`` outcome and the entry as it is afterwards (None if there is none).

    ``replayed``: OK because this redemption key already redeemed the token (a retry
    of a call whose answer was lost), not a second redemption.
    """

    outcome: RedeemOutcome
    entry: EntryRecord | None = None
    replayed: bool = False


@dataclasses.dataclass(frozen=True)
class QueueCounters:
    """Numbers for ``GetQueueStats`` and wait estimates.

    Attributes:
        waiting: Consumers QUEUED.
        admitted: Consumers ADMITTED now (token unredeemed or redeemed, not completed).
        completed: Consumers COMPLETED so far.
        admitted_recently: Admissions within the last ``window_seconds`` (measured rate).
        head_entered_at: ``entered_at`` of the first waiting consumer (None if none).
        denied: Entries that ended DENIED so far.
        left: Entries that ended LEFT so far (a consumer who re-enters counts again).
        expired: Admissions that expired unredeemed so far.
        missing: Consumers skipped because their entry was gone (see the module doc).
        marker: The queue's marker (None: there is none, only possible without a check).
        declared_lost: This very call found the state lost and wrote the new marker.
    """

    waiting: int
    admitted: int
    completed: int
    admitted_recently: int
    head_entered_at: float | None
    denied: int = 0
    left: int = 0
    expired: int = 0
    missing: int = 0
    marker: StateMarker | None = None
    declared_lost: bool = False


class QueueStateStore(Protocol):
    """Atomic operations on one queue's live state."""

    async def enter(
        self,
        queue: QueueRef,
        entry: EntryRecord,
        *,
        score: float,
        max_size: int | None,
        check: MarkerCheck | None = None,
    ) -> EnterResult:
        """Add ``entry`` (status QUEUED) with ``score``, unless:

        - the consumer already has an entry whose status is not LEFT → ALREADY_ENTERED
          with that entry (a LEFT consumer may enter again, at the back);
        - ``entry.device_hash`` belongs to another consumer's QUEUED/ADMITTED entry →
          DEVICE_TAKEN;
        - ``max_size`` is set and that many are waiting → FULL.

        ``score`` < 0 means "next in line": the store uses ``1 + n`` from the queue's
        counter instead (first in, first out after pre-queue entrants, whose scores
        are in [0, 1)).

        With ``check``, the marker is checked first, in the same atomic step (see
        ``check_marker``); the result carries it.
        """
        ...

    async def view(self, queue: QueueRef, consumer_id: str) -> EntryView | None:
        """The consumer's entry and rank (O(log n)); None if the consumer never entered."""
        ...

    async def views(
        self,
        queue: QueueRef,
        consumer_ids: Sequence[str],
        *,
        check: MarkerCheck | None = None,
    ) -> Views:
        """``view`` for many consumers in one round trip (live position streams), with
        the queue's marker; with ``check``, checked first in the same atomic step (see
        ``check_marker``)."""
        ...

    async def start(self, queue: QueueRef, marker: StateMarker) -> StateMarker:
        """Write ``marker`` unless the queue has one (a queue starting to take entries,
        before the database says it does); return the queue's marker."""
        ...

    async def check_marker(self, queue: QueueRef, check: MarkerCheck) -> tuple[StateMarker, bool]:
        """The marker, written if missing (the caller knows the state must exist): with
        ``lost_at`` = ``check.now`` if the queue has no state at all (lost; True is
        returned only by the call that wrote it), without if it has some (adopted:
        state written before markers existed). Every ``check`` argument of the other
        methods does this within their own atomic step."""
        ...

    async def leave(self, queue: QueueRef, consumer_id: str, now: float) -> Transition | None:
        """QUEUED, or ADMITTED with the token not yet redeemed → LEFT (position freed,
        device released, token void). Others, a redeemed admission included, are
        returned unchanged (a spent grant must not turn into a new place in line;
        ``changed`` False); None if the consumer never entered."""
        ...

    async def admit(
        self,
        queue: QueueRef,
        token_ids: Sequence[str],
        now: float,
        handoff_ttl_seconds: float,
    ) -> AdmissionBatch:
        """Admit up to ``len(token_ids)`` lowest-scored waiting consumers: ADMITTED,
        with ``admitted_at`` = now, ``handoff_expires_at`` = now + ttl, and the i-th
        admitted gets ``token_ids[i]`` as ``handoff_token_id`` (fresh random ids from
        the caller: the store has no CSPRNG on Redis). Returns them in admission order;
        unused ids are discarded. Waiting consumers whose entry is missing are skipped
        (dropped from the line, counted in ``missing``) and use no token id.

        One call takes at most ``MAX_ADMISSIONS_PER_CALL`` consumers from the line,
        skipped ones included, so it may admit fewer than asked while consumers are
        still waiting (``waiting`` > 0): the caller calls again if it wants more.

        Raises:
            ValueError: More than ``MAX_ADMISSIONS_PER_CALL`` token ids (one call is one
                atomic step; the caller admits more in several calls)."""
        ...

    async def expire_admissions(self, queue: QueueRef, now: float, limit: int) -> list[EntryRecord]:
        """ADMITTED entries whose token expired unredeemed (``handoff_expires_at`` <= now)
        → EXPIRED (device released); at most ``limit`` per call, oldest first. Due
        consumers whose entry is missing are dropped and counted in ``missing``."""
        ...

    async def redeem(
        self,
        queue: QueueRef,
        consumer_id: str,
        token_id: str,
        now: float,
        redemption_key: str | None = None,
    ) -> RedeemResult:
        """Redeem the handoff token ``token_id`` once: OK the first time while ADMITTED
        and unexpired (``redeemed_at`` set); ALREADY_USED after; EXPIRED if past
        ``handoff_expires_at`` or the entry is EXPIRED; INVALID otherwise. A redeemed
        entry never expires.

        ``redemption_key`` (an idempotency key's digest) is stored with the redemption
        in the same atomic step: a later call with the same key gets OK again
        (``replayed``), any other call ALREADY_USED."""
        ...

    async def deny(self, queue: QueueRef, consumer_id: str, now: float) -> Transition | None:
        """QUEUED or ADMITTED → DENIED (removed, token void, device released). Others are
        returned unchanged (``changed`` False); None if the consumer never entered."""
        ...

    async def complete(self, queue: QueueRef, consumer_id: str, now: float) -> Transition | None:
        """ADMITTED → COMPLETED (device released). Others are returned unchanged
        (``changed`` False); None if the consumer never entered."""
        ...

    async def counters(
        self,
        queue: QueueRef,
        now: float,
        window_seconds: float,
        *,
        check: MarkerCheck | None = None,
    ) -> QueueCounters:
        """Current numbers; ``admitted_recently`` counts admissions after now - window.
        With ``check``, the marker is checked first in the same atomic step (see
        ``check_marker``)."""
        ...

    async def drop(self, queue: QueueRef) -> None:
        """Forget everything about the queue (deleted queue), its marker included."""
        ...
