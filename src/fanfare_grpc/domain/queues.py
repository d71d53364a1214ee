"""Queue configuration and lifecycle (stored in the database, per organization and mode).

DRAFT → SCHEDULED (has a future ``opens_at``) → OPEN ⇄ PAUSED → CLOSED. OpenQueue
opens any DRAFT, SCHEDULED or PAUSED queue at once; a SCHEDULED queue opens by
itself at ``opens_at`` and any queue, a DRAFT included, closes by itself at
``closes_at`` (which must be in the future when set; OpenQueue refuses a queue whose
``closes_at`` passed).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum

DEFAULT_HANDOFF_TTL = dt.timedelta(minutes=10)
# The longest handoff_ttl the protos accept: a handoff token lives at most this long.
MAX_HANDOFF_TTL = dt.timedelta(hours=24)
QUEUE_PREFIX = "q_"


class QueueStatus(enum.StrEnum):
    """Lifecycle state of a queue."""

    DRAFT = "draft"
    SCHEDULED = "scheduled"
    OPEN = "open"
    PAUSED = "paused"
    CLOSED = "closed"


# Which statuses each transition starts from.
OPENABLE = frozenset({QueueStatus.DRAFT, QueueStatus.SCHEDULED, QueueStatus.PAUSED})
PAUSABLE = frozenset({QueueStatus.OPEN})
CLOSABLE = frozenset(
    {QueueStatus.DRAFT, QueueStatus.SCHEDULED, QueueStatus.OPEN, QueueStatus.PAUSED}
)
DELETABLE = frozenset({QueueStatus.DRAFT, QueueStatus.CLOSED})
# Consumers may enter these (SCHEDULED: into the pre-queue).
ENTERABLE = frozenset({QueueStatus.SCHEDULED, QueueStatus.OPEN, QueueStatus.PAUSED})
# Statuses whose admission rate counts against the organization's ceiling (per mode):
# a SCHEDULED queue opens by itself and a PAUSED one may reopen at any moment, so
# both hold their share as if OPEN.
RATE_COUNTED = frozenset({QueueStatus.SCHEDULED, QueueStatus.OPEN, QueueStatus.PAUSED})
# The highest admission_rate_per_minute the protos accept for one queue.
MAX_ADMISSION_RATE_PER_MINUTE = 1_000_000
UPDATABLE_FIELDS = frozenset(
    {"name", "opens_at", "closes_at", "admission_rate_per_minute", "handoff_ttl", "max_size"}
)


@dataclasses.dataclass(frozen=True)
class Queue:
    """A queue's configuration and status.

    Attributes:
        max_size: Most consumers waiting at once; 0 means no limit.
        opened_at: When it first opened (None until then).
        closed_at: When it closed.
    """

    queue_id: str
    organization_id: str
    mode: str
    name: str
    status: QueueStatus
    admission_rate_per_minute: int
    handoff_ttl: dt.timedelta
    max_size: int
    created_at: dt.datetime
    updated_at: dt.datetime
    opens_at: dt.datetime | None = None
    closes_at: dt.datetime | None = None
    opened_at: dt.datetime | None = None
    closed_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class QueueChanges:
    """Fields an UpdateQueue sets (only those named in its mask)."""

    fields: frozenset[str]
    name: str = ""
    opens_at: dt.datetime | None = None
    closes_at: dt.datetime | None = None
    admission_rate_per_minute: int = 0
    handoff_ttl: dt.timedelta | None = None
    max_size: int = 0


@dataclasses.dataclass(frozen=True)
class ScheduledQueue:
    """A queue as the background worker sees it across organizations."""

    organization_id: str
    mode: str
    queue_id: str
    status: QueueStatus
    opens_at: dt.datetime | None
    closes_at: dt.datetime | None
    closed_at: dt.datetime | None


class AdmissionRateCeilingExceeded(Exception):
    """Storing a queue would take its organization's counted queues (``RATE_COUNTED``,
    same mode) past the ceiling; nothing was stored.

    Attributes:
        ceiling: The ceiling that was checked (admissions per minute).
        others: What the organization's other counted queues in that mode take.
    """

    def __init__(self, ceiling: int, others: int) -> None:
        super().__init__(f"admission rate ceiling {ceiling} exceeded ({others} in use)")
        self.ceiling = ceiling
        self.others = others
